//! Conversions between decoder images and RGB video frames.

use candle_core::{DType, Device, Result, Tensor};

use super::Video;

/// Decoder images [N, 3, H, W] (nominally in [-1, 1]) → N RGB frames of `H·W·3` bytes, the way
/// diffusers post-processes them: `(x / 2 + 0.5).clamp(0, 1)`, then `× 255` rounded half to even
/// (numpy's `round`).
pub fn rgb_frames(images: &Tensor) -> Result<Video> {
    let (count, channels, height, width) = images.dims4()?;
    if channels != 3 {
        candle_core::bail!("expected 3 colour channels, got {channels}");
    }
    let unit = ((images.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let values = (unit * 255.0)?
        .permute((0, 2, 3, 1))?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let frame_len = height * width * 3;
    let frames = values
        .chunks_exact(frame_len.max(1))
        .take(count)
        .map(|frame| frame.iter().map(|&v| v.round_ties_even() as u8).collect())
        .collect();
    Ok(Video {
        width,
        height,
        frames,
    })
}

/// RGB frames → images [F, 3, H, W] in [-1, 1] on `device` (f32), the encoder's input: the inverse
/// of [`rgb_frames`] up to rounding.
pub fn video_to_images(video: &Video, device: &Device) -> Result<Tensor> {
    let frame_len = video.height * video.width * 3;
    if video.frames.is_empty() {
        candle_core::bail!("the video has no frames");
    }
    if let Some(index) = video
        .frames
        .iter()
        .position(|frame| frame.len() != frame_len)
    {
        candle_core::bail!(
            "frame {index} has {} bytes, expected {frame_len} for {}x{}",
            video.frames[index].len(),
            video.width,
            video.height
        );
    }
    let bytes: Vec<u8> = video.frames.concat();
    let images = Tensor::from_vec(
        bytes,
        (video.frames.len(), video.height, video.width, 3),
        device,
    )?
    .permute((0, 3, 1, 2))?
    .to_dtype(DType::F32)?;
    (images / 127.5)? - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_clamp_scale_round_and_interleave() {
        // One 1×2 frame: pixel 0 = (-1, 0, 1), pixel 1 = (2, -3, -0.5).
        let images = Tensor::new(
            &[[[[-1f32, 2.0]], [[0.0, -3.0]], [[1.0, -0.5]]]],
            &Device::Cpu,
        )
        .unwrap();
        let video = rgb_frames(&images).unwrap();
        assert_eq!((video.width, video.height), (2, 1));
        // 0 → 127.5 → 128 (the even neighbour); -0.5 → 63.75 → 64; out-of-range values clamp.
        assert_eq!(video.frames, vec![vec![0, 128, 255, 255, 0, 64]]);
    }

    #[test]
    fn images_round_trip_through_bytes() {
        let video = Video {
            width: 2,
            height: 1,
            frames: vec![vec![0, 51, 255, 10, 20, 30], vec![1, 2, 3, 4, 5, 6]],
        };
        let images = video_to_images(&video, &Device::Cpu).unwrap();
        assert_eq!(images.dims(), &[2, 3, 1, 2]);
        assert_eq!(rgb_frames(&images).unwrap(), video);
        let broken = Video {
            width: 2,
            height: 1,
            frames: vec![vec![0; 5]],
        };
        assert!(video_to_images(&broken, &Device::Cpu).is_err());
    }
}

//! RGB24 frames → H.264 MP4.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{codec, color, encoder, format, frame, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

use super::{init, local_file_url};
use crate::media::atomic_file::PendingFile;
use crate::media::{check_rgb_len, MediaError};

/// libx264 rate control and speed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeSettings {
    /// Constant rate factor: 0 is lossless, 18 is visually near-transparent, 23 is x264's default.
    pub crf: u8,
    /// x264 preset, from "ultrafast" to "veryslow".
    pub preset: String,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        EncodeSettings {
            crf: 18,
            preset: "medium".to_string(),
        }
    }
}

/// Largest frame side libx264 and H.264 levels handle sensibly.
const MAX_SIDE: usize = 8192;
const MAX_FPS: u32 = 240;

/// Encodes RGB24 frames as an H.264 MP4 at `path` with default settings; see
/// [`encode_mp4_with`].
pub fn encode_mp4(
    frames: &[Vec<u8>],
    width: usize,
    height: usize,
    fps: u32,
    path: &Path,
) -> Result<(), MediaError> {
    encode_mp4_with(frames, width, height, fps, path, &EncodeSettings::default())
}

/// Encodes RGB24 frames (`width * height * 3` bytes each) as H.264/yuv420p in an MP4 with the
/// moov atom first. Every frame is present when decoded again.
///
/// yuv420p stores colour at half resolution, so `width` and `height` must be even; odd sizes
/// are refused with [`MediaError::InvalidInput`] rather than silently cropped or padded. The
/// file is written under a temporary name next to `path` and renamed into place at the end.
pub fn encode_mp4_with(
    frames: &[Vec<u8>],
    width: usize,
    height: usize,
    fps: u32,
    path: &Path,
    settings: &EncodeSettings,
) -> Result<(), MediaError> {
    validate_input(frames, width, height, fps)?;
    init()?;
    let pending = PendingFile::new(path)?;
    write_video(
        frames,
        width as u32,
        height as u32,
        fps,
        pending.temp_path(),
        settings,
    )?;
    pending.commit()
}

fn validate_input(
    frames: &[Vec<u8>],
    width: usize,
    height: usize,
    fps: u32,
) -> Result<(), MediaError> {
    if frames.is_empty() {
        return Err(MediaError::InvalidInput("no frames to encode".into()));
    }
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(MediaError::InvalidInput(format!(
            "frame size {width}x{height} must be between 2 and {MAX_SIDE} on each side"
        )));
    }
    if width % 2 != 0 || height % 2 != 0 {
        return Err(MediaError::InvalidInput(format!(
            "frame size {width}x{height} must be even on both sides for yuv420p"
        )));
    }
    if fps == 0 || fps > MAX_FPS {
        return Err(MediaError::InvalidInput(format!(
            "frame rate {fps} must be between 1 and {MAX_FPS}"
        )));
    }
    for (index, frame) in frames.iter().enumerate() {
        check_rgb_len(&format!("frame {index}"), frame, width, height)?;
    }
    Ok(())
}

fn encode_error(stage: &'static str) -> impl Fn(ffmpeg::Error) -> MediaError {
    move |error| MediaError::Encode(format!("{stage}: {error}"))
}

fn write_video(
    frames: &[Vec<u8>],
    width: u32,
    height: u32,
    fps: u32,
    temp_path: &Path,
    settings: &EncodeSettings,
) -> Result<(), MediaError> {
    let codec = encoder::find_by_name("libx264")
        .ok_or_else(|| MediaError::Unavailable("FFmpeg was built without libx264".into()))?;
    // The temporary name has no .mp4 extension, so name the muxer explicitly.
    let mut output = format::output_as(&local_file_url(temp_path)?, "mp4")
        .map_err(encode_error("opening the output file"))?;
    let needs_global_header = output
        .format()
        .flags()
        .contains(format::Flags::GLOBAL_HEADER);

    let frame_time_base = Rational::new(1, fps as i32);
    let mut video_encoder = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(encode_error("creating the encoder"))?;
    video_encoder.set_width(width);
    video_encoder.set_height(height);
    video_encoder.set_format(Pixel::YUV420P);
    video_encoder.set_time_base(frame_time_base);
    video_encoder.set_frame_rate(Some(Rational::new(fps as i32, 1)));
    // swscale's RGB -> YUV conversion below is BT.601 limited range; say so in the stream.
    video_encoder.set_colorspace(color::Space::SMPTE170M);
    video_encoder.set_color_range(color::Range::MPEG);
    if needs_global_header {
        // MP4 keeps SPS/PPS in the avcC box, not in the first packet.
        video_encoder.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut x264_options = Dictionary::new();
    x264_options.set("preset", &settings.preset);
    x264_options.set("crf", &settings.crf.to_string());
    // No macroblock-tree rate control: on short clips (fewer frames than its 40-frame lookahead)
    // it reads memory x264 never wrote, so the same frames encoded twice in one process could
    // give different bytes (decoding up to 15/255 apart); without it the output depends only on
    // the frames and the settings. Its gain, a few percent of bitrate at equal quality, does not
    // matter for clips of 8-16 frames.
    x264_options.set("mbtree", "0");
    let mut video_encoder = video_encoder
        .open_with(x264_options)
        .map_err(encode_error("opening libx264"))?;

    let stream_index = {
        let mut stream = output
            .add_stream(codec)
            .map_err(encode_error("adding the video stream"))?;
        stream.set_parameters(&video_encoder);
        stream.set_time_base(frame_time_base);
        stream.set_avg_frame_rate(Rational::new(fps as i32, 1));
        stream.index()
    };

    let mut muxer_options = Dictionary::new();
    muxer_options.set("movflags", "+faststart");
    output
        .write_header_with(muxer_options)
        .map_err(encode_error("writing the MP4 header"))?;
    // The muxer may have picked a finer time base than the one suggested.
    let stream_time_base = output
        .stream(stream_index)
        .map(|stream| stream.time_base())
        .ok_or_else(|| MediaError::Encode("video stream vanished after the header".into()))?;

    let mut to_yuv = scaling::Context::get(
        Pixel::RGB24,
        width,
        height,
        Pixel::YUV420P,
        width,
        height,
        scaling::Flags::BICUBIC | scaling::Flags::ACCURATE_RND,
    )
    .map_err(encode_error("creating the RGB to YUV converter"))?;
    let mut rgb_frame = frame::Video::new(Pixel::RGB24, width, height);
    let muxing = PacketWriter {
        stream_index,
        frame_time_base,
        stream_time_base,
    };

    for (index, rgb) in frames.iter().enumerate() {
        copy_rgb_into_frame(rgb, &mut rgb_frame, width as usize, height as usize);
        // A fresh YUV frame each time: the encoder may keep a reference to the previous one.
        let mut yuv_frame = frame::Video::empty();
        to_yuv
            .run(&rgb_frame, &mut yuv_frame)
            .map_err(encode_error("converting RGB to YUV"))?;
        yuv_frame.set_pts(Some(index as i64));
        video_encoder
            .send_frame(&yuv_frame)
            .map_err(encode_error("sending a frame to libx264"))?;
        muxing.write_ready_packets(&mut video_encoder, &mut output)?;
    }
    video_encoder
        .send_eof()
        .map_err(encode_error("flushing libx264"))?;
    muxing.write_ready_packets(&mut video_encoder, &mut output)?;
    output
        .write_trailer()
        .map_err(encode_error("finishing the MP4 (faststart pass)"))?;
    Ok(())
}

/// Copies tightly packed RGB rows into an FFmpeg frame whose rows may be padded (stride).
fn copy_rgb_into_frame(rgb: &[u8], frame: &mut frame::Video, width: usize, height: usize) {
    let row_bytes = width * 3;
    let stride = frame.stride(0);
    let data = frame.data_mut(0);
    for row in 0..height {
        data[row * stride..row * stride + row_bytes]
            .copy_from_slice(&rgb[row * row_bytes..(row + 1) * row_bytes]);
    }
}

struct PacketWriter {
    stream_index: usize,
    frame_time_base: Rational,
    stream_time_base: Rational,
}

impl PacketWriter {
    /// Moves every packet the encoder has ready into the muxer.
    fn write_ready_packets(
        &self,
        video_encoder: &mut encoder::Video,
        output: &mut format::context::Output,
    ) -> Result<(), MediaError> {
        let mut packet = Packet::empty();
        loop {
            match video_encoder.receive_packet(&mut packet) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    return Ok(())
                }
                Err(error) => return Err(encode_error("receiving a packet from libx264")(error)),
            }
            // Some FFmpeg 5.1 + libx264 setups leave durations at 0; the MP4 muxer then writes an
            // edit list that hides the last frame. Each packet is exactly one frame long.
            if packet.duration() == 0 {
                packet.set_duration(1);
            }
            packet.set_stream(self.stream_index);
            packet.rescale_ts(self.frame_time_base, self.stream_time_base);
            packet
                .write_interleaved(output)
                .map_err(encode_error("writing a packet"))?;
        }
    }
}

//! PNG output of RGB24 images.

use std::path::Path;

use super::atomic_file::write_atomically;
use super::{check_rgb_len, MediaError};

/// Encodes an RGB24 image (`width * height * 3` bytes, row-major) as an 8-bit RGB PNG.
pub fn encode_png_rgb(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>, MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::InvalidInput(format!(
            "PNG of {width}x{height} has no pixels"
        )));
    }
    let (png_width, png_height) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(MediaError::InvalidInput(format!(
                "PNG of {width}x{height} exceeds the format's size limit"
            )))
        }
    };
    check_rgb_len("PNG image", rgb, width, height)?;

    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, png_width, png_height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| MediaError::Png(e.to_string()))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| MediaError::Png(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| MediaError::Png(e.to_string()))?;
    Ok(bytes)
}

/// Writes an RGB24 image to `path` as PNG, atomically (temporary file, then rename).
pub fn write_png_rgb(
    path: &Path,
    width: usize,
    height: usize,
    rgb: &[u8],
) -> Result<(), MediaError> {
    let bytes = encode_png_rgb(width, height, rgb)?;
    write_atomically(path, &bytes)
}

/// Test helper shared by the PNG renderers' tests: decodes a PNG into (width, height, RGB24).
#[cfg(test)]
pub(crate) fn decode_png_rgb(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("valid PNG header");
    let mut buffer = vec![0; reader.output_buffer_size().expect("known size")];
    let info = reader.next_frame(&mut buffer).expect("valid PNG data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buffer.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> Vec<u8> {
        (0..width * height)
            .flat_map(|i| [(i % 256) as u8, (i / 7 % 256) as u8, 200])
            .collect()
    }

    #[test]
    fn png_round_trips_pixels() {
        let rgb = gradient(13, 7);
        let bytes = encode_png_rgb(13, 7, &rgb).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(decode_png_rgb(&bytes), (13, 7, rgb));
    }

    #[test]
    fn write_png_rgb_creates_a_decodable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.png");
        let rgb = gradient(4, 3);
        write_png_rgb(&path, 4, 3, &rgb).unwrap();
        assert_eq!(decode_png_rgb(&std::fs::read(&path).unwrap()), (4, 3, rgb));
    }

    #[test]
    fn wrong_buffer_length_or_empty_image_is_rejected() {
        assert!(matches!(
            encode_png_rgb(4, 3, &[0; 35]),
            Err(MediaError::InvalidInput(_))
        ));
        assert!(matches!(
            encode_png_rgb(0, 3, &[]),
            Err(MediaError::InvalidInput(_))
        ));
    }
}

//! A minimal RGB24 drawing surface: filled rectangles, bitmap text, and scaled image blits.
//! Everything is clipped to the canvas, so callers can draw without bounds checks.

use super::font::{self, GLYPH_HEIGHT, GLYPH_WIDTH};
use super::MediaError;

pub(crate) type Rgb = [u8; 3];

pub(crate) const WHITE: Rgb = [255, 255, 255];
pub(crate) const BLACK: Rgb = [0, 0, 0];

/// Upper bound on rendered images, so a request cannot make the server allocate gigabytes
/// for one PNG (64 Mpixel = 192 MiB of RGB).
pub(crate) const MAX_CANVAS_PIXELS: usize = 64 * 1024 * 1024;

pub(crate) struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    pub(crate) fn new(width: usize, height: usize, background: Rgb) -> Result<Self, MediaError> {
        let pixels = width
            .checked_mul(height)
            .filter(|&pixels| pixels > 0 && pixels <= MAX_CANVAS_PIXELS)
            .ok_or_else(|| {
                MediaError::InvalidInput(format!(
                    "image of {width}x{height} is empty or larger than {MAX_CANVAS_PIXELS} pixels"
                ))
            })?;
        let mut data = Vec::with_capacity(pixels * 3);
        for _ in 0..pixels {
            data.extend_from_slice(&background);
        }
        Ok(Canvas {
            width,
            height,
            pixels: data,
        })
    }

    pub(crate) fn width(&self) -> usize {
        self.width
    }

    pub(crate) fn height(&self) -> usize {
        self.height
    }

    pub(crate) fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    #[cfg(test)]
    pub(crate) fn pixel(&self, x: usize, y: usize) -> Rgb {
        let offset = (y * self.width + x) * 3;
        [
            self.pixels[offset],
            self.pixels[offset + 1],
            self.pixels[offset + 2],
        ]
    }

    pub(crate) fn fill_rect(
        &mut self,
        x: usize,
        y: usize,
        width: usize,
        height: usize,
        color: Rgb,
    ) {
        let x_end = x.saturating_add(width).min(self.width);
        let y_end = y.saturating_add(height).min(self.height);
        for row in y.min(y_end)..y_end {
            for column in x.min(x_end)..x_end {
                let offset = (row * self.width + column) * 3;
                self.pixels[offset..offset + 3].copy_from_slice(&color);
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel as a `scale`² block.
    pub(crate) fn draw_text(&mut self, x: usize, y: usize, text: &str, color: Rgb, scale: usize) {
        let mut pen_x = x;
        for c in text.chars() {
            let bitmap = font::glyph(c);
            for (row, bits) in bitmap.iter().enumerate().take(GLYPH_HEIGHT) {
                for column in 0..GLYPH_WIDTH {
                    if bits & (0x10 >> column) != 0 {
                        self.fill_rect(
                            pen_x + column * scale,
                            y + row * scale,
                            scale,
                            scale,
                            color,
                        );
                    }
                }
            }
            pen_x = pen_x.saturating_add(font::ADVANCE * scale);
        }
    }

    /// Copies an RGB24 image of `src_width` × `src_height` into the rectangle at (x, y) of
    /// `dst_width` × `dst_height`, averaging the source pixels each destination pixel covers
    /// (a box filter: smooth when shrinking, nearest-neighbour when enlarging).
    pub(crate) fn blit_scaled(
        &mut self,
        x: usize,
        y: usize,
        src: &[u8],
        src_width: usize,
        src_height: usize,
        dst_width: usize,
        dst_height: usize,
    ) {
        if src_width == 0 || src_height == 0 || src.len() < src_width * src_height * 3 {
            return;
        }
        for out_row in 0..dst_height {
            let (row_start, row_end) = covered_range(out_row, dst_height, src_height);
            for out_column in 0..dst_width {
                let (column_start, column_end) = covered_range(out_column, dst_width, src_width);
                let mut sum = [0u64; 3];
                for src_row in row_start..row_end {
                    for src_column in column_start..column_end {
                        let offset = (src_row * src_width + src_column) * 3;
                        for channel in 0..3 {
                            sum[channel] += src[offset + channel] as u64;
                        }
                    }
                }
                let count = ((row_end - row_start) * (column_end - column_start)) as u64;
                let color = sum.map(|total| ((total + count / 2) / count) as u8);
                self.fill_rect(x + out_column, y + out_row, 1, 1, color);
            }
        }
    }
}

/// Source index range [start, end) covered by output index `out` when `dst` pixels span `src`
/// pixels; never empty.
fn covered_range(out: usize, dst: usize, src: usize) -> (usize, usize) {
    let start = out * src / dst;
    let end = ((out + 1) * src).div_ceil(dst).clamp(start + 1, src);
    (start.min(src - 1), end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_rect_is_clipped_to_the_canvas() {
        let mut canvas = Canvas::new(4, 3, BLACK).unwrap();
        canvas.fill_rect(2, 1, 100, 100, WHITE);
        assert_eq!(canvas.pixel(1, 1), BLACK);
        assert_eq!(canvas.pixel(2, 1), WHITE);
        assert_eq!(canvas.pixel(3, 2), WHITE);
        assert_eq!(canvas.pixel(3, 0), BLACK);
    }

    #[test]
    fn draw_text_sets_glyph_pixels() {
        let mut canvas = Canvas::new(20, 10, BLACK).unwrap();
        canvas.draw_text(1, 1, "|", WHITE, 1);
        // '|' is the middle column of the glyph on every row.
        for row in 1..8 {
            assert_eq!(canvas.pixel(3, row), WHITE);
            assert_eq!(canvas.pixel(2, row), BLACK);
        }
        canvas.draw_text(15, 5, "WWWW", WHITE, 3); // runs off the edge without panicking
    }

    #[test]
    fn blit_scaled_averages_when_shrinking_and_repeats_when_enlarging() {
        // 2x2 source: black, white / white, black.
        let src = [0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 0];
        let mut canvas = Canvas::new(5, 5, [9, 9, 9]).unwrap();
        canvas.blit_scaled(0, 0, &src, 2, 2, 1, 1);
        assert_eq!(canvas.pixel(0, 0), [128, 128, 128]);
        canvas.blit_scaled(1, 1, &src, 2, 2, 4, 4);
        assert_eq!(canvas.pixel(1, 1), BLACK);
        assert_eq!(canvas.pixel(2, 2), BLACK);
        assert_eq!(canvas.pixel(3, 1), WHITE);
        assert_eq!(canvas.pixel(4, 4), BLACK);
    }

    #[test]
    fn oversized_or_empty_canvas_is_an_error() {
        assert!(Canvas::new(0, 10, BLACK).is_err());
        assert!(Canvas::new(usize::MAX, 2, BLACK).is_err());
        assert!(Canvas::new(100_000, 100_000, BLACK).is_err());
    }
}

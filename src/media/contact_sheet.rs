//! Contact sheets: evenly sampled frames of one or more videos tiled into a single PNG, one
//! labelled row per video, each thumbnail captioned with its frame index.

use super::canvas::{Canvas, BLACK, WHITE};
use super::font::{text_width, LINE_HEIGHT};
use super::image::encode_png_rgb;
use super::{check_rgb_len, MediaError};

/// One video for the sheet: RGB24 frames of `width` × `height`.
#[derive(Debug, Clone, Copy)]
pub struct SheetVideo<'a> {
    pub label: &'a str,
    pub frames: &'a [Vec<u8>],
    pub width: usize,
    pub height: usize,
}

/// Presentation settings; `Default` gives up to 8 thumbnails of 96 px height per video.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactSheetStyle {
    /// Heading above all rows.
    pub title: Option<String>,
    /// Most thumbnails per video; frames are sampled evenly, first and last included.
    pub max_columns: usize,
    /// Thumbnail height in pixels; widths keep each video's aspect ratio.
    pub thumb_height: usize,
}

impl Default for ContactSheetStyle {
    fn default() -> Self {
        ContactSheetStyle {
            title: None,
            max_columns: 8,
            thumb_height: 96,
        }
    }
}

const MARGIN: usize = 10;
const TITLE_SCALE: usize = 2;
const GAP: usize = 4;
const ROW_GAP: usize = 12;
const CAPTION: [u8; 3] = [90, 90, 90];

/// Renders the contact sheet as PNG bytes.
pub fn contact_sheet(
    videos: &[SheetVideo<'_>],
    style: &ContactSheetStyle,
) -> Result<Vec<u8>, MediaError> {
    if videos.is_empty() {
        return Err(MediaError::InvalidInput(
            "contact sheet has no videos".into(),
        ));
    }
    if style.max_columns == 0 || style.thumb_height == 0 {
        return Err(MediaError::InvalidInput(
            "contact sheet needs at least one column and a non-zero thumbnail height".into(),
        ));
    }
    let rows = videos
        .iter()
        .map(|video| RowLayout::measure(video, style))
        .collect::<Result<Vec<_>, _>>()?;

    let title_height = style
        .title
        .as_ref()
        .map_or(0, |_| LINE_HEIGHT * TITLE_SCALE + GAP);
    let title_width = style
        .title
        .as_deref()
        .map_or(0, |t| text_width(t, TITLE_SCALE));
    let row_height = LINE_HEIGHT + 2 + style.thumb_height + 2 + LINE_HEIGHT;
    let content_width = rows
        .iter()
        .map(|row| row.width)
        .max()
        .unwrap_or(0)
        .max(title_width);
    let content_height = title_height + rows.len() * row_height + (rows.len() - 1) * ROW_GAP;

    let mut canvas = Canvas::new(
        content_width + 2 * MARGIN,
        content_height + 2 * MARGIN,
        WHITE,
    )?;
    if let Some(title) = &style.title {
        canvas.draw_text(MARGIN, MARGIN, title, BLACK, TITLE_SCALE);
    }
    for (index, (video, row)) in videos.iter().zip(&rows).enumerate() {
        let top = MARGIN + title_height + index * (row_height + ROW_GAP);
        canvas.draw_text(MARGIN, top, video.label, BLACK, 1);
        let thumbs_top = top + LINE_HEIGHT + 2;
        if row.frame_indices.is_empty() {
            canvas.draw_text(MARGIN, thumbs_top, "no frames", CAPTION, 1);
            continue;
        }
        for (column, &frame_index) in row.frame_indices.iter().enumerate() {
            let left = MARGIN + column * (row.thumb_width + GAP);
            canvas.blit_scaled(
                left,
                thumbs_top,
                &video.frames[frame_index],
                video.width,
                video.height,
                row.thumb_width,
                style.thumb_height,
            );
            canvas.draw_text(
                left,
                thumbs_top + style.thumb_height + 2,
                &format!("f{frame_index}"),
                CAPTION,
                1,
            );
        }
    }
    encode_png_rgb(canvas.width(), canvas.height(), canvas.pixels())
}

struct RowLayout {
    frame_indices: Vec<usize>,
    thumb_width: usize,
    width: usize,
}

impl RowLayout {
    fn measure(video: &SheetVideo<'_>, style: &ContactSheetStyle) -> Result<Self, MediaError> {
        if video.width == 0 || video.height == 0 {
            return Err(MediaError::InvalidInput(format!(
                "video {:?} has empty frames ({}x{})",
                video.label, video.width, video.height
            )));
        }
        for (index, frame) in video.frames.iter().enumerate() {
            check_rgb_len(
                &format!("video {:?} frame {index}", video.label),
                frame,
                video.width,
                video.height,
            )?;
        }
        let thumb_width =
            (video.width.saturating_mul(style.thumb_height) + video.height / 2) / video.height;
        let thumb_width = thumb_width.max(1);
        let frame_indices = sample_evenly(video.frames.len(), style.max_columns);
        let columns = frame_indices.len();
        let thumbs_width = columns.saturating_mul(thumb_width) + columns.saturating_sub(1) * GAP;
        let width = thumbs_width
            .max(text_width(video.label, 1))
            .max(text_width("no frames", 1));
        Ok(RowLayout {
            frame_indices,
            thumb_width,
            width,
        })
    }
}

/// Up to `count` indices spread evenly over `0..len`, first and last included.
fn sample_evenly(len: usize, count: usize) -> Vec<usize> {
    let count = count.min(len);
    match count {
        0 => Vec::new(),
        1 => vec![0],
        _ => (0..count)
            .map(|i| (i * (len - 1) + (count - 1) / 2) / (count - 1))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::image::decode_png_rgb;

    fn solid_frames(count: usize, width: usize, height: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| vec![(i * 15) as u8; width * height * 3])
            .collect()
    }

    #[test]
    fn sheet_has_one_row_per_video_and_sampled_columns() {
        let first = solid_frames(16, 64, 32);
        let second = solid_frames(3, 32, 32);
        let videos = [
            SheetVideo {
                label: "baseline",
                frames: &first,
                width: 64,
                height: 32,
            },
            SheetVideo {
                label: "steered",
                frames: &second,
                width: 32,
                height: 32,
            },
        ];
        let style = ContactSheetStyle {
            max_columns: 4,
            thumb_height: 16,
            ..ContactSheetStyle::default()
        };
        let (width, height, rgb) = decode_png_rgb(&contact_sheet(&videos, &style).unwrap());
        // First row: 4 thumbnails of 32x16 with 3 gaps is the widest.
        assert_eq!(width, 2 * MARGIN + 4 * 32 + 3 * GAP);
        let row_height = LINE_HEIGHT + 2 + 16 + 2 + LINE_HEIGHT;
        assert_eq!(height, 2 * MARGIN + 2 * row_height + ROW_GAP);
        // The last thumbnail of the first row shows frame 15 (value 225).
        let x = MARGIN + 3 * (32 + GAP) + 10;
        let y = MARGIN + LINE_HEIGHT + 2 + 8;
        assert_eq!(&rgb[(y * width + x) * 3..][..3], &[225, 225, 225]);
    }

    #[test]
    fn frames_are_sampled_evenly_including_both_ends() {
        assert_eq!(sample_evenly(16, 4), [0, 5, 10, 15]);
        assert_eq!(sample_evenly(3, 8), [0, 1, 2]);
        assert_eq!(sample_evenly(9, 1), [0]);
        assert!(sample_evenly(0, 4).is_empty());
    }

    #[test]
    fn inconsistent_frames_are_an_error() {
        let frames = vec![vec![0u8; 10]];
        let videos = [SheetVideo {
            label: "bad",
            frames: &frames,
            width: 4,
            height: 4,
        }];
        assert!(matches!(
            contact_sheet(&videos, &ContactSheetStyle::default()),
            Err(MediaError::InvalidInput(_))
        ));
        assert!(contact_sheet(&[], &ContactSheetStyle::default()).is_err());
    }

    #[test]
    fn video_without_frames_still_renders() {
        let videos = [SheetVideo {
            label: "empty",
            frames: &[],
            width: 8,
            height: 8,
        }];
        assert!(contact_sheet(&videos, &ContactSheetStyle::default()).is_ok());
    }
}

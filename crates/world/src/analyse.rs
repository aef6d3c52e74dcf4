//! Prompt-independent analysis of a video: the background, the object (colour, coverage,
//! track, outline fit, edge width). Scoring against a prompt (`evaluate`) only compares these
//! observations with the prompt's meaning, so one analysis serves any number of prompts.
//!
//! The analysis assumes the world's kind of clip: one object over a flat background that
//! covers most of the frame. The background of a frame is its per-channel median; pixels far
//! from it belong to the object; the object's colour is the median of those pixels; and every
//! pixel's object coverage (alpha) is its position on the line from the background colour to
//! the object colour, which recovers the anti-aliased edges.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::geometry::{coverage_map, Shape};
use crate::grammar::Grammar;
use crate::video::Video;

/// Alpha values strictly between these count as edge (transition) pixels.
const EDGE_ALPHA: (f64, f64) = (0.1, 0.9);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    /// Median over frames of each frame's background colour.
    pub background: [f64; 3],
    /// RMS RGB distance of the frames' backgrounds from `background`.
    pub background_jitter: f64,
    /// `None` when no frame holds enough object pixels.
    pub object: Option<ObjectTrack>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectTrack {
    /// Median colour of the object pixels of all frames.
    pub colour: [f64; 3],
    /// RMS RGB distance of the frames' object colours from `colour`.
    pub colour_jitter: f64,
    /// Frames in which the object covers at least `min_object_pixels`.
    pub present_frames: usize,
    /// Displacement over the whole clip from a least-squares line through the centroids (pixels).
    pub displacement: [f64; 2],
    /// RMS distance of the centroids from that line (pixels); 0 with fewer than 3 present frames.
    pub path_residual_px: f64,
    /// Radius of the circle with the object's mean area (pixels).
    pub equivalent_radius_px: f64,
    /// RMS residual of the area around its linear trend, relative to the mean area.
    pub area_residual: f64,
    /// Mean soft IoU of the object with each shape's template (same area, same centroid).
    pub shape_fit: Vec<(Shape, f64)>,
    /// Mean over frames of min(1, template edge width / observed edge width).
    pub sharpness: f64,
}

/// Per-frame measurements of the object.
struct FrameObject {
    index: usize,
    area: f64,
    centroid: [f64; 2],
    shape_iou: Vec<(Shape, f64)>,
    sharpness: f64,
}

pub fn analyse(grammar: &Grammar, video: &Video) -> Result<Observation> {
    let params = &grammar.evaluation;
    let (width, height) = (video.width(), video.height());
    let frame_backgrounds: Vec<[f64; 3]> = video
        .frames()
        .iter()
        .map(|f| channel_medians(f, |_| true))
        .collect();
    let background = median_colour(&frame_backgrounds);
    let background_jitter = rms_distance(&frame_backgrounds, background);

    let foreground_masks: Vec<Vec<bool>> = video
        .frames()
        .iter()
        .zip(&frame_backgrounds)
        .map(|(frame, bg)| {
            pixels(frame)
                .map(|p| distance(p, *bg) > params.foreground_threshold)
                .collect()
        })
        .collect();
    let object_pixel_count: usize = foreground_masks
        .iter()
        .map(|m| m.iter().filter(|&&f| f).count())
        .sum();
    let observation = |object| Observation {
        frames: video.frames().len(),
        width,
        height,
        background,
        background_jitter,
        object,
    };
    if (object_pixel_count as f64) < params.min_object_pixels {
        return Ok(observation(None));
    }
    let object_colour = {
        let all_pixels: Vec<[f64; 3]> = video
            .frames()
            .iter()
            .zip(&foreground_masks)
            .flat_map(|(frame, mask)| pixels(frame).zip(mask).filter(|(_, &m)| m).map(|(p, _)| p))
            .collect();
        median_colour(&all_pixels)
    };

    let mut frame_colours = Vec::new();
    let mut tracked = Vec::new();
    for (index, ((frame, bg), mask)) in video
        .frames()
        .iter()
        .zip(&frame_backgrounds)
        .zip(&foreground_masks)
        .enumerate()
    {
        let Some(alpha) = alpha_map(frame, *bg, object_colour, mask, width, height) else {
            continue;
        };
        let area: f64 = alpha.iter().sum();
        if area < params.min_object_pixels {
            continue;
        }
        frame_colours.push(channel_medians(frame, |i| mask[i]));
        tracked.push(measure_frame(index, &alpha, area, width, height));
    }
    if tracked.is_empty() {
        return Ok(observation(None));
    }
    Ok(observation(Some(summarise_track(
        &tracked,
        frame_colours,
        object_colour,
        video.frames().len(),
    ))))
}

fn summarise_track(
    tracked: &[FrameObject],
    frame_colours: Vec<[f64; 3]>,
    object_colour: [f64; 3],
    frame_count: usize,
) -> ObjectTrack {
    let times: Vec<f64> = tracked.iter().map(|f| f.index as f64).collect();
    let xs: Vec<f64> = tracked.iter().map(|f| f.centroid[0]).collect();
    let ys: Vec<f64> = tracked.iter().map(|f| f.centroid[1]).collect();
    let areas: Vec<f64> = tracked.iter().map(|f| f.area).collect();
    let (x_slope, x_residual) = line_fit(&times, &xs);
    let (y_slope, y_residual) = line_fit(&times, &ys);
    let (_, area_residual) = line_fit(&times, &areas);
    let mean_area = mean(&areas);
    // Two points always lie on a line: jitter is only measurable from three frames on.
    let measurable = tracked.len() >= 3;
    let steps = (frame_count - 1) as f64;
    let shape_fit = Shape::ALL
        .iter()
        .map(|&shape| {
            let ious: Vec<f64> = tracked
                .iter()
                .map(|f| {
                    f.shape_iou
                        .iter()
                        .find(|(s, _)| *s == shape)
                        .map_or(0.0, |(_, iou)| *iou)
                })
                .collect();
            (shape, mean(&ious))
        })
        .collect();
    ObjectTrack {
        colour: object_colour,
        colour_jitter: rms_distance(&frame_colours, object_colour),
        present_frames: tracked.len(),
        displacement: [x_slope * steps, y_slope * steps],
        path_residual_px: if measurable {
            (x_residual.powi(2) + y_residual.powi(2)).sqrt()
        } else {
            0.0
        },
        equivalent_radius_px: (mean_area / std::f64::consts::PI).sqrt(),
        area_residual: if measurable {
            area_residual / mean_area
        } else {
            0.0
        },
        shape_fit,
        sharpness: mean(&tracked.iter().map(|f| f.sharpness).collect::<Vec<_>>()),
    }
}

/// Centroid, outline fit and edge sharpness of the object in one frame.
fn measure_frame(
    index: usize,
    alpha: &[f64],
    area: f64,
    width: usize,
    height: usize,
) -> FrameObject {
    let (mut mx, mut my) = (0.0, 0.0);
    for (i, a) in alpha.iter().enumerate() {
        mx += a * ((i % width) as f64 + 0.5);
        my += a * ((i / width) as f64 + 0.5);
    }
    let centroid = [mx / area, my / area];
    let radius = (area / std::f64::consts::PI).sqrt();
    let templates: Vec<(Shape, Vec<f64>)> = Shape::ALL
        .iter()
        .map(|&shape| {
            (
                shape,
                coverage_map(shape, radius, centroid[0], centroid[1], width, height),
            )
        })
        .collect();
    let shape_iou: Vec<(Shape, f64)> = templates
        .iter()
        .map(|(shape, t)| (*shape, soft_iou(alpha, t)))
        .collect();
    let best = shape_iou
        .iter()
        .zip(&templates)
        .max_by(|a, b| a.0 .1.total_cmp(&b.0 .1))
        .map(|(_, (_, template))| template);
    // The best-fitting template has the renderer's ideal one-pixel edge, so it calibrates what
    // "sharp" means at this size and position.
    let sharpness = match best {
        Some(template) => {
            let observed = edge_width(alpha, width, height);
            let ideal = edge_width(template, width, height);
            if observed <= ideal {
                1.0
            } else {
                ideal / observed
            }
        }
        None => 0.0,
    };
    FrameObject {
        index,
        area,
        centroid,
        shape_iou,
        sharpness,
    }
}

/// Object coverage of each pixel: the projection of its colour onto the background→object
/// line. Only pixels within one pixel of a foreground pixel may be covered, so faint noise far
/// from the object does not count as object. `None` when the object colour equals the background.
fn alpha_map(
    frame: &[u8],
    background: [f64; 3],
    object: [f64; 3],
    foreground: &[bool],
    width: usize,
    height: usize,
) -> Option<Vec<f64>> {
    let axis = [
        object[0] - background[0],
        object[1] - background[1],
        object[2] - background[2],
    ];
    let axis_length_sq = axis.iter().map(|v| v * v).sum::<f64>();
    if axis_length_sq < 1.0 {
        return None;
    }
    let near_foreground = dilate(foreground, width, height);
    Some(
        pixels(frame)
            .zip(near_foreground)
            .map(|(p, near)| {
                if !near {
                    return 0.0;
                }
                let projection: f64 = (0..3).map(|c| (p[c] - background[c]) * axis[c]).sum();
                (projection / axis_length_sq).clamp(0.0, 1.0)
            })
            .collect(),
    )
}

/// 3×3 dilation of a mask.
fn dilate(mask: &[bool], width: usize, height: usize) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for y in 0..height {
        for x in 0..width {
            if !mask[y * width + x] {
                continue;
            }
            for ny in y.saturating_sub(1)..(y + 2).min(height) {
                for nx in x.saturating_sub(1)..(x + 2).min(width) {
                    out[ny * width + nx] = true;
                }
            }
        }
    }
    out
}

/// Σ min / Σ max of two coverage maps.
fn soft_iou(a: &[f64], b: &[f64]) -> f64 {
    let (mut intersection, mut union) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        intersection += x.min(*y);
        union += x.max(*y);
    }
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

/// Mean width of the edge ramp in pixels: the number of partly covered pixels divided by the
/// edge length, which is the total gradient magnitude of the coverage (coarea formula). A hard
/// (aliased) edge has width 0, a blurred one a width near its blur radius.
fn edge_width(alpha: &[f64], width: usize, height: usize) -> f64 {
    let partial = alpha
        .iter()
        .filter(|&&a| a > EDGE_ALPHA.0 && a < EDGE_ALPHA.1)
        .count() as f64;
    let mut gradient_total = 0.0;
    for y in 1..height.saturating_sub(1) {
        for x in 1..width.saturating_sub(1) {
            let gx = (alpha[y * width + x + 1] - alpha[y * width + x - 1]) / 2.0;
            let gy = (alpha[(y + 1) * width + x] - alpha[(y - 1) * width + x]) / 2.0;
            gradient_total += (gx * gx + gy * gy).sqrt();
        }
    }
    if gradient_total > 0.0 {
        partial * (EDGE_ALPHA.1 - EDGE_ALPHA.0) / gradient_total
    } else {
        0.0
    }
}

/// Slope and RMS residual of the least-squares line y = a + b t.
fn line_fit(times: &[f64], values: &[f64]) -> (f64, f64) {
    let (mean_t, mean_v) = (mean(times), mean(values));
    let mut covariance = 0.0;
    let mut variance = 0.0;
    for (t, v) in times.iter().zip(values) {
        covariance += (t - mean_t) * (v - mean_v);
        variance += (t - mean_t).powi(2);
    }
    let slope = if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    };
    let residual_sq: f64 = times
        .iter()
        .zip(values)
        .map(|(t, v)| (v - (mean_v + slope * (t - mean_t))).powi(2))
        .sum();
    (slope, (residual_sq / times.len().max(1) as f64).sqrt())
}

fn pixels(frame: &[u8]) -> impl Iterator<Item = [f64; 3]> + '_ {
    frame
        .chunks_exact(3)
        .map(|p| [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])])
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn rms_distance(colours: &[[f64; 3]], reference: [f64; 3]) -> f64 {
    let squares: Vec<f64> = colours
        .iter()
        .map(|c| distance(*c, reference).powi(2))
        .collect();
    mean(&squares).sqrt()
}

/// Per-channel median of the frame's pixels selected by `keep(pixel_index)`, from histograms.
fn channel_medians(frame: &[u8], keep: impl Fn(usize) -> bool) -> [f64; 3] {
    let mut histograms = [[0usize; 256]; 3];
    let mut count = 0;
    for (_, p) in frame.chunks_exact(3).enumerate().filter(|(i, _)| keep(*i)) {
        for c in 0..3 {
            histograms[c][usize::from(p[c])] += 1;
        }
        count += 1;
    }
    let mut medians = [0.0; 3];
    if count == 0 {
        return medians;
    }
    for c in 0..3 {
        let mut seen = 0;
        for (value, n) in histograms[c].iter().enumerate() {
            seen += n;
            if 2 * seen > count {
                medians[c] = value as f64;
                break;
            }
        }
    }
    medians
}

/// Per-channel median of a list of colours.
fn median_colour(colours: &[[f64; 3]]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (c, slot) in out.iter_mut().enumerate() {
        let mut channel: Vec<f64> = colours.iter().map(|colour| colour[c]).collect();
        channel.sort_by(f64::total_cmp);
        *slot = match channel.len() {
            0 => 0.0,
            n if n % 2 == 1 => channel[n / 2],
            n => (channel[n / 2 - 1] + channel[n / 2]) / 2.0,
        };
    }
    out
}

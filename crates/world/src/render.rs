//! The renderer: a prompt and a seed fix a [`Scene`] (size, start, speed), which is drawn as a
//! constant-velocity object with anti-aliased edges over a flat background.

use serde::{Deserialize, Serialize};

use crate::error::{Result, WorldError};
use crate::geometry::{coverage_map, Shape};
use crate::grammar::{Grammar, Rgb};
use crate::prompt::Prompt;
use crate::rng;
use crate::video::{check_geometry, Video};

/// Everything needed to draw one clip; sampled from (prompt, seed) by [`Scene::sample`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub shape: Shape,
    pub colour: Rgb,
    pub background: Rgb,
    /// Equivalent radius in pixels (see `geometry`).
    pub radius_px: f64,
    /// Centre in the first frame, pixels (x right, y down).
    pub start: [f64; 2],
    /// Pixels per frame.
    pub velocity: [f64; 2],
    pub frames: usize,
    pub width: usize,
    pub height: usize,
}

impl Scene {
    /// Draws the seed-dependent parameters: size within the prompt's range, how far the object
    /// travels (within the prompt's speed range, as far as the frame has room), and where it
    /// starts (always fully inside the frame).
    pub fn sample(
        grammar: &Grammar,
        prompt: &Prompt,
        seed: u64,
        frames: usize,
        width: usize,
        height: usize,
    ) -> Result<Self> {
        check_geometry(frames, width, height)?;
        let meaning = prompt.meaning(grammar)?;
        let mut random = rng::stream(seed, &format!("render|{}", prompt.text(grammar)));
        let short_side = width.min(height) as f64;
        let radius_px = random.between(meaning.size_range) * short_side;
        let [left, right, up, down] = meaning.shape.extents(radius_px);
        let margin = grammar.edge_margin_px;
        // Where the centre may be so that the whole object stays inside the frame.
        let low = [margin + left, margin + up];
        let high = [width as f64 - margin - right, height as f64 - margin - down];
        if low[0] > high[0] || low[1] > high[1] {
            return Err(WorldError::Argument(format!(
                "a {radius_px:.1}-pixel object does not fit a {width}x{height} frame"
            )));
        }
        let direction = meaning.direction;
        // The longest straight path along `direction` that fits the box of allowed centres.
        let room = (0..2)
            .filter(|&axis| direction[axis].abs() > 1e-12)
            .map(|axis| (high[axis] - low[axis]) / direction[axis].abs())
            .fold(f64::INFINITY, f64::min);
        let extent = direction[0].abs() * width as f64 + direction[1].abs() * height as f64;
        let [slowest, fastest] = meaning.travel_range.map(|fraction| fraction * extent);
        if slowest > room {
            return Err(WorldError::Argument(format!(
                "{:?} needs {slowest:.1} pixels of travel but a {width}x{height} frame leaves {room:.1}",
                prompt.text(grammar)
            )));
        }
        let travel = random.between([slowest, fastest.min(room)]);
        let mut start = [0.0; 2];
        for axis in 0..2 {
            let shift = travel * direction[axis];
            start[axis] =
                random.between([low[axis] + (-shift).max(0.0), high[axis] - shift.max(0.0)]);
        }
        let steps = (frames - 1) as f64;
        Ok(Self {
            shape: meaning.shape,
            colour: meaning.colour,
            background: meaning.background,
            radius_px,
            start,
            velocity: [direction[0] * travel / steps, direction[1] * travel / steps],
            frames,
            width,
            height,
        })
    }

    /// The object's centre in frame `index`.
    pub fn centre(&self, index: usize) -> [f64; 2] {
        let t = index as f64;
        [
            self.start[0] + self.velocity[0] * t,
            self.start[1] + self.velocity[1] * t,
        ]
    }

    pub fn render(&self) -> Result<Video> {
        check_geometry(self.frames, self.width, self.height)?;
        let frames = (0..self.frames)
            .map(|index| self.render_frame(index))
            .collect();
        Video::new(frames, self.width, self.height)
    }

    fn render_frame(&self, index: usize) -> Vec<u8> {
        let [cx, cy] = self.centre(index);
        let coverage = coverage_map(self.shape, self.radius_px, cx, cy, self.width, self.height);
        let mut frame = Vec::with_capacity(coverage.len() * 3);
        for alpha in coverage {
            for channel in 0..3 {
                let background = f64::from(self.background[channel]);
                let object = f64::from(self.colour[channel]);
                frame.push((background + (object - background) * alpha).round() as u8);
            }
        }
        frame
    }
}

/// Renders `prompt` under `seed`: `frames` RGB frames of `width` × `height`.
pub fn render(
    grammar: &Grammar,
    prompt: &Prompt,
    seed: u64,
    frames: usize,
    width: usize,
    height: usize,
) -> Result<Vec<Vec<u8>>> {
    Ok(Scene::sample(grammar, prompt, seed, frames, width, height)?
        .render()?
        .into_frames())
}

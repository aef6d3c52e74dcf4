//! Shapes as signed distance functions. The renderer draws with them and the evaluator fits
//! them as templates, so both use exactly the same geometry.
//!
//! Every shape is sized by its *equivalent radius*: the radius of the circle with the same
//! area. Shapes of one size therefore cover the same number of pixels, so that an object's area
//! says nothing about its shape and the shape fit has to look at the outline.

use serde::{Deserialize, Serialize};

const SQRT_3: f64 = 1.732_050_807_568_877_2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    /// Axis-aligned.
    Square,
    /// Equilateral, pointing up on screen, centred on its centroid.
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "circle" => Some(Self::Circle),
            "square" => Some(Self::Square),
            "triangle" => Some(Self::Triangle),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
        }
    }

    /// Signed distance (pixels, negative inside) from the shape centred at the origin to the
    /// offset (dx, dy), in image coordinates (y down).
    pub fn signed_distance(self, radius: f64, dx: f64, dy: f64) -> f64 {
        match self {
            Self::Circle => (dx * dx + dy * dy).sqrt() - radius,
            Self::Square => {
                let half_side = radius * std::f64::consts::PI.sqrt() / 2.0;
                let qx = dx.abs() - half_side;
                let qy = dy.abs() - half_side;
                let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
                outside + qx.max(qy).min(0.0)
            }
            Self::Triangle => equilateral_triangle_distance(triangle_half_side(radius), dx, -dy),
        }
    }

    /// How far the shape reaches from its centre: (left, right, up, down), in pixels.
    pub fn extents(self, radius: f64) -> [f64; 4] {
        match self {
            Self::Circle => [radius; 4],
            Self::Square => [radius * std::f64::consts::PI.sqrt() / 2.0; 4],
            Self::Triangle => {
                let half_side = triangle_half_side(radius);
                let inradius = half_side / SQRT_3;
                [half_side, half_side, 2.0 * inradius, inradius]
            }
        }
    }

    /// Anti-aliased coverage of the pixel whose centre lies at (dx, dy) from the shape's centre:
    /// a one-pixel linear ramp across the edge, which is exact for straight edges.
    pub fn coverage(self, radius: f64, dx: f64, dy: f64) -> f64 {
        (0.5 - self.signed_distance(radius, dx, dy)).clamp(0.0, 1.0)
    }
}

/// Half the side of the equilateral triangle whose area is that of a circle of `radius`:
/// (sqrt(3)/4) s^2 = pi r^2.
fn triangle_half_side(radius: f64) -> f64 {
    radius * (std::f64::consts::PI / SQRT_3).sqrt()
}

/// Exact distance to an equilateral triangle of half side `h`, centroid at the origin, apex up
/// (y up). After Inigo Quilez's 2D distance functions.
fn equilateral_triangle_distance(h: f64, x: f64, y: f64) -> f64 {
    let mut px = x.abs() - h;
    let mut py = y + h / SQRT_3;
    if px + SQRT_3 * py > 0.0 {
        let (nx, ny) = ((px - SQRT_3 * py) / 2.0, (-SQRT_3 * px - py) / 2.0);
        px = nx;
        py = ny;
    }
    px -= px.clamp(-2.0 * h, 0.0);
    let length = (px * px + py * py).sqrt();
    if py > 0.0 {
        -length
    } else {
        length
    }
}

/// Coverage of a whole frame by one shape centred at (cx, cy) (pixel centres at +0.5).
pub fn coverage_map(
    shape: Shape,
    radius: f64,
    cx: f64,
    cy: f64,
    width: usize,
    height: usize,
) -> Vec<f64> {
    let mut map = vec![0.0; width * height];
    let [left, right, up, down] = shape.extents(radius);
    // Only the bounding box (plus the one-pixel ramp) can be covered.
    let x_range = pixel_span(cx - left - 1.0, cx + right + 1.0, width);
    let y_range = pixel_span(cy - up - 1.0, cy + down + 1.0, height);
    for y in y_range {
        for x in x_range.clone() {
            let dx = x as f64 + 0.5 - cx;
            let dy = y as f64 + 0.5 - cy;
            map[y * width + x] = shape.coverage(radius, dx, dy);
        }
    }
    map
}

fn pixel_span(low: f64, high: f64, size: usize) -> std::ops::Range<usize> {
    let start = low.floor().max(0.0).min(size as f64) as usize;
    let end = (high.ceil() + 1.0).max(0.0).min(size as f64) as usize;
    start..end.max(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_one_radius_cover_the_same_area() {
        for shape in Shape::ALL {
            let area: f64 = coverage_map(shape, 10.0, 32.0, 32.0, 64, 64).iter().sum();
            let expected = std::f64::consts::PI * 100.0;
            assert!(
                (area - expected).abs() / expected < 0.01,
                "{shape:?}: {area} vs {expected}"
            );
        }
    }

    #[test]
    fn triangle_points_up_and_its_centroid_is_the_centre() {
        let map = coverage_map(Shape::Triangle, 10.0, 32.0, 32.0, 64, 64);
        let (mut mass, mut mx, mut my) = (0.0, 0.0, 0.0);
        for y in 0..64 {
            for x in 0..64 {
                let a = map[y * 64 + x];
                mass += a;
                mx += a * (x as f64 + 0.5);
                my += a * (y as f64 + 0.5);
            }
        }
        assert!((mx / mass - 32.0).abs() < 0.05 && (my / mass - 32.0).abs() < 0.05);
        // Wider at the bottom than at the top.
        let row_mass = |y: usize| map[y * 64..(y + 1) * 64].iter().sum::<f64>();
        assert!(row_mass(36) > 2.0 * row_mass(24));
        let [_, _, up, down] = Shape::Triangle.extents(10.0);
        assert!((up - 2.0 * down).abs() < 1e-9);
        assert!(Shape::Triangle.signed_distance(10.0, 0.0, -up + 0.01) < 0.0);
        assert!(Shape::Triangle.signed_distance(10.0, 0.0, -up - 0.5) > 0.0);
    }
}

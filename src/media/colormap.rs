//! The viridis colour scale (perceptually uniform, readable in greyscale and by most colour-blind
//! readers), as linear interpolation between eleven evenly spaced samples of the reference map.

use super::canvas::Rgb;

const VIRIDIS_STOPS: [Rgb; 11] = [
    [68, 1, 84],
    [72, 36, 117],
    [65, 68, 135],
    [53, 95, 141],
    [42, 120, 142],
    [33, 145, 140],
    [34, 168, 132],
    [68, 191, 112],
    [122, 209, 81],
    [189, 223, 38],
    [253, 231, 37],
];

/// Colour of `t` in [0, 1] (clamped; NaN maps to the low end).
pub(crate) fn viridis(t: f64) -> Rgb {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let position = t * (VIRIDIS_STOPS.len() - 1) as f64;
    let lower = (position.floor() as usize).min(VIRIDIS_STOPS.len() - 2);
    let fraction = position - lower as f64;
    let (a, b) = (VIRIDIS_STOPS[lower], VIRIDIS_STOPS[lower + 1]);
    std::array::from_fn(|channel| {
        let value = a[channel] as f64 + (b[channel] as f64 - a[channel] as f64) * fraction;
        value.round() as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_match_the_reference_map() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        assert_eq!(viridis(0.5), [33, 145, 140]);
    }

    #[test]
    fn out_of_range_is_clamped() {
        assert_eq!(viridis(-3.0), viridis(0.0));
        assert_eq!(viridis(7.0), viridis(1.0));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }

    #[test]
    fn brightness_increases_monotonically() {
        let luma = |c: Rgb| 0.299 * c[0] as f64 + 0.587 * c[1] as f64 + 0.114 * c[2] as f64;
        let samples: Vec<f64> = (0..=100).map(|i| luma(viridis(i as f64 / 100.0))).collect();
        assert!(samples.windows(2).all(|w| w[1] >= w[0] - 0.5));
    }
}

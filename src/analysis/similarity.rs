//! Frame similarity: SSIM and PSNR of RGB24 frames, and the video-level measures built on them
//! (per-frame SSIM to a reference video, temporal consistency).
//!
//! SSIM follows Wang et al. 2004 on the luma (BT.601) of each frame with a 7×7 uniform window
//! and the usual constants (K1 = 0.01, K2 = 0.03, L = 255), averaged over every window position
//! that fits: scikit-image's `structural_similarity` with `win_size=7` on the luma image.

const WINDOW: usize = 7;
const C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
const C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimilarityError {
    #[error("frames differ in size: {0} and {1} bytes")]
    SizeMismatch(usize, usize),
    #[error("a {width}x{height} frame needs {expected} RGB bytes, got {got}")]
    BadFrame { width: usize, height: usize, expected: usize, got: usize },
    #[error("videos differ in length: {0} and {1} frames")]
    LengthMismatch(usize, usize),
}

fn luma(frame: &[u8]) -> Vec<f64> {
    frame
        .chunks_exact(3)
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect()
}

fn check(a: &[u8], b: &[u8], width: usize, height: usize) -> Result<(), SimilarityError> {
    let expected = width * height * 3;
    for frame in [a, b] {
        if frame.len() != expected {
            return Err(SimilarityError::BadFrame { width, height, expected, got: frame.len() });
        }
    }
    Ok(())
}

/// SSIM of two RGB24 frames of `width` × `height`, in [-1, 1] (1 = identical). Frames smaller
/// than the window use one window covering the whole frame.
pub fn ssim(a: &[u8], b: &[u8], width: usize, height: usize) -> Result<f64, SimilarityError> {
    check(a, b, width, height)?;
    let (x, y) = (luma(a), luma(b));
    let (win_w, win_h) = (WINDOW.min(width), WINDOW.min(height));
    if win_w == 0 || win_h == 0 {
        return Ok(1.0);
    }
    let n = (win_w * win_h) as f64;
    // Sample covariance (n − 1), as scikit-image does by default.
    let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
    let mut total = 0.0;
    let mut windows = 0usize;
    for top in 0..=height - win_h {
        for left in 0..=width - win_w {
            let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for row in top..top + win_h {
                for col in left..left + win_w {
                    let (p, q) = (x[row * width + col], y[row * width + col]);
                    sx += p;
                    sy += q;
                    sxx += p * p;
                    syy += q * q;
                    sxy += p * q;
                }
            }
            let (mx, my) = (sx / n, sy / n);
            let vx = (sxx / n - mx * mx) * unbias;
            let vy = (syy / n - my * my) * unbias;
            let cxy = (sxy / n - mx * my) * unbias;
            total += ((2.0 * mx * my + C1) * (2.0 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2));
            windows += 1;
        }
    }
    Ok(total / windows as f64)
}

/// PSNR in dB of two RGB24 frame sequences over all channels (infinite when identical).
pub fn psnr(a: &[Vec<u8>], b: &[Vec<u8>]) -> Result<f64, SimilarityError> {
    if a.len() != b.len() {
        return Err(SimilarityError::LengthMismatch(a.len(), b.len()));
    }
    let mut squared = 0.0;
    let mut count = 0usize;
    for (x, y) in a.iter().zip(b) {
        if x.len() != y.len() {
            return Err(SimilarityError::SizeMismatch(x.len(), y.len()));
        }
        squared += x.iter().zip(y).map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2)).sum::<f64>();
        count += x.len();
    }
    let mse = squared / count.max(1) as f64;
    Ok(if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0 * 255.0 / mse).log10() })
}

/// SSIM of each frame of `video` to the same frame of `reference`.
pub fn ssim_per_frame(
    video: &[Vec<u8>],
    reference: &[Vec<u8>],
    width: usize,
    height: usize,
) -> Result<Vec<f64>, SimilarityError> {
    if video.len() != reference.len() {
        return Err(SimilarityError::LengthMismatch(video.len(), reference.len()));
    }
    video.iter().zip(reference).map(|(a, b)| ssim(a, b, width, height)).collect()
}

/// Temporal consistency: the mean SSIM of consecutive frames (1 for a still video or a single
/// frame).
pub fn temporal_consistency(video: &[Vec<u8>], width: usize, height: usize) -> Result<f64, SimilarityError> {
    if video.len() < 2 {
        return Ok(1.0);
    }
    let pairs: Vec<f64> = video.windows(2).map(|pair| ssim(&pair[0], &pair[1], width, height)).collect::<Result<_, _>>()?;
    Ok(pairs.iter().sum::<f64>() / pairs.len() as f64)
}

/// The mean of `values` (NaN when empty).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(width: usize, height: usize, pixel: impl Fn(usize, usize) -> [u8; 3]) -> Vec<u8> {
        let pixel = &pixel;
        (0..height).flat_map(|y| (0..width).flat_map(move |x| pixel(x, y))).collect()
    }

    #[test]
    fn identical_frames_have_ssim_one_and_infinite_psnr() {
        let a = frame(16, 12, |x, y| [(x * 13) as u8, (y * 17) as u8, 40]);
        assert!((ssim(&a, &a, 16, 12).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(psnr(&[a.clone()], &[a]).unwrap(), f64::INFINITY);
    }

    #[test]
    fn ssim_falls_with_distortion_and_psnr_matches_hand_computation() {
        let a = frame(16, 16, |x, y| [((x * 16) % 256) as u8, ((y * 16) % 256) as u8, 128]);
        let slightly = frame(16, 16, |x, y| [((x * 16) % 256) as u8 ^ 1, ((y * 16) % 256) as u8, 128]);
        let inverted: Vec<u8> = a.iter().map(|v| 255 - v).collect();
        let near = ssim(&a, &slightly, 16, 16).unwrap();
        let far = ssim(&a, &inverted, 16, 16).unwrap();
        assert!(near > 0.99 && near < 1.0, "{near}");
        assert!(far < 0.0, "{far}");
        // Every byte off by 2 → MSE 4 → PSNR = 10·log10(255² / 4).
        let shifted: Vec<u8> = a.iter().map(|v| if *v <= 253 { v + 2 } else { v - 2 }).collect();
        let expected = 10.0 * (255.0f64 * 255.0 / 4.0).log10();
        assert!((psnr(&[a], &[shifted]).unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn constant_frames_follow_the_luminance_term() {
        // Two flat frames: variances are 0, so SSIM = (2·μx·μy + C1) / (μx² + μy² + C1).
        let (a, b) = (frame(8, 8, |_, _| [100, 100, 100]), frame(8, 8, |_, _| [50, 50, 50]));
        let (mx, my) = (100.0, 50.0);
        let expected = (2.0 * mx * my + C1) / (mx * mx + my * my + C1);
        assert!((ssim(&a, &b, 8, 8).unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn temporal_consistency_drops_for_shuffled_content() {
        let moving: Vec<Vec<u8>> =
            (0..4).map(|t| frame(16, 16, move |x, _| if (x + t) % 8 < 4 { [255, 255, 255] } else { [0, 0, 0] })).collect();
        let still = vec![moving[0].clone(); 4];
        assert!((temporal_consistency(&still, 16, 16).unwrap() - 1.0).abs() < 1e-12);
        assert!(temporal_consistency(&moving, 16, 16).unwrap() < 0.9);
        assert!(ssim_per_frame(&moving, &still[..3], 16, 16).is_err());
        assert!(ssim(&moving[0], &moving[0][..10], 16, 16).is_err());
    }
}

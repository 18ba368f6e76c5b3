//! Separable antialiased resampling with Pillow's arithmetic.
//!
//! `CLIPImageProcessor` resizes with Pillow, which computes filter weights in double
//! precision, rounds them to fixed point with 22 fractional bits, runs the horizontal
//! pass first into an 8-bit image and then the vertical pass. Doing the same here gives
//! byte-identical pixels for RGB input. Only the output pixels that survive the center
//! crop are computed, and only the source rows they need are read.

/// A resampling filter (`resample` in `preprocessor_config.json`, Pillow's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow `LANCZOS` (1): windowed sinc, support 3.
    Lanczos,
    /// Pillow `BILINEAR` (2): triangle, support 1.
    Bilinear,
    /// Pillow `BICUBIC` (3): Keys cubic with a = -0.5, support 2. CLIP's filter.
    Bicubic,
}

impl Filter {
    /// The filter with Pillow's number, if supported.
    pub fn from_pillow(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Lanczos => 3.0,
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

pub(crate) const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights of the source pixels `first..first + weights.len()` for one
/// output pixel.
#[derive(Debug, Clone)]
pub(crate) struct Taps {
    pub first: usize,
    pub weights: Vec<i32>,
}

/// The taps of output pixels `out_range` when `in_size` pixels are resized to `out_size`.
pub(crate) fn taps(
    filter: Filter,
    in_size: usize,
    out_size: usize,
    out_range: std::ops::Range<usize>,
) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let inv = 1.0 / filter_scale;
    out_range
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    if fixed < 0.0 {
                        (fixed - 0.5) as i32
                    } else {
                        (fixed + 0.5) as i32
                    }
                })
                .collect();
            Taps {
                first: xmin,
                weights,
            }
        })
        .collect()
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One horizontal pass over a packed RGB row: `src` starts at source column `src_x0`.
pub(crate) fn horizontal(src: &[u8], src_x0: usize, taps: &[Taps], out: &mut [u8]) {
    for (t, dst) in taps.iter().zip(out.chunks_exact_mut(3)) {
        let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
        let start = (t.first - src_x0) * 3;
        for (px, &w) in src[start..].chunks_exact(3).zip(&t.weights) {
            acc[0] += i32::from(px[0]) * w;
            acc[1] += i32::from(px[1]) * w;
            acc[2] += i32::from(px[2]) * w;
        }
        dst[0] = clip8(acc[0]);
        dst[1] = clip8(acc[1]);
        dst[2] = clip8(acc[2]);
    }
}

/// One vertical pass: `rows` holds packed RGB rows of `row_len` bytes, the first being
/// source row `src_y0`; writes one output row per entry of `taps`.
pub(crate) fn vertical(rows: &[u8], row_len: usize, src_y0: usize, taps: &[Taps], out: &mut [u8]) {
    let mut acc = vec![0i32; row_len];
    for (t, dst) in taps.iter().zip(out.chunks_exact_mut(row_len)) {
        acc.fill(1 << (PRECISION_BITS - 1));
        for (k, &w) in t.weights.iter().enumerate() {
            let start = (t.first + k - src_y0) * row_len;
            for (a, &v) in acc.iter_mut().zip(&rows[start..start + row_len]) {
                *a += i32::from(v) * w;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity() {
        let t = taps(Filter::Bicubic, 7, 7, 0..7);
        for (i, tap) in t.iter().enumerate() {
            let one = tap
                .weights
                .iter()
                .enumerate()
                .find(|(_, w)| **w != 0)
                .map(|(k, w)| (tap.first + k, *w));
            assert_eq!(one, Some((i, 1 << PRECISION_BITS)));
        }
    }

    #[test]
    fn weights_sum_to_one_and_widen_when_shrinking() {
        for filter in [Filter::Bicubic, Filter::Bilinear, Filter::Lanczos] {
            for (inp, out) in [(1920, 224), (97, 224), (300, 224)] {
                for t in taps(filter, inp, out, 0..out) {
                    let sum: i64 = t.weights.iter().map(|&w| i64::from(w)).sum();
                    assert!((sum - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i64);
                    assert!(t.first + t.weights.len() <= inp);
                }
            }
        }
        let wide = taps(Filter::Bicubic, 1920, 224, 100..101);
        assert!(wide[0].weights.len() > 30, "{}", wide[0].weights.len());
    }
}

//! Image preprocessing as `CLIPImageProcessor` does it, straight from raw video frames.
//!
//! Resize so that the shortest edge is `size` (antialiased, Pillow's arithmetic), crop the
//! center, rescale to 0..1, normalize with the mean and standard deviation. Only the
//! cropped output is computed: each source row the crop needs is converted to RGB once
//! into a one-row buffer and resampled horizontally, then the vertical pass writes the
//! crop, so no full-size RGB copy of the frame is ever made.

mod config;
mod device;
mod device_rgb;
mod frame;
mod resample;

pub use config::{CLIP_MEAN, CLIP_STD, PreprocessConfig, ResizeTarget};
pub use frame::{Colorimetry, FrameRef, PixelFormat, YuvMatrix, YuvRange, over_white, rgb_to_yuv};
pub use resample::Filter;

use rayon::prelude::*;

use crate::error::{ModelError, Result};
use resample::{Taps, horizontal, taps, vertical};

/// Source rows per parallel task of the horizontal pass (a 1280x720 frame has 720).
const ROWS_PER_TASK: usize = 64;

/// Where the crop lies in the resized image and which source pixels it needs.
#[derive(Debug, Clone)]
pub struct ResizePlan {
    /// Size of the whole resized image `(width, height)`, as `CLIPImageProcessor` would
    /// make it before cropping.
    pub resized: (usize, usize),
    /// Size of the output `(width, height)`.
    pub output: (usize, usize),
    /// Offset of the output's top-left pixel in the resized image (negative: padding).
    pub offset: (isize, isize),
    /// Columns of the output inside the resized image (the rest is padding).
    cols: std::ops::Range<usize>,
    /// Rows of the output inside the resized image.
    rows: std::ops::Range<usize>,
    h_taps: Vec<Taps>,
    v_taps: Vec<Taps>,
    /// Source columns and rows the taps read.
    src_cols: std::ops::Range<usize>,
    src_rows: std::ops::Range<usize>,
}

/// Turns frames into the `pixel_values` a CLIP vision tower takes.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    config: PreprocessConfig,
    /// Per channel, the normalized value of every byte: rescaling and normalization
    /// reduce to a table lookup, computed with `transformers`' own arithmetic (rescale in
    /// f64, then `(x - mean) / std` in f32).
    lut: Box<[[f32; 256]; 3]>,
}

impl Preprocessor {
    /// A preprocessor with this configuration.
    pub fn new(config: PreprocessConfig) -> Self {
        let mut lut = Box::new([[0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                let mut x = if config.do_rescale {
                    (v as f64 * config.rescale_factor) as f32
                } else {
                    v as f32
                };
                if config.do_normalize {
                    x = (x - config.image_mean[c] as f32) / config.image_std[c] as f32;
                }
                *out = x;
            }
        }
        Self { config, lut }
    }

    /// The configuration.
    pub fn config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// Computes where the output lies for a `width` x `height` source.
    pub fn plan(&self, width: usize, height: usize) -> Result<ResizePlan> {
        let cfg = &self.config;
        let (resized, output) = self.sizes(width, height)?;
        let offset = (
            crop_offset(resized.0, output.0),
            crop_offset(resized.1, output.1),
        );
        let inside = |offset: isize, out: usize, full: usize| {
            let start = offset.max(0) as usize;
            let end = ((offset + out as isize).max(0) as usize).min(full);
            start..end.max(start)
        };
        let cols = inside(offset.0, output.0, resized.0);
        let rows = inside(offset.1, output.1, resized.1);
        let h_taps = taps(cfg.resample, width, resized.0, cols.clone());
        let v_taps = taps(cfg.resample, height, resized.1, rows.clone());
        let span = |t: &[Taps]| {
            let start = t.iter().map(|t| t.first).min().unwrap_or(0);
            let end = t
                .iter()
                .map(|t| t.first + t.weights.len())
                .max()
                .unwrap_or(0);
            start..end.max(start)
        };
        Ok(ResizePlan {
            resized,
            output,
            offset,
            src_cols: span(&h_taps),
            src_rows: span(&v_taps),
            cols,
            rows,
            h_taps,
            v_taps,
        })
    }

    /// Output `(width, height)` for a `width` x `height` source (without computing the
    /// filter taps that `plan` computes).
    pub fn output_size(&self, width: usize, height: usize) -> Result<(usize, usize)> {
        Ok(self.sizes(width, height)?.1)
    }

    /// The resized size and the output size of a `width` x `height` source.
    fn sizes(&self, width: usize, height: usize) -> Result<((usize, usize), (usize, usize))> {
        if width == 0 || height == 0 {
            return Err(ModelError::Frame(format!(
                "{width}x{height} image is empty"
            )));
        }
        let cfg = &self.config;
        let resized = if cfg.do_resize {
            cfg.size.resized(width, height)
        } else {
            (width, height)
        };
        if resized.0 == 0 || resized.1 == 0 {
            return Err(ModelError::Frame(format!(
                "{width}x{height} image resizes to nothing ({}x{})",
                resized.0, resized.1
            )));
        }
        let output = if cfg.do_center_crop {
            cfg.crop_size
        } else {
            resized
        };
        Ok((resized, output))
    }

    /// The resized and cropped frame as packed 8-bit RGB, row-major, before rescaling
    /// and normalization (what `--png` shows).
    pub fn crop_rgb8(&self, frame: &FrameRef<'_>) -> Result<(ResizePlan, Vec<u8>)> {
        let plan = self.plan(frame.width(), frame.height())?;
        let (ow, oh) = plan.output;
        let mut out = vec![0u8; ow * oh * 3];
        let crop_w = plan.cols.len();
        if crop_w > 0 && !plan.rows.is_empty() {
            let src_w = plan.src_cols.len();
            let mut tmp = vec![0u8; plan.src_rows.len() * crop_w * 3];
            let converter = frame.row_converter();
            // Source rows in parallel, in runs long enough to be worth a task: a single
            // frame (batch 1, or one image) uses every thread, and the frames of a batch,
            // already spread over the threads, split no further than the pool needs.
            tmp.par_chunks_mut(crop_w * 3)
                .zip(plan.src_rows.clone().into_par_iter())
                .with_min_len(ROWS_PER_TASK)
                .for_each_init(
                    || vec![0u8; src_w * 3],
                    |row_rgb, (dst, y)| {
                        frame.row_to_rgb(
                            &converter,
                            y,
                            plan.src_cols.start,
                            plan.src_cols.end,
                            row_rgb,
                        );
                        horizontal(row_rgb, plan.src_cols.start, &plan.h_taps, dst);
                    },
                );
            let mut cropped = vec![0u8; plan.rows.len() * crop_w * 3];
            vertical(
                &tmp,
                crop_w * 3,
                plan.src_rows.start,
                &plan.v_taps,
                &mut cropped,
            );
            // Place the computed block in the output; what lies outside the resized image
            // stays 0, as center_crop pads.
            let x0 = (plan.cols.start as isize - plan.offset.0) as usize;
            let y0 = (plan.rows.start as isize - plan.offset.1) as usize;
            for (r, src) in cropped.chunks_exact(crop_w * 3).enumerate() {
                let start = ((y0 + r) * ow + x0) * 3;
                out[start..start + crop_w * 3].copy_from_slice(src);
            }
        }
        Ok((plan, out))
    }

    /// Writes the frame's `pixel_values` (`3 x H x W` f32, channel-major) into `out`, which
    /// must hold exactly `3 * H * W` values: a slice of a batch tensor's buffer.
    pub fn preprocess_into(&self, frame: &FrameRef<'_>, out: &mut [f32]) -> Result<()> {
        let (plan, rgb) = self.crop_rgb8(frame)?;
        let (w, h) = plan.output;
        let plane = w * h;
        if out.len() != 3 * plane {
            return Err(ModelError::Input(format!(
                "output buffer holds {} values, a {w}x{h} image needs {}",
                out.len(),
                3 * plane
            )));
        }
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let [lr, lg, lb] = &*self.lut;
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            r[i] = lr[usize::from(px[0])];
            g[i] = lg[usize::from(px[1])];
            b[i] = lb[usize::from(px[2])];
        }
        Ok(())
    }

    /// The frame's `pixel_values` as a new `3 x H x W` buffer, with its size `(W, H)`.
    pub fn preprocess(&self, frame: &FrameRef<'_>) -> Result<(Vec<f32>, (usize, usize))> {
        let (w, h) = self.output_size(frame.width(), frame.height())?;
        let mut out = vec![0f32; 3 * w * h];
        self.preprocess_into(frame, &mut out)?;
        Ok((out, (w, h)))
    }
}

/// `transformers`' center crop offset along one axis: centered with the remainder on the
/// far side, and when the image is smaller than the crop, padded equally with the
/// remainder on the far side.
fn crop_offset(full: usize, crop: usize) -> isize {
    if full >= crop {
        ((full - crop) / 2) as isize
    } else {
        -(((crop - full) / 2) as isize)
    }
}

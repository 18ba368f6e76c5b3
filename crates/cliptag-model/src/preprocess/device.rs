//! Preprocessing as tensor operations on the model's device, for GPUs: the source region
//! the crop needs goes to the device once, in the frame's own format, and the conversion
//! to RGB, the resize, the crop and the normalization run there.
//!
//! The resize is Pillow's separable filter written as two matrix products with exactly
//! the taps the CPU path uses (`W_y · image · W_xᵀ` per channel), rounded and clamped to
//! 8 bits after each pass as Pillow does. It differs from the CPU path only where float
//! sums and Pillow's fixed-point sums round a half level differently (measured in the
//! tests).
//!
//! The frame's bytes go up as they are: the conversion to RGB runs on the device too
//! (see `device_rgb`), so the host only copies the rows of the region the crop needs.

use candle_core::{DType, Device, Tensor};

use super::device_rgb::regions_rgb_on;
use super::resample::{PRECISION_BITS, Taps};
use super::{FrameRef, Preprocessor, ResizePlan};
use crate::error::Result;

/// Source pixels converted in one go at most. The conversion holds about a dozen planes
/// of the region at once, most in f64 (on the order of 100 bytes a pixel): this keeps a
/// call near 2 GB of device memory however many frames it is given (for 1080p frames
/// cropped square, 14 frames a go).
const MAX_PIXELS_AT_ONCE: usize = 16 << 20;

/// The dense `[taps.len(), n]` matrix of the fixed-point taps, as fractions: row `i`
/// holds output pixel `i`'s weights over source pixels `src0..src0 + n`.
fn weight_matrix(taps: &[Taps], src0: usize, n: usize) -> Vec<f32> {
    let scale = 1.0 / f64::from(1u32 << PRECISION_BITS);
    let mut m = vec![0f32; taps.len() * n];
    for (row, t) in m.chunks_exact_mut(n).zip(taps) {
        for (k, &w) in t.weights.iter().enumerate() {
            row[t.first - src0 + k] = (f64::from(w) * scale) as f32;
        }
    }
    m
}

impl Preprocessor {
    /// `pixel_values` `[n, 3, H, W]` of `frames`, resized, cropped and normalized on
    /// `device` (see the module's notes on how it differs from [`Preprocessor::preprocess`]).
    ///
    /// Frames of one format, size and colorimetry (every frame of a stream, and usually
    /// of a batch) go through together: one upload per plane and one set of kernels for
    /// up to `MAX_PIXELS_AT_ONCE` source pixels of them.
    pub fn pixel_values_on(&self, frames: &[FrameRef<'_>], device: &Device) -> Result<Tensor> {
        let key = |f: &FrameRef<'_>| (f.format(), f.width(), f.height(), f.colorimetry());
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            match groups.iter_mut().find(|g| key(&frames[g[0]]) == key(frame)) {
                Some(group) => group.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        for group in &groups {
            let members: Vec<FrameRef<'_>> = group.iter().map(|&i| frames[i]).collect();
            let plan = self.plan(members[0].width(), members[0].height())?;
            let region = plan.src_rows.len() * plan.src_cols.len();
            for chunk in members.chunks((MAX_PIXELS_AT_ONCE / region.max(1)).max(1)) {
                parts.push(self.resize_on(chunk, &plan, device)?);
            }
        }
        let mut batch = Tensor::cat(&parts, 0)?;
        if groups.len() > 1 {
            // Back to the order the frames came in.
            let mut slot_of = vec![0u32; frames.len()];
            for (slot, &i) in groups.iter().flatten().enumerate() {
                slot_of[i] = slot as u32;
            }
            let order = Tensor::from_vec(slot_of, frames.len(), device)?;
            batch = batch.index_select(&order, 0)?;
        }
        Ok(self.normalize_on(&batch, device)?)
    }

    /// Frames of one format and size resized and cropped: `[n, 3, H, W]` f32 in 0..=255,
    /// whole levels.
    fn resize_on(
        &self,
        frames: &[FrameRef<'_>],
        plan: &ResizePlan,
        device: &Device,
    ) -> Result<Tensor> {
        let n = frames.len();
        let (ow, oh) = plan.output;
        let (crop_w, crop_h) = (plan.cols.len(), plan.rows.len());
        if crop_w == 0 || crop_h == 0 {
            return Ok(Tensor::zeros((n, 3, oh, ow), DType::F32, device)?);
        }
        let (src_w, src_h) = (plan.src_cols.len(), plan.src_rows.len());
        let image = regions_rgb_on(frames, plan.src_rows.clone(), plan.src_cols.clone(), device)?
            .reshape((n * 3, src_h, src_w))?;
        let wx = Tensor::from_vec(
            weight_matrix(&plan.h_taps, plan.src_cols.start, src_w),
            (crop_w, src_w),
            device,
        )?;
        let wy = Tensor::from_vec(
            weight_matrix(&plan.v_taps, plan.src_rows.start, src_h),
            (1, crop_h, src_h),
            device,
        )?;
        // [3n, src_h, src_w] · W_xᵀ -> [3n, src_h, crop_w]; W_y · that -> [3n, crop_h, crop_w].
        // Each pass rounds and clamps to 8 bits, as Pillow's passes do: the filter
        // overshoots at sharp edges, and the clamp in between is part of the result.
        let levels = |t: Tensor| t.round()?.clamp(0f32, 255f32);
        let across = levels(image.broadcast_matmul(&wx.t()?)?)?;
        let mut out = levels(wy.broadcast_matmul(&across)?)?;
        // What lies outside the resized image is 0, as center_crop pads.
        let x0 = (plan.cols.start as isize - plan.offset.0) as usize;
        let y0 = (plan.rows.start as isize - plan.offset.1) as usize;
        if (crop_w, crop_h) != (ow, oh) {
            out = out
                .pad_with_zeros(2, x0, ow - x0 - crop_w)?
                .pad_with_zeros(1, y0, oh - y0 - crop_h)?;
        }
        Ok(out.reshape((n, 3, oh, ow))?)
    }

    /// Rescaling and normalization of `[n, 3, H, W]` levels, as the configuration says.
    fn normalize_on(&self, levels: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let mut x = levels.clone();
        if cfg.do_rescale {
            x = x.affine(cfg.rescale_factor, 0.0)?;
        }
        if cfg.do_normalize {
            let column =
                |v: [f64; 3]| Tensor::from_vec(v.map(|v| v as f32).to_vec(), (1, 3, 1, 1), device);
            x = x
                .broadcast_sub(&column(cfg.image_mean)?)?
                .broadcast_div(&column(cfg.image_std)?)?;
        }
        Ok(x)
    }
}

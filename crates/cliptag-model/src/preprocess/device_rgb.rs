//! The source region of a group of frames converted to RGB on the model's device, from
//! the frames' own bytes: the host copies the region's rows of each plane as they are
//! (one memcpy per row, 1.5 bytes per pixel for I420 and NV12) into one buffer per plane
//! for the whole group, and the device does the rest, once for the group: the number of
//! uploads and kernel launches does not grow with the number of frames.
//!
//! The arithmetic is the host path's, exactly: YUV goes through the same fixed-point
//! tables (looked up on the device, summed in f64, where every value is an integer well
//! below 2^53, and shifted by flooring), chroma is upsampled by repeating each sample
//! over its 2x2 block, and alpha is laid over white with Pillow's integer steps. So a
//! region converted here equals the host's [`FrameRef::row_to_rgb`] byte for byte.

use std::ops::Range;

use candle_core::{DType, Device, IndexOp, Tensor};

use super::FrameRef;
use super::frame::{PixelFormat, YuvTables};
use crate::error::{ModelError, Result};

/// Rows `rows` and columns `cols` of every frame of `frames` as `[n, 3, rows, cols]` f32
/// levels (whole numbers in 0..=255) on `device`. The frames must share their format,
/// size and colorimetry (the caller groups them so).
pub(super) fn regions_rgb_on(
    frames: &[FrameRef<'_>],
    rows: Range<usize>,
    cols: Range<usize>,
    device: &Device,
) -> Result<Tensor> {
    let Some(first) = frames.first() else {
        return Ok(Tensor::zeros(
            (0, 3, rows.len(), cols.len()),
            DType::F32,
            device,
        )?);
    };
    if frames.iter().any(|f| {
        (f.format(), f.width(), f.height(), f.colorimetry())
            != (
                first.format(),
                first.width(),
                first.height(),
                first.colorimetry(),
            )
    }) {
        return Err(ModelError::Input(
            "frames converted together must share format, size and colorimetry".into(),
        ));
    }
    match first.format() {
        PixelFormat::I420 | PixelFormat::Nv12 => yuv_on(frames, rows, cols, device),
        _ => packed_on(frames, rows, cols, device),
    }
}

/// Bytes `bytes` of rows `rows` of one plane of every frame, as one `[n, rows, bytes]` u8
/// tensor on `device` (one upload).
fn upload(
    frames: &[FrameRef<'_>],
    plane: usize,
    rows: Range<usize>,
    bytes: Range<usize>,
    device: &Device,
) -> Result<Tensor> {
    let (h, w) = (rows.len(), bytes.len());
    let mut data = Vec::with_capacity(frames.len() * h * w);
    for frame in frames {
        for y in rows.clone() {
            data.extend_from_slice(&frame.row(plane, y)[bytes.clone()]);
        }
    }
    Ok(Tensor::from_vec(data, (frames.len(), h, w), device)?)
}

fn index(values: impl Iterator<Item = usize>, device: &Device) -> Result<Tensor> {
    let v: Vec<u32> = values.map(|i| i as u32).collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, n, device)?)
}

/// Looks every byte of `bytes` up in `table`: a tensor of `bytes`' shape, in f64.
fn lookup(table: &[i32; 256], bytes: &Tensor) -> Result<Tensor> {
    let values: Vec<f64> = table.iter().map(|&v| f64::from(v)).collect();
    let table = Tensor::from_vec(values, 256, bytes.device())?;
    // Widened first: candle's index_select reads an index equal to its type's maximum as
    // padding and yields 0 for it, so a u8 index of 255 would not look up table[255].
    let ids = bytes.flatten_all()?.to_dtype(DType::U32)?;
    Ok(table.index_select(&ids, 0)?.reshape(bytes.shape())?)
}

fn yuv_on(
    frames: &[FrameRef<'_>],
    rows: Range<usize>,
    cols: Range<usize>,
    device: &Device,
) -> Result<Tensor> {
    let format = frames[0].format();
    let luma = upload(frames, 0, rows.clone(), cols.clone(), device)?;
    // The chroma samples the region touches: sample i covers pixels 2i and 2i + 1.
    let chroma_rows = rows.start / 2..rows.end.div_ceil(2);
    let chroma_cols = cols.start / 2..cols.end.div_ceil(2);
    let (u, v) = if format == PixelFormat::I420 {
        (
            upload(frames, 1, chroma_rows.clone(), chroma_cols.clone(), device)?,
            upload(frames, 2, chroma_rows.clone(), chroma_cols.clone(), device)?,
        )
    } else {
        let bytes = chroma_cols.start * 2..chroma_cols.end * 2;
        let uv = upload(frames, 1, chroma_rows.clone(), bytes, device)?.reshape((
            frames.len(),
            chroma_rows.len(),
            chroma_cols.len(),
            2,
        ))?;
        (
            uv.i((.., .., .., 0))?.contiguous()?,
            uv.i((.., .., .., 1))?.contiguous()?,
        )
    };
    let row_of = index(rows.map(|y| y / 2 - chroma_rows.start), device)?;
    let col_of = index(cols.map(|x| x / 2 - chroma_cols.start), device)?;
    let upsample =
        |c: Tensor| -> Result<Tensor> { Ok(c.index_select(&row_of, 1)?.index_select(&col_of, 2)?) };
    let (u, v) = (upsample(u)?, upsample(v)?);
    let t = YuvTables::new(frames[0].colorimetry());
    let l = lookup(&t.y, &luma)?;
    let r = (&l + lookup(&t.r_v, &v)?)?;
    let g = ((&l + lookup(&t.g_u, &u)?)? + lookup(&t.g_v, &v)?)?;
    let b = (&l + lookup(&t.b_u, &u)?)?;
    // `x >> 16` of the host's i32 sums, then the clamp to a byte.
    let byte = |x: Tensor| -> Result<Tensor> {
        Ok(x.affine(1.0 / 65536.0, 0.0)?.floor()?.clamp(0.0, 255.0)?)
    };
    Ok(Tensor::stack(&[byte(r)?, byte(g)?, byte(b)?], 1)?.to_dtype(DType::F32)?)
}

fn packed_on(
    frames: &[FrameRef<'_>],
    rows: Range<usize>,
    cols: Range<usize>,
    device: &Device,
) -> Result<Tensor> {
    let format = frames[0].format();
    let Some((bpp, rgb_offsets)) = format.packed_layout() else {
        unreachable!("YUV formats are converted by yuv_on")
    };
    let (n, h, w) = (frames.len(), rows.len(), cols.len());
    let pixels = upload(frames, 0, rows, cols.start * bpp..cols.end * bpp, device)?
        .reshape((n, h, w, bpp))?;
    let rgb = pixels
        .index_select(&index(rgb_offsets.into_iter(), device)?, 3)?
        .permute((0, 3, 1, 2))?;
    let Some(alpha) = format.alpha_offset() else {
        return Ok(rgb.to_dtype(DType::F32)?);
    };
    let a = pixels.i((.., .., .., alpha))?.unsqueeze(1)?;
    let opaque = a.eq(255u8)?.broadcast_as(rgb.shape())?;
    let blended = over_white_on(&rgb.to_dtype(DType::F64)?, &a.to_dtype(DType::F64)?)?;
    Ok(opaque
        .where_cond(&rgb.to_dtype(DType::F64)?, &blended)?
        .to_dtype(DType::F32)?)
}

/// [`super::over_white`] on tensors: `c` `[n, 3, h, w]` and `a` `[n, 1, h, w]` hold bytes as
/// f64; every intermediate is an integer below 2^53, and each shift is a floor.
fn over_white_on(c: &Tensor, a: &Tensor) -> Result<Tensor> {
    let shr = |x: &Tensor, bits: i32| -> Result<Tensor> {
        Ok(x.affine(f64::powi(2.0, -bits), 0.0)?.floor()?)
    };
    // coef1 = a << 7, coef2 = (255 << 7) - coef1,
    // tmp = c * coef1 + 255 * coef2 + (0x80 << 7)
    let coef1 = a.affine(128.0, 0.0)?;
    let coef2 = coef1.affine(-1.0, 255.0 * 128.0)?;
    let tmp = c
        .broadcast_mul(&coef1)?
        .broadcast_add(&coef2.affine(255.0, 128.0 * 128.0)?)?;
    // (((tmp >> 8) + tmp) >> 8) >> 7
    let sum = (shr(&tmp, 8)? + &tmp)?;
    shr(&shr(&sum, 8)?, 7)
}

#[cfg(test)]
mod tests {
    use super::super::Colorimetry;
    use super::super::frame::{YuvMatrix, YuvRange};
    use super::*;

    /// Bytes that cover every value many times over, in no pattern a bug could hide in.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Every format and colorimetry, odd sizes, padded strides and regions that start and
    /// end on odd rows and columns, two frames of different content converted together:
    /// the device conversion equals the host's exactly, frame by frame.
    #[test]
    fn device_conversion_equals_the_host_rows() {
        let (w, h) = (37, 23);
        let device = Device::Cpu;
        let colorimetries = [
            (YuvMatrix::Bt601, YuvRange::Limited),
            (YuvMatrix::Bt709, YuvRange::Limited),
            (YuvMatrix::Bt2020, YuvRange::Full),
        ];
        for (n, format) in PixelFormat::ALL.into_iter().enumerate() {
            let contents: Vec<Vec<(Vec<u8>, usize)>> = (0..2)
                .map(|frame| {
                    (0..format.plane_count())
                        .map(|p| {
                            let (row, count) = format.plane_extent(p, w, h);
                            let stride = row + 5;
                            let seed = (n * 3 + p + 1 + 100 * frame) as u32;
                            (noise(stride * count, seed), stride)
                        })
                        .collect()
                })
                .collect();
            let described: Vec<Vec<(&[u8], usize)>> = contents
                .iter()
                .map(|planes| planes.iter().map(|(d, s)| (d.as_slice(), *s)).collect())
                .collect();
            for (matrix, range) in colorimetries {
                let frames: Vec<FrameRef<'_>> = described
                    .iter()
                    .map(|planes| {
                        FrameRef::new(format, w, h, planes)
                            .expect("frame")
                            .with_colorimetry(Colorimetry { matrix, range })
                    })
                    .collect();
                for (rows, cols) in [(0..h, 0..w), (3..20, 5..30), (1..2, 7..8)] {
                    let on_device = regions_rgb_on(&frames, rows.clone(), cols.clone(), &device)
                        .expect("device conversion");
                    for (i, frame) in frames.iter().enumerate() {
                        let conv = frame.row_converter();
                        let mut host = vec![0u8; rows.len() * cols.len() * 3];
                        for (out, y) in host.chunks_exact_mut(cols.len() * 3).zip(rows.clone()) {
                            frame.row_to_rgb(&conv, y, cols.start, cols.end, out);
                        }
                        let values = on_device
                            .get(i)
                            .and_then(|t| t.permute((1, 2, 0)))
                            .and_then(|t| t.flatten_all())
                            .and_then(|t| t.to_vec1::<f32>())
                            .expect("values");
                        let mismatches = host
                            .iter()
                            .zip(&values)
                            .filter(|(a, b)| f32::from(**a) != **b)
                            .count();
                        assert_eq!(
                            mismatches,
                            0,
                            "{} {matrix:?} {range:?} rows {rows:?} cols {cols:?} frame {i}",
                            format.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn frames_of_different_formats_are_refused_together() {
        let gray = [7u8; 6];
        let rgb = [9u8; 18];
        let a = FrameRef::new(PixelFormat::Gray8, 3, 2, &[(&gray[..], 3)]).expect("frame");
        let b = FrameRef::new(PixelFormat::Rgb, 3, 2, &[(&rgb[..], 9)]).expect("frame");
        let err = regions_rgb_on(&[a, b], 0..2, 0..3, &Device::Cpu).expect_err("mixed formats");
        assert!(err.to_string().contains("share format"), "{err}");
    }
}

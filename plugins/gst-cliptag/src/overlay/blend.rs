//! Blending the panel onto frames fast in the formats decoders and cameras give most
//! (4:2:0 YUV: I420, YV12, NV12, NV21; 32-bit RGB without alpha: RGBx, BGRx, xRGB,
//! xBGR): the panel is converted once per rendering into the frame's own samples,
//! premultiplied by their alpha (chroma averaged over each 2x2 block), so that each
//! frame costs one multiply-add per sample. Other formats, those with an alpha channel
//! of their own included, go through GStreamer's blending, which converts the panel's
//! lines on every frame.
//!
//! The conversion follows the frame's colorimetry (BT.601, BT.709, BT.2020 and the
//! rest GStreamer knows the coefficients of; full or limited range). The tests hold it
//! to a plain per-pixel version in floating point (within one step) and to GStreamer's
//! blending (luma and RGB within two steps; GStreamer subsamples chroma differently).

use gst_video::prelude::*;

use super::panel::Rect;

/// One plane's layer: for each sample of the panel's area in that plane, its colour
/// premultiplied by alpha and 255 minus alpha.
#[derive(Debug, Clone)]
struct Layer {
    /// The plane.
    plane: u32,
    /// Bytes between neighbouring samples of the same component (1 for planar, 2 for
    /// interleaved chroma, 4 for packed RGB).
    pstride: usize,
    /// Byte offset of each component within a sample (one per value in `colour`; the
    /// sample at `(x, y)` of the plane starts at `y * stride + x * pstride`).
    offsets: Vec<usize>,
    /// The area in this plane's samples.
    x: usize,
    y: usize,
    width: usize,
    height: usize,
    /// `width * height * offsets.len()` premultiplied values, row by row.
    colour: Vec<u8>,
    /// `width * height` values of 255 - alpha.
    keep: Vec<u8>,
}

/// The panel in one frame format, ready to blend.
#[derive(Debug, Clone)]
pub struct Prepared {
    layers: Vec<Layer>,
}

/// How a YUV frame encodes colour: BT.601's or another matrix's red and blue weights,
/// and whether samples use the full 0..255 range.
#[derive(Debug, Clone, Copy)]
struct Matrix {
    kr: f64,
    kb: f64,
    full: bool,
}

/// The coefficients and range of a YUV frame (BT.601 when the matrix is unknown).
fn matrix(info: &gst_video::VideoInfo) -> Matrix {
    let colorimetry = info.colorimetry();
    let (kr, kb) = colorimetry.matrix().kr_kb().unwrap_or((0.299, 0.114));
    Matrix {
        kr,
        kb,
        full: colorimetry.range() == gst_video::VideoColorRange::Range0_255,
    }
}

/// A panel pixel as cairo stores it (native-endian ARGB32, premultiplied): alpha, red,
/// green and blue, 0..255, the colours already multiplied by alpha.
fn premultiplied(argb: &[u8], stride: usize, x: usize, y: usize) -> [f32; 4] {
    let i = y * stride + x * 4;
    unpack(&argb[i..i + 4])
}

/// The four bytes of one cairo pixel as `[a, r, g, b]`.
fn unpack(px: &[u8]) -> [f32; 4] {
    let word = u32::from_ne_bytes([px[0], px[1], px[2], px[3]]);
    let c = |shift: u32| ((word >> shift) & 0xff) as f32;
    [c(24), c(16), c(8), c(0)]
}

/// Y, Cb and Cr times alpha as linear forms of a premultiplied pixel `[a, r, g, b]`:
/// the conversion is affine, so a premultiplied colour converts without dividing
/// alpha out and multiplying it back in.
struct Forms([[f32; 4]; 3]);

impl Forms {
    fn new(m: Matrix) -> Self {
        let (kr, kb) = (m.kr as f32, m.kb as f32);
        let kg = 1.0 - kr - kb;
        // Luma and chroma excursions and the luma offset, per 255.
        let (ys, cs, yo) = if m.full {
            (1.0, 1.0, 0.0)
        } else {
            (219.0 / 255.0, 224.0 / 255.0, 16.0 / 255.0)
        };
        let (db, dr) = (2.0 * (1.0 - kb), 2.0 * (1.0 - kr));
        let mid = 128.0 / 255.0;
        Self([
            [yo, ys * kr, ys * kg, ys * kb],
            [mid, -cs * kr / db, -cs * kg / db, cs * (1.0 - kb) / db],
            [mid, cs * (1.0 - kr) / dr, -cs * kg / dr, -cs * kb / dr],
        ])
    }

    /// Component `c` (0 Y, 1 Cb, 2 Cr) of `pixel`, times its alpha.
    fn apply(&self, c: usize, pixel: [f32; 4]) -> f32 {
        self.0[c].iter().zip(pixel).map(|(k, v)| k * v).sum()
    }
}

/// Rounded to the nearest byte (half up: `round` would be a library call per sample).
fn byte(v: f32) -> u8 {
    (v.clamp(0.0, 255.0) + 0.5) as u8
}

impl Prepared {
    /// The panel (`argb`: cairo ARGB32 rows of `stride` bytes, `rect` sized) converted
    /// for frames of `info`; `None` for formats without a fast path.
    pub fn new(
        argb: &[u8],
        stride: usize,
        rect: Rect,
        info: &gst_video::VideoInfo,
    ) -> Option<Self> {
        use gst_video::VideoFormat as F;
        let (w, h) = (rect.width as usize, rect.height as usize);
        if argb.len() < stride * h || stride < w * 4 {
            return None;
        }
        let finfo = info.format_info();
        match info.format() {
            F::I420 | F::Yv12 | F::Nv12 | F::Nv21 => {
                let forms = Forms::new(matrix(info));
                let luma = Self::luma(argb, stride, rect, &forms);
                let mut layers = vec![luma];
                // Cb and Cr: separate planes (I420, YV12) or interleaved in one (NV12, NV21).
                let (cb, cr) = (1usize, 2usize);
                let chroma = |components: &[usize]| -> Layer {
                    let plane = finfo.plane()[components[0]];
                    Self::chroma((argb, stride), rect, &forms, (plane, finfo), components)
                };
                if finfo.plane()[cb] == finfo.plane()[cr] {
                    layers.push(chroma(&[cb, cr]));
                } else {
                    layers.push(chroma(&[cb]));
                    layers.push(chroma(&[cr]));
                }
                Some(Self { layers })
            }
            F::Rgbx | F::Bgrx | F::Xrgb | F::Xbgr => {
                let offsets: Vec<usize> = (0..3).map(|c| finfo.poffset()[c] as usize).collect();
                let mut colour = Vec::with_capacity(w * h * 3);
                let mut keep = Vec::with_capacity(w * h);
                for y in 0..h {
                    for x in 0..w {
                        let [a, r, g, b] = premultiplied(argb, stride, x, y);
                        colour.extend([r, g, b].map(byte));
                        keep.push(byte(255.0 - a));
                    }
                }
                Some(Self {
                    layers: vec![Layer {
                        plane: 0,
                        pstride: 4,
                        offsets,
                        x: rect.x as usize,
                        y: rect.y as usize,
                        width: w,
                        height: h,
                        colour,
                        keep,
                    }],
                })
            }
            _ => None,
        }
    }

    fn luma(argb: &[u8], stride: usize, rect: Rect, forms: &Forms) -> Layer {
        let (w, h) = (rect.width as usize, rect.height as usize);
        let mut colour = Vec::with_capacity(w * h);
        let mut keep = Vec::with_capacity(w * h);
        // Most of a panel is runs of one colour (the background, a bar): a pixel like
        // the one before costs a comparison.
        let mut last: Option<([u8; 4], u8, u8)> = None;
        for row in argb.chunks(stride).take(h) {
            for px in row[..w * 4].chunks_exact(4) {
                let bytes = [px[0], px[1], px[2], px[3]];
                let (y, k) = match last {
                    Some((b, y, k)) if b == bytes => (y, k),
                    _ => {
                        let p = unpack(px);
                        let (y, k) = (byte(forms.apply(0, p)), byte(255.0 - p[0]));
                        last = Some((bytes, y, k));
                        (y, k)
                    }
                };
                colour.push(y);
                keep.push(k);
            }
        }
        Layer {
            plane: 0,
            pstride: 1,
            offsets: vec![0],
            x: rect.x as usize,
            y: rect.y as usize,
            width: w,
            height: h,
            colour,
            keep,
        }
    }

    /// A 4:2:0 chroma layer: each sample covers 2x2 frame pixels; panel pixels outside
    /// the panel count as transparent.
    fn chroma(
        (argb, stride): (&[u8], usize),
        rect: Rect,
        forms: &Forms,
        (plane, finfo): (u32, gst_video::VideoFormatInfo),
        components: &[usize],
    ) -> Layer {
        let (x0, y0) = (rect.x as usize, rect.y as usize);
        let (x1, y1) = (x0 + rect.width as usize, y0 + rect.height as usize);
        let (cx0, cy0, cx1, cy1) = (x0 / 2, y0 / 2, x1.div_ceil(2), y1.div_ceil(2));
        let (w, h) = (cx1 - cx0, cy1 - cy0);
        let mut colour = Vec::with_capacity(w * h * components.len());
        let mut keep = Vec::with_capacity(w * h);
        let mut last: Option<([f32; 4], [u8; 2], u8)> = None;
        for cy in cy0..cy1 {
            for cx in cx0..cx1 {
                // The block's pixels summed (premultiplied: a linear form of the sum
                // is the sum of the forms); those off the panel are transparent.
                let mut sum = [0.0f32; 4];
                for fy in 2 * cy..2 * cy + 2 {
                    for fx in 2 * cx..2 * cx + 2 {
                        if fx < x0 || fx >= x1 || fy < y0 || fy >= y1 {
                            continue;
                        }
                        let p = premultiplied(argb, stride, fx - x0, fy - y0);
                        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
                    }
                }
                // As for luma: a block like the one before costs a comparison.
                let (values, k) = match last {
                    Some((s, values, k)) if s == sum => (values, k),
                    _ => {
                        let mut values = [0u8; 2];
                        for (v, &c) in values.iter_mut().zip(components) {
                            *v = byte(forms.apply(c, sum) / 4.0);
                        }
                        let k = byte(255.0 - sum[0] / 4.0);
                        last = Some((sum, values, k));
                        (values, k)
                    }
                };
                colour.extend_from_slice(&values[..components.len()]);
                keep.push(k);
            }
        }
        Layer {
            plane,
            pstride: finfo.pixel_stride()[components[0]] as usize,
            offsets: components
                .iter()
                .map(|&c| finfo.poffset()[c] as usize)
                .collect(),
            x: cx0,
            y: cy0,
            width: w,
            height: h,
            colour,
            keep,
        }
    }

    /// Blends onto a mapped frame of the format it was prepared for.
    pub fn blend(
        &self,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<(), gst::glib::BoolError> {
        let strides: Vec<usize> = frame.info().stride().iter().map(|s| *s as usize).collect();
        for layer in &self.layers {
            let stride = strides[layer.plane as usize];
            let data = frame.plane_data_mut(layer.plane)?;
            let n = layer.offsets.len();
            for row in 0..layer.height {
                let start = (layer.y + row) * stride + layer.x * layer.pstride;
                let end = (start + layer.width * layer.pstride).min(data.len());
                let Some(line) = data.get_mut(start..end) else {
                    break;
                };
                let colour = &layer.colour[row * layer.width * n..][..layer.width * n];
                let keep = &layer.keep[row * layer.width..][..layer.width];
                for ((sample, &k), colour) in line
                    .chunks_exact_mut(layer.pstride)
                    .zip(keep)
                    .zip(colour.chunks_exact(n))
                {
                    for (&offset, &c) in layer.offsets.iter().zip(colour) {
                        sample[offset] = over(sample[offset], k, c);
                    }
                }
            }
        }
        Ok(())
    }
}

/// `d * k / 255`, rounded.
#[inline]
fn mul255(d: u8, k: u8) -> u8 {
    let t = u32::from(d) * u32::from(k) + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// A premultiplied sample `c` over `d`, which keeps `k`/255 of itself.
#[inline]
fn over(d: u8, k: u8, c: u8) -> u8 {
    mul255(d, k).saturating_add(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Tags;
    use crate::overlay::panel::{self, Content};
    use crate::overlay::settings::Settings;
    use gst_video::VideoFormat as F;

    /// Y, Cb, Cr (0..255 each, in the frame's range) of an RGB colour (0..1 each), the
    /// textbook way.
    fn yuv(rgb: [f64; 3], m: Matrix) -> [f64; 3] {
        let Matrix { kr, kb, full } = m;
        let [r, g, b] = rgb;
        let kg = 1.0 - kr - kb;
        let y = kr * r + kg * g + kb * b;
        let cb = (b - y) / (2.0 * (1.0 - kb));
        let cr = (r - y) / (2.0 * (1.0 - kr));
        if full {
            [255.0 * y, 128.0 + 255.0 * cb, 128.0 + 255.0 * cr]
        } else {
            [16.0 + 219.0 * y, 128.0 + 224.0 * cb, 128.0 + 224.0 * cr]
        }
    }

    /// A panel pixel as unpremultiplied RGB (0..1) and alpha (0..1).
    fn pixel(argb: &[u8], stride: usize, x: usize, y: usize) -> ([f64; 3], f64) {
        let [a, r, g, b] = premultiplied(argb, stride, x, y).map(f64::from);
        if a == 0.0 {
            return ([0.0; 3], 0.0);
        }
        ([r / a, g / a, b / a].map(|c| c.min(1.0)), a / 255.0)
    }

    fn byte(v: f64) -> u8 {
        v.round().clamp(0.0, 255.0) as u8
    }

    const FAST: [F; 8] = [
        F::I420,
        F::Yv12,
        F::Nv12,
        F::Nv21,
        F::Rgbx,
        F::Bgrx,
        F::Xrgb,
        F::Xbgr,
    ];
    // "1:4:0:0": full range BT.601, as JPEG.
    const COLORIMETRIES: [&str; 4] = ["bt601", "bt709", "bt2020", "1:4:0:0"];
    const RECTS: [Rect; 3] = [
        Rect {
            x: 10,
            y: 12,
            width: 200,
            height: 90,
        },
        Rect {
            x: 11,
            y: 13,
            width: 199,
            height: 91,
        },
        Rect {
            x: 0,
            y: 249,
            width: 1,
            height: 2,
        },
    ];
    const SIZE: (u32, u32) = (333, 251);

    fn rendered(rect: Rect) -> panel::Rendered {
        let tags = Tags {
            labels: vec![("a moving ball".into(), 0.83), ("tv static".into(), 0.17)],
            version: 2,
            frame: 0,
            computed_for: Some(0),
            stale: true,
            latency_ns: 0,
            model: "m".into(),
            stream_id: "s".into(),
            label_set: "s".into(),
            events: vec![],
        };
        let content = Content::new(&tags, &["+ a moving ball".into()], &Settings::default());
        panel::render(&content, rect, SIZE.1, &Settings::default()).expect("renders")
    }

    fn info(format: F, colorimetry: &str) -> gst_video::VideoInfo {
        gst::init().expect("gst init");
        gst_video::VideoInfo::builder(format, SIZE.0, SIZE.1)
            .colorimetry(&colorimetry.parse().expect("colorimetry"))
            .build()
            .expect("info")
    }

    /// A frame of pseudo-random samples; the padding byte of 32-bit RGB is 255, as
    /// producers write it (GStreamer's blending reads it as the frame's alpha).
    fn noise(info: &gst_video::VideoInfo) -> gst::Buffer {
        let mut x = 0x9e37_79b9u32;
        let mut bytes: Vec<u8> = (0..info.size())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 7) as u8
            })
            .collect();
        if info.is_rgb() {
            let pad = info.format_info().poffset().iter().sum::<u32>() as usize;
            // The offsets of R, G and B are three of 0..4; the padding is the fourth.
            let pad = 6 - pad;
            bytes.iter_mut().skip(pad).step_by(4).for_each(|b| *b = 255);
        }
        gst::Buffer::from_mut_slice(bytes)
    }

    fn blended(
        info: &gst_video::VideoInfo,
        blend: impl FnOnce(&mut gst_video::VideoFrameRef<&mut gst::BufferRef>),
    ) -> Vec<u8> {
        let mut buffer = noise(info);
        {
            let mut frame =
                gst_video::VideoFrameRef::from_buffer_ref_writable(buffer.make_mut(), info)
                    .expect("map");
            blend(&mut frame);
        }
        buffer.map_readable().expect("map").to_vec()
    }

    /// The definition, per destination sample, in floating point: a sample keeps
    /// (1 - alpha) of itself and takes alpha times the panel's colour in its own terms;
    /// a 4:2:0 chroma sample takes the mean over the 2x2 pixels it covers (pixels off
    /// the panel being transparent).
    fn reference(info: &gst_video::VideoInfo, panel: &panel::Rendered, rect: Rect) -> Vec<u8> {
        let mut out = noise(info).map_readable().expect("map").to_vec();
        let finfo = info.format_info();
        let m = matrix(info);
        let inside = |x: usize, y: usize| {
            x >= rect.x as usize
                && y >= rect.y as usize
                && x < (rect.x + rect.width) as usize
                && y < (rect.y + rect.height) as usize
        };
        // (colour of component c at panel pixel (x, y) in the frame's terms, alpha)
        let sample = |c: usize, x: usize, y: usize| -> (f64, f64) {
            let (rgb, a) = pixel(
                &panel.argb,
                panel.stride,
                x - rect.x as usize,
                y - rect.y as usize,
            );
            let value = if info.is_yuv() {
                yuv(rgb, m)[c]
            } else {
                255.0 * rgb[c]
            };
            (value, a)
        };
        for c in 0..3usize {
            let (ws, hs) = (finfo.w_sub()[c], finfo.h_sub()[c]);
            let plane = finfo.plane()[c] as usize;
            let (stride, offset) = (info.stride()[plane] as usize, info.offset()[plane]);
            let pstride = finfo.pixel_stride()[c] as usize;
            let (w, h) = (
                finfo.scale_width(c as u8, SIZE.0) as usize,
                finfo.scale_height(c as u8, SIZE.1) as usize,
            );
            for sy in 0..h {
                for sx in 0..w {
                    let (mut colour, mut alpha) = (0.0, 0.0);
                    let n = f64::from((1u32 << ws) * (1u32 << hs));
                    for fy in (sy << hs)..((sy + 1) << hs) {
                        for fx in (sx << ws)..((sx + 1) << ws) {
                            if inside(fx, fy) {
                                let (v, a) = sample(c, fx, fy);
                                colour += a * v / n;
                                alpha += a / n;
                            }
                        }
                    }
                    if alpha > 0.0 {
                        let i = offset + sy * stride + sx * pstride + finfo.poffset()[c] as usize;
                        out[i] = byte(f64::from(out[i]) * (1.0 - alpha) + colour);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_fast_blend_matches_the_definition_in_every_format_colorimetry_and_position() {
        for format in FAST {
            for colorimetry in COLORIMETRIES {
                let info = info(format, colorimetry);
                for rect in RECTS {
                    let panel = rendered(rect);
                    let prepared =
                        Prepared::new(&panel.argb, panel.stride, rect, &info).expect("a fast path");
                    let ours = blended(&info, |f| prepared.blend(f).expect("blend"));
                    let want = reference(&info, &panel, rect);
                    let worst = ours
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| a.abs_diff(*b))
                        .max()
                        .unwrap_or(0);
                    assert!(
                        worst <= 1,
                        "{format:?} {colorimetry} {rect:?}: off by {worst}"
                    );
                    assert_ne!(
                        ours,
                        noise(&info).map_readable().expect("map").to_vec(),
                        "nothing drawn"
                    );
                }
            }
        }
    }

    #[test]
    fn the_fast_blend_agrees_with_gstreamers_on_luma_and_rgb() {
        for format in FAST {
            let info = info(format, "bt709");
            let rect = RECTS[0];
            let panel = rendered(rect);
            let prepared =
                Prepared::new(&panel.argb, panel.stride, rect, &info).expect("a fast path");
            let ours = blended(&info, |f| prepared.blend(f).expect("blend"));
            let theirs = blended(&info, |f| panel.composition.blend(f).expect("blend"));
            let finfo = info.format_info();
            // Luma, or the three colour bytes of each RGB pixel (not the padding).
            let bytes: Vec<usize> = if info.is_yuv() {
                (0..info.stride()[0] as usize * SIZE.1 as usize).collect()
            } else {
                (0..(SIZE.0 * SIZE.1) as usize)
                    .flat_map(|p| (0..3).map(move |c| p * 4 + finfo.poffset()[c] as usize))
                    .collect()
            };
            let worst = bytes
                .iter()
                .map(|&i| ours[i].abs_diff(theirs[i]))
                .max()
                .unwrap_or(0);

            assert!(
                worst <= 2,
                "{format:?}: off by {worst} from GStreamer's blend"
            );
        }
    }

    #[test]
    fn formats_with_alpha_or_other_subsampling_take_gstreamers_path() {
        let panel = rendered(RECTS[0]);
        for format in [F::Rgba, F::Argb, F::Ayuv, F::Yuy2, F::Y444, F::Rgb] {
            let info = info(format, "bt709");
            assert!(
                Prepared::new(&panel.argb, panel.stride, RECTS[0], &info).is_none(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn over_is_exact_at_the_ends() {
        for d in [0u8, 1, 127, 254, 255] {
            assert_eq!(over(d, 255, 0), d, "transparent keeps the frame");
            assert_eq!(over(d, 0, 77), 77, "opaque replaces it");
        }
        assert_eq!(mul255(255, 255), 255);
        assert_eq!(mul255(128, 128), 64);
    }
}

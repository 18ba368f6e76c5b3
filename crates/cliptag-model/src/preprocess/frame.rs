//! Borrowed raw video frames and their conversion to RGB, one row at a time.

use crate::error::{ModelError, Result};

/// Pixel layouts a frame can arrive in (GStreamer's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    Rgb,
    /// Packed 8-bit B, G, R.
    Bgr,
    /// Packed R, G, B, alpha (alpha ignored, as converting to RGB does).
    Rgba,
    /// Packed B, G, R, alpha.
    Bgra,
    /// Packed alpha, R, G, B.
    Argb,
    /// Packed alpha, B, G, R.
    Abgr,
    /// Packed R, G, B, padding byte.
    Rgbx,
    /// Packed B, G, R, padding byte.
    Bgrx,
    /// Packed padding byte, R, G, B.
    Xrgb,
    /// Packed padding byte, B, G, R.
    Xbgr,
    /// One 8-bit luma plane.
    Gray8,
    /// Planar Y, U, V with 2x2-subsampled chroma.
    I420,
    /// Planar Y and interleaved U/V with 2x2-subsampled chroma.
    Nv12,
}

impl PixelFormat {
    /// Every supported format.
    pub const ALL: [PixelFormat; 13] = [
        Self::Rgb,
        Self::Bgr,
        Self::Rgba,
        Self::Bgra,
        Self::Argb,
        Self::Abgr,
        Self::Rgbx,
        Self::Bgrx,
        Self::Xrgb,
        Self::Xbgr,
        Self::Gray8,
        Self::I420,
        Self::Nv12,
    ];

    /// The GStreamer format name (`RGB`, `BGRx`, `I420`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rgb => "RGB",
            Self::Bgr => "BGR",
            Self::Rgba => "RGBA",
            Self::Bgra => "BGRA",
            Self::Argb => "ARGB",
            Self::Abgr => "ABGR",
            Self::Rgbx => "RGBx",
            Self::Bgrx => "BGRx",
            Self::Xrgb => "xRGB",
            Self::Xbgr => "xBGR",
            Self::Gray8 => "GRAY8",
            Self::I420 => "I420",
            Self::Nv12 => "NV12",
        }
    }

    /// The format with this GStreamer name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// For packed RGB formats: bytes per pixel and the byte offsets of R, G and B.
    pub(super) fn packed_layout(self) -> Option<(usize, [usize; 3])> {
        Some(match self {
            Self::Rgb => (3, [0, 1, 2]),
            Self::Bgr => (3, [2, 1, 0]),
            Self::Rgba | Self::Rgbx => (4, [0, 1, 2]),
            Self::Bgra | Self::Bgrx => (4, [2, 1, 0]),
            Self::Argb | Self::Xrgb => (4, [1, 2, 3]),
            Self::Abgr | Self::Xbgr => (4, [3, 2, 1]),
            Self::Gray8 => (1, [0, 0, 0]),
            Self::I420 | Self::Nv12 => return None,
        })
    }

    /// Byte offset of the alpha channel, for formats that have one.
    pub(super) fn alpha_offset(self) -> Option<usize> {
        match self {
            Self::Rgba | Self::Bgra => Some(3),
            Self::Argb | Self::Abgr => Some(0),
            _ => None,
        }
    }

    /// Number of planes.
    pub fn plane_count(self) -> usize {
        match self {
            Self::I420 => 3,
            Self::Nv12 => 2,
            _ => 1,
        }
    }

    /// Bytes in one row of `plane` and the number of rows, for a `width` x `height` frame.
    pub fn plane_extent(self, plane: usize, width: usize, height: usize) -> (usize, usize) {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        match (self, plane) {
            (Self::I420, 0) | (Self::Nv12, 0) => (width, height),
            (Self::I420, _) => (cw, ch),
            (Self::Nv12, _) => (cw * 2, ch),
            (packed, _) => (width * packed.packed_layout().map_or(1, |l| l.0), height),
        }
    }
}

/// The YUV -> RGB matrix of a YUV frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum YuvMatrix {
    /// ITU-R BT.601 (SD video; GStreamer's default below 720 lines).
    #[default]
    Bt601,
    /// ITU-R BT.709 (HD video).
    Bt709,
    /// ITU-R BT.2020.
    Bt2020,
}

impl YuvMatrix {
    /// The red and blue luma weights `(Kr, Kb)`; green is `1 - Kr - Kb`.
    fn luma_weights(self) -> (f64, f64) {
        match self {
            Self::Bt601 => (0.299, 0.114),
            Self::Bt709 => (0.2126, 0.0722),
            Self::Bt2020 => (0.2627, 0.0593),
        }
    }
}

/// The value range of a YUV frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum YuvRange {
    /// Y in 16..=235, U/V in 16..=240 (broadcast video).
    #[default]
    Limited,
    /// Y, U and V in 0..=255 (JPEG).
    Full,
}

/// How YUV samples map to RGB; ignored for RGB frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Colorimetry {
    /// The matrix.
    pub matrix: YuvMatrix,
    /// The range.
    pub range: YuvRange,
}

/// A borrowed video frame: up to three planes with their strides. Nothing is copied;
/// the preprocessor reads the planes where they lie.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    format: PixelFormat,
    width: usize,
    height: usize,
    planes: [&'a [u8]; 3],
    strides: [usize; 3],
    colorimetry: Colorimetry,
}

impl<'a> FrameRef<'a> {
    /// Describes a frame; checks that every plane is large enough for its stride and the
    /// frame size.
    pub fn new(
        format: PixelFormat,
        width: usize,
        height: usize,
        planes: &[(&'a [u8], usize)],
    ) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(ModelError::Frame(format!(
                "{} frame of {width}x{height} pixels is empty",
                format.name()
            )));
        }
        if planes.len() != format.plane_count() {
            return Err(ModelError::Frame(format!(
                "{} needs {} planes, got {}",
                format.name(),
                format.plane_count(),
                planes.len()
            )));
        }
        let mut frame = Self {
            format,
            width,
            height,
            planes: [&[]; 3],
            strides: [0; 3],
            colorimetry: Colorimetry::default(),
        };
        for (i, &(data, stride)) in planes.iter().enumerate() {
            let (row_bytes, rows) = format.plane_extent(i, width, height);
            if stride < row_bytes {
                return Err(ModelError::Frame(format!(
                    "{} plane {i}: stride {stride} is less than a row of {row_bytes} bytes \
                     ({width}x{height})",
                    format.name()
                )));
            }
            let needed = stride * (rows - 1) + row_bytes;
            if data.len() < needed {
                return Err(ModelError::Frame(format!(
                    "{} plane {i}: {} bytes, {width}x{height} with stride {stride} needs {needed}",
                    format.name(),
                    data.len()
                )));
            }
            frame.planes[i] = data;
            frame.strides[i] = stride;
        }
        Ok(frame)
    }

    /// A single-plane frame with tightly packed rows.
    pub fn packed(
        format: PixelFormat,
        width: usize,
        height: usize,
        data: &'a [u8],
    ) -> Result<Self> {
        let (row_bytes, _) = format.plane_extent(0, width, height);
        Self::new(format, width, height, &[(data, row_bytes)])
    }

    /// A frame whose planes hold rows of the format's size each followed by `pad` spare
    /// bytes (`pad` 0: tightly packed), as [`crate::image_file::RgbImage::repack`] makes
    /// them.
    pub fn padded<P: AsRef<[u8]>>(
        format: PixelFormat,
        width: usize,
        height: usize,
        planes: &'a [P],
        pad: usize,
    ) -> Result<Self> {
        let described: Vec<(&[u8], usize)> = planes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_ref(), format.plane_extent(i, width, height).0 + pad))
            .collect();
        Self::new(format, width, height, &described)
    }

    /// Sets how YUV samples map to RGB.
    pub fn with_colorimetry(mut self, colorimetry: Colorimetry) -> Self {
        self.colorimetry = colorimetry;
        self
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Pixel layout.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// Row `y` of `plane`, from its first byte to the end of the plane.
    pub(super) fn row(&self, plane: usize, y: usize) -> &'a [u8] {
        let start = y * self.strides[plane];
        &self.planes[plane][start..]
    }

    /// How YUV samples map to RGB.
    pub(super) fn colorimetry(&self) -> Colorimetry {
        self.colorimetry
    }

    /// What converting this frame's rows to RGB needs, computed once per frame.
    pub(crate) fn row_converter(&self) -> RowConverter {
        RowConverter {
            yuv: match self.format {
                PixelFormat::I420 | PixelFormat::Nv12 => {
                    Some(Box::new(YuvTables::new(self.colorimetry)))
                }
                _ => None,
            },
        }
    }

    /// Writes pixels `x0..x1` of row `y` as packed RGB into `out` (`3 * (x1 - x0)` bytes).
    pub(crate) fn row_to_rgb(
        &self,
        conv: &RowConverter,
        y: usize,
        x0: usize,
        x1: usize,
        out: &mut [u8],
    ) {
        debug_assert!(x1 <= self.width && y < self.height && out.len() >= 3 * (x1 - x0));
        if let Some((bpp, [r, g, b])) = self.format.packed_layout() {
            let row = &self.row(0, y)[x0 * bpp..x1 * bpp];
            let pixels = row.chunks_exact(bpp).zip(out.chunks_exact_mut(3));
            if let Some(a) = self.format.alpha_offset() {
                for (px, dst) in pixels {
                    dst.copy_from_slice(&over_white([px[r], px[g], px[b]], px[a]));
                }
            } else {
                for (px, dst) in pixels {
                    dst[0] = px[r];
                    dst[1] = px[g];
                    dst[2] = px[b];
                }
            }
            return;
        }
        let Some(tables) = conv.yuv.as_deref() else {
            return;
        };
        let luma = &self.row(0, y)[x0..x1];
        let cy = y / 2;
        match self.format {
            PixelFormat::I420 => {
                let u = self.row(1, cy);
                let v = self.row(2, cy);
                for ((x, &l), dst) in (x0..x1).zip(luma).zip(out.chunks_exact_mut(3)) {
                    tables.convert(l, u[x / 2], v[x / 2], dst);
                }
            }
            PixelFormat::Nv12 => {
                let uv = self.row(1, cy);
                for ((x, &l), dst) in (x0..x1).zip(luma).zip(out.chunks_exact_mut(3)) {
                    let c = (x / 2) * 2;
                    tables.convert(l, uv[c], uv[c + 1], dst);
                }
            }
            _ => {}
        }
    }
}

/// Per-frame state of the row conversion: the YUV tables, for YUV frames.
pub(crate) struct RowConverter {
    yuv: Option<Box<YuvTables>>,
}

/// YUV -> RGB as table lookups: every term of the matrix for every byte value, in fixed
/// point with 16 fractional bits, from the matrix's luma weights.
pub(super) struct YuvTables {
    pub(super) y: [i32; 256],
    pub(super) r_v: [i32; 256],
    pub(super) g_u: [i32; 256],
    pub(super) g_v: [i32; 256],
    pub(super) b_u: [i32; 256],
}

impl YuvTables {
    pub(super) fn new(c: Colorimetry) -> Self {
        let (kr, kb) = c.matrix.luma_weights();
        let kg = 1.0 - kr - kb;
        let (y_offset, y_scale, c_scale) = match c.range {
            YuvRange::Limited => (16.0, 255.0 / 219.0, 255.0 / 224.0),
            YuvRange::Full => (0.0, 1.0, 1.0),
        };
        let fixed = |x: f64| (x * 65536.0).round() as i32;
        let table = |f: &dyn Fn(f64) -> f64| {
            let mut t = [0i32; 256];
            for (i, v) in t.iter_mut().enumerate() {
                *v = fixed(f(i as f64));
            }
            t
        };
        let chroma = |x: f64| (x - 128.0) * c_scale;
        Self {
            // The rounding offset rides on the luma term.
            y: table(&|x| (x - y_offset) * y_scale + 0.5),
            r_v: table(&|v| 2.0 * (1.0 - kr) * chroma(v)),
            g_u: table(&|u| -2.0 * kb * (1.0 - kb) / kg * chroma(u)),
            g_v: table(&|v| -2.0 * kr * (1.0 - kr) / kg * chroma(v)),
            b_u: table(&|u| 2.0 * (1.0 - kb) * chroma(u)),
        }
    }

    #[inline]
    fn convert(&self, y: u8, u: u8, v: u8, out: &mut [u8]) {
        let l = self.y[usize::from(y)];
        let (u, v) = (usize::from(u), usize::from(v));
        let byte = |x: i32| (x >> 16).clamp(0, 255) as u8;
        out[0] = byte(l + self.r_v[v]);
        out[1] = byte(l + self.g_u[u] + self.g_v[v]);
        out[2] = byte(l + self.b_u[u]);
    }
}

/// RGB -> YUV with the same coefficients, for tests and for callers that need to produce
/// YUV frames: returns `(y, u, v)` rounded to bytes.
pub fn rgb_to_yuv(rgb: [u8; 3], colorimetry: Colorimetry) -> (u8, u8, u8) {
    let (kr, kb) = colorimetry.matrix.luma_weights();
    let (kr, kb) = (kr as f32, kb as f32);
    let [r, g, b] = rgb.map(|c| f32::from(c) / 255.0);
    let y = kr * r + (1.0 - kr - kb) * g + kb * b;
    let u = (b - y) / (2.0 * (1.0 - kb));
    let v = (r - y) / (2.0 * (1.0 - kr));
    let (yo, ys, cs) = match colorimetry.range {
        YuvRange::Limited => (16.0, 219.0, 224.0),
        YuvRange::Full => (0.0, 255.0, 255.0),
    };
    let byte = |x: f32| (x + 0.5).clamp(0.0, 255.0) as u8;
    (
        byte(yo + ys * y),
        byte(128.0 + cs * u),
        byte(128.0 + cs * v),
    )
}

/// A pixel with alpha laid over opaque white, with Pillow's `alpha_composite` arithmetic:
/// `transformers` converts images with transparency to RGB this way.
pub fn over_white(rgb: [u8; 3], alpha: u8) -> [u8; 3] {
    if alpha == 255 {
        return rgb;
    }
    const BITS: u32 = 7;
    let a = u32::from(alpha);
    let coef1 = a << BITS;
    let coef2 = (255 << BITS) - coef1;
    rgb.map(|c| {
        let tmp = u32::from(c) * coef1 + 255 * coef2 + (0x80 << BITS);
        ((((tmp >> 8) + tmp) >> 8) >> BITS) as u8
    })
}

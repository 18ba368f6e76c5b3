//! Image files (PNG, JPEG) decoded to RGB as `CLIPImageProcessor` converts them: grey
//! expanded, transparency laid over white.

use std::path::Path;

use crate::error::{ModelError, Result};
use crate::preprocess::{Colorimetry, FrameRef, PixelFormat, over_white, rgb_to_yuv};

/// A decoded image in packed 8-bit RGB.
#[derive(Debug, Clone)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes, row-major.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The image as a frame for the preprocessor.
    pub fn frame(&self) -> Result<FrameRef<'_>> {
        FrameRef::packed(PixelFormat::Rgb, self.width, self.height, &self.data)
    }

    /// The image as a video source would deliver it in `format`: its planes, each row
    /// followed by `pad` spare bytes (so a plane's stride is its row size plus `pad`).
    /// YUV uses `colorimetry`, with each 2x2 block's chroma averaged as encoders
    /// subsample it; GRAY8 is the full-range luma of `colorimetry`'s matrix; alpha is
    /// opaque and padding bytes are 0x5a.
    pub fn repack(
        &self,
        format: PixelFormat,
        pad: usize,
        colorimetry: Colorimetry,
    ) -> Vec<Vec<u8>> {
        let (w, h) = (self.width, self.height);
        let px = |x: usize, y: usize| {
            let i = (y * w + x) * 3;
            [self.data[i], self.data[i + 1], self.data[i + 2]]
        };
        match format {
            PixelFormat::I420 | PixelFormat::Nv12 => {
                let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
                let mut luma = vec![0u8; (w + pad) * h];
                let mut u = vec![0u8; (cw + pad) * ch];
                let mut v = vec![0u8; (cw + pad) * ch];
                for y in 0..h {
                    for x in 0..w {
                        luma[y * (w + pad) + x] = rgb_to_yuv(px(x, y), colorimetry).0;
                    }
                }
                for cy in 0..ch {
                    for cx in 0..cw {
                        // Chroma of the 2x2 block, averaged as encoders subsample it.
                        let (mut su, mut sv, mut n) = (0u32, 0u32, 0u32);
                        for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            let (x, y) = (2 * cx + x, 2 * cy + y);
                            if x < w && y < h {
                                let (_, pu, pv) = rgb_to_yuv(px(x, y), colorimetry);
                                su += u32::from(pu);
                                sv += u32::from(pv);
                                n += 1;
                            }
                        }
                        u[cy * (cw + pad) + cx] = ((su + n / 2) / n) as u8;
                        v[cy * (cw + pad) + cx] = ((sv + n / 2) / n) as u8;
                    }
                }
                if format == PixelFormat::I420 {
                    vec![luma, u, v]
                } else {
                    let stride = 2 * cw + pad;
                    let mut uv = vec![0u8; stride * ch];
                    for cy in 0..ch {
                        for cx in 0..cw {
                            uv[cy * stride + 2 * cx] = u[cy * (cw + pad) + cx];
                            uv[cy * stride + 2 * cx + 1] = v[cy * (cw + pad) + cx];
                        }
                    }
                    vec![luma, uv]
                }
            }
            PixelFormat::Gray8 => {
                let full = Colorimetry {
                    range: crate::preprocess::YuvRange::Full,
                    ..colorimetry
                };
                let mut out = vec![0u8; (w + pad) * h];
                for y in 0..h {
                    for x in 0..w {
                        out[y * (w + pad) + x] = rgb_to_yuv(px(x, y), full).0;
                    }
                }
                vec![out]
            }
            packed => {
                // The format's name spells its bytes: "BGRx" is B, G, R and padding.
                let name = packed.name();
                let bpp = name.len();
                let stride = w * bpp + pad;
                let mut out = vec![0u8; stride * h];
                for y in 0..h {
                    for x in 0..w {
                        let [r, g, b] = px(x, y);
                        for (k, c) in name.chars().enumerate() {
                            out[y * stride + x * bpp + k] = match c {
                                'R' => r,
                                'G' => g,
                                'B' => b,
                                'A' => 255,
                                _ => 0x5a,
                            };
                        }
                    }
                }
                vec![out]
            }
        }
    }
}

/// Decodes an image file to RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    decode_rgb(&bytes).map_err(|reason| ModelError::Image {
        path: path.to_path_buf(),
        reason,
    })
}

/// Most pixels an image may have: the size comes from the file's header, and decoding
/// allocates it before reading the rest, so a few bytes could otherwise ask for gigabytes.
pub const MAX_PIXELS: u64 = 1 << 26;

fn check_size(width: u64, height: u64) -> std::result::Result<(), String> {
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(format!(
            "{width}x{height} pixels: images of at most {MAX_PIXELS} pixels are accepted"
        ));
    }
    Ok(())
}

/// Decodes PNG or JPEG bytes to RGB; the error is the decoder's reason.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    #[cfg(feature = "turbojpeg")]
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        // The header alone says how much decoding would allocate.
        if let Ok(header) = turbojpeg::read_header(bytes) {
            check_size(header.width as u64, header.height as u64)?;
        }
        // libjpeg-turbo's default (accurate integer IDCT, smooth chroma upsampling) is what
        // Pillow decodes with; JPEGs it cannot handle fall through to the generic decoder.
        if let Ok(image) = turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGB) {
            let row = image.width * 3;
            let data = image
                .pixels
                .chunks(image.pitch)
                .take(image.height)
                .flat_map(|r| &r[..row])
                .copied()
                .collect();
            return Ok(RgbImage {
                width: image.width,
                height: image.height,
                data,
            });
        }
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(1 << 16);
    limits.max_image_height = Some(1 << 16);
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    check_size(u64::from(image.width()), u64::from(image.height()))?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    let data = if image.color().has_alpha() {
        image
            .to_rgba8()
            .pixels()
            .flat_map(|p| over_white([p[0], p[1], p[2]], p[3]))
            .collect()
    } else {
        image.to_rgb8().into_raw()
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

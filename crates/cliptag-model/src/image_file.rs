//! Image files (PNG, JPEG) decoded to RGB as `CLIPImageProcessor` converts them: grey
//! expanded, transparency laid over white.

use std::path::Path;

use crate::error::{ModelError, Result};
use crate::preprocess::{FrameRef, PixelFormat, over_white};

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

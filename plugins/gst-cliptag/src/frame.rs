//! A mapped `gst::Buffer` as an engine frame: the worker reads the buffer's planes where
//! they are, and the buffer comes back to the element with its result.

use cliptag_engine::VideoFrame;
use cliptag_engine::cliptag_model::preprocess::{Colorimetry, YuvMatrix, YuvRange};
use cliptag_engine::cliptag_model::{FrameRef, PixelFormat};
use gst_video::prelude::*;

/// The formats the element accepts, with their engine counterparts.
pub const FORMATS: [(gst_video::VideoFormat, PixelFormat); 11] = [
    (gst_video::VideoFormat::Rgb, PixelFormat::Rgb),
    (gst_video::VideoFormat::Bgr, PixelFormat::Bgr),
    (gst_video::VideoFormat::Rgba, PixelFormat::Rgba),
    (gst_video::VideoFormat::Bgra, PixelFormat::Bgra),
    (gst_video::VideoFormat::Rgbx, PixelFormat::Rgbx),
    (gst_video::VideoFormat::Bgrx, PixelFormat::Bgrx),
    (gst_video::VideoFormat::Xrgb, PixelFormat::Xrgb),
    (gst_video::VideoFormat::Xbgr, PixelFormat::Xbgr),
    (gst_video::VideoFormat::I420, PixelFormat::I420),
    (gst_video::VideoFormat::Nv12, PixelFormat::Nv12),
    (gst_video::VideoFormat::Gray8, PixelFormat::Gray8),
];

/// The engine's pixel format for a GStreamer video format, if the element takes it.
pub fn pixel_format(format: gst_video::VideoFormat) -> Option<PixelFormat> {
    FORMATS.iter().find(|(f, _)| *f == format).map(|(_, p)| *p)
}

/// How the stream's YUV samples map to RGB, from its caps' colorimetry.
pub fn colorimetry(info: &gst_video::VideoInfo) -> Colorimetry {
    let c = info.colorimetry();
    let matrix = match c.matrix() {
        gst_video::VideoColorMatrix::Bt709 => YuvMatrix::Bt709,
        gst_video::VideoColorMatrix::Bt2020 => YuvMatrix::Bt2020,
        _ => YuvMatrix::Bt601,
    };
    let range = match c.range() {
        gst_video::VideoColorRange::Range0_255 => YuvRange::Full,
        _ => YuvRange::Limited,
    };
    Colorimetry { matrix, range }
}

/// A buffer mapped for reading, with what the engine needs to read it.
pub struct MappedFrame {
    frame: gst_video::VideoFrame<gst_video::video_frame::Readable>,
    format: PixelFormat,
    colorimetry: Colorimetry,
}

impl MappedFrame {
    /// Maps `buffer` as a frame of `info`; the buffer back when it does not fit.
    pub fn map(
        buffer: gst::Buffer,
        info: &gst_video::VideoInfo,
        format: PixelFormat,
        colorimetry: Colorimetry,
    ) -> Result<Self, gst::Buffer> {
        let frame = gst_video::VideoFrame::from_buffer_readable(buffer, info)?;
        Ok(Self {
            frame,
            format,
            colorimetry,
        })
    }

    /// Unmaps and returns the buffer.
    pub fn into_buffer(self) -> gst::Buffer {
        self.frame.into_buffer()
    }

    fn try_pixels(&self) -> Result<FrameRef<'_>, String> {
        let strides = self.frame.plane_stride();
        let mut planes = Vec::with_capacity(3);
        for (plane, &stride) in strides.iter().enumerate().take(self.format.plane_count()) {
            let data = self
                .frame
                .plane_data(plane as u32)
                .map_err(|e| format!("plane {plane}: {e}"))?;
            let stride = usize::try_from(stride)
                .map_err(|_| format!("plane {plane} has a negative stride"))?;
            planes.push((data, stride));
        }
        FrameRef::new(
            self.format,
            self.frame.width() as usize,
            self.frame.height() as usize,
            &planes,
        )
        .map(|f| f.with_colorimetry(self.colorimetry))
        .map_err(|e| e.to_string())
    }
}

impl VideoFrame for MappedFrame {
    fn pixels(&self) -> FrameRef<'_> {
        // The element maps only buffers that fit the negotiated caps, and the caps only
        // allow formats the engine reads: a mapped frame always describes valid planes.
        self.try_pixels()
            .unwrap_or_else(|e| unreachable!("a mapped frame of negotiated caps: {e}"))
    }
}

/// Checks once, at mapping time, that a mapped frame will read cleanly.
pub fn check(frame: &MappedFrame) -> Result<(), String> {
    frame.try_pixels().map(|_| ())
}

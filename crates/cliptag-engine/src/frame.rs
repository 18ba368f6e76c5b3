//! Frames by reference: the engine reads the producer's video memory in place.

use std::any::Any;

use cliptag_model::FrameRef;

/// A video frame the engine can read without copying pixels: the planes of mapped video
/// memory (a mapped `gst::Buffer`, a decoded image, ...) that stay valid for as long as
/// the value lives.
///
/// The engine moves the value through its queue to the worker, whose preprocessing reads
/// the planes directly into the batch tensor, and hands it back with the result, so a
/// producer gets its own buffer back (see [`Completion::into_frame`](crate::Completion::into_frame)).
pub trait VideoFrame: Any + Send {
    /// The pixels: format, size, planes, strides and colorimetry.
    fn pixels(&self) -> FrameRef<'_>;
}

impl dyn VideoFrame {
    /// The concrete frame type back, or the frame itself when it is of another type.
    pub fn downcast<T: VideoFrame>(self: Box<Self>) -> Result<Box<T>, Box<dyn VideoFrame>> {
        if (*self).type_id() == std::any::TypeId::of::<T>() {
            let any: Box<dyn Any> = self;
            // The type id matched just above.
            Ok(any.downcast::<T>().unwrap_or_else(|_| unreachable!()))
        } else {
            Err(self)
        }
    }
}

/// Timing of a frame as its producer knows it; carried into the result untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameTiming {
    /// Presentation timestamp in nanoseconds, if the frame has one.
    pub pts_ns: Option<u64>,
    /// Running time in nanoseconds (GStreamer's clock-relative time), if known.
    pub running_time_ns: Option<u64>,
}

/// A frame that owns its pixels, planes packed one after the other without padding (for
/// files, tests and benchmarks).
#[derive(Debug, Clone)]
pub struct OwnedFrame {
    format: cliptag_model::PixelFormat,
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl OwnedFrame {
    /// A packed frame (RGB, BGRx, ...) or a planar YUV frame with tightly packed planes.
    /// Checks that `data` holds exactly such a frame.
    pub fn new(
        format: cliptag_model::PixelFormat,
        width: usize,
        height: usize,
        data: Vec<u8>,
    ) -> cliptag_model::Result<Self> {
        let frame = Self {
            format,
            width,
            height,
            data,
        };
        frame.try_pixels()?;
        Ok(frame)
    }

    fn try_pixels(&self) -> cliptag_model::Result<FrameRef<'_>> {
        let mut planes = Vec::with_capacity(3);
        let mut rest: &[u8] = &self.data;
        for plane in 0..self.format.plane_count() {
            let (row_bytes, rows) = self.format.plane_extent(plane, self.width, self.height);
            let len = (row_bytes * rows).min(rest.len());
            let (this, tail) = rest.split_at(len);
            planes.push((this, row_bytes));
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(cliptag_model::ModelError::Frame(format!(
                "{} bytes left over after the planes of a {}x{} {} frame",
                rest.len(),
                self.width,
                self.height,
                self.format.name()
            )));
        }
        FrameRef::new(self.format, self.width, self.height, &planes)
    }
}

impl VideoFrame for OwnedFrame {
    fn pixels(&self) -> FrameRef<'_> {
        // `new` checked that the data describe a valid frame.
        self.try_pixels()
            .unwrap_or_else(|e| unreachable!("checked in OwnedFrame::new: {e}"))
    }
}

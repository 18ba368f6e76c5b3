//! The `cliptagoverlay` element: draws each frame's cliptag labels onto the frame.
//!
//! ```text
//! gst-launch-1.0 videotestsrc pattern=ball ! cliptag labels="a moving ball,tv static" \
//!     ! cliptagoverlay ! videoconvert ! autovideosink
//! ```

use gst::glib;
use gst::prelude::*;

mod blend;
mod imp;
pub mod panel;
mod settings;

pub use settings::Position;

glib::wrapper! {
    /// The `cliptagoverlay` element: the top labels with score bars on the video.
    pub struct CliptagOverlay(ObjectSubclass<imp::CliptagOverlay>) @extends gst::Element, gst::Object;
}

/// Registers the element with a plugin.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    Position::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "cliptagoverlay",
        gst::Rank::NONE,
        CliptagOverlay::static_type(),
    )
}

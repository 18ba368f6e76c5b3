//! The `cliptag` element.
//!
//! ```text
//! gst-launch-1.0 -m videotestsrc pattern=ball num-buffers=60 \
//!     ! cliptag labels="a moving ball,smpte color bars,tv static" post-messages=true \
//!     ! fakesink
//! gst-launch-1.0 filesrc location=clip.webm ! decodebin ! cliptag model=/models/clip-vit-base-patch32 \
//!     prompt-template="a photo of {}" labels="a dog,a cat,a car" interval=5 ! autovideosink
//! ```

use gst::glib;
use gst::prelude::*;

mod imp;
mod key_writer;
mod outbound;
mod settings;

glib::wrapper! {
    /// The `cliptag` element: open-vocabulary CLIP labels on every video frame.
    pub struct Cliptag(ObjectSubclass<imp::Cliptag>) @extends gst::Element, gst::Object;
}

/// Registers the element with a plugin.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    settings::mark_enums_as_plugin_api();
    gst::Element::register(
        Some(plugin),
        "cliptag",
        gst::Rank::NONE,
        Cliptag::static_type(),
    )
}

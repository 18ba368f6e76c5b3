//! The GStreamer plugin `cliptag` (`libgstcliptag.so`) with the elements `cliptag` and
//! `cliptagoverlay` (draws the labels onto the frames), and a
//! small API to read the labels it attaches ([`meta::read`]).
//!
//! Build it with `cargo build -p gst-cliptag` and point `GST_PLUGIN_PATH` at
//! `target/debug` (or `target/release`):
//!
//! ```text
//! GST_PLUGIN_PATH=target/debug gst-launch-1.0 -m videotestsrc pattern=ball num-buffers=60 \
//!     ! cliptag labels="a moving ball,smpte color bars,tv static" post-messages=true ! fakesink
//! ```

pub mod element;
pub mod frame;
pub mod meta;
pub mod overlay;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    meta::register();
    element::register(plugin)?;
    overlay::register(plugin)
}

/// The plugin's entry points (`gst_plugin_cliptag_get_desc` for the dynamic library).
mod registration {
    use super::plugin_init;

    gst::plugin_define!(
        cliptag,
        env!("CARGO_PKG_DESCRIPTION"),
        plugin_init,
        concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
        "MIT/X11",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_NAME"),
        "https://example.invalid/cliptag",
        env!("BUILD_REL_DATE")
    );
}

/// Registers the plugin statically (for tests and applications that link this crate).
pub fn register_static() -> Result<(), glib::BoolError> {
    registration::plugin_register_static()
}

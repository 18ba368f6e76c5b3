//! Plugin version and release date for `gst::plugin_define!`.

fn main() {
    gst_plugin_version_helper::info()
}

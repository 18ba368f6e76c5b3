//! The element's properties: defaults as declared, values checked when set, changes
//! refused in states that would not apply them, enums described as plugin API.

use std::sync::Once;

use gst::prelude::*;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst init");
        gstcliptag::register_static().expect("register the plugin");
    });
}

fn element() -> gst::Element {
    init();
    gst::ElementFactory::make("cliptag")
        .build()
        .expect("cliptag")
}

/// Every property reads back its declared default on a new element.
#[test]
fn a_new_element_reads_back_every_declared_default() {
    let e = element();
    for pspec in e.list_properties() {
        // GstObject's own (name, parent) are not the element's.
        if pspec.owner_type() != e.type_()
            || !pspec.flags().contains(gst::glib::ParamFlags::READABLE)
            || !pspec.flags().contains(gst::glib::ParamFlags::WRITABLE)
            || pspec.name() == "label-list"
        {
            continue;
        }
        let value = e.property_value(pspec.name());
        let default = pspec.default_value();
        assert!(
            value.compare(default) == Some(std::cmp::Ordering::Equal)
                || format!("{value:?}") == format!("{default:?}"),
            "{}: reads {value:?}, declares {default:?}",
            pspec.name()
        );
    }
}

#[test]
fn unset_strings_are_null_and_an_empty_string_unsets() {
    let e = element();
    assert_eq!(e.property::<Option<String>>("model"), None);
    e.set_property("model", "/models/clip");
    assert_eq!(
        e.property::<Option<String>>("model").as_deref(),
        Some("/models/clip")
    );
    e.set_property("model", "");
    assert_eq!(e.property::<Option<String>>("model"), None);
    e.set_property("stream-id", "cam");
    assert_eq!(
        e.property::<Option<String>>("stream-id").as_deref(),
        Some("cam")
    );
}

#[test]
fn a_bad_dtype_or_device_is_refused_and_the_old_value_kept() {
    let e = element();
    e.set_property("dtype", "f16");
    e.set_property("dtype", "f64");
    assert_eq!(e.property::<String>("dtype"), "f16");
    e.set_property("device", "gpu0");
    assert_eq!(e.property::<String>("device"), "cpu");
    e.set_property("device", "auto");
    assert_eq!(e.property::<String>("device"), "auto");
    if !cliptag_engine::cliptag_model::candle_core::utils::cuda_is_available() {
        // This build cannot run on a GPU: asking for one is refused when set, not when
        // the pipeline starts.
        e.set_property("device", "cuda:0");
        assert_eq!(e.property::<String>("device"), "auto");
    }
}

#[test]
fn enums_are_plugin_api() {
    let e = element();
    for name in ["mode", "overload", "scoring"] {
        let pspec = e.find_property(name).expect(name);
        assert!(
            pspec.value_type().plugin_api_flags().is_some(),
            "{name}: {} is not marked as plugin API",
            pspec.value_type()
        );
    }
}

/// What is read on the way to READY (the model, the engine, the server) cannot change
/// in READY; what attaches the stream cannot change in PAUSED; labels change while
/// PLAYING.
#[test]
fn changes_a_state_would_not_apply_are_refused() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=48 ! cliptag name=tag ! fakesink",
    )
    .expect("pipeline");
    let tag = pipeline
        .downcast_ref::<gst::Bin>()
        .and_then(|b| b.by_name("tag"))
        .expect("tag");
    let flags = |name: &str| tag.find_property(name).expect(name).flags();
    assert!(!flags("model").contains(gst::PARAM_FLAG_MUTABLE_READY));
    assert!(!flags("max-batch").contains(gst::PARAM_FLAG_MUTABLE_READY));
    assert!(flags("mode").contains(gst::PARAM_FLAG_MUTABLE_READY));
    assert!(flags("labels").contains(gst::PARAM_FLAG_MUTABLE_PLAYING));
    pipeline.set_state(gst::State::Ready).expect("ready");
    tag.set_property("model", "/elsewhere");
    tag.set_property("max-batch", 32u32);
    assert_eq!(tag.property::<Option<String>>("model"), None);
    assert_eq!(tag.property::<u32>("max-batch"), 8);
    pipeline.set_state(gst::State::Playing).expect("playing");
    let _ = pipeline.state(gst::ClockTime::from_seconds(10));
    tag.set_property_from_str("mode", "async");
    let mode = tag.property_value("mode");
    assert_eq!(
        gst::glib::EnumValue::from_value(&mode).map(|(_, v)| v.nick().to_string()),
        Some("sync".to_string())
    );
    tag.set_property("labels", "a moving ball,tv static");
    assert_eq!(tag.property::<String>("labels"), "a moving ball,tv static");
    pipeline.set_state(gst::State::Null).expect("null");
    tag.set_property("max-batch", 32u32);
    assert_eq!(tag.property::<u32>("max-batch"), 32);
}

//! `cliptagoverlay`: the panel changes pixels inside its rectangle and none outside, in
//! every format it accepts; frames without meta pass untouched; a writable frame is drawn
//! on in place; odd sizes never fail; and the element under the model writes a PNG.

use std::sync::Once;

use gst::prelude::*;
use gst_check::Harness;
use gstcliptag::meta::{self, Tags};
use gstcliptag::overlay::{Position, panel};

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst init");
        gstcliptag::register_static().expect("register the plugin");
    });
}

fn tags() -> Tags {
    Tags {
        labels: vec![
            ("a moving ball".into(), 0.81),
            ("tv static".into(), 0.12),
            ("smpte color bars".into(), 0.07),
        ],
        version: 3,
        frame: 0,
        computed_for: Some(0),
        stale: false,
        latency_ns: 1_000_000,
        model: "test".into(),
        stream_id: "cam".into(),
        label_set: "cam".into(),
        events: vec!["start:a moving ball".into()],
    }
}

/// A frame of `info` filled with bytes from a fixed pseudo-random sequence (any byte
/// values are a valid picture in every 8-bit format).
fn noise(info: &gst_video::VideoInfo, seed: u32) -> gst::Buffer {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let bytes: Vec<u8> = (0..info.size())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 11) as u8
        })
        .collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    {
        let b = buffer.get_mut().expect("new buffer");
        b.set_pts(gst::ClockTime::ZERO);
        gst_video::VideoMeta::add_full(
            b,
            gst_video::VideoFrameFlags::empty(),
            info.format(),
            info.width(),
            info.height(),
            info.offset(),
            info.stride(),
        )
        .expect("video meta");
    }
    buffer
}

fn harness(info: &gst_video::VideoInfo, properties: &str) -> Harness {
    let mut h = Harness::new_parse(&format!("cliptagoverlay {properties}"));
    h.set_src_caps(info.to_caps().expect("caps"));
    h
}

fn video_info(format: gst_video::VideoFormat, width: u32, height: u32) -> gst_video::VideoInfo {
    gst_video::VideoInfo::builder(format, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .expect("video info")
}

/// Where two frames differ: every changed sample of every component as the block of
/// frame pixels it covers (`x`, `y`, width, height; 1x1 for full-resolution components,
/// 2x2 for a 4:2:0 chroma sample).
fn changed_blocks(
    info: &gst_video::VideoInfo,
    before: &gst::Buffer,
    after: &gst::Buffer,
) -> Vec<(u32, u32, u32, u32)> {
    let a = gst_video::VideoFrameRef::from_buffer_ref_readable(before.as_ref(), info).expect("map");
    let b = gst_video::VideoFrameRef::from_buffer_ref_readable(after.as_ref(), info).expect("map");
    let finfo = info.format_info();
    let mut blocks = Vec::new();
    for c in 0..finfo.n_components() {
        let (w, h) = (
            finfo.scale_width(c as u8, info.width()),
            finfo.scale_height(c as u8, info.height()),
        );
        let (ws, hs) = (finfo.w_sub()[c as usize], finfo.h_sub()[c as usize]);
        let (da, db) = (a.comp_data(c).expect("data"), b.comp_data(c).expect("data"));
        let stride = info.stride()[finfo.plane()[c as usize] as usize] as usize;
        let pstride = finfo.pixel_stride()[c as usize] as usize;
        for y in 0..h {
            for x in 0..w {
                let i = y as usize * stride + x as usize * pstride;
                if da[i] != db[i] {
                    blocks.push((x << ws, y << hs, 1 << ws, 1 << hs));
                }
            }
        }
    }
    blocks
}

fn intersects(rect: &panel::Rect, (x, y, w, h): (u32, u32, u32, u32)) -> bool {
    x < rect.x + rect.width && rect.x < x + w && y < rect.y + rect.height && rect.y < y + h
}

/// The overlay's formats, as its sink template lists them.
fn formats() -> Vec<gst_video::VideoFormat> {
    init();
    let factory = gst::ElementFactory::find("cliptagoverlay").expect("registered");
    let template = factory
        .static_pad_templates()
        .into_iter()
        .find(|t| t.name_template() == "sink")
        .expect("sink template");
    let caps = template.caps();
    let s = caps.structure(0).expect("one structure");
    s.get::<gst::List>("format")
        .expect("a format list")
        .iter()
        .map(|v| gst_video::VideoFormat::from_string(v.get::<&str>().expect("a string")))
        .collect()
}

#[test]
fn the_panel_changes_pixels_inside_its_rectangle_and_none_outside_in_every_format() {
    let formats = formats();
    assert!(formats.len() >= 12, "{formats:?}");
    for format in formats {
        for (position, nick) in [
            (Position::TopLeft, "top-left"),
            (Position::BottomRight, "bottom-right"),
        ] {
            let info = video_info(format, 321, 243);
            // Header, three labels and one event: five lines.
            let rect = panel::panel_rect(info.width(), info.height(), 5, 0.05, position)
                .expect("the panel fits");
            let mut h = harness(&info, &format!("text-size=0.05 position={nick}"));
            let input = noise(&info, 7);
            let mut tagged = input.copy();
            meta::attach_tags(tagged.make_mut(), &tags());
            h.push(tagged).expect("push");
            let output = h.pull().expect("pull");
            let changed = changed_blocks(&info, &input, &output);
            let outside: Vec<_> = changed.iter().filter(|b| !intersects(&rect, **b)).collect();
            assert!(
                outside.is_empty(),
                "{format:?} {nick}: {} pixels changed outside {rect:?}, first {:?}",
                outside.len(),
                outside.first()
            );
            // Distinct pixels with a full-resolution sample (luma, or a colour) changed.
            let area = rect.width * rect.height;
            let full: std::collections::HashSet<_> = changed
                .iter()
                .filter(|b| b.2 == 1 && b.3 == 1)
                .map(|b| (b.0, b.1))
                .collect();
            assert!(
                full.len() as u32 > area / 2,
                "{format:?} {nick}: only {} of {area} pixels in the panel changed",
                full.len()
            );
        }
    }
}

#[test]
fn frames_without_meta_pass_untouched_and_writable_frames_are_drawn_in_place() {
    init();
    let info = video_info(gst_video::VideoFormat::I420, 320, 240);
    let mut h = harness(&info, "");
    let plain = noise(&info, 3);
    let address = plain.map_readable().expect("map").as_ptr();
    let kept = plain.clone(); // held here too: not writable
    h.push(plain).expect("push");
    let out = h.pull().expect("pull");
    assert_eq!(
        out.map_readable().expect("map").as_ptr(),
        address,
        "the same memory"
    );
    assert_eq!(
        out.map_readable().expect("map").as_slice(),
        kept.map_readable().expect("map").as_slice()
    );
    drop((out, kept));

    let mut tagged = noise(&info, 4);
    meta::attach_tags(tagged.make_mut(), &tags());
    let address = tagged.map_readable().expect("map").as_ptr();
    h.push(tagged).expect("push");
    let out = h.pull().expect("pull");
    assert_eq!(
        out.map_readable().expect("map").as_ptr(),
        address,
        "drawn in place, no copy"
    );
    assert!(meta::read(&out).is_some(), "the meta stays on the frame");

    // A frame someone else holds is copied (by GStreamer's make-writable), the original
    // left as it was.
    let mut shared = noise(&info, 5);
    meta::attach_tags(shared.make_mut(), &tags());
    let original = shared.copy_deep().expect("copy");
    let held = shared.clone();
    h.push(shared).expect("push");
    let out = h.pull().expect("pull");
    assert_eq!(
        held.map_readable().expect("map").as_slice(),
        original.map_readable().expect("map").as_slice(),
        "the held frame is unchanged"
    );
    assert_ne!(
        out.map_readable().expect("map").as_slice(),
        original.map_readable().expect("map").as_slice()
    );
}

#[test]
fn odd_sizes_never_fail() {
    init();
    let sizes = [
        (1, 1),
        (2, 2),
        (3, 5),
        (17, 9),
        (33, 1),
        (1, 33),
        (641, 479),
        (4096, 2160),
    ];
    for format in [
        gst_video::VideoFormat::I420,
        gst_video::VideoFormat::Nv12,
        gst_video::VideoFormat::Yuy2,
        gst_video::VideoFormat::Rgb,
        gst_video::VideoFormat::Bgra,
    ] {
        for (w, hgt) in sizes {
            let info = video_info(format, w, hgt);
            for size in ["0.005", "0.5"] {
                let mut h = harness(
                    &info,
                    &format!("text-size={size} max-labels=20 position=bottom-right"),
                );
                let mut tagged = noise(&info, w ^ hgt);
                meta::attach_tags(tagged.make_mut(), &tags());
                h.push(tagged)
                    .unwrap_or_else(|e| panic!("{format:?} {w}x{hgt}: {e:?}"));
                let out = h.pull().expect("pull");
                assert_eq!(out.size(), info.size());
            }
        }
    }
}

#[test]
fn events_stay_listed_for_the_hold_then_go() {
    init();
    let info = video_info(gst_video::VideoFormat::Rgbx, 320, 240);
    let mut h = harness(&info, "show-version=false event-hold=1000");
    let one_line = panel::panel_rect(320, 240, 3, 0.045, Position::TopLeft).expect("fits");
    let with_event = panel::panel_rect(320, 240, 4, 0.045, Position::TopLeft).expect("fits");
    let mut heights = Vec::new();
    for (i, ms) in [0u64, 500, 999, 1000, 1500].into_iter().enumerate() {
        let mut t = tags();
        t.frame = i as u64;
        if i > 0 {
            t.events.clear();
        }
        let input = noise(&info, 11);
        let mut b = input.copy();
        {
            let b = b.make_mut();
            b.set_pts(gst::ClockTime::from_mseconds(ms));
            meta::attach_tags(b, &t);
        }
        h.push(b).expect("push");
        let out = h.pull().expect("pull");
        let changed = changed_blocks(&info, &input, &out);
        let bottom = changed.iter().map(|b| b.1).max().expect("a panel");
        heights.push(bottom + 1 - one_line.y);
    }
    let (three, four) = (one_line.height, with_event.height);
    assert_eq!(heights, vec![four, four, four, three, three]);
}

/// Writes a PNG of videotestsrc's ball tagged by the bundled model with the panel on it.
#[test]
fn a_pipeline_writes_an_overlaid_png() {
    init();
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |overlay: &str, name: &str| -> std::path::PathBuf {
        let description = format!(
            "videotestsrc pattern=ball background-color=0xff406080 num-buffers=10 ! video/x-raw,width=320,height=240 \
             ! cliptag labels=\"a moving ball,tv static,smpte color bars\" {overlay} \
             ! videoconvert ! pngenc snapshot=false ! multifilesink location={}/{name}-%d.png",
            dir.path().display()
        );
        let pipeline = gst::parse::launch(&description).expect("pipeline");
        pipeline.set_state(gst::State::Playing).expect("playing");
        let bus = pipeline.bus().expect("bus");
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(60),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("the pipeline ends");
        assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
        pipeline.set_state(gst::State::Null).expect("null");
        dir.path().join(format!("{name}-9.png"))
    };
    let plain = std::fs::read(write("", "plain")).expect("plain PNG");
    let drawn = std::fs::read(write("! cliptagoverlay", "overlay")).expect("overlaid PNG");
    assert!(drawn.starts_with(b"\x89PNG"));
    let decode = |bytes: &[u8]| image::load_from_memory(bytes).expect("a PNG").to_rgb8();
    let (plain, drawn) = (decode(&plain), decode(&drawn));
    let rect = panel::panel_rect(320, 240, 5, 0.045, Position::TopLeft).expect("fits");
    let mut inside = 0;
    for (x, y, p) in drawn.enumerate_pixels() {
        let changed = p != plain.get_pixel(x, y);
        if rect.contains(x, y) {
            inside += u32::from(changed);
        } else {
            assert!(!changed, "pixel {x},{y} outside the panel changed");
        }
    }
    assert!(
        inside > rect.width * rect.height / 4,
        "{inside} pixels of the panel drawn"
    );
}

/// The panel's height on a frame (the lowest changed row, less the panel's top).
fn panel_height(
    h: &mut Harness,
    info: &gst_video::VideoInfo,
    tags: &Tags,
    pts: Option<u64>,
) -> u32 {
    let input = noise(info, 11);
    let mut b = input.copy();
    {
        let b = b.make_mut();
        b.set_pts(pts.map(gst::ClockTime::from_mseconds));
        meta::attach_tags(b, tags);
    }
    h.push(b).expect("push");
    let out = h.pull().expect("pull");
    let changed = changed_blocks(info, &input, &out);
    let top = changed.iter().map(|b| b.1).min().expect("a panel");
    changed.iter().map(|b| b.1).max().expect("a panel") + 1 - top
}

#[test]
fn without_timestamps_events_stay_for_frames_and_a_flush_forgets_them() {
    init();
    let info = video_info(gst_video::VideoFormat::I420, 320, 240);
    let mut h = harness(&info, "show-version=false event-hold=1000");
    let three = panel::panel_rect(320, 240, 3, 0.045, Position::TopLeft)
        .expect("fits")
        .height;
    let four = panel::panel_rect(320, 240, 4, 0.045, Position::TopLeft)
        .expect("fits")
        .height;
    let at = |frame: u64, event: bool| {
        let mut t = tags();
        t.frame = frame;
        if !event {
            t.events.clear();
        }
        t
    };
    // 1000 ms without timestamps: 30 frames.
    assert_eq!(panel_height(&mut h, &info, &at(0, true), None), four);
    assert_eq!(panel_height(&mut h, &info, &at(29, false), None), four);
    assert_eq!(panel_height(&mut h, &info, &at(30, false), None), three);
    // An event, then a flush: the event is not listed after it.
    assert_eq!(panel_height(&mut h, &info, &at(31, true), None), four);
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    assert_eq!(panel_height(&mut h, &info, &at(32, false), None), three);
}

#[test]
fn tagging_a_buffer_twice_keeps_one_meta_with_the_later_labels() {
    init();
    let mut buffer = gst::Buffer::with_size(16).expect("buffer");
    let first = tags();
    let mut second = tags();
    second.version = 9;
    second.labels.truncate(1);
    meta::attach_tags(buffer.make_mut(), &first);
    meta::attach_tags(buffer.make_mut(), &second);
    assert_eq!(meta::read(&buffer), Some(second));
    // The buffer carries no other meta: every meta on it is a cliptag meta.
    assert_eq!(buffer.iter_meta::<gst::Meta>().count(), 1);
}

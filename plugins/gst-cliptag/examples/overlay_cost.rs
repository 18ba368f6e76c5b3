//! What `cliptagoverlay` costs a frame, through the element itself: 1920x1080 frames
//! carrying labels go through `cliptagoverlay` and, for the baseline, through
//! `identity`, in a gst-check harness (the same buffers over and over, writable, so no
//! copies); the difference is the overlay. Two cases: a steady panel (the same labels
//! and scores on every frame: drawn once, blended every frame) and a panel whose scores
//! change on every frame (drawn, converted and blended every frame). Rounds alternate;
//! medians and ranges are printed.
//!
//! ```text
//! cargo run --release -p gst-cliptag --example overlay_cost [ROUNDS]   # or ./x bench-overlay
//! ```

use std::time::Instant;

use gst_check::Harness;
use gstcliptag::meta::{self, Tags};

const FRAMES: u32 = 200;

fn tags(frame: u64, changing: bool) -> Tags {
    // Scores drawn to two decimals: moving by 0.01 a frame changes the panel each time.
    let wobble = if changing {
        (frame % 50) as f64 * 0.01
    } else {
        0.0
    };
    Tags {
        labels: vec![
            ("a moving ball".into(), 0.40 + wobble),
            ("tv static".into(), 0.35 - wobble / 2.0),
            ("smpte color bars".into(), 0.25 - wobble / 2.0),
        ],
        version: 1,
        frame,
        computed_for: Some(frame),
        stale: false,
        latency_ns: 0,
        model: "bench".into(),
        stream_id: "bench".into(),
        label_set: "bench".into(),
        events: vec![],
    }
}

/// Microseconds a frame through `element`.
fn per_frame(element: &str, format: gst_video::VideoFormat, changing: bool) -> f64 {
    let info = gst_video::VideoInfo::builder(format, 1920, 1080)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .expect("video info");
    let mut h = Harness::new_parse(element);
    h.set_src_caps(info.to_caps().expect("caps"));
    let mut buffer = gst::Buffer::with_size(info.size()).expect("a frame");
    let mut run = |frames: u32, buffer: &mut gst::Buffer| {
        for i in 0..frames {
            let mut b = std::mem::replace(buffer, gst::Buffer::new());
            meta::attach_tags(b.make_mut(), &tags(u64::from(i), changing));
            h.push(b).expect("push");
            *buffer = h.pull().expect("pull");
        }
    };
    run(10, &mut buffer); // caps, first drawing, caches
    let started = Instant::now();
    run(FRAMES, &mut buffer);
    started.elapsed().as_secs_f64() * 1e6 / f64::from(FRAMES)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    gst::init().expect("gst init");
    gstcliptag::register_static().expect("register the plugin");
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "cliptagoverlay on 1920x1080, {FRAMES} frames a round, {rounds} rounds: microseconds a frame, median (range)"
    );
    println!("| format | steady panel | panel changing every frame |");
    println!("| --- | ---: | ---: |");
    use gst_video::VideoFormat as F;
    for format in [F::I420, F::Nv12, F::Bgrx, F::Rgb] {
        let mut cells = Vec::new();
        for changing in [false, true] {
            let costs = (0..rounds)
                .map(|_| {
                    per_frame("cliptagoverlay", format, changing)
                        - per_frame("identity", format, changing)
                })
                .collect();
            let (m, lo, hi) = median(costs);
            cells.push(format!("{m:.0} ({lo:.0} to {hi:.0})"));
        }
        println!("| {format} | {} | {} |", cells[0], cells[1]);
    }
}

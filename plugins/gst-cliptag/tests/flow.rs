//! The element's flow in the pipelines people write: a file source faster than a
//! clock-synchronised sink, flushing seeks while a file plays, serialized events with
//! every frame, a new stream after EOS, inference that breaks, and in async mode, what
//! happens to frames once they have gone downstream.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstcliptag::meta;

/// Pipelines in this file run one at a time: two measure frame rates.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst init");
        gstcliptag::register_static().expect("register the plugin");
    });
}

fn pipeline(description: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(description)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
}

/// Waits for EOS; the error text when an ERROR comes first; panics after `limit`.
fn finish(pipeline: &gst::Pipeline, limit: Duration) -> Result<(), String> {
    let bus = pipeline.bus().expect("bus");
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_nseconds(limit.as_nanos() as u64),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!("{} ({:?})", e.error(), e.debug())),
        _ => panic!("the pipeline neither ended nor failed within {limit:?}"),
    }
}

fn stats(pipeline: &gst::Pipeline, name: &str) -> gst::Structure {
    pipeline
        .by_name(name)
        .expect("element")
        .property::<gst::Structure>("stats")
}

/// A file source faster than a sink that plays at the frame rate: the frames between
/// the two stay bounded, and every frame arrives, in order, with its own result.
#[test]
fn a_source_faster_than_a_synchronised_sink_is_held_back() {
    let _serial = serial();
    let p = pipeline(
        "videotestsrc num-buffers=120 \
         ! video/x-raw,width=1280,height=720,format=I420,framerate=60/1 \
         ! cliptag name=tag ! fakesink name=sink sync=true",
    );
    let tag = p.by_name("tag").expect("tag");
    let sink = p.by_name("sink").expect("sink");
    let entered = Arc::new(AtomicI64::new(0));
    let left = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    // (PTS, frame number in the meta) of each frame reaching the sink.
    type Arrivals = Arc<Mutex<Vec<(Option<gst::ClockTime>, u64)>>>;
    let order: Arrivals = Arc::default();
    {
        let (entered, left, most) = (entered.clone(), left.clone(), most.clone());
        tag.static_pad("sink").expect("sink pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, _| {
                let inside =
                    entered.fetch_add(1, Ordering::SeqCst) + 1 - left.load(Ordering::SeqCst);
                most.fetch_max(inside, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            },
        );
    }
    {
        let (left, order) = (left.clone(), order.clone());
        sink.static_pad("sink").expect("sink pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if let Some(buffer) = info.buffer() {
                    let frame = meta::read(buffer).map_or(u64::MAX, |t| t.frame);
                    order.lock().expect("order").push((buffer.pts(), frame));
                }
                left.fetch_add(1, Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            },
        );
    }
    p.set_state(gst::State::Playing).expect("playing");
    finish(&p, Duration::from_secs(60)).expect("EOS");
    let in_flight_bound = 4 * 8; // max-in-flight 0: four times max-batch (8)
    p.set_state(gst::State::Null).expect("null");
    // Besides the bound, the probes see one frame waiting at the sink pad for room and
    // one on its way from the source pad to the sink.
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= in_flight_bound + 2,
        "{most} frames were inside the element at once, the bound is {in_flight_bound}"
    );
    let order = order.lock().expect("order").clone();
    assert_eq!(order.len(), 120, "frames lost");
    for (i, (pts, frame)) in order.iter().enumerate() {
        assert_eq!(*frame, i as u64, "frame {i} out of order or without meta");
        assert_eq!(
            *pts,
            Some(gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / 60))
        );
    }
}

/// Encodes `frames` of 320x240 VP8 at 30 frames/s into a WebM file.
fn webm(dir: &std::path::Path, frames: u32) -> std::path::PathBuf {
    let file = dir.join("clip.webm");
    let encode = pipeline(&format!(
        "videotestsrc pattern=ball num-buffers={frames} \
         ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vp8enc deadline=1 keyframe-max-dist=15 ! webmmux ! filesink location={}",
        file.display()
    ));
    encode.set_state(gst::State::Playing).expect("playing");
    finish(&encode, Duration::from_secs(120)).expect("encoded");
    encode.set_state(gst::State::Null).expect("null");
    file
}

/// What went past the element's source pad, in order.
#[derive(Debug, Clone)]
enum Seen {
    FlushStop,
    Buffer(Option<gst::ClockTime>),
}

/// 50 flushing seeks while a file plays: after each FlushStop, only frames from the
/// seek's position on. Each result is delivered slowly (a bus handler that takes its
/// time with every result message), so that seeks often land while a result from before
/// them is being delivered.
#[test]
fn fifty_flushing_seeks_let_nothing_from_before_them_through() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tmp");
    let file = webm(tmp.path(), 300);
    let p = pipeline(&format!(
        "filesrc location={} ! decodebin ! cliptag name=tag post-messages=true \
         labels=\"a moving ball,tv static\" max-batch=4 ! fakesink name=sink sync=true",
        file.display()
    ));
    p.bus().expect("bus").set_sync_handler(|_, msg| {
        if msg.structure().is_some_and(|s| s.name() == "cliptag") {
            std::thread::sleep(Duration::from_millis(3));
        }
        gst::BusSyncReply::Drop
    });
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let buffers = Arc::new(AtomicU64::new(0));
    {
        let (seen, buffers) = (seen.clone(), buffers.clone());
        p.by_name("tag")
            .expect("tag")
            .static_pad("src")
            .expect("src")
            .add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_FLUSH,
                move |_, info| {
                    let mut seen = seen.lock().expect("seen");
                    if let Some(buffer) = info.buffer() {
                        seen.push(Seen::Buffer(buffer.pts()));
                        buffers.fetch_add(1, Ordering::SeqCst);
                    } else if let Some(event) = info.event()
                        && event.type_() == gst::EventType::FlushStop
                    {
                        seen.push(Seen::FlushStop);
                    }
                    gst::PadProbeReturn::Ok
                },
            );
    }
    p.set_state(gst::State::Playing).expect("playing");
    let _ = p.state(gst::ClockTime::from_seconds(30));
    let targets: Vec<u64> = (0..50).map(|i| if i % 2 == 0 { 6 } else { 1 }).collect();
    let mut started = Vec::new();
    for (i, &target) in targets.iter().enumerate() {
        // Let a few frames play after the last seek, then seek again.
        let before = buffers.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while buffers.load(Ordering::SeqCst) < before + 3 {
            assert!(
                Instant::now() < deadline,
                "seek {i}: frames stopped flowing"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        started.push(seen.lock().expect("seen").len());
        let position = gst::ClockTime::from_seconds(target);
        assert!(
            p.seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE, position)
                .is_ok(),
            "seek {i} refused"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let seen = seen.lock().expect("seen").clone();
    p.set_state(gst::State::Null).expect("null");
    // Split at each FlushStop: the buffers after the k-th belong to the k-th seek.
    let mut seek = None;
    let mut after = 0;
    for item in &seen {
        match item {
            Seen::FlushStop => {
                seek = Some(seek.map_or(0, |k: usize| k + 1));
            }
            Seen::Buffer(pts) => {
                if let Some(k) = seek {
                    let target = gst::ClockTime::from_seconds(targets[k.min(targets.len() - 1)]);
                    assert!(
                        pts.is_some_and(|p| p >= target),
                        "after the FlushStop of seek {k} to {target}, a frame of {pts:?}"
                    );
                    after += 1;
                }
            }
        }
    }
    assert_eq!(seek, Some(targets.len() - 1), "FlushStops seen: {seek:?}");
    assert!(after >= 3 * targets.len(), "{after} frames after the seeks");
}

/// A serialized event with every frame travels with the frames: they still batch, and
/// the rate stays that of frames alone.
#[test]
fn an_event_with_every_frame_neither_unbatches_nor_slows_the_stream() {
    let _serial = serial();
    let run = |with_events: bool| -> (f64, f64) {
        let p = pipeline(
            "videotestsrc name=src pattern=ball num-buffers=240 \
             ! video/x-raw,width=320,height=240 \
             ! cliptag name=tag max-batch=8 max-latency=20 labels=\"a moving ball,tv static\" \
             ! fakesink sync=false",
        );
        if with_events {
            let src = p
                .by_name("src")
                .expect("src")
                .static_pad("src")
                .expect("pad");
            src.add_probe(gst::PadProbeType::BUFFER, |pad, _| {
                let s = gst::Structure::new_empty("frame-note");
                pad.push_event(gst::event::CustomDownstream::new(s));
                gst::PadProbeReturn::Ok
            });
        }
        let started = Instant::now();
        p.set_state(gst::State::Playing).expect("playing");
        finish(&p, Duration::from_secs(120)).expect("EOS");
        let rate = 240.0 / started.elapsed().as_secs_f64();
        let s = stats(&p, "tag");
        p.set_state(gst::State::Null).expect("null");
        let sizes = s.get::<gst::Array>("batch-sizes").expect("batch-sizes");
        let (mut frames, mut batches) = (0.0, 0.0);
        for (n, count) in sizes.iter().enumerate() {
            let count = count.get::<u64>().unwrap_or(0) as f64;
            // Each of these frames rode in a batch of n.
            frames += count;
            if n > 0 {
                batches += count / n as f64;
            }
        }
        (rate, frames / batches.max(1.0))
    };
    run(false);
    let mut plain = Vec::new();
    let mut noted = Vec::new();
    for _ in 0..3 {
        plain.push(run(false));
        noted.push(run(true));
    }
    let median = |v: &mut Vec<(f64, f64)>, f: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (plain_rate, noted_rate) = (median(&mut plain, |r| r.0), median(&mut noted, |r| r.0));
    let noted_batch = median(&mut noted, |r| r.1);
    assert!(
        noted_batch > 2.0,
        "with an event per frame, frames rode in batches of {noted_batch:.1} on average"
    );
    // The batch size above is the precise check; the rate only catches a stream that
    // events slow down outright (a flush or a wait per event), with room for shared
    // machines whose speed swings by 10 to 20% between the runs.
    assert!(
        noted_rate >= 0.75 * plain_rate,
        "{noted_rate:.0} frames/s with an event per frame, {plain_rate:.0} without"
    );
}

/// After EOS, a new stream (STREAM_START, caps, segment, frames) goes through without a
/// flush.
#[test]
fn a_new_stream_after_eos_flows_without_a_flush() {
    let _serial = serial();
    init();
    let mut h = gst_check::Harness::new("cliptag");
    h.element()
        .expect("element")
        .set_property("labels", "a moving ball,tv static");
    h.set_src_caps_str("video/x-raw,format=RGB,width=64,height=48,framerate=30/1");
    h.play();
    let push = |h: &mut gst_check::Harness, n: u64| {
        for i in 0..n {
            let mut buffer = gst::Buffer::with_size(64 * 48 * 3).expect("buffer");
            buffer
                .get_mut()
                .expect("writable")
                .set_pts(gst::ClockTime::from_mseconds(i * 33));
            assert_eq!(h.push(buffer), Ok(gst::FlowSuccess::Ok));
        }
    };
    push(&mut h, 4);
    assert!(h.push_event(gst::event::Eos::new()));
    let pull = |h: &mut gst_check::Harness, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        while got < n {
            match h.try_pull() {
                Some(_) => got += 1,
                None if Instant::now() > deadline => break,
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        got
    };
    assert_eq!(pull(&mut h, 4), 4);
    // A second stream, as concat or a playlist sends it.
    assert!(h.push_event(gst::event::StreamStart::new("second")));
    h.set_src_caps_str("video/x-raw,format=RGB,width=64,height=48,framerate=30/1");
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    push(&mut h, 5);
    assert_eq!(
        pull(&mut h, 5),
        5,
        "frames of a new stream after EOS did not come out"
    );
}

/// A panic in the inference worker: an ERROR on the bus that names the cause, and the
/// pipeline ends instead of waiting for results forever.
#[test]
fn a_panic_in_the_worker_ends_the_pipeline_with_an_error_naming_it() {
    let _serial = serial();
    cliptag_engine::fault::panic_on_stream("doomed", 10);
    let p = pipeline(
        "videotestsrc pattern=ball num-buffers=200 ! video/x-raw,width=320,height=240 \
         ! cliptag stream-id=doomed ! fakesink sync=false",
    );
    p.set_state(gst::State::Playing).expect("playing");
    let outcome = finish(&p, Duration::from_secs(60));
    p.set_state(gst::State::Null).expect("null");
    cliptag_engine::fault::disarm("doomed");
    let error = outcome.expect_err("the pipeline reached EOS past a failed inference");
    assert!(
        error.contains("panicked") && error.contains("fault injected"),
        "{error}"
    );
}

/// Two pipelines on one engine, one of them failing: the other either goes on to EOS or
/// gets the same error; neither hangs.
#[test]
fn a_panic_on_a_shared_engine_leaves_no_stream_hanging() {
    let _serial = serial();
    cliptag_engine::fault::panic_on_stream("shared-doomed", 20);
    let make = |id: &str| {
        pipeline(&format!(
            "videotestsrc pattern=ball num-buffers=150 ! video/x-raw,width=320,height=240 \
             ! cliptag stream-id={id} engine-id=flow-shared max-batch=8 max-latency=30 \
             ! fakesink sync=false"
        ))
    };
    let (doomed, healthy) = (make("shared-doomed"), make("shared-healthy"));
    doomed.set_state(gst::State::Playing).expect("playing");
    healthy.set_state(gst::State::Playing).expect("playing");
    let doomed_outcome = finish(&doomed, Duration::from_secs(60));
    let healthy_outcome = finish(&healthy, Duration::from_secs(60));
    doomed.set_state(gst::State::Null).expect("null");
    healthy.set_state(gst::State::Null).expect("null");
    cliptag_engine::fault::disarm("shared-doomed");
    let error = doomed_outcome.expect_err("the failing stream reached EOS");
    assert!(error.contains("fault injected"), "{error}");
    if let Err(other) = healthy_outcome {
        assert!(
            other.contains("fault injected"),
            "the other stream failed for another reason: {other}"
        );
    }
}

/// Async mode: a buffer that does not hold the negotiated frame is an error returned
/// upstream, and nothing is pushed.
#[test]
fn async_mode_refuses_an_unreadable_buffer_without_pushing_it() {
    let _serial = serial();
    init();
    let mut h = gst_check::Harness::new("cliptag");
    let element = h.element().expect("element");
    element.set_property_from_str("mode", "async");
    h.set_src_caps_str("video/x-raw,format=RGB,width=64,height=48,framerate=30/1");
    h.play();
    let short = gst::Buffer::with_size(10).expect("buffer");
    assert_eq!(h.push(short), Err(gst::FlowError::Error));
    assert!(h.try_pull().is_none(), "the unreadable buffer was pushed");
}

/// GRAY8 frames are taken as they are.
#[test]
fn gray8_frames_are_tagged() {
    let _serial = serial();
    let p = pipeline(
        "videotestsrc pattern=checkers-8 num-buffers=8 ! video/x-raw,format=GRAY8,width=320,height=240 \
         ! cliptag labels=\"a checkerboard,a moving ball\" ! appsink name=out sync=false",
    );
    let sink = p
        .by_name("out")
        .expect("out")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    p.set_state(gst::State::Playing).expect("GRAY8 negotiates");
    let mut tops = Vec::new();
    for _ in 0..8 {
        let sample = sink.pull_sample().expect("sample");
        let tags = meta::read(sample.buffer().expect("buffer")).expect("meta");
        tops.push(tags.top().map(String::from));
    }
    p.set_state(gst::State::Null).expect("null");
    assert!(
        tops.iter().all(|t| t.as_deref() == Some("a checkerboard")),
        "{tops:?}"
    );
}

/// Pixels that count how many frames are alive.
struct Counted {
    data: Vec<u8>,
    live: Arc<AtomicI64>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl AsMut<[u8]> for Counted {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Async mode keeps no frame once it has gone downstream and the engine is done with it.
#[test]
fn async_mode_keeps_no_frame_it_has_passed_on() {
    let _serial = serial();
    init();
    let mut h = gst_check::Harness::new("cliptag");
    h.element()
        .expect("element")
        .set_property_from_str("mode", "async");
    h.set_src_caps_str("video/x-raw,format=RGB,width=64,height=48,framerate=30/1");
    h.play();
    let live = Arc::new(AtomicI64::new(0));
    for i in 0..200u64 {
        live.fetch_add(1, Ordering::SeqCst);
        let mut buffer = gst::Buffer::from_mut_slice(Counted {
            data: vec![128; 64 * 48 * 3],
            live: live.clone(),
        });
        buffer
            .get_mut()
            .expect("writable")
            .set_pts(gst::ClockTime::from_mseconds(i * 33));
        assert_eq!(h.push(buffer), Ok(gst::FlowSuccess::Ok));
        drop(h.pull().expect("passed on at once"));
        // Paced a little, so that the engine infers many of them.
        std::thread::sleep(Duration::from_millis(2));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while live.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = h
        .element()
        .expect("element")
        .property::<gst::Structure>("stats");
    assert!(stats.get::<u64>("inferred").unwrap_or(0) > 0, "{stats}");
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "frames passed on are still held while the element runs: {stats}"
    );
}

//! The element in real pipelines, with the bundled model: videotestsrc patterns in four
//! formats, an encoded file, shared engines, both modes, label changes while playing,
//! errors, caps changes, seeks and a hundred state cycles.

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstcliptag::meta::{self, Tags};

/// Pipelines in this file run one at a time: several tests measure wall-clock rates that
/// two pipelines sharing two cores would distort.
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

/// The visually distinct videotestsrc patterns, the properties that make them so, and
/// the prompt the bundled model knows them by.
const PATTERNS: [(&str, &str, &str); 21] = [
    ("smpte", "", "smpte color bars"),
    ("smpte75", "", "smpte 75% color bars"),
    ("smpte100", "", "100% color bars"),
    ("smpte-rp-219", "", "smpte rp 219 test pattern"),
    ("snow", "", "tv static"),
    ("black", "", "a black screen"),
    ("white", "", "a white screen"),
    ("red", "", "a red screen"),
    ("green", "", "a green screen"),
    ("blue", "", "a blue screen"),
    ("checkers-8", "", "a checkerboard"),
    ("circular", "", "concentric circles"),
    ("zone-plate", "kx2=20 ky2=20 kt=1", "a zone plate"),
    (
        "chroma-zone-plate",
        "kx2=20 ky2=20 kt=1",
        "a chroma zone plate",
    ),
    ("gamut", "", "gamut checkers"),
    ("ball", "", "a moving ball"),
    ("bar", "horizontal-speed=4", "a vertical bar"),
    ("pinwheel", "", "a pinwheel"),
    ("spokes", "", "spokes"),
    ("gradient", "", "a gradient"),
    ("colors", "", "a grid of all colors"),
];

fn all_prompts() -> String {
    PATTERNS.iter().map(|p| p.2).collect::<Vec<_>>().join(",")
}

/// Runs a pipeline ending in `appsink name=out` to EOS; returns every buffer's tags (None
/// for a buffer without the meta) and the caps sizes seen.
fn run(description: &str) -> Vec<Option<Tags>> {
    run_with(description, |_| {})
}

fn run_with(description: &str, during: impl Fn(&gst::Pipeline)) -> Vec<Option<Tags>> {
    init();
    let pipeline = gst::parse::launch(description)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = pipeline
        .by_name("out")
        .expect("appsink out")
        .downcast::<gst_app::AppSink>()
        .expect("an appsink");
    let tags: Arc<Mutex<Vec<Option<Tags>>>> = Arc::default();
    let t = tags.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                t.lock().expect("tags").push(meta::read(buffer));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).expect("playing");
    during(&pipeline);
    let bus = pipeline.bus().expect("bus");
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{description}: {} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).expect("null");
    tags.lock().expect("tags").clone()
}

/// Waits for a pipeline's EOS; fails on an error message or after a minute.
fn wait_for_eos(pipeline: &impl IsA<gst::Element>) {
    let bus = pipeline.bus().expect("bus");
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    assert!(
        matches!(
            msg.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{msg:?}"
    );
}

fn top_share(tags: &[Option<Tags>], want: &str) -> f64 {
    let hits = tags
        .iter()
        .filter(|t| t.as_ref().and_then(|t| t.top()) == Some(want))
        .count();
    hits as f64 / tags.len().max(1) as f64
}

#[test]
fn every_distinct_pattern_wins_in_rgb_bgrx_i420_and_nv12() {
    let _serial = serial();
    let labels = all_prompts();
    let mut failures = Vec::new();
    for format in ["RGB", "BGRx", "I420", "NV12"] {
        for (pattern, props, prompt) in PATTERNS {
            // The bar sits at the left edge: the centre crop of a wide frame would cut it off
            // (the model then rightly sees a black screen), so it gets a square frame.
            let width = if pattern == "bar" { 288 } else { 352 };
            let tags = run(&format!(
                "videotestsrc pattern={pattern} {props} num-buffers=12 \
                 ! video/x-raw,format={format},width={width},height=288 \
                 ! cliptag labels=\"{labels}\" max-batch=4 ! appsink name=out sync=false"
            ));
            assert_eq!(tags.len(), 12, "{pattern} {format}: frames lost");
            assert!(
                tags.iter().all(Option::is_some),
                "{pattern} {format}: a frame without meta"
            );
            let share = top_share(&tags, prompt);
            if share < 0.95 {
                let got: Vec<_> = tags
                    .iter()
                    .map(|t| t.as_ref().and_then(|t| t.top().map(String::from)))
                    .collect();
                failures.push(format!(
                    "{pattern} in {format}: {:.0}% ({got:?})",
                    share * 100.0
                ));
            }
        }
    }
    assert!(failures.is_empty(), "patterns below 95%: {failures:#?}");
}

#[test]
fn an_encoded_file_decodes_and_tags() {
    let _serial = serial();
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("clip.webm");
    let encode = format!(
        "videotestsrc pattern=smpte num-buffers=30 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vp8enc deadline=1 ! webmmux ! filesink location={}",
        file.display()
    );
    init();
    let pipeline = gst::parse::launch(&encode).expect("encoder pipeline");
    pipeline.set_state(gst::State::Playing).expect("playing");
    wait_for_eos(&pipeline);
    pipeline.set_state(gst::State::Null).expect("null");
    let tags = run(&format!(
        "filesrc location={} ! decodebin ! cliptag labels=\"{}\" ! appsink name=out sync=false",
        file.display(),
        all_prompts()
    ));
    assert_eq!(tags.len(), 30);
    let share = top_share(&tags, "smpte color bars");
    assert!(
        share >= 0.95,
        "smpte won on {:.0}% of decoded frames",
        share * 100.0
    );
}

#[test]
fn eos_delivers_every_frame_in_order_with_its_own_result() {
    let _serial = serial();
    let tags = run(&format!(
        "videotestsrc pattern=ball num-buffers=40 ! video/x-raw,width=320,height=240 \
         ! cliptag labels=\"{}\" max-batch=8 max-latency=50 ! appsink name=out sync=false",
        all_prompts()
    ));
    assert_eq!(tags.len(), 40);
    for (i, t) in tags.iter().enumerate() {
        let t = t.as_ref().expect("meta");
        assert_eq!(t.frame, i as u64);
        assert_eq!(t.computed_for, Some(i as u64));
        assert!(!t.stale);
        assert_eq!(t.version, 1);
        assert_eq!(t.model, "cliptag-tiny (bundled)");
    }
}

#[test]
fn labels_change_while_playing_and_frames_say_which_version() {
    let _serial = serial();
    let tags = run_with(
        "videotestsrc pattern=ball num-buffers=120 is-live=true \
         ! video/x-raw,width=320,height=240,framerate=60/1 \
         ! cliptag name=tag labels=\"a moving ball,smpte color bars\" ! appsink name=out",
        |pipeline| {
            std::thread::sleep(Duration::from_millis(700));
            let tag = pipeline.by_name("tag").expect("cliptag");
            tag.set_property("labels", "tv static,a checkerboard,concentric circles");
        },
    );
    assert_eq!(tags.len(), 120);
    let versions: Vec<u64> = tags
        .iter()
        .map(|t| t.as_ref().expect("meta").version)
        .collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    assert_eq!(versions.first(), Some(&1));
    assert_eq!(
        versions.last(),
        Some(&2),
        "the change never reached a frame"
    );
    for t in tags.iter().flatten() {
        let names: Vec<&str> = t.labels.iter().map(|(l, _)| l.as_str()).collect();
        if t.version == 1 {
            assert!(
                names
                    .iter()
                    .all(|n| ["a moving ball", "smpte color bars"].contains(n)),
                "{names:?}"
            );
        } else {
            assert_eq!(names.len(), 3, "{names:?}");
            assert!(!names.contains(&"a moving ball"));
        }
    }
}

#[test]
fn two_pipelines_with_one_engine_id_batch_together() {
    let _serial = serial();
    init();
    let make = |name: &str| {
        gst::parse::launch(&format!(
            "videotestsrc pattern=ball num-buffers=60 ! video/x-raw,width=320,height=240 \
             ! cliptag name={name} engine-id=shared-test stream-id={name} max-batch=8 max-latency=40 \
             ! fakesink sync=false"
        ))
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
    };
    let (a, b) = (make("a"), make("b"));
    a.set_state(gst::State::Playing).expect("a");
    b.set_state(gst::State::Playing).expect("b");
    for p in [&a, &b] {
        wait_for_eos(p);
    }
    let stats = a
        .by_name("a")
        .expect("a")
        .property::<gst::Structure>("stats");
    let sizes = stats.get::<gst::Array>("batch-sizes").expect("batch-sizes");
    let batched: u64 = sizes
        .iter()
        .skip(2)
        .filter_map(|v| v.get::<u64>().ok())
        .sum();
    assert!(
        batched > 0,
        "no frame of a rode in a batch larger than one: {stats}"
    );
    assert_eq!(stats.get::<u64>("inferred").expect("inferred"), 60);
    // dtype=auto (the default): bf16 exactly where the CPU has bf16 dot products.
    let native = cliptag_engine::cliptag_model::CpuFeatures::detected().native_bf16();
    assert_eq!(
        stats.get::<String>("dtype").expect("dtype"),
        if native { "bf16" } else { "f32" }
    );
    a.set_state(gst::State::Null).expect("null");
    b.set_state(gst::State::Null).expect("null");
}

#[test]
fn async_mode_never_holds_a_frame() {
    let _serial = serial();
    let started = Instant::now();
    let tags = run(
        "videotestsrc pattern=ball num-buffers=90 is-live=true ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! cliptag mode=async labels=\"a moving ball,tv static\" ! appsink name=out",
    );
    let elapsed = started.elapsed();
    assert_eq!(tags.len(), 90);
    // 90 frames at 30/s: 3 s; a stalled stream would take longer.
    assert!(elapsed < Duration::from_millis(4500), "{elapsed:?}");
    let with_result: Vec<&Tags> = tags.iter().flatten().collect();
    assert!(
        with_result.len() > 60,
        "few frames carried a result: {}",
        with_result.len()
    );
    assert!(with_result.iter().all(|t| t.top() == Some("a moving ball")));
    assert!(with_result.iter().all(|t| t.computed_for < Some(t.frame)));
}

#[test]
fn a_live_source_faster_than_the_model_keeps_its_rate_under_skip() {
    let _serial = serial();
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc pattern=black num-buffers=240 is-live=true \
         ! video/x-raw,format=I420,width=1920,height=1080,framerate=120/1 \
         ! cliptag name=tag overload=skip max-batch=1 max-latency=0 labels=\"a black screen,tv static\" \
         ! fakesink name=out sync=true",
    )
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let started = Instant::now();
    pipeline.set_state(gst::State::Playing).expect("playing");
    wait_for_eos(&pipeline);
    let elapsed = started.elapsed();
    let stats = pipeline
        .by_name("tag")
        .expect("tag")
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).expect("null");
    let skipped = stats.get::<u64>("skipped").expect("skipped");
    let inferred = stats.get::<u64>("inferred").expect("inferred");
    assert_eq!(stats.get::<u64>("frames-in").expect("frames-in"), 240);
    assert!(skipped > 0, "nothing skipped: {stats}");
    assert_eq!(skipped + inferred, 240, "{stats}");
    // 240 frames at 120/s are two seconds of stream; blocking on a model slower than the
    // source would stretch them.
    assert!(
        elapsed < Duration::from_millis(3500),
        "the source was slowed down: {elapsed:?} {stats}"
    );
}

#[test]
fn a_missing_model_fails_the_state_change_with_a_message_naming_it() {
    let _serial = serial();
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=10 ! cliptag model=/nonexistent/clip-model ! fakesink",
    )
    .expect("pipeline");
    let started = Instant::now();
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let text = first_error(&pipeline);
    assert!(text.contains("/nonexistent/clip-model"), "{text}");
    pipeline.set_state(gst::State::Null).expect("null");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The text of the first error on `pipeline`'s bus within 10 s.
fn first_error(pipeline: &gst::Element) -> String {
    let msg = pipeline
        .bus()
        .expect("bus")
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error])
        .expect("an error on the bus");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!("filtered")
    };
    format!("{} {:?}", err.error(), err.debug())
}

#[test]
fn broker_settings_that_cannot_work_fail_the_state_change_naming_the_cause() {
    let _serial = serial();
    init();
    for (properties, cause) in [
        ("nats-url=nats//127.0.0.1:4222", "nats//127.0.0.1:4222"),
        ("mqtt-url=http://u:secret@broker", "expected mqtt://"),
        ("nats-url=nats://127.0.0.1:9 stream-id=cam.1", "cam.1"),
        ("labels-key=lobby", "needs nats-url"),
        (
            "nats-url=nats://127.0.0.1:9 labels-key=\"a b\"",
            "labels key",
        ),
    ] {
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc num-buffers=5 ! cliptag {properties} ! fakesink"
        ))
        .expect("pipeline");
        assert!(
            pipeline.set_state(gst::State::Playing).is_err(),
            "{properties} was accepted"
        );
        let text = first_error(&pipeline);
        assert!(text.contains(cause), "{properties}: {text}");
        assert!(!text.contains("secret"), "the password shows: {text}");
        pipeline.set_state(gst::State::Null).expect("null");
    }
}

#[test]
fn broker_passwords_never_read_back() {
    init();
    let tag = gst::ElementFactory::make("cliptag")
        .build()
        .expect("cliptag");
    tag.set_property("nats-url", "nats://cam:s3cret@nats.local:4222");
    tag.set_property("mqtt-url", "mqtts://cam:s3cret@broker.local");
    tag.set_property("mqtt-password", "s3cret");
    assert_eq!(
        tag.property::<String>("nats-url"),
        "nats://cam:***@nats.local:4222"
    );
    assert_eq!(
        tag.property::<String>("mqtt-url"),
        "mqtts://cam:***@broker.local"
    );
    let password = tag.find_property("mqtt-password").expect("mqtt-password");
    assert!(!password.flags().contains(gst::glib::ParamFlags::READABLE));
}

#[test]
fn an_unreachable_broker_is_said_once_and_the_video_runs_on() {
    let _serial = serial();
    init();
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,width=64,height=48 ! \
         cliptag name=tag nats-url=nats://127.0.0.1:{port} mqtt-url=mqtt://127.0.0.1:{port} \
         broker-outbox=8 ! fakesink"
    ))
    .expect("pipeline");
    pipeline.set_state(gst::State::Playing).expect("playing");
    let bus = pipeline.bus().expect("bus");
    let mut warnings = Vec::new();
    loop {
        let msg = bus
            .timed_pop(gst::ClockTime::from_seconds(30))
            .expect("EOS within 30 s");
        match msg.view() {
            gst::MessageView::Warning(w) => warnings.push(format!("{} {:?}", w.error(), w.debug())),
            gst::MessageView::Error(e) => panic!("error: {} {:?}", e.error(), e.debug()),
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    let stats = pipeline
        .clone()
        .downcast::<gst::Bin>()
        .ok()
        .and_then(|bin| bin.by_name("tag"))
        .expect("tag")
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).expect("null");
    assert_eq!(
        warnings.iter().filter(|w| w.contains("NATS")).count(),
        1,
        "{warnings:?}"
    );
    assert_eq!(
        warnings.iter().filter(|w| w.contains("MQTT")).count(),
        1,
        "{warnings:?}"
    );
    assert!(
        warnings.iter().all(|w| w.contains("unreachable")),
        "{warnings:?}"
    );
    assert_eq!(stats.get::<u64>("frames-in").ok(), Some(30), "{stats}");
    // 30 detections into an outbox of 8: the oldest 22 were dropped and counted.
    assert_eq!(stats.get::<u64>("nats-dropped").ok(), Some(22), "{stats}");
    assert_eq!(stats.get::<u64>("mqtt-dropped").ok(), Some(22), "{stats}");
    assert_eq!(
        stats.get::<bool>("nats-connected").ok(),
        Some(false),
        "{stats}"
    );
}

#[test]
fn caps_changes_mid_stream_work() {
    let _serial = serial();
    let tags = run_with(
        "videotestsrc pattern=smpte num-buffers=60 ! capsfilter name=f caps=video/x-raw,width=320,height=240 \
         ! cliptag labels=\"smpte color bars,tv static\" ! appsink name=out sync=false",
        |pipeline| {
            std::thread::sleep(Duration::from_millis(50));
            let f = pipeline.by_name("f").expect("capsfilter");
            f.set_property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("width", 640)
                    .field("height", 360)
                    .build(),
            );
        },
    );
    assert_eq!(tags.len(), 60);
    assert!(
        tags.iter()
            .all(|t| t.as_ref().and_then(|t| t.top()) == Some("smpte color bars"))
    );
}

#[test]
fn a_flushing_seek_lets_no_stale_label_across() {
    let _serial = serial();
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! cliptag labels=\"a moving ball,tv static\" max-batch=4 ! appsink name=out sync=false max-buffers=4",
    )
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = pipeline
        .by_name("out")
        .expect("out")
        .downcast::<gst_app::AppSink>()
        .expect("appsink");
    pipeline.set_state(gst::State::Paused).expect("paused");
    let _ = pipeline.state(gst::ClockTime::from_seconds(30));
    pipeline.set_state(gst::State::Playing).expect("playing");
    let mut before = Vec::new();
    for _ in 0..20 {
        let s = sink.pull_sample().expect("sample");
        before.push(meta::read(s.buffer().expect("buffer")).expect("meta"));
    }
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::ClockTime::from_seconds(10),
        )
        .expect("seek");
    let mut after = Vec::new();
    for _ in 0..20 {
        let s = sink.pull_sample().expect("sample");
        let pts = s.buffer().and_then(|b| b.pts());
        let t = meta::read(s.buffer().expect("buffer")).expect("meta");
        after.push((pts, t));
    }
    pipeline.set_state(gst::State::Null).expect("null");
    let last_before = before.last().map(|t| t.frame).expect("frames before");
    for (pts, t) in &after {
        if pts.is_some_and(|p| p >= gst::ClockTime::from_seconds(10)) {
            assert!(!t.stale);
            assert!(
                t.computed_for.is_some_and(|c| c > last_before),
                "a pre-seek result crossed: {t:?}"
            );
        }
    }
    assert!(
        after
            .iter()
            .any(|(pts, _)| pts.is_some_and(|p| p >= gst::ClockTime::from_seconds(10)))
    );
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[test]
fn a_hundred_state_cycles_leak_neither_threads_nor_memory() {
    let _serial = serial();
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc pattern=ball is-live=true ! video/x-raw,width=320,height=240,framerate=100/1 \
         ! cliptag labels=\"a moving ball,tv static\" ! fakesink",
    )
    .expect("pipeline");
    // Every cycle loads the model, starts the worker, attaches a stream, and tears it
    // all down again.
    let cycle = || {
        pipeline.set_state(gst::State::Playing).expect("playing");
        let _ = pipeline.state(gst::ClockTime::from_seconds(10));
        std::thread::sleep(Duration::from_millis(20));
        pipeline.set_state(gst::State::Null).expect("null");
    };
    for _ in 0..5 {
        cycle();
    }
    let (threads_before, rss_before) = (threads(), rss_kib());
    for _ in 0..100 {
        cycle();
    }
    let (threads_after, rss_after) = (threads(), rss_kib());
    assert!(
        threads_after <= threads_before + 2,
        "threads {threads_before} -> {threads_after}"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
}

/// A directory holding only `libgstcliptag.so`, for `GST_PLUGIN_PATH`: cargo builds the
/// library for the tests next to them in `deps/`, among files GStreamer must not scan.
fn plugin_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable");
        let deps = exe.parent().expect("deps directory");
        let candidates = [
            deps.join("libgstcliptag.so"),
            deps.join("../libgstcliptag.so"),
        ];
        let lib = candidates
            .iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("libgstcliptag.so is not in {}", deps.display()));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(lib, dir.path().join("libgstcliptag.so")).expect("copy the plugin");
        dir
    })
    .path()
    .to_path_buf()
}

#[test]
fn python_reads_the_meta_through_pygobject() {
    let _serial = serial();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/read_meta.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(&example)
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", plugin_dir().join("registry.bin"))
        .output()
        .expect("run python3 (Debian python3-gi)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 30, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains(&format!("\"frame\": {i},")), "{line}");
        assert!(
            line.contains("[[\"a moving ball\","),
            "the ball is not first: {line}"
        );
    }
}

#[test]
fn gst_inspect_shows_the_overlay_with_its_properties_and_formats() {
    let _serial = serial();
    let inspect = |args: &[&str]| {
        let out = std::process::Command::new("gst-inspect-1.0")
            .args(args)
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", plugin_dir().join("registry.bin"))
            .output()
            .expect("run gst-inspect-1.0 (Debian gstreamer1.0-tools)");
        assert!(out.status.success(), "gst-inspect-1.0 {args:?} failed");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let text = inspect(&["cliptagoverlay"]);
    for property in [
        "max-labels",
        "min-score",
        "position",
        "text-size",
        "text-color",
        "bar-color",
        "background-color",
        "show-version",
        "show-stale",
        "show-events",
        "event-hold",
    ] {
        assert!(
            text.contains(&format!("  {property} ")),
            "{property} missing:\n{text}"
        );
    }
    assert!(
        text.contains("0xAARRGGBB"),
        "colour format missing:\n{text}"
    );
    assert!(text.contains("milliseconds"), "units missing:\n{text}");
    for format in ["I420", "NV12", "RGBA", "BGRx", "YUY2"] {
        assert!(
            text.contains(&format!("(string){format}")),
            "{format}:\n{text}"
        );
    }
    let plugin = inspect(&["--plugin", "cliptag"]);
    assert!(
        plugin.contains("  cliptagoverlay: cliptag overlay") && plugin.contains("2 elements"),
        "the plugin lists both elements:\n{plugin}"
    );
}

#[test]
fn gst_inspect_shows_every_property_with_its_blurb() {
    let _serial = serial();
    let out = std::process::Command::new("gst-inspect-1.0")
        .arg("cliptag")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", plugin_dir().join("registry.bin"))
        .output()
        .expect("run gst-inspect-1.0 (Debian gstreamer1.0-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for property in [
        "model",
        "device",
        "dtype",
        "labels",
        "label-list",
        "labels-file",
        "prompt-template",
        "interval",
        "top-k",
        "threshold",
        "scoring",
        "smoothing",
        "max-batch",
        "max-latency",
        "mode",
        "overload",
        "stream-id",
        "engine-id",
        "post-messages",
        "nats-url",
        "nats-subject-prefix",
        "nats-format",
        "labels-key",
        "labels-bucket",
        "mqtt-url",
        "mqtt-topic-prefix",
        "broker-outbox",
        "stats",
    ] {
        assert!(
            text.contains(&format!("  {property} ")),
            "{property} missing:\n{text}"
        );
    }
    assert!(text.contains("(milliseconds)"), "units missing:\n{text}");
    assert!(
        text.contains("GstCliptagMeta"),
        "the meta is not described:\n{text}"
    );
}

#[test]
fn in_a_harness_every_buffer_comes_out_with_its_meta_and_latency_is_reported() {
    let _serial = serial();
    init();
    let mut h = gst_check::Harness::new("cliptag");
    h.element()
        .expect("element")
        .set_property("labels", "a moving ball,tv static");
    h.set_src_caps_str("video/x-raw,format=RGB,width=64,height=48,framerate=30/1");
    h.play();
    for i in 0..10u64 {
        let mut buffer = gst::Buffer::with_size(64 * 48 * 3).expect("buffer");
        buffer
            .get_mut()
            .expect("writable")
            .set_pts(gst::ClockTime::from_mseconds(i * 33));
        assert_eq!(h.push(buffer), Ok(gst::FlowSuccess::Ok));
    }
    h.push_event(gst::event::Eos::new());
    for i in 0..10u64 {
        let out = h.pull().expect("a buffer out");
        assert_eq!(out.pts(), Some(gst::ClockTime::from_mseconds(i * 33)));
        let tags = meta::read(&out).expect("meta");
        assert_eq!(tags.frame, i);
        assert_eq!(tags.labels.len(), 2);
    }
    let mut q = gst::query::Latency::new();
    assert!(
        h.element()
            .expect("element")
            .static_pad("src")
            .expect("src")
            .query(&mut q)
    );
    let (_, min, _) = q.result();
    // At least the configured max-latency (20 ms) plus a measured forward pass.
    assert!(min > gst::ClockTime::from_mseconds(20), "{min}");
}

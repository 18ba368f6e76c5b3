//! `cliptag run`: the main job. A pipeline `source ! cliptag ! fakesink` with the gRPC
//! service beside it (and the web console with --http), printing tags as they change,
//! until the input ends or Ctrl-C.

use crate::output::outln;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cliptag_engine::{Engine, FrameResult, Received};
use cliptag_service::TlsFiles;
use cliptag_service::console::Snapshots;

use crate::servers::{Endpoints, Servers};
use gst::prelude::*;
use serde_json::json;

/// Labels that name the patterns the test source cycles through (before any change).
const DEFAULT_LABELS: &str = "smpte color bars,a moving ball,tv static,a checkerboard";

/// The test source's patterns, in cycling order: the default labels have no word for
/// the third and fourth, so a label change shows.
const PATTERNS: [&str; 6] = [
    "smpte",
    "ball",
    "circular",
    "pinwheel",
    "snow",
    "checkers-8",
];

/// Arguments of `cliptag run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A URI or a file to tag (anything uridecodebin plays); without it, a live
    /// videotestsrc that changes pattern every --cycle seconds.
    #[arg(long, value_name = "URI|FILE")]
    input: Option<String>,
    /// Comma-separated labels.
    #[arg(long, value_name = "A,B,...", default_value = DEFAULT_LABELS)]
    labels: String,
    /// Prompt template; `{}` stands for the label.
    #[arg(long, default_value = "{}")]
    template: String,
    /// Serve gRPC here: host:port, or a bare port on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    grpc: String,
    /// Require this token for label changes over gRPC.
    #[arg(long, env = "CLIPTAG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The stream's id in results and over gRPC.
    #[arg(long, default_value = "main", value_name = "ID")]
    stream_id: String,
    /// Hugging Face CLIP model directory; without it, the bundled model.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Device to run on: cpu, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seconds between pattern changes of the test source.
    #[arg(long, default_value_t = 4.0, value_name = "SECONDS")]
    cycle: f64,
    /// Frame size and rate of the test source.
    #[arg(long, default_value = "320x240@15", value_name = "WxH@FPS")]
    test_format: String,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Print every tag change as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Serve the web console here: host:port, or a bare port on 127.0.0.1 (0 picks a
    /// free port). Label changes from it need --token when one is set.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Pictures a second the console shows of the stream (with the labels drawn on).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=30))]
    http_fps: u32,
    /// Serve Prometheus metrics on GET /metrics here: host:port, or a bare port on
    /// 127.0.0.1 (0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    #[command(flatten)]
    tuning: crate::tuning_args::TuningArgs,
    #[command(flatten)]
    brokers: crate::broker_args::BrokerArgs,
}

fn source_description(args: &Args) -> Result<String> {
    if let Some(input) = &args.input {
        return input_description(input);
    }
    let (size, fps) = args
        .test_format
        .split_once('@')
        .ok_or_else(|| anyhow!("--test-format {:?}: expected WxH@FPS", args.test_format))?;
    let (w, h) = size
        .split_once('x')
        .ok_or_else(|| anyhow!("--test-format {:?}: expected WxH@FPS", args.test_format))?;
    let (w, h, fps): (u32, u32, u32) = (
        w.parse().context("frame width")?,
        h.parse().context("frame height")?,
        fps.parse().context("frame rate")?,
    );
    if w == 0 || h == 0 || fps == 0 {
        bail!(
            "--test-format {:?}: sizes and rate must be positive",
            args.test_format
        );
    }
    Ok(format!(
        "videotestsrc name=src is-live=true pattern={} ! video/x-raw,width={w},height={h},framerate={fps}/1",
        PATTERNS[0]
    ))
}

/// Runs the pipeline and the service until the input ends, --duration, or Ctrl-C.
pub fn run(args: Args) -> Result<()> {
    gst::init().context("cannot initialise GStreamer")?;
    gstcliptag::register_static().context("cannot register the cliptag element")?;
    let labels: Vec<String> = args
        .labels
        .split(',')
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if labels.is_empty() {
        bail!("no labels: give --labels \"a,b\"");
    }
    // Shared: an element in this process naming the same address serves through it too.
    let servers = Servers::start(Endpoints {
        grpc: args.grpc.clone(),
        token: args.token.clone(),
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| TlsFiles { cert, key }),
        http: args.http.clone(),
        metrics: args.metrics.clone(),
    })?;
    let description = tagging_pipeline(
        &source_description(&args)?,
        args.http.is_some().then_some(args.http_fps),
    );
    let pipeline = gst::parse::launch(&description)
        .with_context(|| format!("cannot build the pipeline {description}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline: {description}"))?;
    let tag = pipeline
        .by_name("tag")
        .ok_or_else(|| anyhow!("no cliptag element in the pipeline"))?;
    tag.set_property("stream-id", &args.stream_id);
    tag.set_property("label-list", gst::Array::new(labels.iter().cloned()));
    tag.set_property("prompt-template", &args.template);
    tag.set_property("device", &args.device);
    args.tuning.apply(&tag);
    args.brokers.apply(&tag);
    if let Some(model) = &args.model {
        tag.set_property("model", model.display().to_string());
    }
    if let Some(sink) = pipeline.by_name("snapshots") {
        deliver_snapshots(&sink, &servers.snapshots, &args.stream_id)?;
    }
    // READY loads the model: subscribe before any frame flows.
    if pipeline.set_state(gst::State::Ready).is_err() {
        let error = bus_error(&pipeline).unwrap_or_else(|| anyhow!("the pipeline did not start"));
        let _ = pipeline.set_state(gst::State::Null);
        return Err(error);
    }
    let Some(engine) = cliptag_service::hub().engines().into_iter().last() else {
        let _ = pipeline.set_state(gst::State::Null);
        bail!("the element registered no engine");
    };
    tracing::info!(
        "stream {:?} with {}; labels: {}",
        args.stream_id,
        engine.model().source,
        labels.join(", ")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reader_gone = Arc::new(AtomicBool::new(false));
    let printer = spawn_printer(&engine, args.json, stop.clone(), reader_gone.clone());
    if pipeline.set_state(gst::State::Playing).is_err() {
        stop.store(true, Ordering::Relaxed);
        let error = bus_error(&pipeline).unwrap_or_else(|| anyhow!("the pipeline did not start"));
        let _ = pipeline.set_state(gst::State::Null);
        return Err(error);
    }
    // Clients that connect after this line find the stream.
    servers.announce();

    let interrupted = spawn_ctrl_c(&pipeline)?;
    let cycler = (args.input.is_none() && args.cycle > 0.0)
        .then(|| spawn_cycler(&pipeline, args.cycle, stop.clone()));

    let started = Instant::now();
    let bus = pipeline
        .bus()
        .ok_or_else(|| anyhow!("the pipeline has no bus"))?;
    let mut outcome = Ok(());
    let mut eos_sent: Option<Instant> = None;
    loop {
        if let Some(limit) = args.duration
            && eos_sent.is_none()
            && started.elapsed().as_secs_f64() >= limit
        {
            pipeline.send_event(gst::event::Eos::new());
            eos_sent = Some(Instant::now());
        }
        if interrupted.load(Ordering::Relaxed) && eos_sent.is_none() {
            eos_sent = Some(Instant::now());
        }
        if eos_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break; // a source that ignores EOS
        }
        if reader_gone.load(Ordering::Relaxed) {
            break; // nobody reads what this prints any more: stop quietly
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                outcome = Err(anyhow!(
                    "{}{}",
                    e.error(),
                    e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
                ));
                break;
            }
            gst::MessageView::Warning(w) => tracing::warn!("{}", w.error()),
            _ => {}
        }
    }
    let stats = tag.property::<Option<gst::Structure>>("stats");
    stop.store(true, Ordering::Relaxed);
    let _ = pipeline.set_state(gst::State::Null);
    if let Some(c) = cycler {
        let _ = c.join();
    }
    let _ = printer.join();
    drop(servers);
    if let Some(s) = stats {
        let get = |k: &str| s.get::<u64>(k).unwrap_or(0);
        tracing::info!(
            "{} frames, {} inferred, {} skipped, labels v{}",
            get("frames-in"),
            get("inferred"),
            get("skipped"),
            get("label-set-version")
        );
    }
    outcome
}

/// `source ! cliptag name=tag ! fakesink`, and with `snapshots_fps`, a second branch
/// for the console's pictures: at most one frame waits there (older ones are dropped,
/// never holding the tagging branch back), thinned to that rate before the overlay
/// draws on it and it is encoded, into an appsink named `snapshots`.
pub(crate) fn tagging_pipeline(source: &str, snapshots_fps: Option<u32>) -> String {
    match snapshots_fps {
        None => format!("{source} ! cliptag name=tag ! fakesink sync=true"),
        Some(fps) => format!(
            "{source} ! cliptag name=tag ! tee name=split ! queue ! fakesink sync=true \
             split. ! queue leaky=downstream max-size-buffers=1 \
             ! videorate drop-only=true max-rate={fps} ! cliptagoverlay ! videoconvert \
             ! jpegenc quality=80 ! appsink name=snapshots sync=false max-buffers=1 drop=true"
        ),
    }
}

/// `uridecodebin` for a URI or a file (the sink synchronizes: a file plays at its own
/// pace, like a live feed).
pub(crate) fn input_description(input: &str) -> Result<String> {
    let uri = if input.contains("://") {
        input.to_string()
    } else {
        let path =
            std::fs::canonicalize(input).with_context(|| format!("cannot open input {input}"))?;
        gst::glib::filename_to_uri(&path, None)
            .with_context(|| format!("cannot make a URI of {}", path.display()))?
            .to_string()
    };
    Ok(format!(
        "uridecodebin uri=\"{}\" ! videoconvert",
        uri.replace('"', "%22")
    ))
}

/// Puts every JPEG the pipeline's `snapshots` appsink makes on the console's board.
pub(crate) fn deliver_snapshots(
    sink: &gst::Element,
    board: &Snapshots,
    stream: &str,
) -> Result<()> {
    let sink = sink
        .clone()
        .downcast::<gst_app::AppSink>()
        .map_err(|_| anyhow!("the snapshots element is not an appsink"))?;
    let (board, stream) = (board.clone(), stream.to_string());
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) {
                    board.put(&stream, map.as_slice().to_vec());
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(())
}

/// The first error on the bus, with its details.
fn bus_error(pipeline: &gst::Pipeline) -> Option<anyhow::Error> {
    let msg = pipeline
        .bus()?
        .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(anyhow!(
            "{}{}",
            e.error(),
            e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
        )),
        _ => None,
    }
}

/// Ctrl-C sends EOS, so that every frame in flight is tagged before the end.
fn spawn_ctrl_c(pipeline: &gst::Pipeline) -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let weak = pipeline.downgrade();
    let set = flag.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    std::thread::Builder::new()
        .name("cliptag-signal".into())
        .spawn(move || {
            runtime.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::info!("stopping");
                    set.store(true, Ordering::Relaxed);
                    if let Some(p) = weak.upgrade() {
                        p.send_event(gst::event::Eos::new());
                    }
                }
            })
        })
        .context("cannot start the signal handler")?;
    Ok(flag)
}

fn spawn_cycler(
    pipeline: &gst::Pipeline,
    cycle: f64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let src = pipeline.by_name("src");
    std::thread::spawn(move || {
        let Some(src) = src else { return };
        let mut next = Instant::now();
        for pattern in PATTERNS.iter().cycle().skip(1) {
            next += Duration::from_secs_f64(cycle);
            while Instant::now() < next {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            src.set_property_from_str("pattern", pattern);
            tracing::info!("the test source shows pattern={pattern} now");
        }
    })
}

/// Prints a line whenever a stream's top label (or its label-set version) changes.
/// Sets `reader_gone` and stops when standard output is closed (`cliptag run | head`).
fn spawn_printer(
    engine: &Arc<Engine>,
    as_json: bool,
    stop: Arc<AtomicBool>,
    reader_gone: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut results = engine.subscribe();
    std::thread::spawn(move || {
        let mut last: Option<(String, u64)> = None;
        while !stop.load(Ordering::Relaxed) {
            match results.recv_timeout(Duration::from_millis(100)) {
                Some(Received::Item(r)) => {
                    let Some(top) = r.top() else { continue };
                    let now = (top.label.to_string(), r.version);
                    if last.as_ref() != Some(&now) {
                        if print_change(&r, as_json).is_err() {
                            reader_gone.store(true, Ordering::Relaxed);
                            return;
                        }
                        last = Some(now);
                    }
                }
                Some(Received::Closed) => return,
                Some(Received::Lagged(_)) | None => {}
            }
        }
    })
}

fn print_change(r: &FrameResult, as_json: bool) -> std::io::Result<()> {
    let seconds = r.timing.running_time_ns.or(r.timing.pts_ns).unwrap_or(0) as f64 * 1e-9;
    if as_json {
        let labels: Vec<_> = r
            .labels
            .iter()
            .map(|l| json!({"label": &*l.label, "score": l.score}))
            .collect();
        outln!(
            "{}",
            json!({"stream": &*r.stream, "frame": r.frame, "time": seconds,
                   "label_set_version": r.version, "labels": labels})
        )?;
    } else {
        let labels: Vec<String> = r
            .labels
            .iter()
            .take(3)
            .map(|l| format!("{} {:.2}", l.label, l.score))
            .collect();
        outln!(
            "{seconds:>8.2}s  {}  v{}  {}",
            r.stream,
            r.version,
            labels.join(" | ")
        )?;
    }
    Ok(())
}

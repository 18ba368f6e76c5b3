//! `cliptag serve --config cliptag.toml`: many streams in one process, sharing engines
//! (streams naming the same engine are batched together), with the gRPC service, and
//! the web console and metrics when configured. Each stream runs in a pipeline of its
//! own under a supervisor: a source that fails (a camera unplugged, an RTSP server gone)
//! is started again with backoff and reported, without touching the other streams.
//! SIGHUP, or a change to the file, applies it again: streams gone stop, new ones
//! start, changed ones restart, the others run on untouched. Ctrl-C or SIGTERM stops
//! every stream cleanly.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use cliptag_service::console::Snapshots;
use cliptag_service::{Supervised, TlsFiles};
use gst::prelude::*;

use super::run::{deliver_snapshots, input_description, tagging_pipeline};
use crate::output::outln;
use crate::serve_config::{Config, EngineConfig, Restart, StreamConfig};
use crate::servers::{Endpoints, Servers};

/// Arguments of `cliptag serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (TOML; see the README's "Running it as a service").
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Check the file and list what it would run; start nothing.
    #[arg(long)]
    check: bool,
}

/// First wait before a failed stream starts again; doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A stream that ran this long before failing starts again after the first wait.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Pictures a second for the console.
const SNAPSHOT_FPS: u32 = 4;
/// How often the configuration file is looked at for changes.
const RELOAD_POLL: Duration = Duration::from_secs(1);
/// Size and rate of test-pattern streams.
const TEST_FORMAT: &str = "video/x-raw,width=320,height=240,framerate=15/1";

/// Runs the configuration until Ctrl-C or SIGTERM (or every stream has ended).
pub fn run(args: Args) -> Result<()> {
    let config = Config::load(&args.config)?;
    if args.check {
        return print_check(&config);
    }
    gst::init().context("cannot initialise GStreamer")?;
    gstcliptag::register_static().context("cannot register the cliptag elements")?;
    let server_cfg = &config.server;
    let servers = Servers::start(Endpoints {
        grpc: server_cfg.grpc.clone(),
        token: server_cfg.token.clone(),
        tls: server_cfg
            .tls_cert
            .clone()
            .zip(server_cfg.tls_key.clone())
            .map(|(cert, key)| TlsFiles { cert, key }),
        http: server_cfg.http.clone(),
        metrics: server_cfg.metrics.clone(),
    })?;
    servers.announce();

    let (events_tx, events) = std::sync::mpsc::channel();
    spawn_signal_handler(events_tx)?;
    let mut streams = Streams {
        running: Vec::new(),
        snapshots: servers.console.as_ref().map(|_| servers.snapshots.clone()),
    };
    streams.apply(&config)?;
    let mut applied = config;
    let mut stamp = modified(&args.config);
    loop {
        let reload = match events.recv_timeout(RELOAD_POLL) {
            Ok(Signal::Stop) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Signal::Reload) => true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if streams.all_ended() {
                    tracing::info!("every stream has ended");
                    break;
                }
                // A changed file is read again, as SIGHUP would have it.
                let now = modified(&args.config);
                let changed = now != stamp;
                stamp = now;
                changed
            }
        };
        if !reload {
            continue;
        }
        match Config::load(&args.config) {
            Ok(config) => {
                if config.server.grpc != applied.server.grpc
                    || config.server.token != applied.server.token
                    || config.server.http != applied.server.http
                    || config.server.metrics != applied.server.metrics
                    || config.server.tls_cert != applied.server.tls_cert
                    || config.server.tls_key != applied.server.tls_key
                {
                    tracing::warn!(
                        "[server] changed: it applies at the next start; the streams are updated now"
                    );
                }
                streams.apply(&config)?;
                applied = config;
            }
            Err(e) => tracing::error!("{e:#}; the running configuration stays"),
        }
    }
    streams.stop(|_| true);
    drop(servers);
    Ok(())
}

fn print_check(config: &Config) -> Result<()> {
    outln!(
        "config ok: {} stream(s), {} engine(s); gRPC on {}{}{}",
        config.streams.len(),
        config.engines.len(),
        config.server.grpc,
        config
            .server
            .http
            .as_ref()
            .map(|h| format!(", console on {h}"))
            .unwrap_or_default(),
        config
            .server
            .metrics
            .as_ref()
            .map(|m| format!(", metrics on {m}"))
            .unwrap_or_default(),
    )?;
    for s in &config.streams {
        let source = s
            .uri
            .clone()
            .or_else(|| s.file.as_ref().map(|f| f.display().to_string()))
            .or_else(|| s.test_pattern.as_ref().map(|p| format!("test pattern {p}")))
            .unwrap_or_default();
        outln!("  stream {}: {source} on engine {}", s.id, s.engine_name())?;
    }
    Ok(())
}

/// What the signal handler reports.
enum Signal {
    /// Ctrl-C or SIGTERM (what systemd sends): stop everything.
    Stop,
    /// SIGHUP: read the configuration again.
    Reload,
}

/// Reports Ctrl-C, SIGTERM and SIGHUP on `events`; returns once they are watched (a
/// SIGHUP before that would end the process).
fn spawn_signal_handler(events: std::sync::mpsc::Sender<Signal>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("cliptag-signal".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (mut term, mut hup) = match (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) {
                    (Ok(term), Ok(hup)) => {
                        let _ = ready_tx.send(Ok(()));
                        (term, hup)
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                loop {
                    let signal = tokio::select! {
                        _ = tokio::signal::ctrl_c() => Signal::Stop,
                        _ = term.recv() => Signal::Stop,
                        _ = hup.recv() => Signal::Reload,
                    };
                    let stop = matches!(signal, Signal::Stop);
                    if events.send(signal).is_err() || stop {
                        return;
                    }
                }
            })
        })
        .context("cannot start the signal handler")?;
    ready_rx
        .recv()
        .map_err(|_| anyhow!("the signal handler did not start"))?
        .map_err(|e| anyhow!("cannot watch signals: {e}"))
}

/// A running stream's supervisor and what it was started with.
struct Running {
    stream: StreamConfig,
    engine: EngineConfig,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// The running streams, by id.
struct Streams {
    running: Vec<Running>,
    snapshots: Option<Snapshots>,
}

impl Streams {
    fn start(&mut self, stream: &StreamConfig, engine: &EngineConfig) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let supervisor = Supervisor {
            stream: stream.clone(),
            engine: engine.clone(),
            snapshots: self.snapshots.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("cliptag-stream-{}", stream.id))
            .spawn(move || supervisor.run())
            .context("cannot start a stream's supervisor")?;
        self.running.push(Running {
            stream: stream.clone(),
            engine: engine.clone(),
            stop,
            thread,
        });
        Ok(())
    }

    /// Stops the streams `which` picks and waits for them.
    fn stop(&mut self, which: impl Fn(&Running) -> bool) -> Vec<String> {
        let (stopping, kept): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| which(r));
        self.running = kept;
        for r in &stopping {
            r.stop.store(true, Ordering::Relaxed);
        }
        stopping
            .into_iter()
            .map(|r| {
                let _ = r.thread.join();
                r.stream.id
            })
            .collect()
    }

    /// Whether every supervisor has returned (every stream ended).
    fn all_ended(&self) -> bool {
        self.running.iter().all(|r| r.thread.is_finished())
    }

    /// Brings the running streams to `config`: stops those gone, starts those new,
    /// restarts those whose settings (or engine's) changed, leaves the rest alone.
    fn apply(&mut self, config: &Config) -> Result<()> {
        let engine_of = |s: &StreamConfig| {
            config
                .engines
                .get(s.engine_name())
                .cloned()
                .unwrap_or_default()
        };
        let wanted = |r: &Running| {
            config
                .streams
                .iter()
                .any(|s| s.id == r.stream.id && *s == r.stream && engine_of(s) == r.engine)
        };
        let stopped = self.stop(|r| !wanted(r));
        let mut started = Vec::new();
        for s in &config.streams {
            if !self.running.iter().any(|r| r.stream.id == s.id) {
                self.start(s, &engine_of(s))?;
                started.push(s.id.clone());
            }
        }
        let restarted: Vec<&String> = stopped.iter().filter(|id| started.contains(id)).collect();
        tracing::info!(
            "configuration applied: {} stream(s) running; started {:?}, stopped {:?}, restarted {:?}",
            self.running.len(),
            started
                .iter()
                .filter(|id| !stopped.contains(id))
                .collect::<Vec<_>>(),
            stopped
                .iter()
                .filter(|id| !started.contains(id))
                .collect::<Vec<_>>(),
            restarted
        );
        Ok(())
    }
}

/// The file's modification time, to notice a changed file.
fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// How one run of a stream's pipeline ended.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// The input ended.
    Eos,
    /// An error, with its message.
    Failed(String),
}

/// Keeps one stream running.
struct Supervisor {
    stream: StreamConfig,
    engine: EngineConfig,
    snapshots: Option<Snapshots>,
    stop: Arc<AtomicBool>,
}

impl Supervisor {
    fn run(self) {
        let id = &self.stream.id;
        // Reported in ListStreams, the console and the metrics until this returns.
        let report = Supervised::new(id, &self.model_description());
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let ended = match self.run_once(&report) {
                Ended::Eos if self.stream.end_is_failure() => Ended::Failed(
                    "the source ended (a network source ends when its server goes away)".into(),
                ),
                ended => ended,
            };
            let ran = started.elapsed();
            match ended {
                Ended::Stopped => return,
                Ended::Eos if self.stream.restart == Restart::Always => {
                    tracing::info!("stream {id:?} reached the end of its input; starting it again");
                    backoff = FIRST_BACKOFF;
                }
                Ended::Eos => {
                    tracing::info!("stream {id:?} reached the end of its input");
                    report.ended();
                    return;
                }
                Ended::Failed(why) if self.stream.restart == Restart::Never => {
                    tracing::error!(
                        "stream {id:?} failed: {why}; not restarting (restart = \"never\")"
                    );
                    report.failed(&why, None);
                    return;
                }
                Ended::Failed(why) => {
                    if ran >= HEALTHY_RUN {
                        backoff = FIRST_BACKOFF;
                    }
                    tracing::warn!(
                        "stream {id:?} failed: {why}; restarting in {:.0} s",
                        backoff.as_secs_f64()
                    );
                    report.failed(&why, Some(std::time::SystemTime::now() + backoff));
                    if !self.wait(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            report.restarting_now();
        }
    }

    /// The model as `ListStreams` names it while the stream is down.
    fn model_description(&self) -> String {
        match &self.engine.model {
            Some(dir) => dir.display().to_string(),
            None => format!("{} (bundled)", cliptag_model::bundled::NAME),
        }
    }

    /// Sleeps `d` unless asked to stop first; whether to go on.
    fn wait(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !self.stop.load(Ordering::Relaxed)
    }

    fn source(&self) -> Result<String> {
        let s = &self.stream;
        if let Some(uri) = &s.uri {
            return input_description(uri);
        }
        if let Some(file) = &s.file {
            return input_description(&file.display().to_string());
        }
        let pattern = s.test_pattern.as_deref().unwrap_or("smpte");
        Ok(format!(
            "videotestsrc is-live=true pattern={} ! {TEST_FORMAT}",
            pattern.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "")
        ))
    }

    /// Builds the pipeline and runs it until it ends, fails or is asked to stop.
    fn run_once(&self, report: &Supervised) -> Ended {
        let pipeline = match self.build() {
            Ok(p) => p,
            Err(e) => return Ended::Failed(format!("{e:#}")),
        };
        let ended = self.play(&pipeline, report);
        let _ = pipeline.set_state(gst::State::Null);
        if let Some(board) = &self.snapshots {
            board.remove(&self.stream.id);
        }
        ended
    }

    fn build(&self) -> Result<gst::Pipeline> {
        let description = tagging_pipeline(
            &self.source()?,
            self.snapshots.as_ref().map(|_| SNAPSHOT_FPS),
        );
        let pipeline = gst::parse::launch(&description)
            .with_context(|| format!("cannot build the pipeline {description}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("not a pipeline: {description}"))?;
        let tag = pipeline
            .by_name("tag")
            .ok_or_else(|| anyhow!("no cliptag element in the pipeline"))?;
        let s = &self.stream;
        tag.set_property("stream-id", &s.id);
        // Engines by name, kept apart from ids other code in the process may use.
        tag.set_property("engine-id", format!("serve:{}", s.engine_name()));
        if let Some(labels) = &s.labels {
            tag.set_property("label-list", gst::Array::new(labels.iter().cloned()));
        }
        if let Some(template) = &s.template {
            tag.set_property("prompt-template", template);
        }
        if let Some(model) = &self.engine.model {
            tag.set_property("model", model.display().to_string());
        }
        if let Some(device) = &self.engine.device {
            tag.set_property("device", device);
        }
        s.tuning(&self.engine).apply(&tag);
        s.broker_args().apply(&tag);
        if let (Some(board), Some(sink)) = (&self.snapshots, pipeline.by_name("snapshots")) {
            deliver_snapshots(&sink, board, &s.id)?;
        }
        Ok(pipeline)
    }

    fn play(&self, pipeline: &gst::Pipeline, report: &Supervised) -> Ended {
        let Some(bus) = pipeline.bus() else {
            return Ended::Failed("the pipeline has no bus".into());
        };
        let frames = match FrameClock::watch(pipeline) {
            Ok(clock) => clock,
            Err(e) => return Ended::Failed(format!("{e:#}")),
        };
        let stall = self.stream.stall_timeout();
        if pipeline.set_state(gst::State::Playing).is_err() {
            return Ended::Failed(
                first_error(&bus).unwrap_or_else(|| "the pipeline did not start".into()),
            );
        }
        tracing::info!("stream {:?} starting", self.stream.id);
        let mut eos_sent: Option<Instant> = None;
        let mut running = false;
        loop {
            if self.stop.load(Ordering::Relaxed) && eos_sent.is_none() {
                // Every frame in flight is tagged before the end.
                pipeline.send_event(gst::event::Eos::new());
                eos_sent = Some(Instant::now());
            }
            if eos_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                return Ended::Stopped; // a source that ignores EOS
            }
            if let Some(limit) = stall
                && eos_sent.is_none()
                && frames.since_last() > limit
            {
                return Ended::Failed(format!(
                    "no frame for {} s (stall_timeout)",
                    limit.as_secs()
                ));
            }
            // Running once frames flow: a live pipeline plays before its network source
            // has even connected, and a reconnected camera may still send nothing.
            if !running && frames.seen_any() {
                running = true;
                tracing::info!("stream {:?} tagging", self.stream.id);
                report.running();
            }
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
                continue;
            };
            match msg.view() {
                gst::MessageView::Eos(_) if eos_sent.is_some() => return Ended::Stopped,
                gst::MessageView::Eos(_) => return Ended::Eos,
                gst::MessageView::Error(e) => return Ended::Failed(describe_error(e)),
                gst::MessageView::Warning(w) => {
                    tracing::warn!("stream {:?}: {}", self.stream.id, w.error())
                }
                _ => {}
            }
        }
    }
}

/// When the last frame reached the tagger (or the pipeline started, before the first):
/// for noticing a source that hangs without an error, as a camera may with its
/// connection still open.
struct FrameClock {
    start: Instant,
    /// Milliseconds from `start` to the last frame, plus one (0: no frame yet).
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl FrameClock {
    fn watch(pipeline: &gst::Pipeline) -> Result<Self> {
        let pad = pipeline
            .by_name("tag")
            .and_then(|tag| tag.static_pad("sink"))
            .ok_or_else(|| anyhow!("the cliptag element has no sink pad"))?;
        let start = Instant::now();
        let last_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let last = last_ms.clone();
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| {
                let ms = u64::try_from(start.elapsed().as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_add(1);
                last.store(ms, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            },
        );
        Ok(Self { start, last_ms })
    }

    /// Time since the last frame (or the start).
    fn since_last(&self) -> Duration {
        let last = self.last_ms.load(Ordering::Relaxed).saturating_sub(1);
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// Whether a frame has reached the tagger.
    fn seen_any(&self) -> bool {
        self.last_ms.load(Ordering::Relaxed) > 0
    }
}

/// The error and its details on one line.
fn describe_error(e: &gst::message::Error) -> String {
    format!(
        "{}{}",
        e.error(),
        e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
    )
    .replace('\n', " ")
}

fn first_error(bus: &gst::Bus) -> Option<String> {
    let msg =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(describe_error(e)),
        _ => None,
    }
}

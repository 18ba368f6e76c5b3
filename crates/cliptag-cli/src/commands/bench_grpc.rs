//! `cliptag bench-grpc`: how fast detections reach gRPC subscribers on loopback, and
//! what the fan-out costs the server.
//!
//! Real parts throughout: the bundled model scores small frames from several streams at
//! a fixed rate, a real server fans the results out, real tonic clients (ten per HTTP/2
//! connection) receive them. Delivery latency is from the moment a result is made (its
//! wall time) to the moment a client has decoded it. The server's CPU is read from its
//! runtime threads (`cliptag-grpc`) in /proc.

use crate::output::outln;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cliptag_engine::cliptag_model::PixelFormat;
use cliptag_engine::{Engine, EngineConfig, FrameTiming, LabelSetSpec, OwnedFrame, StreamConfig};
use cliptag_service::v1::{self, cliptag_client::CliptagClient, detection_event::Event};
use cliptag_service::{Server, ServerConfig, hub};
use serde_json::json;
use tokio_stream::StreamExt;

/// Arguments of `cliptag bench-grpc`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated subscriber counts.
    #[arg(long, default_value = "1,10,100", value_delimiter = ',')]
    subscribers: Vec<usize>,
    /// Streams producing frames at once.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Frames per second of each stream.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds of frames per subscriber count.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
pub fn thread_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(11) + field(12);
    }
    total as f64 / ticks
}

/// The `p` quantile (0 to 1) of sorted values, nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Wall-clock time now, in microseconds since the Unix epoch.
pub fn now_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e6
}

/// Runs every subscriber count and prints the figures.
pub fn run(args: Args) -> Result<()> {
    if args.streams == 0 || args.fps == 0 || args.seconds <= 0.0 {
        bail!("--streams, --fps and --seconds must be positive");
    }
    let engine = Engine::new(EngineConfig {
        observer_buffer: 8192,
        max_latency: Duration::from_millis(5),
        ..EngineConfig::default()
    })
    .context("cannot start the engine")?;
    let _registration = hub().register(&engine);
    let server = Server::start(ServerConfig::new("127.0.0.1:0"))?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for (round, &n) in args.subscribers.iter().enumerate() {
        let row = clients.block_on(measure(&engine, &server, n, round, &args))?;
        if !args.json {
            outln!(
                "{:>4} subscribers: {:>7} results delivered, {} lost; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; server {:.1}% of a core ({:.1} us per delivered result)",
                n,
                row["delivered"],
                row["lost"],
                row["latency_p50_ms"].as_f64().unwrap_or(f64::NAN),
                row["latency_p99_ms"].as_f64().unwrap_or(f64::NAN),
                row["latency_max_ms"].as_f64().unwrap_or(f64::NAN),
                row["server_cpu_core_fraction"].as_f64().unwrap_or(f64::NAN) * 100.0,
                row["server_cpu_us_per_result"].as_f64().unwrap_or(f64::NAN),
            )?;
        }
        rows.push(row);
    }
    if args.json {
        outln!(
            "{}",
            json!({
                "benchmark": "grpc detection fan-out on loopback",
                "streams": args.streams,
                "fps_per_stream": args.fps,
                "seconds": args.seconds,
                "results": rows,
            })
        )?;
    }
    Ok(())
}

async fn measure(
    engine: &Arc<Engine>,
    server: &Server,
    subscribers: usize,
    round: usize,
    args: &Args,
) -> Result<serde_json::Value> {
    let ids: Vec<String> = (0..args.streams)
        .map(|i| format!("bench-{round}-{i}"))
        .collect();
    let url = format!("http://{}", server.local_addr());
    let mut streams = Vec::with_capacity(subscribers);
    let mut client: Option<CliptagClient<tonic::transport::Channel>> = None;
    for i in 0..subscribers {
        if i % 10 == 0 {
            client = Some(CliptagClient::connect(url.clone()).await?);
        }
        let Some(c) = client.as_mut() else {
            bail!("no client");
        };
        let stream = c
            .stream_detections(v1::StreamDetectionsRequest {
                streams: ids.clone(),
                include_empty: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        streams.push(stream);
    }
    let per_stream = (f64::from(args.fps) * args.seconds).round() as u64;
    let expected = per_stream * args.streams as u64;
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(expected as usize);
                let mut lost = 0u64;
                while (latencies.len() as u64) + lost < expected {
                    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                        Ok(Some(Ok(v1::DetectionEvent {
                            event: Some(Event::Detection(d)),
                        }))) => {
                            let made = d
                                .wall_time
                                .map(|t| t.seconds as f64 * 1e6 + f64::from(t.nanos) / 1e3)
                                .unwrap_or(f64::NAN);
                            latencies.push((now_us() - made) / 1e3);
                        }
                        Ok(Some(Ok(v1::DetectionEvent {
                            event: Some(Event::Lagged(l)),
                        }))) => lost += l.missed,
                        _ => break,
                    }
                }
                (latencies, lost)
            })
        })
        .collect();

    let cpu_before = thread_cpu("cliptag-grpc");
    let started = Instant::now();
    let producers: Vec<_> = ids
        .iter()
        .map(|id| {
            engine.set_labels(
                id,
                LabelSetSpec::from_names(&["a cat", "a dog", "a car"]),
                None,
            )?;
            let stream = engine.attach(id, StreamConfig::default(), |_| {})?;
            let fps = args.fps;
            Ok(std::thread::spawn(move || {
                let data = vec![90u8; 64 * 48 * 3];
                let start = Instant::now();
                for n in 0..per_stream {
                    let due = start + Duration::from_secs_f64(n as f64 / f64::from(fps));
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let Ok(frame) = OwnedFrame::new(PixelFormat::Rgb, 64, 48, data.clone()) else {
                        return;
                    };
                    if stream.submit(frame, FrameTiming::default()).is_err() {
                        return;
                    }
                }
                stream.drain(Duration::from_secs(30));
            }))
        })
        .collect::<Result<_, cliptag_engine::EngineError>>()?;
    let mut latencies = Vec::new();
    let mut lost = 0;
    for reader in readers {
        let (l, missed) = reader.await?;
        latencies.extend(l);
        lost += missed;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = thread_cpu("cliptag-grpc") - cpu_before;
    for p in producers {
        let _ = p.join();
    }
    latencies.sort_by(f64::total_cmp);
    let delivered = latencies.len() as u64;
    Ok(json!({
        "subscribers": subscribers,
        "expected": expected * subscribers as u64,
        "delivered": delivered,
        "lost": lost,
        "latency_p50_ms": percentile(&latencies, 0.5),
        "latency_p99_ms": percentile(&latencies, 0.99),
        "latency_max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "server_cpu_s": cpu,
        "server_cpu_core_fraction": cpu / wall,
        "server_cpu_us_per_result": cpu * 1e6 / (delivered.max(1) as f64),
    }))
}

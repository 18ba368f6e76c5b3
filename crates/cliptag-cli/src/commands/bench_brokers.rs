//! `cliptag bench-brokers`: how many detections a second go through NATS and MQTT, and
//! how long one takes from its result to a subscriber.
//!
//! The path measured is the element's from the moment a result exists: the publisher's
//! outbox, its sender task, the client, the broker, a subscriber on loopback decoding
//! it. Results are made here at a fixed rate (no model: the brokers are what is timed,
//! not inference), spread over several streams. Latency is from the result's wall time
//! to the subscriber having decoded it; rounds at rising rates show where a broker
//! stops keeping up (the outbox then drops the oldest, counted as lost).

use crate::output::outln;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow, bail};
use cliptag_engine::{FrameResult, FrameTiming, LabelScore};
use cliptag_service::brokers::{
    BrokerDetections, DEFAULT_OUTBOX, Format, MqttDetections, MqttSettings, NatsDetections,
    NatsSettings, PublishSettings, Publisher,
};
use serde_json::json;

use super::bench_grpc::{now_us, percentile, thread_cpu};

/// Arguments of `cliptag bench-brokers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The NATS server to measure (nats://host:port).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The MQTT broker to measure (mqtt://host:port).
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// Comma-separated offered rates, detections per second over all streams.
    #[arg(long, default_value = "100,1000,5000", value_delimiter = ',')]
    rates: Vec<u32>,
    /// Streams the detections are spread over.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Seconds of detections per round.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A result like the engine's for a frame scored against three labels.
fn result(stream: &Arc<str>, frame: u64) -> FrameResult {
    FrameResult {
        stream: stream.clone(),
        frame,
        timing: FrameTiming::default(),
        wall_time: SystemTime::now(),
        label_set: stream.clone(),
        version: 1,
        labels: ["a person", "a car", "an empty street"]
            .iter()
            .zip([0.7, 0.2, 0.1])
            .map(|(l, score)| LabelScore {
                label: Arc::from(*l),
                score,
            })
            .collect(),
        stale: false,
        computed_for: Some(frame),
        latency: Duration::from_millis(30),
        events: Vec::new(),
    }
}

/// One broker to measure.
#[derive(Clone, Copy, PartialEq)]
enum Broker {
    Nats,
    Mqtt,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::Mqtt => "mqtt",
        }
    }
}

/// Runs every rate on every broker given and prints the figures.
pub fn run(args: Args) -> Result<()> {
    if args.streams == 0 || args.seconds <= 0.0 || args.rates.contains(&0) {
        bail!("--streams, --seconds and every rate must be positive");
    }
    let mut brokers = Vec::new();
    if args.nats.is_some() {
        brokers.push(Broker::Nats);
    }
    if args.mqtt.is_some() {
        brokers.push(Broker::Mqtt);
    }
    if brokers.is_empty() {
        bail!("name a broker: --nats URL and/or --mqtt URL");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-subscriber")
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for (round, (broker, rate)) in brokers
        .iter()
        .flat_map(|b| args.rates.iter().map(move |r| (*b, *r)))
        .enumerate()
    {
        let row = runtime.block_on(measure(broker, rate, round, &args))?;
        if !args.json {
            outln!(
                "{:<4} offered {:>6}/s: delivered {:>7.0}/s, {} of {} ({} lost); latency p50 {:.2} ms, p99 {:.2} ms; publishing {:.1} us of CPU per detection",
                broker.name(),
                rate,
                row["delivered_per_s"].as_f64().unwrap_or(f64::NAN),
                row["delivered"],
                row["offered"],
                row["lost"],
                row["latency_p50_ms"].as_f64().unwrap_or(f64::NAN),
                row["latency_p99_ms"].as_f64().unwrap_or(f64::NAN),
                row["publisher_cpu_us_per_detection"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            )?;
        }
        rows.push(row);
    }
    if args.json {
        outln!(
            "{}",
            json!({
                "benchmark": "detections through brokers on loopback",
                "streams": args.streams,
                "seconds": args.seconds,
                "outbox": DEFAULT_OUTBOX,
                "results": rows,
            })
        )?;
    }
    Ok(())
}

async fn measure(
    broker: Broker,
    rate: u32,
    round: usize,
    args: &Args,
) -> Result<serde_json::Value> {
    let prefix = format!("bench{round}");
    let ids: Vec<Arc<str>> = (0..args.streams)
        .map(|i| Arc::from(format!("s{i}").as_str()))
        .collect();
    let mut settings = PublishSettings {
        nats: None,
        mqtt: None,
        outbox: DEFAULT_OUTBOX,
    };
    let timeout = Duration::from_secs(5);
    let mut subscription = match broker {
        Broker::Nats => {
            let url = args.nats.clone().unwrap_or_default();
            settings.nats = Some(NatsSettings {
                url: url.clone(),
                subject_prefix: prefix.clone(),
                format: Format::Protobuf,
                ca_file: None,
            });
            BrokerDetections::Nats(
                NatsDetections::subscribe(&url, None, &prefix, &[], timeout)
                    .await
                    .map_err(|e| anyhow!(e))?,
            )
        }
        Broker::Mqtt => {
            let mqtt = MqttSettings {
                url: args.mqtt.clone().unwrap_or_default(),
                topic_prefix: prefix.clone(),
                username: None,
                password: None,
                ca_file: None,
            };
            settings.mqtt = Some(mqtt.clone());
            BrokerDetections::Mqtt(Box::new(
                MqttDetections::subscribe(&mqtt, &[], timeout)
                    .await
                    .map_err(|e| anyhow!(e))?,
            ))
        }
    };
    let publishers = ids
        .iter()
        .map(|id| Publisher::start(id, &settings))
        .collect::<Result<Vec<_>, _>>()?;
    if publishers
        .iter()
        .any(|p| !p.unreachable(timeout).is_empty())
    {
        bail!("{} is unreachable", broker.name());
    }
    let outlets: Vec<_> = publishers.iter().map(Publisher::outlet).collect();
    let offered = (f64::from(rate) * args.seconds).round() as u64;
    // The publishers' sending runs on the brokers' runtime threads.
    let cpu_before = thread_cpu("cliptag-brokers");
    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        let start = Instant::now();
        for n in 0..offered {
            let due = start + Duration::from_secs_f64(n as f64 / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let i = n as usize % ids.len();
            outlets[i].offer(&Arc::new(result(&ids[i], n / ids.len() as u64)));
        }
    });
    let mut latencies = Vec::with_capacity(offered as usize);
    let mut last = started;
    while (latencies.len() as u64) < offered {
        match tokio::time::timeout(Duration::from_secs(3), subscription.next()).await {
            Ok(Some(Ok(d))) => {
                let made = d
                    .wall_time
                    .map(|t| t.seconds as f64 * 1e6 + f64::from(t.nanos) / 1e3)
                    .unwrap_or(f64::NAN);
                latencies.push((now_us() - made) / 1e3);
                last = Instant::now();
            }
            Ok(Some(Err(e))) => tracing::warn!("{e}"),
            // Nothing for 3 s: the rest was dropped.
            Ok(None) | Err(_) => break,
        }
    }
    let _ = producer.join();
    let cpu = thread_cpu("cliptag-brokers") - cpu_before;
    let dropped: u64 = publishers
        .iter()
        .flat_map(|p| p.links())
        .map(|l| l.dropped)
        .sum();
    drop(publishers);
    subscription.close().await;
    let window = last.duration_since(started).as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let delivered = latencies.len() as u64;
    Ok(json!({
        "broker": broker.name(),
        "offered_per_s": rate,
        "offered": offered,
        "delivered": delivered,
        "lost": offered.saturating_sub(delivered),
        "dropped_in_outbox": dropped,
        "delivered_per_s": delivered as f64 / window.max(1e-9),
        "latency_p50_ms": percentile(&latencies, 0.5),
        "latency_p99_ms": percentile(&latencies, 0.99),
        "latency_max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "publisher_cpu_s": cpu,
        "publisher_cpu_us_per_detection": cpu * 1e6 / (delivered.max(1) as f64),
    }))
}

//! `cliptag watch`: subscribe to a server's detections and print them; with --nats or
//! --mqtt, to the detections every cliptag process publishes to a broker.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use cliptag_service::Filter;
use cliptag_service::brokers::{BrokerDetections, MqttDetections, MqttSettings, NatsDetections};
use cliptag_service::v1::{self, detection_event::Event};
use serde_json::json;
use tokio_stream::StreamExt;

use crate::grpc_args::{ClientArgs, describe, runtime};

/// Arguments of `cliptag watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// Only this stream; repeat for several (default: every stream).
    #[arg(long, value_name = "ID")]
    stream: Vec<String>,
    /// Only this label; repeat for several.
    #[arg(long, value_name = "TEXT")]
    label: Vec<String>,
    /// Only labels scoring at least this much.
    #[arg(long, default_value_t = 0.0)]
    min_score: f32,
    /// Print every result, not only those whose top label changed.
    #[arg(long)]
    all: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Exit after this many detections.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Read the detections of every process publishing to this NATS server
    /// (nats://host:port, tls:// for TLS) instead of one server's.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Subject prefix the processes publish under (`<prefix>.<stream>.detections`).
    #[arg(
        long,
        default_value = "cliptag",
        value_name = "PREFIX",
        requires = "nats"
    )]
    subject_prefix: String,
    /// PEM certificates to trust for a tls:// NATS server.
    #[arg(long, value_name = "FILE", requires = "nats")]
    nats_ca: Option<std::path::PathBuf>,
    /// Read the detections every process publishes to this MQTT broker
    /// (mqtt://[user:password@]host[:port], mqtts:// for TLS).
    #[arg(long, value_name = "URL", conflicts_with = "nats")]
    mqtt: Option<String>,
    /// Topic prefix the processes publish under (`<prefix>/<stream>/detections`).
    #[arg(
        long,
        default_value = "cliptag",
        value_name = "PREFIX",
        requires = "mqtt"
    )]
    topic_prefix: String,
    /// PEM certificates to trust for an mqtts:// broker.
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    mqtt_ca: Option<std::path::PathBuf>,
}

/// The subjects or topics subscribed to, for the line that says so.
fn subject_of(prefix: &str, separator: char, streams: &[String]) -> String {
    let wildcard = if separator == '.' { "*" } else { "+" };
    let stream = match streams {
        [one] => one.as_str(),
        _ => wildcard,
    };
    format!("{prefix}{separator}{stream}{separator}detections")
}

/// Where detections come from.
enum Source {
    Grpc(tonic::Streaming<v1::DetectionEvent>),
    /// From a broker, filtered here as the server filters for gRPC subscribers.
    Broker(BrokerDetections, Filter),
}

impl Source {
    async fn open(args: &Args) -> Result<Self> {
        let request = v1::StreamDetectionsRequest {
            streams: args.stream.clone(),
            labels: args.label.clone(),
            min_score: args.min_score,
            changes_only: !args.all,
            include_empty: args.all,
        };
        if let Some(url) = &args.nats {
            let filter = Filter::new(&request).map_err(describe)?;
            let detections = NatsDetections::subscribe(
                url,
                args.nats_ca.clone(),
                &args.subject_prefix,
                &args.stream,
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| anyhow!(e))?;
            tracing::info!(
                "subscribed to {} on NATS",
                subject_of(&args.subject_prefix, '.', &args.stream)
            );
            return Ok(Source::Broker(BrokerDetections::Nats(detections), filter));
        }
        if let Some(url) = &args.mqtt {
            let filter = Filter::new(&request).map_err(describe)?;
            let settings = MqttSettings {
                url: url.clone(),
                topic_prefix: args.topic_prefix.clone(),
                username: None,
                password: None,
                ca_file: args.mqtt_ca.clone(),
            };
            let detections =
                MqttDetections::subscribe(&settings, &args.stream, Duration::from_secs(5))
                    .await
                    .map_err(|e| anyhow!(e))?;
            tracing::info!(
                "subscribed to {} on MQTT",
                subject_of(&args.topic_prefix, '/', &args.stream)
            );
            return Ok(Source::Broker(
                BrokerDetections::Mqtt(Box::new(detections)),
                filter,
            ));
        }
        let mut client = args.client.connect().await?;
        let stream = client
            .stream_detections(request)
            .await
            .map_err(describe)?
            .into_inner();
        Ok(Source::Grpc(stream))
    }

    /// The next event to print; `None` when the source ends.
    async fn next(&mut self) -> Option<Result<Event>> {
        match self {
            Source::Grpc(stream) => {
                let message = stream.next().await?;
                Some(
                    message
                        .map_err(describe)
                        .map(|m| m.event)
                        .and_then(|e| e.ok_or_else(|| anyhow!("the server sent an empty event"))),
                )
            }
            Source::Broker(detections, filter) => loop {
                match detections.next().await? {
                    Ok(d) => {
                        if let Some(d) = filter.apply_detection(d) {
                            return Some(Ok(Event::Detection(d)));
                        }
                    }
                    // A message that is not a detection, or a lost MQTT connection (the
                    // client reconnects): say so, go on.
                    Err(e) => tracing::warn!("skipped: {e}"),
                }
            },
        }
    }
}

/// Prints detections until the server ends the stream, `--count`, `--duration` or Ctrl-C.
pub fn run(args: Args) -> Result<()> {
    runtime()?.block_on(watch(args))
}

async fn watch(args: Args) -> Result<()> {
    let mut stream = Source::open(&args).await?;
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    // One signal future for the whole loop: a Ctrl-C while a line prints is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, stream.next()).await.ok(),
                None => Some(stream.next().await),
            }
        };
        let message = tokio::select! {
            m = next => m,
            _ = &mut ctrl_c => None,
        };
        let Some(message) = message else {
            return Ok(()); // duration or Ctrl-C
        };
        let Some(message) = message else {
            tracing::info!("the server ended the stream");
            return Ok(());
        };
        match message? {
            Event::Detection(d) => {
                print_detection(&mut out, &d, args.json)?;
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    return Ok(());
                }
            }
            Event::Lagged(l) => {
                if args.json {
                    writeln!(out, "{}", json!({ "lagged": l.missed }))?;
                } else {
                    writeln!(out, "(too slow: missed {} results)", l.missed)?;
                }
            }
        }
        out.flush().context("stdout")?;
    }
}

fn print_detection(out: &mut impl Write, d: &v1::Detection, as_json: bool) -> Result<()> {
    if as_json {
        let wall = d
            .wall_time
            .map(|t| t.seconds as f64 + f64::from(t.nanos) * 1e-9);
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let line = json!({
            "stream": d.stream,
            "frame": d.frame,
            "pts_ns": d.pts_ns,
            "wall_time": wall,
            "received": received,
            "label_set_version": d.label_set_version,
            "stale": d.stale,
            "labels": d.labels.iter().map(|l| json!({"label": l.label, "score": l.score})).collect::<Vec<_>>(),
            "events": d.events.iter().map(|e| json!({
                "label": e.label,
                "kind": if e.kind == v1::label_event::Kind::Start as i32 { "start" } else { "end" },
                "score": e.score,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    let labels: Vec<String> = d
        .labels
        .iter()
        .take(3)
        .map(|l| format!("{} {:.2}", l.label, l.score))
        .collect();
    let pts = d
        .pts_ns
        .map(|p| format!("{:>8.2}s", p as f64 * 1e-9))
        .unwrap_or_else(|| "        -".into());
    writeln!(
        out,
        "{:<12} frame {:>6} {pts}  v{}  {}{}",
        d.stream,
        d.frame,
        d.label_set_version,
        labels.join(" | "),
        if d.stale { "  (stale)" } else { "" }
    )?;
    Ok(())
}

//! Prometheus metrics of every stream and engine of the process, read at each scrape
//! from the same counters `ListStreams` reports, encoded by `prometheus-client` in the
//! OpenMetrics text format and served on `GET /metrics` by [`MetricsServer`]: as
//! OpenMetrics to scrapers that ask for it (`Accept: application/openmetrics-text`, as
//! Prometheus does), otherwise in the classic text format 0.0.4 that older tools
//! (`promtool check metrics`, `curl`) read.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `cliptag_stream_frames_in`, `_inferred`, `_skipped`, `_dropped`, `_failed` | counter | stream, model |
//! | `cliptag_stream_queue_depth`, `_pending`, `_label_set_version` | gauge | stream, model |
//! | `cliptag_stream_latency_seconds` | histogram (submission to scores) | stream, model |
//! | `cliptag_stream_up` | gauge: 1 while frames flow through a supervised stream, else 0 | stream |
//! | `cliptag_stream_restarts` | counter: a supervised stream's restarts | stream |
//! | `cliptag_broker_published`, `cliptag_broker_dropped` | counter: detections sent to a broker, dropped unsent (outbox full) | stream, broker |
//! | `cliptag_broker_connected`, `cliptag_broker_queued` | gauge | stream, broker |
//! | `cliptag_labels_revision`, `cliptag_labels_refused` | gauge, counter: a labels key's revision in use, sets refused | stream, key |
//! | `cliptag_engine_info` | gauge (1) | engine, model, device, dtype |
//! | `cliptag_engine_batches`, `cliptag_engine_batch_seconds` | counter | engine |
//! | `cliptag_engine_batch_frames` | histogram (frames per batch) | engine |
//! | `cliptag_engine_cached_prompts` | gauge | engine |
//! | `cliptag_subscribers` | gauge: detection subscribers (gRPC and console) | |
//! | `cliptag_subscriber_missed_results` | counter: results slow subscribers missed | |

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use cliptag_engine::Engine;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::background::Background;
use crate::hub::hub;
use crate::server::{ServerError, parse_address};

/// Upper bounds of the batch-size histogram's buckets (frames).
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The metrics of the process now, as OpenMetrics text.
pub fn render() -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Process));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// Reads the hub at each scrape.
#[derive(Debug)]
struct Process;

type Labels = Vec<(&'static str, String)>;

/// A stream counter: its name, help, and how to read it from the stream's stats.
type StreamCounter = (
    &'static str,
    &'static str,
    fn(&cliptag_engine::StreamStats) -> u64,
);

/// A stream gauge: its name, help, and how to read it.
type StreamGauge = (
    &'static str,
    &'static str,
    fn(&Engine, &cliptag_engine::StreamInfo) -> i64,
);

/// A broker link's counter or gauge: its name, help, and how to read it.
type LinkMetric<T> = (
    &'static str,
    &'static str,
    fn(&cliptag_proto::v1::BrokerLink) -> T,
);

/// One metric family: its samples, each with its labels.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A histogram's samples, each with its labels: (labels, sum, per-bucket counts with
/// their upper bounds, the last being +Inf).
type Histograms = Vec<(Labels, f64, Vec<(f64, u64)>)>;

fn histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Histograms,
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, sum, buckets) in &samples {
        let count = buckets.iter().map(|(_, n)| n).sum();
        let mut sample: MetricEncoder = metric.encode_family(labels)?;
        sample.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum_or_zero(*sum),
            count,
            buckets,
            None,
        )?;
    }
    Ok(())
}

fn sum_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// "cpu", or "cuda:N".
fn device_name(engine: &Engine) -> String {
    let device = engine.model().network.device();
    if device.is_cpu() {
        return "cpu".into();
    }
    let location = format!("{:?}", device.location());
    let ordinal: String = location.chars().filter(char::is_ascii_digit).collect();
    let kind = location
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("gpu")
        .to_lowercase();
    format!("{kind}:{ordinal}")
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let streams = hub().streams();
        let stream_labels = |engine: &Engine, id: &str| -> Labels {
            vec![
                ("stream", id.to_string()),
                ("model", engine.model().source.clone()),
            ]
        };
        let counters: [StreamCounter; 5] = [
            ("cliptag_stream_frames_in", "Frames submitted", |s| {
                s.frames_in
            }),
            (
                "cliptag_stream_inferred",
                "Frames that went through the model",
                |s| s.inferred,
            ),
            (
                "cliptag_stream_skipped",
                "Frames passed on without inference (interval, or a full queue under overload=skip)",
                |s| s.skipped,
            ),
            (
                "cliptag_stream_dropped",
                "Frames dropped without a result (flushes, stream stop)",
                |s| s.dropped,
            ),
            (
                "cliptag_stream_failed",
                "Frames whose preprocessing or inference failed",
                |s| s.failed,
            ),
        ];
        for (name, help, read) in counters {
            let samples = streams
                .iter()
                .map(|(e, info)| {
                    (
                        stream_labels(e, &info.id),
                        ConstCounter::new(read(&info.stats)),
                    )
                })
                .collect();
            family(&mut encoder, name, help, None, MetricType::Counter, samples)?;
        }
        let gauges: [StreamGauge; 3] = [
            (
                "cliptag_stream_queue_depth",
                "Frames waiting in the stream's queue",
                |_, i| i.stats.queue_depth as i64,
            ),
            (
                "cliptag_stream_pending",
                "Frames submitted whose results are not delivered yet",
                |_, i| i.stats.pending as i64,
            ),
            (
                "cliptag_stream_label_set_version",
                "Version of the label set scoring the stream",
                |e, i| e.labels(&i.label_set).map_or(0, |s| s.version() as i64),
            ),
        ];
        for (name, help, read) in gauges {
            let samples = streams
                .iter()
                .map(|(e, info)| (stream_labels(e, &info.id), ConstGauge::new(read(e, info))))
                .collect();
            family(&mut encoder, name, help, None, MetricType::Gauge, samples)?;
        }
        let latency = streams
            .iter()
            .map(|(e, info)| {
                let h = &info.stats.latency_histogram;
                let mut buckets: Vec<(f64, u64)> = cliptag_engine::LATENCY_BUCKETS_SECONDS
                    .iter()
                    .copied()
                    .zip(h.counts.iter().copied())
                    .collect();
                buckets.push((f64::MAX, h.counts[h.counts.len() - 1]));
                (stream_labels(e, &info.id), h.sum_seconds, buckets)
            })
            .collect();
        histograms(
            &mut encoder,
            "cliptag_stream_latency",
            "Inferred frames' time from submission to scores",
            Some(&Unit::Seconds),
            latency,
        )?;

        // Brokers the streams publish to, and the keys their labels follow.
        let links: Vec<(Labels, cliptag_proto::v1::BrokerLink)> = streams
            .iter()
            .flat_map(|(_, info)| {
                crate::brokers::links_of(&info.id).into_iter().map(|l| {
                    let labels = vec![("stream", info.id.clone()), ("broker", l.broker.clone())];
                    (labels, l)
                })
            })
            .collect();
        let link_counters: [LinkMetric<u64>; 2] = [
            (
                "cliptag_broker_published",
                "Detections handed to the broker's connection",
                |l| l.published,
            ),
            (
                "cliptag_broker_dropped",
                "Detections dropped unsent because the outbox was full (broker slow or down)",
                |l| l.dropped,
            ),
        ];
        for (name, help, read) in link_counters {
            let samples = links
                .iter()
                .map(|(labels, l)| (labels.clone(), ConstCounter::new(read(l))))
                .collect();
            family(&mut encoder, name, help, None, MetricType::Counter, samples)?;
        }
        let link_gauges: [LinkMetric<i64>; 2] = [
            (
                "cliptag_broker_connected",
                "1 while the broker is connected",
                |l| i64::from(l.connected),
            ),
            (
                "cliptag_broker_queued",
                "Detections waiting in the outbox",
                |l| l.queued as i64,
            ),
        ];
        for (name, help, read) in link_gauges {
            let samples = links
                .iter()
                .map(|(labels, l)| (labels.clone(), ConstGauge::new(read(l))))
                .collect();
            family(&mut encoder, name, help, None, MetricType::Gauge, samples)?;
        }
        let bindings: Vec<(Labels, cliptag_proto::v1::LabelsBinding)> = streams
            .iter()
            .filter_map(|(e, info)| {
                let b = crate::brokers::binding_proto(e, &info.label_set)?;
                Some((vec![("stream", info.id.clone()), ("key", b.key.clone())], b))
            })
            .collect();
        family(
            &mut encoder,
            "cliptag_labels_revision",
            "Revision of the labels key in use (0: not read yet)",
            None,
            MetricType::Gauge,
            bindings
                .iter()
                .map(|(labels, b)| (labels.clone(), ConstGauge::new(b.revision as i64)))
                .collect(),
        )?;
        family(
            &mut encoder,
            "cliptag_labels_refused",
            "Label sets written to the key that this process refused",
            None,
            MetricType::Counter,
            bindings
                .iter()
                .map(|(labels, b)| (labels.clone(), ConstCounter::new(b.refused)))
                .collect(),
        )?;

        // Streams `cliptag serve` keeps running, also while they are down.
        let supervised = hub().supervised();
        let supervised_labels = |id: &str| -> Labels { vec![("stream", id.to_string())] };
        family(
            &mut encoder,
            "cliptag_stream_up",
            "1 while frames flow through a supervised stream, 0 while it starts, restarts or has stopped",
            None,
            MetricType::Gauge,
            supervised
                .iter()
                .map(|(id, h)| {
                    let up = h.state == crate::StreamState::Running;
                    (supervised_labels(id), ConstGauge::new(i64::from(up)))
                })
                .collect(),
        )?;
        family(
            &mut encoder,
            "cliptag_stream_restarts",
            "Times a supervised stream was started again after a failure or the end of its input",
            None,
            MetricType::Counter,
            supervised
                .iter()
                .map(|(id, h)| (supervised_labels(id), ConstCounter::new(h.restarts)))
                .collect(),
        )?;

        let engines = hub().engines();
        let engine_labels = |i: usize| -> Labels { vec![("engine", i.to_string())] };
        let info = engines
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut labels = engine_labels(i);
                labels.push(("model", e.model().source.clone()));
                labels.push(("device", device_name(e)));
                labels.push((
                    "dtype",
                    format!("{:?}", e.model().network.dtype()).to_lowercase(),
                ));
                (labels, ConstGauge::new(1i64))
            })
            .collect();
        family(
            &mut encoder,
            "cliptag_engine_info",
            "An engine: its model, device and precision",
            None,
            MetricType::Gauge,
            info,
        )?;
        let stats: Vec<_> = engines.iter().map(|e| e.stats()).collect();
        let batches = stats
            .iter()
            .enumerate()
            .map(|(i, s)| (engine_labels(i), ConstCounter::new(s.batches)))
            .collect();
        family(
            &mut encoder,
            "cliptag_engine_batches",
            "Batches run (one forward pass each)",
            None,
            MetricType::Counter,
            batches,
        )?;
        let seconds = stats
            .iter()
            .enumerate()
            .map(|(i, s)| (engine_labels(i), ConstCounter::new(s.batch_seconds)))
            .collect();
        family(
            &mut encoder,
            "cliptag_engine_batch",
            "Time spent running batches (preprocessing and forward pass)",
            Some(&Unit::Seconds),
            MetricType::Counter,
            seconds,
        )?;
        let sizes = stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut buckets: Vec<(f64, u64)> = BATCH_BUCKETS.iter().map(|b| (*b, 0)).collect();
                buckets.push((f64::MAX, 0));
                let mut sum = 0.0;
                for (n, count) in s.batch_sizes.iter().enumerate() {
                    sum += n as f64 * *count as f64;
                    let slot = BATCH_BUCKETS
                        .iter()
                        .position(|b| n as f64 <= *b)
                        .unwrap_or(BATCH_BUCKETS.len());
                    buckets[slot].1 += count;
                }
                (engine_labels(i), sum, buckets)
            })
            .collect();
        histograms(
            &mut encoder,
            "cliptag_engine_batch_frames",
            "Frames per batch",
            None,
            sizes,
        )?;
        let prompts = stats
            .iter()
            .enumerate()
            .map(|(i, s)| (engine_labels(i), ConstGauge::new(s.cached_prompts as i64)))
            .collect();
        family(
            &mut encoder,
            "cliptag_engine_cached_prompts",
            "Prompts in the text-embedding cache",
            None,
            MetricType::Gauge,
            prompts,
        )?;

        let (subscribers, missed) = hub().subscriber_counts();
        family(
            &mut encoder,
            "cliptag_subscribers",
            "Detection subscribers connected (gRPC and the web console)",
            None,
            MetricType::Gauge,
            vec![(Labels::new(), ConstGauge::new(subscribers as i64))],
        )?;
        family(
            &mut encoder,
            "cliptag_subscriber_missed_results",
            "Results detection subscribers missed because they read too slowly",
            None,
            MetricType::Counter,
            vec![(Labels::new(), ConstCounter::new(missed))],
        )
    }
}

/// Threads of the metrics server's runtime: a scrape every few seconds.
const RUNTIME_THREADS: usize = 1;

/// A running `/metrics` endpoint; dropping it stops it.
pub struct MetricsServer {
    background: Background,
}

impl MetricsServer {
    /// Serves `GET /metrics` on `address` (`host:port`; a bare port means 127.0.0.1).
    pub fn start(address: &str) -> Result<Self, ServerError> {
        let addr = parse_address(address)?;
        let background = Background::start(
            addr,
            RUNTIME_THREADS,
            "cliptag-metrics",
            Duration::from_secs(1),
            serve,
        )?;
        Ok(Self { background })
    }

    /// The address it listens on (with the port picked when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.background.local_addr()
    }
}

/// The classic Prometheus text format (0.0.4) of OpenMetrics text: a counter family's
/// name takes the `_total` its samples carry, and the `# UNIT` and `# EOF` lines, which
/// the older format does not have, go.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

async fn metrics(headers: axum::http::HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let text = render();
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_classic_text(&text),
        )
    }
}

async fn serve(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics listener failed: {e}");
            return;
        }
    };
    let router = axum::Router::new().route("/metrics", axum::routing::get(metrics));
    let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    if let Err(e) = serving.await {
        tracing::error!("metrics server failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_and_openmetrics_only_lines_go() {
        let openmetrics = "# HELP a_frames Frames\n# TYPE a_frames counter\na_frames_total{s=\"x\"} 3\n\
            # HELP a_depth Depth\n# TYPE a_depth gauge\na_depth 1\n\
            # HELP a_latency_seconds Latency\n# TYPE a_latency_seconds histogram\n# UNIT a_latency_seconds seconds\n\
            a_latency_seconds_sum 0.5\na_latency_seconds_count 2\na_latency_seconds_bucket{le=\"+Inf\"} 2\n# EOF\n";
        let classic = to_classic_text(openmetrics);
        assert_eq!(
            classic,
            "# HELP a_frames_total Frames\n# TYPE a_frames_total counter\na_frames_total{s=\"x\"} 3\n\
             # HELP a_depth Depth\n# TYPE a_depth gauge\na_depth 1\n\
             # HELP a_latency_seconds Latency\n# TYPE a_latency_seconds histogram\n\
             a_latency_seconds_sum 0.5\na_latency_seconds_count 2\na_latency_seconds_bucket{le=\"+Inf\"} 2\n"
        );
    }
}

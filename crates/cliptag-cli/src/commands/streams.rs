//! `cliptag streams`: the streams a server serves, with their counters.

use crate::output::outln;
use anyhow::Result;
use cliptag_service::v1;
use serde_json::json;

use crate::grpc_args::{ClientArgs, describe, runtime};

/// Arguments of `cliptag streams`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// One JSON object per stream.
    #[arg(long)]
    json: bool,
}

/// Lists the streams.
pub fn run(args: Args) -> Result<()> {
    runtime()?.block_on(async {
        let mut client = args.client.connect().await?;
        let reply = client
            .list_streams(v1::ListStreamsRequest {})
            .await
            .map_err(describe)?
            .into_inner();
        for s in reply.streams {
            let health = s.health.as_ref().map(health_json);
            let stats = s.stats.unwrap_or_default();
            if args.json {
                outln!(
                    "{}",
                    json!({
                        "health": health,
                        "id": s.id,
                        "model": s.model,
                        "dtype": s.dtype,
                        "label_set": s.label_set,
                        "label_set_version": s.label_set_version,
                        "frames_in": stats.frames_in,
                        "inferred": stats.inferred,
                        "skipped": stats.skipped,
                        "dropped": stats.dropped,
                        "failed": stats.failed,
                        "latency_p50_us": stats.latency_p50_us,
                        "latency_p99_us": stats.latency_p99_us,
                        "batch_sizes": stats.batch_sizes,
                        "brokers": s.brokers.iter().map(broker_json).collect::<Vec<_>>(),
                        "labels_binding": s.labels_binding.as_ref().map(binding_json),
                    })
                )?;
            } else {
                let health = s.health.as_ref().map(health_text).unwrap_or_default();
                let brokers: String = s.brokers.iter().map(broker_text).collect();
                let binding = s.labels_binding.as_ref().map(binding_text).unwrap_or_default();
                outln!(
                    "{}{health}  model {} ({})  labels v{}{binding}  frames {} inferred {} skipped {} dropped {}  latency p50 {:.1} ms p99 {:.1} ms{brokers}",
                    s.id,
                    s.model,
                    s.dtype,
                    s.label_set_version,
                    stats.frames_in,
                    stats.inferred,
                    stats.skipped,
                    stats.dropped,
                    stats.latency_p50_us as f64 / 1e3,
                    stats.latency_p99_us as f64 / 1e3
                )?;
            }
        }
        Ok(())
    })
}

/// A broker link as JSON: the proto's fields.
fn broker_json(b: &v1::BrokerLink) -> serde_json::Value {
    json!({
        "broker": b.broker,
        "url": b.url,
        "subject": b.subject,
        "connected": b.connected,
        "published": b.published,
        "dropped": b.dropped,
        "queued": b.queued,
        "last_error": b.last_error,
    })
}

/// A broker link on the stream's line: `  nats: 812 sent, 40 dropped, down (disconnected)`.
fn broker_text(b: &v1::BrokerLink) -> String {
    let state = if b.connected {
        "up".to_string()
    } else if b.last_error.is_empty() {
        "down".to_string()
    } else {
        format!("down ({})", b.last_error)
    };
    format!(
        "  {}: {} sent, {} dropped, {state}",
        b.broker, b.published, b.dropped
    )
}

/// A labels binding as JSON: the proto's fields.
fn binding_json(b: &v1::LabelsBinding) -> serde_json::Value {
    json!({
        "url": b.url,
        "bucket": b.bucket,
        "key": b.key,
        "revision": b.revision,
        "refused": b.refused,
        "last_refusal": b.last_refusal,
        "connected": b.connected,
    })
}

/// A labels binding after the version: ` (key lobby, 1 refused)`.
fn binding_text(b: &v1::LabelsBinding) -> String {
    let refused = match b.refused {
        0 => String::new(),
        n => format!(", {n} refused"),
    };
    let down = if b.connected { "" } else { ", not watching" };
    format!(" (key {}{refused}{down})", b.key)
}

/// A protobuf timestamp's seconds and nanoseconds as Unix seconds.
fn unix_seconds(seconds: i64, nanos: i32) -> f64 {
    seconds as f64 + f64::from(nanos) / 1e9
}

/// A supervised stream's health as JSON: state, restarts, last error, times (Unix s).
fn health_json(h: &v1::StreamHealth) -> serde_json::Value {
    json!({
        "state": h.state().label(),
        "restarts": h.restarts,
        "last_error": (!h.last_error.is_empty()).then_some(&h.last_error),
        "last_error_time": h.last_error_time.as_ref().map(|t| unix_seconds(t.seconds, t.nanos)),
        "retry_time": h.retry_time.as_ref().map(|t| unix_seconds(t.seconds, t.nanos)),
    })
}

/// A supervised stream's health on the stream's line: ` [running, 2 restarts]`, and the
/// wait and the error while restarting.
fn health_text(h: &v1::StreamHealth) -> String {
    let mut text = format!(" [{}, {} restarts", h.state().label(), h.restarts);
    if let Some(retry) = h
        .retry_time
        .as_ref()
        .map(|t| unix_seconds(t.seconds, t.nanos))
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        text.push_str(&format!(", again in {:.1} s", (retry - now).max(0.0)));
    }
    let down = !matches!(
        h.state(),
        v1::stream_health::State::Running | v1::stream_health::State::Starting
    );
    if down && !h.last_error.is_empty() {
        text.push_str(&format!(": {}", h.last_error));
    }
    text.push(']');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarting_stream_shows_its_wait_and_error_and_a_running_one_neither() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut h = v1::StreamHealth {
            state: v1::stream_health::State::Restarting as i32,
            restarts: 3,
            last_error: "Not Found (404)".into(),
            last_error_time: None,
            retry_time: Some(Default::default()),
        };
        if let Some(t) = &mut h.retry_time {
            t.seconds = now + 4;
        }
        let text = health_text(&h);
        assert!(
            text.starts_with(" [restarting, 3 restarts, again in "),
            "{text}"
        );
        assert!(text.ends_with(": Not Found (404)]"), "{text}");
        let json = health_json(&h);
        assert_eq!(json["state"], "restarting");
        assert_eq!(json["last_error"], "Not Found (404)");
        assert!(json["retry_time"].as_f64().is_some_and(|t| t >= now as f64));

        h.state = v1::stream_health::State::Running as i32;
        h.retry_time = None;
        assert_eq!(health_text(&h), " [running, 3 restarts]");
    }
}

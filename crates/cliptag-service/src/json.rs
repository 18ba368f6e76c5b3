//! cliptag's JSON shapes and their conversions to and from the `cliptag.v1` messages: the
//! web console's API, label sets in the NATS key-value bucket, detections published as
//! JSON (MQTT, NATS on request). Field names follow the proto; enums are lower-case
//! words; timestamps are RFC 3339 strings.

use cliptag_proto::v1;
use serde::{Deserialize, Serialize};
use tonic::Status;

/// A label and its prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub name: String,
    #[serde(default)]
    pub prompts: Vec<String>,
}

/// A label set (`v1::LabelSet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSet {
    pub labels: Vec<Label>,
    #[serde(default)]
    pub template: String,
    /// `softmax`, `sigmoid`, or empty / absent for the default.
    #[serde(default)]
    pub scoring: String,
    #[serde(default)]
    pub sigmoid_center: Option<f32>,
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub top_k: u32,
    #[serde(default)]
    pub pool_frames: u32,
}

impl LabelSet {
    pub fn into_proto(self) -> Result<v1::LabelSet, Status> {
        let scoring = match self.scoring.as_str() {
            "" => v1::Scoring::Unspecified,
            "softmax" => v1::Scoring::Softmax,
            "sigmoid" => v1::Scoring::Sigmoid,
            other => {
                return Err(Status::invalid_argument(format!(
                    "scoring {other:?}: expected softmax or sigmoid"
                )));
            }
        };
        Ok(v1::LabelSet {
            labels: self.labels.into_iter().map(Label::into_proto).collect(),
            template: self.template,
            scoring: scoring as i32,
            sigmoid_center: self.sigmoid_center,
            threshold: self.threshold,
            top_k: self.top_k,
            pool_frames: self.pool_frames,
        })
    }

    pub fn from_proto(set: v1::LabelSet) -> Self {
        let scoring = match v1::Scoring::try_from(set.scoring) {
            Ok(v1::Scoring::Sigmoid) => "sigmoid",
            _ => "softmax",
        };
        Self {
            labels: set
                .labels
                .into_iter()
                .map(|l| Label {
                    name: l.name,
                    prompts: l.prompts,
                })
                .collect(),
            template: set.template,
            scoring: scoring.to_string(),
            sigmoid_center: set.sigmoid_center,
            threshold: set.threshold,
            top_k: set.top_k,
            pool_frames: set.pool_frames,
        }
    }
}

impl Label {
    fn into_proto(self) -> v1::Label {
        v1::Label {
            name: self.name,
            prompts: self.prompts,
        }
    }
}

/// `PUT /api/labels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLabels {
    #[serde(default)]
    pub stream: String,
    pub labels: LabelSet,
    #[serde(default)]
    pub if_version: Option<u64>,
}

impl SetLabels {
    pub fn into_proto(self) -> Result<v1::SetLabelsRequest, Status> {
        Ok(v1::SetLabelsRequest {
            stream: self.stream,
            labels: Some(self.labels.into_proto()?),
            if_version: self.if_version,
        })
    }
}

/// `POST /api/labels/update`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateLabels {
    #[serde(default)]
    pub stream: String,
    #[serde(default)]
    pub add: Vec<Label>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub if_version: Option<u64>,
}

impl UpdateLabels {
    pub fn into_proto(self) -> v1::UpdateLabelsRequest {
        v1::UpdateLabelsRequest {
            stream: self.stream,
            add: self.add.into_iter().map(Label::into_proto).collect(),
            remove: self.remove,
            if_version: self.if_version,
        }
    }
}

/// A stream's label set as it runs (`v1::LabelSetState`).
#[derive(Debug, Serialize)]
pub struct SetState {
    pub stream: String,
    pub label_set: String,
    pub version: u64,
    pub labels: Option<LabelSet>,
}

/// The sets a read or a change returns.
#[derive(Debug, Serialize)]
pub struct Sets {
    pub sets: Vec<SetState>,
}

impl Sets {
    pub fn from_proto(sets: Vec<v1::LabelSetState>) -> Self {
        Self {
            sets: sets
                .into_iter()
                .map(|s| SetState {
                    stream: s.stream,
                    label_set: s.label_set,
                    version: s.version,
                    labels: s.labels.map(LabelSet::from_proto),
                })
                .collect(),
        }
    }
}

/// A stream's counters (`v1::StreamStats`).
#[derive(Debug, Serialize)]
pub struct Stats {
    pub frames_in: u64,
    pub inferred: u64,
    pub skipped: u64,
    pub dropped: u64,
    pub failed: u64,
    pub queue_depth: u64,
    pub pending: u64,
    pub batch_sizes: Vec<u64>,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub last_error: String,
}

/// A running stream (`v1::StreamInfo`).
#[derive(Debug, Serialize)]
pub struct Stream {
    pub id: String,
    pub model: String,
    pub label_set: String,
    pub label_set_version: u64,
    pub stats: Option<Stats>,
    /// Set for streams `cliptag serve` keeps running.
    pub health: Option<Health>,
    /// The brokers its detections go to.
    pub brokers: Vec<BrokerLink>,
    /// The labels key it follows, if any.
    pub labels_binding: Option<LabelsBinding>,
}

/// A stream's broker (`v1::BrokerLink`).
#[derive(Debug, Serialize)]
pub struct BrokerLink {
    pub broker: String,
    pub url: String,
    pub subject: String,
    pub connected: bool,
    pub published: u64,
    pub dropped: u64,
    pub queued: u64,
    pub last_error: String,
}

/// The labels key a stream follows (`v1::LabelsBinding`).
#[derive(Debug, Serialize)]
pub struct LabelsBinding {
    pub url: String,
    pub bucket: String,
    pub key: String,
    pub revision: u64,
    pub refused: u64,
    pub last_refusal: String,
    pub connected: bool,
}

/// A supervised stream's state (starting, running, restarting, ended, failed), its
/// restarts and its last error, with times in Unix milliseconds.
#[derive(Debug, Serialize)]
pub struct Health {
    pub state: &'static str,
    pub restarts: u64,
    pub last_error: String,
    pub last_error_unix_ms: Option<i64>,
    pub retry_unix_ms: Option<i64>,
}

impl Health {
    fn from_proto(h: &v1::StreamHealth) -> Self {
        let ms = |t: &prost_types::Timestamp| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
        Self {
            state: h.state().label(),
            restarts: h.restarts,
            last_error: h.last_error.clone(),
            last_error_unix_ms: h.last_error_time.as_ref().map(ms),
            retry_unix_ms: h.retry_time.as_ref().map(ms),
        }
    }
}

/// `GET /api/streams`.
#[derive(Debug, Serialize)]
pub struct Streams {
    pub streams: Vec<Stream>,
}

impl Streams {
    pub fn from_proto(reply: v1::ListStreamsResponse) -> Self {
        Self {
            streams: reply
                .streams
                .into_iter()
                .map(|s| Stream {
                    id: s.id,
                    model: s.model,
                    label_set: s.label_set,
                    label_set_version: s.label_set_version,
                    health: s.health.as_ref().map(Health::from_proto),
                    brokers: s
                        .brokers
                        .into_iter()
                        .map(|b| BrokerLink {
                            broker: b.broker,
                            url: b.url,
                            subject: b.subject,
                            connected: b.connected,
                            published: b.published,
                            dropped: b.dropped,
                            queued: b.queued,
                            last_error: b.last_error,
                        })
                        .collect(),
                    labels_binding: s.labels_binding.map(|b| LabelsBinding {
                        url: b.url,
                        bucket: b.bucket,
                        key: b.key,
                        revision: b.revision,
                        refused: b.refused,
                        last_refusal: b.last_refusal,
                        connected: b.connected,
                    }),
                    stats: s.stats.map(|t| Stats {
                        frames_in: t.frames_in,
                        inferred: t.inferred,
                        skipped: t.skipped,
                        dropped: t.dropped,
                        failed: t.failed,
                        queue_depth: t.queue_depth,
                        pending: t.pending,
                        batch_sizes: t.batch_sizes,
                        latency_p50_us: t.latency_p50_us,
                        latency_p99_us: t.latency_p99_us,
                        last_error: t.last_error,
                    }),
                })
                .collect(),
        }
    }
}

/// A label and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub label: String,
    pub score: f32,
}

/// A start or end event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub label: String,
    /// `start` or `end`.
    pub kind: String,
    pub score: f32,
}

/// One frame's result (`v1::Detection`): the console's server-sent event `detection`,
/// and a detection published as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub stream: String,
    pub frame: u64,
    pub pts_ns: Option<u64>,
    pub running_time_ns: Option<u64>,
    /// When the result was made, RFC 3339 in UTC.
    #[serde(default)]
    pub wall_time: Option<String>,
    pub label_set: String,
    pub label_set_version: u64,
    pub labels: Vec<Score>,
    pub stale: bool,
    pub computed_for: Option<u64>,
    pub latency_us: u64,
    pub events: Vec<Event>,
}

impl Detection {
    /// The proto message back (a detection received as JSON).
    pub fn into_proto(self) -> Result<v1::Detection, String> {
        let wall_time = self
            .wall_time
            .map(|t| {
                t.parse::<prost_types::Timestamp>()
                    .map_err(|e| format!("wall_time {t:?}: {e}"))
            })
            .transpose()?;
        let events = self
            .events
            .into_iter()
            .map(|e| {
                let kind = match e.kind.as_str() {
                    "start" => v1::label_event::Kind::Start,
                    "end" => v1::label_event::Kind::End,
                    other => return Err(format!("event kind {other:?}: expected start or end")),
                };
                Ok(v1::LabelEvent {
                    label: e.label,
                    kind: kind as i32,
                    score: e.score,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(v1::Detection {
            stream: self.stream,
            frame: self.frame,
            pts_ns: self.pts_ns,
            running_time_ns: self.running_time_ns,
            wall_time,
            label_set: self.label_set,
            label_set_version: self.label_set_version,
            labels: self
                .labels
                .into_iter()
                .map(|l| v1::LabelScore {
                    label: l.label,
                    score: l.score,
                })
                .collect(),
            stale: self.stale,
            computed_for: self.computed_for,
            latency_us: self.latency_us,
            events,
        })
    }

    pub fn from_proto(d: v1::Detection) -> Self {
        Self {
            stream: d.stream,
            frame: d.frame,
            pts_ns: d.pts_ns,
            running_time_ns: d.running_time_ns,
            wall_time: d.wall_time.map(|t| t.to_string()),
            label_set: d.label_set,
            label_set_version: d.label_set_version,
            labels: d
                .labels
                .into_iter()
                .map(|l| Score {
                    label: l.label,
                    score: l.score,
                })
                .collect(),
            stale: d.stale,
            computed_for: d.computed_for,
            latency_us: d.latency_us,
            events: d
                .events
                .into_iter()
                .map(|e| Event {
                    kind: match v1::label_event::Kind::try_from(e.kind) {
                        Ok(v1::label_event::Kind::End) => "end",
                        _ => "start",
                    }
                    .to_string(),
                    label: e.label,
                    score: e.score,
                })
                .collect(),
        }
    }
}

/// The body of every error: the gRPC status code's name and the service's message.
#[derive(Debug, Serialize)]
pub struct Error {
    pub code: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_set_survives_the_round_trip_and_bad_scoring_is_refused() {
        let json = serde_json::json!({
            "labels": [{"name": "a cat", "prompts": ["a photo of a cat"]}, {"name": "a dog"}],
            "template": "a photo of {}", "scoring": "sigmoid", "threshold": 0.4, "top_k": 2
        });
        let set: LabelSet = serde_json::from_value(json).expect("parses");
        let proto = set.clone().into_proto().expect("converts");
        assert_eq!(proto.scoring, v1::Scoring::Sigmoid as i32);
        assert_eq!(proto.labels[1].prompts, Vec::<String>::new());
        assert_eq!(LabelSet::from_proto(proto), set);
        let bad = LabelSet {
            scoring: "argmax".into(),
            ..set
        };
        let err = bad.into_proto().expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let unknown = serde_json::from_value::<SetLabels>(serde_json::json!({
            "labels": {"labels": []}, "if_versoin": 3
        }));
        assert!(
            unknown.is_err(),
            "a misspelt field is an error, not ignored"
        );
    }
}

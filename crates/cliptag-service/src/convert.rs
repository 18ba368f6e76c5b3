//! Between the API's messages and the engine's types.

use std::time::{Duration, UNIX_EPOCH};

use cliptag_engine::{
    EngineError, EventKind, FrameResult, Label, LabelSet, LabelSetSpec, Pooling, Scoring,
    StreamStats,
};
use cliptag_proto::v1;
use tonic::Status;

/// The engine's label set spec from the API's, defaults filled in as the .proto says.
/// Range checks are the engine's (it validates every set before it runs).
pub fn spec_from_proto(set: v1::LabelSet) -> LabelSetSpec {
    let defaults = LabelSetSpec::default();
    let scoring = match v1::Scoring::try_from(set.scoring) {
        Ok(v1::Scoring::Sigmoid) => Scoring::Sigmoid {
            center: set
                .sigmoid_center
                .unwrap_or(Scoring::DEFAULT_SIGMOID_CENTER),
        },
        _ => Scoring::Softmax,
    };
    LabelSetSpec {
        labels: set.labels.into_iter().map(label_from_proto).collect(),
        template: if set.template.is_empty() {
            defaults.template
        } else {
            set.template
        },
        scoring,
        threshold: set.threshold.unwrap_or(defaults.threshold),
        top_k: if set.top_k == 0 {
            defaults.top_k
        } else {
            set.top_k as usize
        },
        pooling: match set.pool_frames {
            0 | 1 => Pooling::Frame,
            n => Pooling::Mean { frames: n as usize },
        },
    }
}

/// Rejects a scoring value this server does not know (a newer client's), instead of
/// silently scoring another way.
pub fn check_scoring(set: &v1::LabelSet) -> Result<(), Status> {
    v1::Scoring::try_from(set.scoring)
        .map(|_| ())
        .map_err(|_| Status::invalid_argument(format!("unknown scoring {}", set.scoring)))
}

/// A label as the engine takes it.
pub fn label_from_proto(label: v1::Label) -> Label {
    Label::with_prompts(label.name, label.prompts)
}

/// The API's label set from the engine's spec.
pub fn spec_to_proto(spec: &LabelSetSpec) -> v1::LabelSet {
    let (scoring, sigmoid_center) = match spec.scoring {
        Scoring::Softmax => (v1::Scoring::Softmax, None),
        Scoring::Sigmoid { center } => (v1::Scoring::Sigmoid, Some(center)),
    };
    v1::LabelSet {
        labels: spec
            .labels
            .iter()
            .map(|l| v1::Label {
                name: l.name.clone(),
                prompts: l.prompts.clone(),
            })
            .collect(),
        template: spec.template.clone(),
        scoring: scoring.into(),
        sigmoid_center,
        threshold: Some(spec.threshold),
        top_k: spec.top_k as u32,
        pool_frames: match spec.pooling {
            Pooling::Frame => 1,
            Pooling::Mean { frames } => frames as u32,
        },
    }
}

/// A stream's label set state.
pub fn state(stream: &str, set: &LabelSet) -> v1::LabelSetState {
    v1::LabelSetState {
        stream: stream.to_string(),
        label_set: set.id().to_string(),
        version: set.version(),
        labels: Some(spec_to_proto(set.spec())),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A stream's counters.
pub fn stats_to_proto(stats: &StreamStats) -> v1::StreamStats {
    v1::StreamStats {
        frames_in: stats.frames_in,
        inferred: stats.inferred,
        skipped: stats.skipped,
        dropped: stats.dropped,
        failed: stats.failed,
        queue_depth: stats.queue_depth as u64,
        pending: stats.pending as u64,
        batch_sizes: stats.batch_sizes.clone(),
        latency_p50_us: micros(stats.latency_p50),
        latency_p99_us: micros(stats.latency_p99),
        last_error: stats.last_error.clone().unwrap_or_default(),
    }
}

/// A wall-clock time as a protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos() as i32,
    }
}

/// A supervised stream's health.
pub fn health_to_proto(health: &crate::StreamHealth) -> v1::StreamHealth {
    use crate::StreamState;
    use v1::stream_health::State;
    let state = match health.state {
        StreamState::Starting => State::Starting,
        StreamState::Running => State::Running,
        StreamState::Restarting => State::Restarting,
        StreamState::Ended => State::Ended,
        StreamState::Failed => State::Failed,
    };
    v1::StreamHealth {
        state: state as i32,
        restarts: health.restarts,
        last_error: health.last_error.clone().unwrap_or_default(),
        last_error_time: health.last_error_at.map(timestamp),
        retry_time: health.retry_at.map(timestamp),
    }
}

/// A frame's result as a detection (filters are applied by the caller).
pub fn detection(result: &FrameResult) -> v1::Detection {
    v1::Detection {
        stream: result.stream.to_string(),
        frame: result.frame,
        pts_ns: result.timing.pts_ns,
        running_time_ns: result.timing.running_time_ns,
        wall_time: Some(timestamp(result.wall_time)),
        label_set: result.label_set.to_string(),
        label_set_version: result.version,
        labels: result
            .labels
            .iter()
            .map(|l| v1::LabelScore {
                label: l.label.to_string(),
                score: l.score,
            })
            .collect(),
        stale: result.stale,
        computed_for: result.computed_for,
        latency_us: micros(result.latency),
        events: result
            .events
            .iter()
            .map(|e| v1::LabelEvent {
                label: e.label.to_string(),
                kind: match e.kind {
                    EventKind::Start => v1::label_event::Kind::Start,
                    EventKind::End => v1::label_event::Kind::End,
                }
                .into(),
                score: e.score,
            })
            .collect(),
    }
}

/// Longest status message sent, in bytes: the message travels in an HTTP/2 header, and
/// one past the peer's header limit would reach the client as RESOURCE_EXHAUSTED instead
/// of the reason. Errors quote user input short already ([`cliptag_engine::Quoted`]);
/// this is the net under them.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `message` cut to at most [`MAX_STATUS_MESSAGE`] bytes, on a character boundary.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// The status code an engine error means for a client.
pub fn status(error: EngineError) -> Status {
    let message = bounded(error.to_string());
    match error {
        EngineError::Labels(_) | EngineError::Setting(_) => Status::invalid_argument(message),
        EngineError::VersionMismatch { .. } => Status::failed_precondition(message),
        EngineError::UnknownLabelSet(_) | EngineError::UnknownStream(_) => {
            Status::not_found(message)
        }
        EngineError::StreamExists(_) => Status::already_exists(message),
        EngineError::EngineMismatch { .. } => Status::failed_precondition(message),
        EngineError::Closed => Status::unavailable(message),
        EngineError::Model(_) => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_proto_leaves_out() {
        let spec = spec_from_proto(v1::LabelSet {
            labels: vec![v1::Label {
                name: "cat".into(),
                prompts: vec![],
            }],
            ..Default::default()
        });
        assert_eq!(spec.template, "{}");
        assert_eq!(spec.scoring, Scoring::Softmax);
        assert_eq!(spec.top_k, 5);
        assert_eq!(spec.threshold, 0.5);
        assert_eq!(spec.pooling, Pooling::Frame);
    }

    #[test]
    fn a_spec_survives_the_round_trip() {
        let spec = LabelSetSpec {
            labels: vec![
                Label::new("cat"),
                Label::with_prompts("dog", vec!["a dog".into(), "a puppy".into()]),
            ],
            template: "a photo of {}".into(),
            scoring: Scoring::Sigmoid { center: 0.3 },
            threshold: 0.7,
            top_k: 2,
            pooling: Pooling::Mean { frames: 8 },
        };
        assert_eq!(spec_from_proto(spec_to_proto(&spec)), spec);
    }

    #[test]
    fn unknown_scoring_is_refused() {
        let set = v1::LabelSet {
            scoring: 42,
            ..Default::default()
        };
        assert_eq!(
            check_scoring(&set).map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
    }
}

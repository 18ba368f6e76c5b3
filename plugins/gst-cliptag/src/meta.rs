//! `GstCliptagMeta`: the per-frame result as a custom meta (registered with
//! `gst_meta_register_custom`) holding a `GstStructure`, so that any downstream code can
//! read it without linking to cliptag; the same structure is the body of the element's
//! bus messages.
//!
//! Fields of the structure (named `cliptag`):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `labels` | array of strings | top-k labels, best first |
//! | `scores` | array of doubles | their scores, same order |
//! | `label-set` | string | the label set that scored the frame |
//! | `version` | guint64 | its version |
//! | `frame` | guint64 | this frame's number in the stream |
//! | `computed-for` | gint64 | the frame the scores were computed for (-1: none yet) |
//! | `stale` | boolean | not inferred: carries an earlier frame's result |
//! | `latency` | guint64 | nanoseconds from submission to scores |
//! | `model` | string | the model's name or directory |
//! | `stream-id` | string | the stream |
//! | `events` | array of strings | `start:LABEL` / `end:LABEL` at this frame |
//!
//! Messages add `timestamp` and `running-time` (guint64 nanoseconds, when known).

use std::sync::OnceLock;

use cliptag_engine::{EventKind, FrameResult};

/// The registered meta's name.
pub const META_NAME: &str = "GstCliptagMeta";
/// The name of the structure inside the meta and of the element messages.
pub const STRUCTURE_NAME: &str = "cliptag";

/// Registers the meta (once per process).
pub fn register() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if !gst::meta::CustomMeta::is_registered(META_NAME) {
            gst::meta::CustomMeta::register(META_NAME, &[]);
        }
    });
}

/// The result as a structure.
pub fn structure(result: &FrameResult, model: &str) -> gst::Structure {
    Tags::from_result(result, model).structure()
}

/// Attaches the result to a buffer.
pub fn attach(buffer: &mut gst::BufferRef, result: &FrameResult, model: &str) {
    attach_structure(buffer, &structure(result, model));
}

/// Attaches labels made elsewhere (another model, a replay, a test) to a buffer, in the
/// form the cliptag element attaches its own: `cliptagoverlay` and every reader of the
/// meta treat them alike.
pub fn attach_tags(buffer: &mut gst::BufferRef, tags: &Tags) {
    attach_structure(buffer, &tags.structure());
}

/// Writes `structure` into the buffer's cliptag meta, added when there is none (a
/// buffer tagged twice keeps one meta, holding the later labels).
fn attach_structure(buffer: &mut gst::BufferRef, structure: &gst::Structure) {
    register();
    let existing = gst::meta::CustomMeta::from_buffer(buffer, META_NAME).is_ok();
    let meta = if existing {
        gst::meta::CustomMeta::from_mut_buffer(buffer, META_NAME)
    } else {
        gst::meta::CustomMeta::add(buffer, META_NAME)
    };
    let Ok(mut meta) = meta else {
        return;
    };
    let s = meta.mut_structure();
    for (name, value) in structure.iter() {
        s.set_value(name, value.clone());
    }
}

/// Labels of a frame as read back from its meta.
#[derive(Debug, Clone, PartialEq)]
pub struct Tags {
    /// `(label, score)`, best first.
    pub labels: Vec<(String, f64)>,
    /// Label-set version that scored the frame.
    pub version: u64,
    /// The frame's number in its stream.
    pub frame: u64,
    /// The frame the scores were computed for, if any.
    pub computed_for: Option<u64>,
    /// Whether the scores were carried from an earlier frame.
    pub stale: bool,
    /// Nanoseconds from submission to scores.
    pub latency_ns: u64,
    /// The model.
    pub model: String,
    /// The stream.
    pub stream_id: String,
    /// The label set.
    pub label_set: String,
    /// `start:LABEL` / `end:LABEL` events at this frame.
    pub events: Vec<String>,
}

impl Tags {
    /// The best label.
    pub fn top(&self) -> Option<&str> {
        self.labels.first().map(|(l, _)| l.as_str())
    }

    /// The tags of an engine result, for `model`.
    pub fn from_result(result: &FrameResult, model: &str) -> Self {
        Self {
            labels: result
                .labels
                .iter()
                .map(|l| (l.label.to_string(), f64::from(l.score)))
                .collect(),
            version: result.version,
            frame: result.frame,
            computed_for: result.computed_for,
            stale: result.stale,
            latency_ns: result.latency.as_nanos() as u64,
            model: model.to_string(),
            stream_id: result.stream.to_string(),
            label_set: result.label_set.to_string(),
            events: result
                .events
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        EventKind::Start => "start",
                        EventKind::End => "end",
                    };
                    format!("{kind}:{}", e.label)
                })
                .collect(),
        }
    }

    /// The `cliptag` structure holding these tags (the inverse of [`Tags::from_structure`]).
    pub fn structure(&self) -> gst::Structure {
        gst::Structure::builder(STRUCTURE_NAME)
            .field(
                "labels",
                gst::Array::new(self.labels.iter().map(|(l, _)| l.clone())),
            )
            .field(
                "scores",
                gst::Array::new(self.labels.iter().map(|(_, s)| *s)),
            )
            .field("label-set", &self.label_set)
            .field("version", self.version)
            .field("frame", self.frame)
            .field(
                "computed-for",
                self.computed_for.map_or(-1i64, |f| f as i64),
            )
            .field("stale", self.stale)
            .field("latency", self.latency_ns)
            .field("model", &self.model)
            .field("stream-id", &self.stream_id)
            .field("events", gst::Array::new(self.events.iter().cloned()))
            .build()
    }

    /// Reads the fields of a `cliptag` structure (from a meta or a message).
    pub fn from_structure(s: &gst::StructureRef) -> Option<Self> {
        let strings = |field: &str| -> Option<Vec<String>> {
            s.get::<gst::Array>(field)
                .ok()?
                .iter()
                .map(|v| v.get::<String>().ok())
                .collect()
        };
        let labels = strings("labels")?;
        let scores: Vec<f64> = s
            .get::<gst::Array>("scores")
            .ok()?
            .iter()
            .map(|v| v.get::<f64>().ok())
            .collect::<Option<_>>()?;
        let computed_for = s.get::<i64>("computed-for").ok()?;
        Some(Self {
            labels: labels.into_iter().zip(scores).collect(),
            version: s.get("version").ok()?,
            frame: s.get("frame").ok()?,
            computed_for: u64::try_from(computed_for).ok(),
            stale: s.get("stale").ok()?,
            latency_ns: s.get("latency").ok()?,
            model: s.get("model").ok()?,
            stream_id: s.get("stream-id").ok()?,
            label_set: s.get("label-set").ok()?,
            events: strings("events")?,
        })
    }
}

/// Reads the cliptag meta of a buffer, if it has one.
pub fn read(buffer: &gst::BufferRef) -> Option<Tags> {
    if !gst::meta::CustomMeta::is_registered(META_NAME) {
        return None;
    }
    let meta = gst::meta::CustomMeta::from_buffer(buffer, META_NAME).ok()?;
    Tags::from_structure(meta.structure())
}

//! The element's properties: their values, defaults and the blurbs `gst-inspect-1.0`
//! shows.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use cliptag_engine::{
    EngineConfig, LabelSetSpec, Overload as EngineOverload, Scoring as EngineScoring, Smoothing,
    StreamConfig,
};
use cliptag_service::brokers::{Format, LabelsKey, MqttSettings, NatsSettings, PublishSettings};
use cliptag_service::{ServerConfig, TlsFiles};
use gst::glib;
use gst::prelude::*;

/// When results reach the frames.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCliptagMode")]
pub enum Mode {
    /// Every inferred frame carries its own result.
    #[enum_value(
        name = "Sync: every inferred frame carries its own result; frames wait at most max-latency plus inference",
        nick = "sync"
    )]
    Sync = 0,
    /// Frames never wait; each carries the newest result available.
    #[enum_value(
        name = "Async: frames never wait; each carries the newest result available",
        nick = "async"
    )]
    Async = 1,
}

/// What happens to a frame when the inference queue is full.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCliptagOverload")]
pub enum Overload {
    /// Wait for room (backpressure upstream).
    #[enum_value(
        name = "Block: wait for room in the queue (backpressure)",
        nick = "block"
    )]
    Block = 0,
    /// Pass the frame on without inference, with the last result marked stale.
    #[enum_value(
        name = "Skip: pass the frame on uninferred, carrying the last result marked stale",
        nick = "skip"
    )]
    Skip = 1,
}

/// How similarities become scores.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCliptagScoring")]
pub enum Scoring {
    /// Softmax over the labels (scores sum to 1).
    #[enum_value(name = "Softmax over the labels: scores sum to 1", nick = "softmax")]
    Softmax = 0,
    /// Independent per-label sigmoid.
    #[enum_value(
        name = "Sigmoid per label: independent scores, 0.5 at a cosine of 0.25",
        nick = "sigmoid"
    )]
    Sigmoid = 1,
}

/// How detections are encoded on NATS.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCliptagNatsFormat")]
pub enum NatsFormat {
    /// The cliptag.v1.Detection protobuf.
    #[enum_value(
        name = "Protobuf: the cliptag.v1.Detection message (Content-Type application/x-protobuf)",
        nick = "protobuf"
    )]
    Protobuf = 0,
    /// JSON with the Detection fields.
    #[enum_value(
        name = "JSON with the Detection fields (Content-Type application/json)",
        nick = "json"
    )]
    Json = 1,
}

/// Default of `device`.
pub const DEFAULT_DEVICE: &str = "cpu";
/// Default of `dtype`.
pub const DEFAULT_DTYPE: &str = "auto";
/// Default of `labels`.
pub const DEFAULT_LABELS: &str = "smpte color bars,tv static,a moving ball,a checkerboard";
/// Default of `prompt-template`.
pub const DEFAULT_PROMPT_TEMPLATE: &str = "{}";
/// Default of `interval` (frames).
pub const DEFAULT_INTERVAL: u32 = 1;
/// Default of `top-k`.
pub const DEFAULT_TOP_K: u32 = 5;
/// Default of `threshold`.
pub const DEFAULT_THRESHOLD: f64 = 0.5;
/// Default of `scoring`.
pub const DEFAULT_SCORING: Scoring = Scoring::Softmax;
/// Default of `smoothing`.
pub const DEFAULT_SMOOTHING: f64 = 0.0;
/// Default of `max-batch` (frames).
pub const DEFAULT_MAX_BATCH: u32 = 8;
/// Default of `max-latency` (milliseconds).
pub const DEFAULT_MAX_LATENCY_MS: u32 = 20;
/// Default of `max-in-flight`: 0, derived from `max-batch` (see [`Settings::in_flight_bound`]).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 0;
/// Default of `mode`.
pub const DEFAULT_MODE: Mode = Mode::Sync;
/// Default of `overload`.
pub const DEFAULT_OVERLOAD: Overload = Overload::Block;
/// Default of `post-messages`.
pub const DEFAULT_POST_MESSAGES: bool = false;
/// Default of `nats-subject-prefix` and `mqtt-topic-prefix`.
pub const DEFAULT_BROKER_PREFIX: &str = "cliptag";
/// Default of `nats-format`.
pub const DEFAULT_NATS_FORMAT: NatsFormat = NatsFormat::Protobuf;
/// Default of `broker-outbox` (detections).
pub const DEFAULT_BROKER_OUTBOX: u32 = cliptag_service::brokers::DEFAULT_OUTBOX as u32;

/// Every property's value. `None` stands for a string property left unset (or set to
/// NULL or to an empty string).
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: Option<PathBuf>,
    pub device: String,
    pub dtype: String,
    pub labels: Vec<String>,
    pub labels_file: Option<PathBuf>,
    pub prompt_template: String,
    pub interval: u32,
    pub top_k: u32,
    pub threshold: f64,
    pub scoring: Scoring,
    pub smoothing: f64,
    pub max_batch: u32,
    pub max_latency_ms: u32,
    pub max_in_flight: u32,
    pub mode: Mode,
    pub overload: Overload,
    pub stream_id: Option<String>,
    pub engine_id: Option<String>,
    pub post_messages: bool,
    pub grpc_address: Option<String>,
    pub grpc_token: Option<String>,
    pub grpc_tls_cert: Option<PathBuf>,
    pub grpc_tls_key: Option<PathBuf>,
    pub nats_url: Option<String>,
    pub nats_subject_prefix: String,
    pub nats_format: NatsFormat,
    pub nats_ca_file: Option<PathBuf>,
    pub labels_key: Option<String>,
    pub labels_bucket: String,
    pub mqtt_url: Option<String>,
    pub mqtt_topic_prefix: String,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    pub mqtt_ca_file: Option<PathBuf>,
    pub broker_outbox: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            device: DEFAULT_DEVICE.into(),
            dtype: DEFAULT_DTYPE.into(),
            labels: split_labels(DEFAULT_LABELS),
            labels_file: None,
            prompt_template: DEFAULT_PROMPT_TEMPLATE.into(),
            interval: DEFAULT_INTERVAL,
            top_k: DEFAULT_TOP_K,
            threshold: DEFAULT_THRESHOLD,
            scoring: DEFAULT_SCORING,
            smoothing: DEFAULT_SMOOTHING,
            max_batch: DEFAULT_MAX_BATCH,
            max_latency_ms: DEFAULT_MAX_LATENCY_MS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            mode: DEFAULT_MODE,
            overload: DEFAULT_OVERLOAD,
            stream_id: None,
            engine_id: None,
            post_messages: DEFAULT_POST_MESSAGES,
            grpc_address: None,
            grpc_token: None,
            grpc_tls_cert: None,
            grpc_tls_key: None,
            nats_url: None,
            nats_subject_prefix: DEFAULT_BROKER_PREFIX.into(),
            nats_format: DEFAULT_NATS_FORMAT,
            nats_ca_file: None,
            labels_key: None,
            labels_bucket: cliptag_service::brokers::DEFAULT_BUCKET.into(),
            mqtt_url: None,
            mqtt_topic_prefix: DEFAULT_BROKER_PREFIX.into(),
            mqtt_username: None,
            mqtt_password: None,
            mqtt_ca_file: None,
            broker_outbox: DEFAULT_BROKER_OUTBOX,
        }
    }
}

/// A string property's value: `None` for NULL and for an empty string.
pub fn optional_text(value: &glib::Value) -> Option<String> {
    value
        .get::<Option<String>>()
        .ok()
        .flatten()
        .filter(|s| !s.is_empty())
}

/// A string property's value passed through `check`; NULL or empty gives `default`.
pub fn checked_text(
    value: &glib::Value,
    default: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<String, String> {
    let text = optional_text(value).unwrap_or_else(|| default.to_string());
    check(&text).map(|()| text)
}

/// Checks a `dtype` value before it is taken.
pub fn check_dtype(value: &str) -> Result<(), String> {
    if value.trim() == "auto" {
        return Ok(());
    }
    cliptag_engine::cliptag_model::parse_dtype(value)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks a `device` value before it is taken (without opening the device).
pub fn check_device(value: &str) -> Result<(), String> {
    cliptag_engine::cliptag_model::check_device_name(value).map_err(|e| e.to_string())
}

/// Splits a comma-separated label list, dropping empty entries.
pub fn split_labels(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Reads a labels file: one label per line; blank lines and `#` comments skipped.
pub fn read_labels_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read labels-file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

impl Settings {
    /// The engine this element asks for.
    pub fn engine_config(&self) -> Result<EngineConfig, String> {
        Ok(EngineConfig {
            model: self.model.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            max_batch: self.max_batch as usize,
            max_latency: Duration::from_millis(u64::from(self.max_latency_ms)),
            ..EngineConfig::default()
        })
    }

    /// The gRPC server this element serves its stream on, if any.
    pub fn server_config(&self) -> Result<Option<ServerConfig>, String> {
        let Some(address) = &self.grpc_address else {
            return Ok(None);
        };
        let tls = match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => return Err("grpc-tls-cert and grpc-tls-key go together".into()),
        };
        Ok(Some(ServerConfig {
            address: address.clone(),
            token: self.grpc_token.clone(),
            tls,
        }))
    }

    /// Where the stream's detections are published; `None` when nowhere.
    pub fn publish_settings(&self) -> Option<PublishSettings> {
        let settings = PublishSettings {
            nats: self.nats_url.as_ref().map(|url| NatsSettings {
                url: url.clone(),
                subject_prefix: self.nats_subject_prefix.clone(),
                format: match self.nats_format {
                    NatsFormat::Protobuf => Format::Protobuf,
                    NatsFormat::Json => Format::Json,
                },
                ca_file: self.nats_ca_file.clone(),
            }),
            mqtt: self.mqtt_url.as_ref().map(|url| MqttSettings {
                url: url.clone(),
                topic_prefix: self.mqtt_topic_prefix.clone(),
                username: self.mqtt_username.clone(),
                password: self.mqtt_password.clone(),
                ca_file: self.mqtt_ca_file.clone(),
            }),
            outbox: self.broker_outbox as usize,
        };
        (!settings.is_empty()).then_some(settings)
    }

    /// The key-value entry the label set follows, if `labels-key` is set.
    pub fn labels_key(&self) -> Result<Option<LabelsKey>, String> {
        let Some(key) = &self.labels_key else {
            return Ok(None);
        };
        let url = self.nats_url.clone().ok_or_else(|| {
            format!("labels-key {key:?} needs nats-url: label sets are kept on a NATS server")
        })?;
        Ok(Some(LabelsKey {
            url,
            bucket: self.labels_bucket.clone(),
            key: key.clone(),
            ca_file: self.nats_ca_file.clone(),
        }))
    }

    /// These settings with the label properties (`labels`, `label-list`,
    /// `prompt-template`, `scoring`, `threshold`, `top-k`) read from the label set the
    /// stream is scored by now, which gRPC clients may have changed since the
    /// properties were set.
    pub fn reflecting(&self, live: &LabelSetSpec) -> Settings {
        let mut s = self.clone();
        s.labels = live.labels.iter().map(|l| l.name.clone()).collect();
        s.prompt_template = live.template.clone();
        s.scoring = match live.scoring {
            EngineScoring::Softmax => Scoring::Softmax,
            EngineScoring::Sigmoid { .. } => Scoring::Sigmoid,
        };
        // The set holds f32: keep the property's own f64 when it is what the set holds.
        if self.threshold as f32 != live.threshold {
            s.threshold = f64::from(live.threshold);
        }
        s.top_k = u32::try_from(live.top_k).unwrap_or(u32::MAX);
        s
    }

    /// The label set the properties describe.
    pub fn label_spec(&self) -> Result<LabelSetSpec, String> {
        let mut spec = LabelSetSpec::from_names(&self.label_names()?);
        spec.template = self.prompt_template.clone();
        spec.scoring = self.engine_scoring(None);
        spec.threshold = self.threshold as f32;
        spec.top_k = self.top_k as usize;
        Ok(spec)
    }

    /// The set in use with only the property `changed` taken from these settings: a
    /// property set while the element runs changes that one thing and keeps what gRPC
    /// clients changed in the rest (other labels, prompts, pooling, sigmoid centre).
    pub fn apply_to(&self, mut live: LabelSetSpec, changed: &str) -> Result<LabelSetSpec, String> {
        match changed {
            "labels" | "label-list" | "labels-file" => {
                live.labels = LabelSetSpec::from_names(&self.label_names()?).labels;
            }
            "prompt-template" => live.template = self.prompt_template.clone(),
            "scoring" => live.scoring = self.engine_scoring(Some(live.scoring)),
            "threshold" => live.threshold = self.threshold as f32,
            "top-k" => live.top_k = self.top_k as usize,
            _ => {}
        }
        Ok(live)
    }

    /// The labels: from `labels-file` when set, else `labels`.
    fn label_names(&self) -> Result<Vec<String>, String> {
        match &self.labels_file {
            None => Ok(self.labels.clone()),
            Some(file) => read_labels_file(file),
        }
    }

    /// The `scoring` property for the engine; a sigmoid keeps the centre of `current`
    /// when that is a sigmoid already.
    fn engine_scoring(&self, current: Option<EngineScoring>) -> EngineScoring {
        match (self.scoring, current) {
            (Scoring::Softmax, _) => EngineScoring::Softmax,
            (Scoring::Sigmoid, Some(sigmoid @ EngineScoring::Sigmoid { .. })) => sigmoid,
            (Scoring::Sigmoid, _) => EngineScoring::Sigmoid {
                center: EngineScoring::DEFAULT_SIGMOID_CENTER,
            },
        }
    }

    /// Sync mode: the most frames between the sink and source pads, and the most
    /// serialized events: `max-in-flight`, or when 0, four batches and at least 16. Two
    /// batches keep the worker busy (one inferred while the next fills), the rest absorb
    /// a downstream that takes frames unevenly.
    pub fn in_flight_bound(&self) -> usize {
        match self.max_in_flight {
            0 => (4 * self.max_batch as usize).max(16),
            n => n as usize,
        }
    }

    /// The stream settings the properties describe.
    pub fn stream_config(&self, label_set: &str) -> StreamConfig {
        let max_batch = self.max_batch as usize;
        StreamConfig {
            label_set: Some(label_set.to_string()),
            overload: match self.overload {
                Overload::Block => EngineOverload::Block,
                Overload::Skip => EngineOverload::Skip,
            },
            interval: self.interval,
            queue_capacity: (2 * max_batch).max(4),
            // The element bounds what it holds itself (see in_flight_bound); the engine's
            // window only has to be no smaller.
            max_pending: self.in_flight_bound().max(1),
            smoothing: Smoothing {
                factor: self.smoothing as f32,
                ..Smoothing::default()
            },
            ordered: self.mode == Mode::Sync,
        }
    }
}

/// The property specs. Their flags say when each may change: none (only in NULL: the
/// engine and the server are made on the way to READY), `MUTABLE_READY` (read when the
/// stream attaches, on the way to PAUSED) or `MUTABLE_PLAYING` (applied while running);
/// the element refuses a change its state does not allow.
pub static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
    let only_null = glib::ParamFlags::READWRITE;
    let mutable_ready = glib::ParamFlags::READWRITE | gst::PARAM_FLAG_MUTABLE_READY;
    let mutable_playing = glib::ParamFlags::READWRITE | gst::PARAM_FLAG_MUTABLE_PLAYING;
    vec![
        glib::ParamSpecString::builder("model")
            .nick("Model")
            .blurb("Hugging Face CLIP model directory (config.json, model.safetensors, tokenizer.json); NULL or empty: the bundled model cliptag-tiny. Loaded on the way to READY")
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("device")
            .nick("Device")
            .blurb("Where the model runs: cpu, cuda:N, or auto (the first CUDA device when this build has CUDA, else cpu); a name that is none of these is refused with a warning")
            .default_value(Some(DEFAULT_DEVICE))
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("dtype")
            .nick("Precision")
            .blurb("Precision of the matmuls: f32, f16, bf16, or auto (f16 on a GPU; on the CPU bf16 where it has bf16 dot products (AVX512_BF16), else f32). bf16 on a CPU keeps activations, norms and softmax in f32, and runs as f32 with a warning where the CPU lacks bf16 dot products. The precision used is the stats' dtype field. Anything else is refused with a warning")
            .default_value(Some(DEFAULT_DTYPE))
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("labels")
            .nick("Labels")
            .blurb("Comma-separated labels scored on every inferred frame; changes while PLAYING apply to a later frame and raise the label-set version. Reads back the set in use, with changes made over gRPC")
            .default_value(Some(DEFAULT_LABELS))
            .flags(mutable_playing)
            .build(),
        gst::ParamSpecArray::builder("label-list")
            .nick("Label list")
            .blurb("The labels as an array of strings (for labels that contain commas); same set as labels")
            .element_spec(&glib::ParamSpecString::builder("label").build())
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecString::builder("labels-file")
            .nick("Labels file")
            .blurb("File with one label per line (blank lines and # comments skipped); when set, it replaces labels. NULL or empty: use labels")
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecString::builder("prompt-template")
            .nick("Prompt template")
            .blurb("Text each label is put into before encoding; {} stands for the label, e.g. \"a photo of {}\"")
            .default_value(Some(DEFAULT_PROMPT_TEMPLATE))
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecUInt::builder("interval")
            .nick("Interval")
            .blurb("Infer every Nth frame (frames); the others carry the last result, marked stale")
            .minimum(1)
            .default_value(DEFAULT_INTERVAL)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecUInt::builder("top-k")
            .nick("Top k")
            .blurb("Labels carried per frame, best first")
            .minimum(1)
            .maximum(cliptag_engine::MAX_LABELS as u32)
            .default_value(DEFAULT_TOP_K)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecDouble::builder("threshold")
            .nick("Threshold")
            .blurb("Score (0 to 1) at which a label counts as present: start/end events in the meta and messages")
            .minimum(0.0)
            .maximum(1.0)
            .default_value(DEFAULT_THRESHOLD)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecEnum::builder_with_default("scoring", DEFAULT_SCORING)
            .nick("Scoring")
            .blurb("How similarities become scores")
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecDouble::builder("smoothing")
            .nick("Smoothing")
            .blurb("Weight of the past in the exponential moving average of scores (0: off, up to 0.99)")
            .minimum(0.0)
            .maximum(0.99)
            .default_value(DEFAULT_SMOOTHING)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecUInt::builder("max-batch")
            .nick("Max batch")
            .blurb("Most frames per forward pass of the model (frames); shared engines keep the first element's value")
            .minimum(1)
            .maximum(1024)
            .default_value(DEFAULT_MAX_BATCH)
            .flags(only_null)
            .build(),
        glib::ParamSpecUInt::builder("max-latency")
            .nick("Max latency")
            .blurb("Longest a frame waits for its batch to fill before inference starts (milliseconds); shared engines keep the first element's value")
            .maximum(10_000)
            .default_value(DEFAULT_MAX_LATENCY_MS)
            .flags(only_null)
            .build(),
        glib::ParamSpecUInt::builder("max-in-flight")
            .nick("Max in flight")
            .blurb("Sync mode: most frames held between the sink and source pads (waiting for a batch, inferred, or waiting to be pushed), and most serialized events; more waits upstream, so a source faster than the sink is held back instead of filling memory (frames). 0: four times max-batch, at least 16")
            .maximum(65_536)
            .default_value(DEFAULT_MAX_IN_FLIGHT)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecEnum::builder_with_default("mode", DEFAULT_MODE)
            .nick("Mode")
            .blurb("Whether frames wait for their own result")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecEnum::builder_with_default("overload", DEFAULT_OVERLOAD)
            .nick("Overload")
            .blurb("What happens to a frame when the inference queue is full")
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecString::builder("stream-id")
            .nick("Stream id")
            .blurb("Name of this stream in results, messages, stats and over gRPC; NULL or empty: the element's name")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("engine-id")
            .nick("Engine id")
            .blurb("Elements with the same id in one process share one model and inference worker and batch together; NULL or empty: a private engine")
            .flags(only_null)
            .build(),
        glib::ParamSpecBoolean::builder("post-messages")
            .nick("Post messages")
            .blurb("Post an element message named cliptag with each frame's result on the bus")
            .default_value(DEFAULT_POST_MESSAGES)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecString::builder("grpc-address")
            .nick("gRPC address")
            .blurb("Serve the cliptag.v1 gRPC API (label changes, detection streams, health, reflection) on host:port, or a bare port on 127.0.0.1; one server per process and address, shared by every element naming it and serving every stream of the process; NULL or empty: no server")
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("grpc-token")
            .nick("gRPC token")
            .blurb("When set, label changes over gRPC need the metadata authorization: Bearer <token>; reading needs none")
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("grpc-tls-cert")
            .nick("gRPC TLS certificate")
            .blurb("PEM certificate chain file: with grpc-tls-key, the server speaks TLS only; NULL or empty: plain text")
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("grpc-tls-key")
            .nick("gRPC TLS key")
            .blurb("PEM private key file of grpc-tls-cert")
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("nats-url")
            .nick("NATS URL")
            .blurb("Publish every detection to this NATS server: nats://[user:password@]host[:port] (port 4222 by default), or tls:// for TLS. The server is retried with backoff while down; a malformed URL fails the state change. Also where labels-key lives. NULL or empty: no NATS. Read on the way to PAUSED; reads back with the password as ***")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("nats-subject-prefix")
            .nick("NATS subject prefix")
            .blurb("Detections go to <prefix>.<stream-id>.detections (the stream id must hold no . * > or blanks)")
            .default_value(Some(DEFAULT_BROKER_PREFIX))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecEnum::builder_with_default("nats-format", DEFAULT_NATS_FORMAT)
            .nick("NATS format")
            .blurb("How detections are encoded on NATS; the Content-Type header says which")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("nats-ca-file")
            .nick("NATS CA file")
            .blurb("PEM certificates to trust for a tls:// NATS server instead of the system's; NULL or empty: the system's")
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("labels-key")
            .nick("Labels key")
            .blurb("Keep the label set in this key of a JetStream key-value bucket on nats-url: a label group any number of streams and processes share. The set written there is swapped in between batches and its revision is the label-set version in results; a key without a set gets this element's labels. Label changes over gRPC and the label properties write to the key. Until the key is read, this element's labels score at version 0. NULL or empty: the labels are this element's own")
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("labels-bucket")
            .nick("Labels bucket")
            .blurb("The key-value bucket of labels-key (created when missing, 16 revisions of history)")
            .default_value(Some(cliptag_service::brokers::DEFAULT_BUCKET))
            .flags(only_null)
            .build(),
        glib::ParamSpecString::builder("mqtt-url")
            .nick("MQTT URL")
            .blurb("Publish every detection as JSON at QoS 1 to this MQTT broker: mqtt://[user:password@]host[:port] (port 1883), or mqtts:// for TLS (port 8883). Retried with backoff while down; a malformed URL fails the state change. NULL or empty: no MQTT. Read on the way to PAUSED; reads back with the password as ***")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("mqtt-topic-prefix")
            .nick("MQTT topic prefix")
            .blurb("Detections go to <prefix>/<stream-id>/detections (the stream id must hold no / + # or blanks)")
            .default_value(Some(DEFAULT_BROKER_PREFIX))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("mqtt-username")
            .nick("MQTT user name")
            .blurb("User name for the MQTT broker; overrides one in mqtt-url. NULL or empty: the URL's, or none")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("mqtt-password")
            .nick("MQTT password")
            .blurb("Password for the MQTT broker; overrides one in mqtt-url. Write-only")
            .flags(glib::ParamFlags::WRITABLE | gst::PARAM_FLAG_MUTABLE_READY)
            .build(),
        glib::ParamSpecString::builder("mqtt-ca-file")
            .nick("MQTT CA file")
            .blurb("PEM certificates to trust for an mqtts:// broker instead of the system's; NULL or empty: the system's")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecUInt::builder("broker-outbox")
            .nick("Broker outbox")
            .blurb("Detections held per broker while it is slow or down (detections); when full, the oldest unsent is dropped and counted (stats, ListStreams), so video never waits for a broker")
            .minimum(1)
            .maximum(1_000_000)
            .default_value(DEFAULT_BROKER_OUTBOX)
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Stats")
            .blurb("Read-only structure cliptag-stats: frames-in, inferred, skipped, dropped, failed, queue-depth, pending, in-flight (frames), latency-p50 and latency-p99 (nanoseconds), label-set-version, engine-batches, model, dtype (the precision the matmuls run in: f32, bf16 or f16) and batch-sizes (array; index n counts this stream's frames that rode in batches of n), last-error; with brokers nats-/mqtt-published, -dropped (detections) and -connected; with labels-key labels-revision and labels-refused")
            .read_only()
            .build(),
    ]
});

/// The highest state in which a property may change, from its flags.
pub fn mutable_until(pspec: &glib::ParamSpec) -> gst::State {
    let flags = pspec.flags();
    if flags.contains(gst::PARAM_FLAG_MUTABLE_PLAYING) {
        gst::State::Playing
    } else if flags.contains(gst::PARAM_FLAG_MUTABLE_PAUSED) {
        gst::State::Paused
    } else if flags.contains(gst::PARAM_FLAG_MUTABLE_READY) {
        gst::State::Ready
    } else {
        gst::State::Null
    }
}

/// Marks the property enums as plugin API, so that documentation tools describe them
/// with the element.
pub fn mark_enums_as_plugin_api() {
    for t in [
        Mode::static_type(),
        NatsFormat::static_type(),
        Overload::static_type(),
        Scoring::static_type(),
    ] {
        t.mark_as_plugin_api(gst::PluginAPIFlags::empty());
    }
}

//! The element's properties: their values, defaults and the blurbs `gst-inspect-1.0`
//! shows.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use cliptag_engine::{
    EngineConfig, LabelSetSpec, Overload as EngineOverload, Scoring as EngineScoring, Smoothing,
    StreamConfig,
};
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

/// Every property's value.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub labels: Vec<String>,
    pub labels_file: String,
    pub prompt_template: String,
    pub interval: u32,
    pub top_k: u32,
    pub threshold: f64,
    pub scoring: Scoring,
    pub smoothing: f64,
    pub max_batch: u32,
    pub max_latency_ms: u32,
    pub mode: Mode,
    pub overload: Overload,
    pub stream_id: String,
    pub engine_id: String,
    pub post_messages: bool,
    pub grpc_address: String,
    pub grpc_token: String,
    pub grpc_tls_cert: String,
    pub grpc_tls_key: String,
}

pub const DEFAULT_LABELS: &str = "smpte color bars,tv static,a moving ball,a checkerboard";

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            device: "cpu".into(),
            dtype: "auto".into(),
            labels: split_labels(DEFAULT_LABELS),
            labels_file: String::new(),
            prompt_template: "{}".into(),
            interval: 1,
            top_k: 5,
            threshold: 0.5,
            scoring: Scoring::Softmax,
            smoothing: 0.0,
            max_batch: 8,
            max_latency_ms: 20,
            mode: Mode::Sync,
            overload: Overload::Block,
            stream_id: String::new(),
            engine_id: String::new(),
            post_messages: false,
            grpc_address: String::new(),
            grpc_token: String::new(),
            grpc_tls_cert: String::new(),
            grpc_tls_key: String::new(),
        }
    }
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
pub fn read_labels_file(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read labels-file {path}: {e}"))?;
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
            model: (!self.model.is_empty()).then(|| PathBuf::from(&self.model)),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            max_batch: self.max_batch as usize,
            max_latency: Duration::from_millis(u64::from(self.max_latency_ms)),
            ..EngineConfig::default()
        })
    }

    /// The gRPC server this element serves its stream on, if any.
    pub fn server_config(&self) -> Result<Option<ServerConfig>, String> {
        if self.grpc_address.is_empty() {
            return Ok(None);
        }
        let tls = match (self.grpc_tls_cert.is_empty(), self.grpc_tls_key.is_empty()) {
            (true, true) => None,
            (false, false) => Some(TlsFiles {
                cert: PathBuf::from(&self.grpc_tls_cert),
                key: PathBuf::from(&self.grpc_tls_key),
            }),
            _ => return Err("grpc-tls-cert and grpc-tls-key go together".into()),
        };
        Ok(Some(ServerConfig {
            address: self.grpc_address.clone(),
            token: (!self.grpc_token.is_empty()).then(|| self.grpc_token.clone()),
            tls,
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
        if self.labels_file.is_empty() {
            Ok(self.labels.clone())
        } else {
            read_labels_file(&self.labels_file)
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
            max_pending: (8 * max_batch).max(64),
            smoothing: Smoothing {
                factor: self.smoothing as f32,
                ..Smoothing::default()
            },
            ordered: self.mode == Mode::Sync,
        }
    }
}

/// The property specs.
pub static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
    let d = Settings::default();
    let mutable_playing = glib::ParamFlags::READWRITE | gst::PARAM_FLAG_MUTABLE_PLAYING;
    let mutable_ready = glib::ParamFlags::READWRITE | gst::PARAM_FLAG_MUTABLE_READY;
    vec![
        glib::ParamSpecString::builder("model")
            .nick("Model")
            .blurb("Hugging Face CLIP model directory (config.json, model.safetensors, tokenizer.json); empty: the bundled model cliptag-tiny. Loaded on the way to READY")
            .default_value(Some(""))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("device")
            .nick("Device")
            .blurb("Where the model runs: cpu, cuda:N, or auto (the first CUDA device when this build has CUDA, else cpu)")
            .default_value(Some(d.device.as_str()))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("dtype")
            .nick("Precision")
            .blurb("Precision of the weights and the forward pass: f32, f16, bf16, or auto (f16 on a GPU, f32 on the CPU)")
            .default_value(Some(d.dtype.as_str()))
            .flags(mutable_ready)
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
            .blurb("File with one label per line (blank lines and # comments skipped); when set, it replaces labels. Empty: use labels")
            .default_value(Some(""))
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecString::builder("prompt-template")
            .nick("Prompt template")
            .blurb("Text each label is put into before encoding; {} stands for the label, e.g. \"a photo of {}\"")
            .default_value(Some(d.prompt_template.as_str()))
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecUInt::builder("interval")
            .nick("Interval")
            .blurb("Infer every Nth frame (frames); the others carry the last result, marked stale")
            .minimum(1)
            .default_value(d.interval)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecUInt::builder("top-k")
            .nick("Top k")
            .blurb("Labels carried per frame, best first")
            .minimum(1)
            .maximum(cliptag_engine::MAX_LABELS as u32)
            .default_value(d.top_k)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecDouble::builder("threshold")
            .nick("Threshold")
            .blurb("Score (0 to 1) at which a label counts as present: start/end events in the meta and messages")
            .minimum(0.0)
            .maximum(1.0)
            .default_value(d.threshold)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecEnum::builder_with_default("scoring", d.scoring)
            .nick("Scoring")
            .blurb("How similarities become scores")
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecDouble::builder("smoothing")
            .nick("Smoothing")
            .blurb("Weight of the past in the exponential moving average of scores (0: off, up to 0.99)")
            .minimum(0.0)
            .maximum(0.99)
            .default_value(d.smoothing)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecUInt::builder("max-batch")
            .nick("Max batch")
            .blurb("Most frames per forward pass of the model (frames); shared engines keep the first element's value")
            .minimum(1)
            .maximum(1024)
            .default_value(d.max_batch)
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecUInt::builder("max-latency")
            .nick("Max latency")
            .blurb("Longest a frame waits for its batch to fill before inference starts (milliseconds)")
            .maximum(10_000)
            .default_value(d.max_latency_ms)
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecEnum::builder_with_default("mode", d.mode)
            .nick("Mode")
            .blurb("Whether frames wait for their own result")
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecEnum::builder_with_default("overload", d.overload)
            .nick("Overload")
            .blurb("What happens to a frame when the inference queue is full")
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecString::builder("stream-id")
            .nick("Stream id")
            .blurb("Name of this stream in results, messages and stats; empty: the element's name")
            .default_value(Some(""))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("engine-id")
            .nick("Engine id")
            .blurb("Elements with the same id in one process share one model and inference worker and batch together; empty: a private engine")
            .default_value(Some(""))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecBoolean::builder("post-messages")
            .nick("Post messages")
            .blurb("Post an element message named cliptag with each frame's result on the bus")
            .default_value(d.post_messages)
            .flags(mutable_playing)
            .build(),
        glib::ParamSpecString::builder("grpc-address")
            .nick("gRPC address")
            .blurb("Serve the cliptag.v1 gRPC API (label changes, detection streams, health, reflection) on host:port, or a bare port on 127.0.0.1; one server per process and address, shared by every element naming it and serving every stream of the process; empty: no server")
            .default_value(Some(""))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("grpc-token")
            .nick("gRPC token")
            .blurb("When set, label changes over gRPC need the metadata authorization: Bearer <token>; reading needs none")
            .default_value(Some(""))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("grpc-tls-cert")
            .nick("gRPC TLS certificate")
            .blurb("PEM certificate chain file: with grpc-tls-key, the server speaks TLS only; empty: plain text")
            .default_value(Some(""))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecString::builder("grpc-tls-key")
            .nick("gRPC TLS key")
            .blurb("PEM private key file of grpc-tls-cert")
            .default_value(Some(""))
            .flags(mutable_ready)
            .build(),
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Stats")
            .blurb("Read-only structure cliptag-stats: frames-in, inferred, skipped, dropped, failed, queue-depth, pending (frames), latency-p50 and latency-p99 (nanoseconds), label-set-version, engine-batches and batch-sizes (array; index n counts this stream's frames that rode in batches of n)")
            .read_only()
            .build(),
    ]
});

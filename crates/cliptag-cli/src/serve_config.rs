//! `cliptag serve`'s configuration file (TOML): the servers, the engines streams share,
//! and the streams. Unknown keys are errors; every error names the file, and for what
//! TOML itself refuses, the line, column and key.
//!
//! ```toml
//! [server]
//! grpc = "127.0.0.1:50051"
//! # token = "secret"          label changes need it (also for the console)
//! # http = "127.0.0.1:8080"   the web console
//! # metrics = "127.0.0.1:9464"
//!
//! [engines.main]              # any number; streams name one ("default" when none is declared)
//! # model = "/models/clip-vit-base-patch32"   without it, the bundled model
//! device = "cpu"
//! max_batch = 8
//! max_latency_ms = 30
//!
//! [brokers]                   # optional: many machines
//! # nats = "nats://nats.local:4222"   every stream's detections to cliptag.<id>.detections
//! # mqtt = "mqtt://broker.local:1883" and to cliptag/<id>/detections (JSON, QoS 1)
//!
//! [[streams]]
//! id = "door"
//! uri = "rtsp://camera.local/stream"   # or file = "clip.webm", or test_pattern = "ball"
//! engine = "main"
//! labels = ["a person", "a car", "an empty street"]
//! template = "a photo of {}"
//! interval = 2
//! # labels_key = "entrances"   the labels follow this key of the NATS bucket (a label group)
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::broker_args::BrokerArgs;
use crate::tuning_args::TuningArgs;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the process serves.
    #[serde(default)]
    pub server: Server,
    /// Engines by name.
    #[serde(default)]
    pub engines: BTreeMap<String, EngineConfig>,
    /// Brokers every stream publishes to.
    #[serde(default)]
    pub brokers: Brokers,
    /// The streams.
    pub streams: Vec<StreamConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// The gRPC address.
    #[serde(default = "default_grpc")]
    pub grpc: String,
    /// Token for label changes (gRPC and the console).
    pub token: Option<String>,
    /// TLS certificate chain (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The web console's address.
    pub http: Option<String>,
    /// The metrics endpoint's address.
    pub metrics: Option<String>,
}

fn default_grpc() -> String {
    "127.0.0.1:50051".into()
}

impl Default for Server {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            token: None,
            tls_cert: None,
            tls_key: None,
            http: None,
            metrics: None,
        }
    }
}

/// `[engines.NAME]`: one model in memory, batching every stream that names it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Hugging Face CLIP directory; the bundled model without it.
    pub model: Option<PathBuf>,
    /// cpu, cuda:N or auto.
    pub device: Option<String>,
    /// auto, f32, f16 or bf16.
    pub dtype: Option<String>,
    /// Most frames per forward pass.
    pub max_batch: Option<u32>,
    /// Longest a frame waits for its batch, in milliseconds.
    pub max_latency_ms: Option<u32>,
}

/// `[brokers]`: where every stream's detections are published, and the NATS server
/// label groups (`labels_key` of a stream) are kept on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Brokers {
    /// NATS server URL.
    pub nats: Option<String>,
    /// protobuf or json.
    pub nats_format: Option<String>,
    /// MQTT broker URL.
    pub mqtt: Option<String>,
    /// The key-value bucket of label groups.
    pub labels_bucket: Option<String>,
    /// PEM certificates to trust for a tls:// NATS server.
    pub nats_ca: Option<PathBuf>,
    /// PEM certificates to trust for an mqtts:// broker.
    pub mqtt_ca: Option<PathBuf>,
    /// Detections held per broker while it is down.
    pub outbox: Option<u32>,
}

/// When a stream's pipeline is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// After an error (a camera unplugged, a server gone), with backoff; the end of a
    /// file ends the stream. (A network source that ends counts as an error: a camera
    /// has no end, a server closing the connection does.)
    #[default]
    OnError,
    /// After an error and at the end of the input (a file played in a loop).
    Always,
    /// Never: the stream ends with its first error.
    Never,
}

/// `[[streams]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream's id in results and over gRPC.
    pub id: String,
    /// Anything `uridecodebin` plays.
    pub uri: Option<String>,
    /// A local file.
    pub file: Option<PathBuf>,
    /// A live `videotestsrc` pattern (ball, smpte, snow, ...).
    pub test_pattern: Option<String>,
    /// The engine's name.
    pub engine: Option<String>,
    /// Labels; the element's default set without them.
    pub labels: Option<Vec<String>>,
    /// Prompt template with `{}` once.
    pub template: Option<String>,
    /// When to start the pipeline again.
    #[serde(default)]
    pub restart: Restart,
    /// Seconds without a frame after which a playing stream counts as failed (a camera
    /// that hangs with its connection open); 0: never.
    pub stall_timeout: Option<u32>,
    /// Infer every Nth frame.
    pub interval: Option<u32>,
    /// sync or async.
    pub mode: Option<String>,
    /// block or skip.
    pub overload: Option<String>,
    /// Moving-average weight of scores (0 to 0.99).
    pub smoothing: Option<f64>,
    /// Labels per frame.
    pub top_k: Option<u32>,
    /// Score at which a label counts as present.
    pub threshold: Option<f64>,
    /// softmax or sigmoid.
    pub scoring: Option<String>,
    /// The key of the NATS bucket whose label set this stream follows.
    pub labels_key: Option<String>,
    /// The file's `[brokers]`, copied here when it is read: a stream whose brokers
    /// changed is restarted on reload like one whose own settings changed.
    #[serde(skip)]
    pub brokers: Brokers,
}

/// Seconds without a frame before a stream counts as stalled, when the file says nothing.
pub const DEFAULT_STALL_TIMEOUT: u32 = 10;

/// The engine streams use when they name none and the file declares none.
pub const DEFAULT_ENGINE: &str = "default";

impl StreamConfig {
    /// The `cliptag` element's tuning this stream asks for (engine settings included).
    pub fn tuning(&self, engine: &EngineConfig) -> TuningArgs {
        TuningArgs {
            interval: self.interval,
            mode: self.mode.clone(),
            overload: self.overload.clone(),
            max_batch: engine.max_batch,
            max_latency: engine.max_latency_ms,
            dtype: engine.dtype.clone(),
            smoothing: self.smoothing,
            top_k: self.top_k,
            threshold: self.threshold,
            scoring: self.scoring.clone(),
        }
    }

    /// Where the stream's detections go and where its labels come from.
    pub fn broker_args(&self) -> BrokerArgs {
        let b = &self.brokers;
        BrokerArgs {
            nats: b.nats.clone(),
            nats_format: b.nats_format.clone(),
            labels_key: self.labels_key.clone(),
            labels_bucket: self.labels_key.as_ref().and(b.labels_bucket.clone()),
            mqtt: b.mqtt.clone(),
            nats_ca: b.nats_ca.clone(),
            mqtt_ca: b.mqtt_ca.clone(),
            broker_outbox: b.outbox,
        }
    }

    /// How long the stream may go without a frame; `None`: for ever.
    pub fn stall_timeout(&self) -> Option<std::time::Duration> {
        match self.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT) {
            0 => None,
            s => Some(std::time::Duration::from_secs(u64::from(s))),
        }
    }

    /// Whether the end of the input is a failure: a network source (any URI but
    /// `file:`) has no end of its own, so its end means the server went away.
    pub fn end_is_failure(&self) -> bool {
        self.uri
            .as_deref()
            .is_some_and(|u| !u.trim_start().to_ascii_lowercase().starts_with("file:"))
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &str {
        self.engine.as_deref().unwrap_or(DEFAULT_ENGINE)
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, read from `path` (for messages; relative file paths
    /// of streams are taken from the config's directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let at = |what: String| anyhow::anyhow!("{}: {what}", path.display());
        if config.streams.is_empty() {
            return Err(at("no [[streams]]: nothing to run".into()));
        }
        if config.engines.is_empty() {
            config
                .engines
                .insert(DEFAULT_ENGINE.into(), EngineConfig::default());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut ids = HashSet::new();
        for (i, s) in config.streams.iter_mut().enumerate() {
            let name = format!("streams[{i}] (id {:?})", s.id);
            if s.id.trim().is_empty() || s.id.trim() != s.id {
                return Err(at(format!(
                    "{name}: id must be non-empty, without surrounding spaces"
                )));
            }
            if !ids.insert(s.id.clone()) {
                return Err(at(format!("{name}: id used by an earlier stream")));
            }
            let sources = [s.uri.is_some(), s.file.is_some(), s.test_pattern.is_some()];
            if sources.iter().filter(|b| **b).count() != 1 {
                return Err(at(format!(
                    "{name}: give exactly one of uri, file, test_pattern"
                )));
            }
            if let Some(file) = &mut s.file
                && file.is_relative()
            {
                *file = base.join(&*file);
            }
            if !config.engines.contains_key(s.engine_name()) {
                return Err(at(format!(
                    "{name}: engine {:?} is not declared (engines: {})",
                    s.engine_name(),
                    config
                        .engines
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if s.labels
                .as_ref()
                .is_some_and(|l| l.iter().all(|l| l.trim().is_empty()))
            {
                return Err(at(format!("{name}: labels is empty")));
            }
            check_choice(&name, "mode", &s.mode, &["sync", "async"]).map_err(at)?;
            check_choice(&name, "overload", &s.overload, &["block", "skip"]).map_err(at)?;
            check_choice(&name, "scoring", &s.scoring, &["softmax", "sigmoid"]).map_err(at)?;
            check_range(&name, "threshold", s.threshold, 0.0, 1.0).map_err(at)?;
            check_range(&name, "smoothing", s.smoothing, 0.0, 0.99).map_err(at)?;
            if s.interval == Some(0) {
                return Err(at(format!("{name}: interval must be at least 1")));
            }
            if s.labels_key.is_some() && config.brokers.nats.is_none() {
                return Err(at(format!(
                    "{name}: labels_key needs [brokers] nats: label groups are kept on a NATS server"
                )));
            }
        }
        for ca in [&mut config.brokers.nats_ca, &mut config.brokers.mqtt_ca]
            .into_iter()
            .flatten()
        {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        let b = &config.brokers;
        check_choice(
            "brokers",
            "nats_format",
            &b.nats_format,
            &["protobuf", "json"],
        )
        .map_err(at)?;
        if b.outbox == Some(0) {
            return Err(at("brokers: outbox must be at least 1".into()));
        }
        for s in &mut config.streams {
            s.brokers = config.brokers.clone();
        }
        for (name, e) in &config.engines {
            let name = format!("engines.{name}");
            check_choice(&name, "dtype", &e.dtype, &["auto", "f32", "f16", "bf16"]).map_err(at)?;
            if e.max_batch.is_some_and(|b| !(1..=1024).contains(&b)) {
                return Err(at(format!("{name}: max_batch must be 1 to 1024")));
            }
        }
        if config.server.tls_cert.is_some() != config.server.tls_key.is_some() {
            return Err(at("server: tls_cert and tls_key go together".into()));
        }
        Ok(config)
    }
}

fn check_choice(
    name: &str,
    key: &str,
    value: &Option<String>,
    choices: &[&str],
) -> Result<(), String> {
    match value {
        Some(v) if !choices.contains(&v.as_str()) => Err(format!(
            "{name}: {key} {v:?} is not one of {}",
            choices.join(", ")
        )),
        _ => Ok(()),
    }
}

fn check_range(
    name: &str,
    key: &str,
    value: Option<f64>,
    low: f64,
    high: f64,
) -> Result<(), String> {
    match value {
        Some(v) if !(low..=high).contains(&v) => {
            Err(format!("{name}: {key} {v} is not within {low} to {high}"))
        }
        _ => Ok(()),
    }
}

/// Fails when `config` is fine: for tests that want an error.
#[cfg(test)]
fn error_of(text: &str) -> String {
    match Config::parse(text, Path::new("/etc/cliptag/cliptag.toml")) {
        Ok(_) => String::from("no error"),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = Config::parse(
            "[server]\ngrpc = \"0\"\n[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\n\
             [[streams]]\nid = \"b\"\nfile = \"clip.webm\"\nrestart = \"always\"\n",
            Path::new("/srv/conf/cliptag.toml"),
        )
        .expect("parses");
        assert_eq!(c.streams.len(), 2);
        assert!(c.engines.contains_key(DEFAULT_ENGINE));
        assert_eq!(
            c.streams[1].file.as_deref(),
            Some(Path::new("/srv/conf/clip.webm"))
        );
        assert_eq!(c.streams[1].restart, Restart::Always);
    }

    #[test]
    fn brokers_reach_every_stream_and_a_change_of_them_changes_the_stream() {
        let text = |nats: &str| {
            format!(
                "[brokers]\nnats = \"{nats}\"\nmqtt = \"mqtt://b:1883\"\n\
                 [[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\nlabels_key = \"lobby\"\n\
                 [[streams]]\nid = \"b\"\ntest_pattern = \"snow\"\n"
            )
        };
        let path = Path::new("/etc/cliptag/cliptag.toml");
        let c = Config::parse(&text("nats://n:4222"), path).expect("parses");
        let a = c.streams[0].broker_args();
        assert_eq!(a.nats.as_deref(), Some("nats://n:4222"));
        assert_eq!(a.labels_key.as_deref(), Some("lobby"));
        assert_eq!(a.mqtt.as_deref(), Some("mqtt://b:1883"));
        assert_eq!(c.streams[1].broker_args().labels_key, None);
        let moved = Config::parse(&text("nats://m:4222"), path).expect("parses");
        assert_ne!(
            moved.streams[1], c.streams[1],
            "a reload restarts the stream"
        );
    }

    #[test]
    fn network_sources_end_as_failures_and_stall_after_ten_seconds_unless_told() {
        let c = Config::parse(
            "[[streams]]\nid = \"cam\"\nuri = \"rtsp://camera/stream\"\n\
             [[streams]]\nid = \"disk\"\nuri = \"FILE:///srv/clip.webm\"\nstall_timeout = 0\n\
             [[streams]]\nid = \"local\"\nfile = \"clip.webm\"\nstall_timeout = 4\n",
            Path::new("/srv/conf/cliptag.toml"),
        )
        .expect("parses");
        let ends: Vec<bool> = c.streams.iter().map(StreamConfig::end_is_failure).collect();
        assert_eq!(ends, [true, false, false]);
        let stalls: Vec<_> = c.streams.iter().map(StreamConfig::stall_timeout).collect();
        assert_eq!(
            stalls,
            [
                Some(std::time::Duration::from_secs(10)),
                None,
                Some(std::time::Duration::from_secs(4))
            ]
        );
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let e = error_of("[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\nintervall = 2\n");
        assert!(
            e.contains("/etc/cliptag/cliptag.toml")
                && e.contains("line 4")
                && e.contains("intervall"),
            "{e}"
        );
        let e = error_of("[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\ninterval = \"two\"\n");
        assert!(e.contains("line 4") && e.contains("interval"), "{e}");
        let e = error_of("[[streams]]\nid = \"a\"\n");
        assert!(e.contains("exactly one of uri, file, test_pattern"), "{e}");
        let e = error_of("[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\nengine = \"gpu\"\n");
        assert!(e.contains("engine \"gpu\" is not declared"), "{e}");
        let e = error_of(
            "[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\n[[streams]]\nid = \"a\"\ntest_pattern = \"snow\"\n",
        );
        assert!(e.contains("id used by an earlier stream"), "{e}");
        let e = error_of("[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\nlabels_key = \"k\"\n");
        assert!(e.contains("labels_key needs [brokers] nats"), "{e}");
        let e = error_of(
            "[brokers]\nnats_format = \"xml\"\n[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\n",
        );
        assert!(e.contains("nats_format \"xml\""), "{e}");
        let e = error_of("[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\nmode = \"fast\"\n");
        assert!(e.contains("mode \"fast\" is not one of sync, async"), "{e}");
        assert!(error_of("[server]\n").contains("streams"));
    }
}

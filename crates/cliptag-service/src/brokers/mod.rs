//! Brokers a fleet already runs: detections published to NATS and MQTT, label sets kept
//! in a NATS JetStream key-value bucket that every process bound to a key follows.
//!
//! - **Publishing** ([`Publisher`]): every result of a stream goes to
//!   `<prefix>.<stream>.detections` on NATS (the `cliptag.v1.Detection` protobuf, or JSON
//!   on request; the `Content-Type` header says which) and to `<prefix>/<stream>/detections`
//!   on MQTT (JSON, QoS 1). Results are queued from the engine's delivery thread into a
//!   bounded outbox per broker and sent by a task of a small runtime of their own, so a
//!   slow or absent broker never holds up video: the oldest unsent detections are
//!   dropped and counted instead, and sending resumes, with backoff, when the broker
//!   is back.
//! - **Label sets** ([`LabelsBinding`]): a stream bound to a key of the bucket scores
//!   with whatever set was last written there; the entry's revision is the set's
//!   version in every result. A set this process cannot use is refused here, counted,
//!   and the set in use stays. gRPC label changes of a bound stream are written to the
//!   key, so that every process (this one included) takes them the same way.
//! - **Editing from anywhere** ([`LabelsBucket`]): read and change a key with the
//!   bucket's compare-and-set on the revision (`cliptag labels --nats`).
//!
//! Connections to one NATS URL are shared by every stream of the process.

mod address;
mod labels_kv;
mod mqtt;
mod nats;
mod outbox;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use cliptag_engine::FrameResult;
use cliptag_proto::v1;

pub(crate) use labels_kv::{BindingInner, binding_of, binding_proto};
pub use labels_kv::{
    DEFAULT_BUCKET, LabelsBinding, LabelsBucket, LabelsEntry, LabelsKey, LabelsWriteError,
    spec_from_proto, spec_from_value, spec_to_value,
};
pub use mqtt::MqttDetections;
pub use nats::{CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, NatsDetections, decode_detection};

use crate::convert;
use outbox::Outbox;

/// Detections an outbox holds by default while its broker is slow or down.
pub const DEFAULT_OUTBOX: usize = 1024;

/// How long a stopping publisher keeps sending what its outbox still holds.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Longest wait between two attempts to reach a broker that is down.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The wait before reconnection attempt `attempt` (from 1): doubling from 100 ms up to
/// [`MAX_BACKOFF`].
pub(crate) fn backoff(attempt: usize) -> Duration {
    let shift = attempt.saturating_sub(1).min(5) as u32;
    (Duration::from_millis(100) * 2u32.pow(shift)).min(MAX_BACKOFF)
}

/// What can go wrong before anything is sent: settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A URL that does not parse or names another kind of broker.
    #[error("{broker} URL {url:?} is not usable: {reason}")]
    Url {
        /// "NATS" or "MQTT".
        broker: &'static str,
        /// The URL, password hidden.
        url: String,
        /// Why.
        reason: String,
    },
    /// A stream id, prefix, bucket or key that a subject, topic or key cannot hold.
    #[error("{0}")]
    Name(String),
    /// A file named in the settings cannot be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TLS cannot be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The broker's runtime could not start.
    #[error("cannot start the brokers' runtime: {0}")]
    Runtime(String),
}

/// How detections are encoded on NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The `cliptag.v1.Detection` protobuf.
    #[default]
    Protobuf,
    /// JSON with the `Detection` fields (names as in the proto).
    Json,
}

/// Where NATS detections go.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSettings {
    /// `nats://[user:password@]host[:port]`, or `tls://` for TLS.
    pub url: String,
    /// Subjects are `<prefix>.<stream>.detections`.
    pub subject_prefix: String,
    /// Protobuf (default) or JSON.
    pub format: Format,
    /// PEM certificates to trust for TLS, instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// Where MQTT detections go.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    /// `mqtt://[user:password@]host[:port]`, or `mqtts://` for TLS.
    pub url: String,
    /// Topics are `<prefix>/<stream>/detections`.
    pub topic_prefix: String,
    /// User name; overrides the URL's.
    pub username: Option<String>,
    /// Password; overrides the URL's.
    pub password: Option<String>,
    /// PEM certificates to trust for TLS, instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// Where a stream's detections are published.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishSettings {
    /// NATS, if any.
    pub nats: Option<NatsSettings>,
    /// MQTT, if any.
    pub mqtt: Option<MqttSettings>,
    /// Detections each outbox holds while its broker is slow or down.
    pub outbox: usize,
}

impl PublishSettings {
    /// True when there is nothing to publish to.
    pub fn is_empty(&self) -> bool {
        self.nats.is_none() && self.mqtt.is_none()
    }
}

/// Detections read from a broker, whichever it is: what `cliptag watch --nats|--mqtt`
/// and the broker benchmark read.
pub enum BrokerDetections {
    /// From NATS.
    Nats(NatsDetections),
    /// From MQTT.
    Mqtt(Box<MqttDetections>),
}

impl BrokerDetections {
    /// The next detection; an error for a message that is not one (or, on MQTT, a lost
    /// connection, which the next call repairs); `None` when the subscription ends.
    pub async fn next(&mut self) -> Option<Result<v1::Detection, String>> {
        match self {
            BrokerDetections::Nats(d) => d.next().await,
            BrokerDetections::Mqtt(d) => Some(d.next().await),
        }
    }

    /// Ends the subscription (an MQTT client disconnects).
    pub async fn close(self) {
        if let BrokerDetections::Mqtt(d) = self {
            d.close().await;
        }
    }
}

/// A broker URL as it may be shown: its password (or a bare user, a NATS token)
/// replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    address::redact(url)
}

/// A label from its proto message (for programs that edit a stored set).
pub fn label_from_proto(label: v1::Label) -> cliptag_engine::Label {
    convert::label_from_proto(label)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The runtime every broker task of the process runs on: one thread, off every video
/// and inference thread.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Handle, BrokerError> {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    static STARTING: Mutex<()> = Mutex::new(());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let _one = lock(&STARTING);
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cliptag-brokers")
        .enable_all()
        .build()
        .map_err(|e| BrokerError::Runtime(e.to_string()))?;
    // Lives as long as the process: connections shared by streams outlive any one.
    let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
    Ok(HANDLE.get_or_init(|| runtime.handle().clone()))
}

/// Runs `future` on the brokers' runtime and waits for its output from a plain thread
/// (an element's state change, a blocking gRPC task); `None` after `timeout`.
pub(crate) fn run_blocking<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
    timeout: Duration,
) -> Result<Option<T>, BrokerError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(future.await);
    });
    Ok(rx.recv_timeout(timeout).ok())
}

/// How one link of a publisher is doing, for `ListStreams` and the element's stats.
pub(crate) trait LinkState: Send + Sync {
    fn connected(&self) -> bool;
    fn last_error(&self) -> String;
}

/// One stream's detections to one broker.
pub(crate) struct Link {
    broker: &'static str,
    url: String,
    subject: String,
    /// Results waiting, turned into messages by the sender (not on the thread that
    /// offers them).
    outbox: Outbox<Arc<FrameResult>>,
    state: Arc<dyn LinkState>,
    /// Its sending ended (after a close): what was queued went out.
    finished: std::sync::atomic::AtomicBool,
}

impl Link {
    fn to_proto(&self) -> v1::BrokerLink {
        v1::BrokerLink {
            broker: self.broker.to_string(),
            url: self.url.clone(),
            subject: self.subject.clone(),
            connected: self.state.connected(),
            published: self.outbox.published.load(Ordering::Relaxed),
            dropped: self.outbox.dropped.load(Ordering::Relaxed),
            queued: self.outbox.len() as u64,
            last_error: self.state.last_error(),
        }
    }
}

/// A stream's id and one of its links.
type StreamLink = (String, Weak<Link>);

/// Publishers' links by stream id, for `ListStreams`.
static LINKS: LazyLock<Mutex<Vec<StreamLink>>> = LazyLock::new(Default::default);

/// The broker links of stream `id`, with their counters.
pub fn links_of(id: &str) -> Vec<v1::BrokerLink> {
    let mut links = lock(&LINKS);
    links.retain(|(_, link)| link.strong_count() > 0);
    links
        .iter()
        .filter(|(stream, _)| stream == id)
        .filter_map(|(_, link)| link.upgrade())
        .map(|link| link.to_proto())
        .collect()
}

/// Publishes one stream's detections to its brokers until dropped. Dropping it sends
/// what the outboxes still hold for up to two seconds (while connected), then stops.
pub struct Publisher {
    links: Vec<Arc<Link>>,
    /// Closed when every sender task has ended.
    done: Option<std::sync::mpsc::Receiver<()>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.links.iter().map(|l| (&l.broker, &l.url, &l.subject)))
            .finish()
    }
}

impl Publisher {
    /// Checks the settings and starts publishing stream `stream`'s detections. An
    /// unreachable broker is not an error: it is retried, with backoff, for as long as
    /// the publisher lives ([`Publisher::unreachable`] says which are not connected).
    pub fn start(stream: &str, settings: &PublishSettings) -> Result<Self, BrokerError> {
        address::check_token("stream id", stream)?;
        let capacity = settings.outbox.max(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let mut links = Vec::new();
        let mut tasks = Vec::new();
        if let Some(nats) = &settings.nats {
            let (link, task) = nats::start_publishing(stream, nats, capacity, done_tx.clone())?;
            links.push(link);
            tasks.push(task);
        }
        if let Some(mqtt) = &settings.mqtt {
            let (link, mut started) =
                mqtt::start_publishing(stream, mqtt, capacity, done_tx.clone())?;
            links.push(link);
            tasks.append(&mut started);
        }
        let mut registry = lock(&LINKS);
        registry.retain(|(_, link)| link.strong_count() > 0);
        for link in &links {
            registry.push((stream.to_string(), Arc::downgrade(link)));
        }
        Ok(Self {
            links,
            done: Some(done_rx),
            tasks,
        })
    }

    /// The side that queues results, for the thread that has them.
    pub fn outlet(&self) -> Outlet {
        Outlet {
            links: self.links.clone(),
        }
    }

    /// Waits up to `timeout` for every broker to be connected; returns a line for each
    /// one that is not (URL and last error).
    pub fn unreachable(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.links.iter().any(|l| !l.state.connected()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.links
            .iter()
            .filter(|l| !l.state.connected())
            .map(|l| {
                let error = l.state.last_error();
                let why = if error.is_empty() {
                    "no answer yet".to_string()
                } else {
                    error
                };
                format!(
                    "{} at {} is unreachable ({why})",
                    l.broker.to_uppercase(),
                    l.url
                )
            })
            .collect()
    }

    /// Every link with its counters.
    pub fn links(&self) -> Vec<v1::BrokerLink> {
        self.links.iter().map(|l| l.to_proto()).collect()
    }
}

/// Queues a stream's results for its brokers; cheap to clone. Never waits: it can be
/// called on the engine's delivery thread.
#[derive(Clone)]
pub struct Outlet {
    links: Vec<Arc<Link>>,
}

impl Outlet {
    /// Queues a result for every broker: a reference, nothing encoded here.
    pub fn offer(&self, result: &Arc<FrameResult>) {
        for link in &self.links {
            link.outbox.push(result.clone());
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for link in &self.links {
            link.outbox.close();
        }
        if let Some(done) = self.done.take() {
            // Disconnected once every task has ended. Waiting is for links still sending
            // to a connected broker: a finished one or one whose broker is away has
            // nothing more to wait for.
            let deadline = Instant::now() + FLUSH_GRACE;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                done.recv_timeout(Duration::from_millis(20))
            {
                let waiting_for_nothing = self
                    .links
                    .iter()
                    .all(|l| l.finished.load(Ordering::Acquire) || !l.state.connected());
                if Instant::now() >= deadline || waiting_for_nothing {
                    break;
                }
            }
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling() {
        let waits: Vec<u128> = (1..=7).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn settings_that_cannot_work_fail_before_anything_connects() {
        let nats = |url: &str, prefix: &str| PublishSettings {
            nats: Some(NatsSettings {
                url: url.into(),
                subject_prefix: prefix.into(),
                format: Format::Protobuf,
                ca_file: None,
            }),
            mqtt: None,
            outbox: 8,
        };
        let e = Publisher::start("cam", &nats("nats//nowhere", "cliptag")).expect_err("url");
        assert!(e.to_string().contains("nats//nowhere"), "{e}");
        let e = Publisher::start("cam.1", &nats("nats://127.0.0.1:1", "cliptag")).expect_err("id");
        assert!(e.to_string().contains("\"cam.1\""), "{e}");
        let e = Publisher::start("cam", &nats("nats://127.0.0.1:1", "a..b")).expect_err("prefix");
        assert!(e.to_string().contains("a..b"), "{e}");
        let mut missing_ca = nats("tls://127.0.0.1:1", "cliptag");
        if let Some(n) = missing_ca.nats.as_mut() {
            n.ca_file = Some("/nonexistent/ca.pem".into());
        }
        let e = Publisher::start("cam", &missing_ca).expect_err("ca");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}

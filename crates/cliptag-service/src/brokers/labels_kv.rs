//! Label sets in a NATS JetStream key-value bucket: one key per label group, the value a
//! label set in JSON (the console's shape), the entry's revision its version.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use cliptag_engine::{Engine, LabelSetSpec};
use cliptag_proto::v1;
use tokio_stream::StreamExt;

use super::address::{BrokerUrl, Kind, redact};
use super::nats::{self, Connection};
use super::{BrokerError, LinkState, backoff, lock, run_blocking, runtime};
use crate::{convert, json};

/// The bucket label sets are kept in unless another is named.
pub const DEFAULT_BUCKET: &str = "cliptag_labels";

/// Revisions a bucket created by cliptag keeps per key (for `nats kv history`).
const HISTORY: i64 = 16;

/// How long a write through the bucket waits for this process to take the new set.
const TAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A label group: a key of a bucket on a NATS server.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelsKey {
    /// The NATS server: `nats://[user:password@]host[:port]` or `tls://`.
    pub url: String,
    /// The bucket ([`DEFAULT_BUCKET`] unless another is named).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// PEM certificates to trust for TLS, instead of the system's.
    pub ca_file: Option<PathBuf>,
}

impl LabelsKey {
    /// Checks the URL, the bucket's name and the key before anything connects.
    pub fn check(&self) -> Result<(), BrokerError> {
        BrokerUrl::parse(Kind::Nats, &self.url)?;
        let bucket_ok = !self.bucket.is_empty()
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !bucket_ok {
            return Err(BrokerError::Name(format!(
                "bucket {:?}: use letters, digits, _ and -",
                self.bucket
            )));
        }
        let key_ok = !self.key.is_empty()
            && !self.key.starts_with('.')
            && !self.key.ends_with('.')
            && self
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=/.".contains(c));
        if !key_ok {
            return Err(BrokerError::Name(format!(
                "labels key {:?}: use letters, digits and - _ = / . (not first or last)",
                self.key
            )));
        }
        nats::check_ca(self.ca_file.as_deref())
    }

    fn describe(&self) -> String {
        format!(
            "key {:?} of bucket {:?} on {}",
            self.key,
            self.bucket,
            redact(&self.url)
        )
    }
}

/// A label set as stored: the JSON of the console's API.
pub fn spec_to_value(spec: &LabelSetSpec) -> Vec<u8> {
    let set = json::LabelSet::from_proto(convert::spec_to_proto(spec));
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_vec_pretty(&set).unwrap_or_default()
}

/// A label set from its proto message, checked as a stored value is.
pub fn spec_from_proto(set: v1::LabelSet) -> Result<LabelSetSpec, String> {
    convert::check_scoring(&set).map_err(|s| s.message().to_string())?;
    let spec = convert::spec_from_proto(set);
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

/// A stored value back to a label set, checked (the model-specific checks, such as
/// prompts that fit the tokenizer, happen when a process embeds it).
pub fn spec_from_value(value: &[u8]) -> Result<LabelSetSpec, String> {
    let set: json::LabelSet =
        serde_json::from_slice(value).map_err(|e| format!("not a label set in JSON: {e}"))?;
    spec_from_proto(set.into_proto().map_err(|s| s.message().to_string())?)
}

async fn open_store(
    client: &async_nats::Client,
    bucket: &str,
    create: bool,
) -> Result<kv::Store, String> {
    let js = jetstream::new(client.clone());
    match js.get_key_value(bucket).await {
        Ok(store) => return Ok(store),
        Err(e) if !create => return Err(format!("cannot open bucket {bucket:?}: {e}")),
        Err(_) => {}
    }
    // The bucket's stream, made as a key-value bucket is (the client's own bucket
    // creation first asks for account fields that servers before 2.10 do not send).
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("cliptag label sets, one per label group".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: HISTORY,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await;
    // Created here, or by another process in between.
    js.get_key_value(bucket).await.map_err(|e| match created {
        Err(create) => format!("cannot open or create bucket {bucket:?}: {create}"),
        Ok(_) => format!("cannot open bucket {bucket:?}: {e}"),
    })
}

/// A label set read from a bucket.
#[derive(Debug, Clone)]
pub struct LabelsEntry {
    /// The set.
    pub spec: LabelSetSpec,
    /// Its revision: the version results name.
    pub revision: u64,
}

/// Why a write to a bucket was not made.
#[derive(Debug, thiserror::Error)]
pub enum LabelsWriteError {
    /// The key is not at the revision the write was conditioned on.
    #[error("{what} is at revision {current}, not {expected}")]
    Conflict {
        /// The key, bucket and server.
        what: String,
        /// The revision asked for.
        expected: u64,
        /// The key's revision now (0: absent).
        current: u64,
    },
    /// The server cannot be reached or did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// This process cannot use the set (it is still stored: other processes may take it).
    #[error("{0}")]
    Refused(String),
}

/// A bucket of label sets, for programs that read and edit them (`cliptag labels
/// --nats`).
pub struct LabelsBucket {
    store: kv::Store,
    describe: String,
}

impl LabelsBucket {
    /// Connects to `url` (failing if the server does not answer within `timeout`) and
    /// opens `bucket`; with `create`, creates it when missing (as a first write needs).
    pub async fn open(
        url: &str,
        bucket: &str,
        ca_file: Option<PathBuf>,
        timeout: Duration,
        create: bool,
    ) -> Result<Self, String> {
        let key = LabelsKey {
            url: url.to_string(),
            bucket: bucket.to_string(),
            key: "x".into(),
            ca_file: ca_file.clone(),
        };
        key.check().map_err(|e| e.to_string())?;
        let mut options = async_nats::ConnectOptions::new()
            .name("cliptag labels")
            .connection_timeout(timeout);
        if let Some(ca) = ca_file {
            options = options.add_root_certificates(ca);
        }
        let parsed = BrokerUrl::parse(Kind::Nats, url).map_err(|e| e.to_string())?;
        let (options, address) = nats::credentials(options, &parsed);
        let client = options
            .connect(address)
            .await
            .map_err(|e| format!("cannot reach NATS at {}: {e}", redact(url)))?;
        let store = tokio::time::timeout(timeout, open_store(&client, bucket, create))
            .await
            .map_err(|_| {
                format!(
                    "NATS at {} did not answer for its key-value store (is JetStream on? nats-server -js)",
                    redact(url)
                )
            })??;
        Ok(Self {
            store,
            describe: format!("bucket {bucket:?} on {}", redact(url)),
        })
    }

    /// The set stored under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<LabelsEntry>, String> {
        let entry = self
            .store
            .entry(key.to_string())
            .await
            .map_err(|e| format!("cannot read key {key:?} of {}: {e}", self.describe))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let spec = spec_from_value(&entry.value).map_err(|e| {
                    format!(
                        "key {key:?} at revision {} holds no usable set: {e}",
                        entry.revision
                    )
                })?;
                Ok(Some(LabelsEntry {
                    spec,
                    revision: entry.revision,
                }))
            }
            _ => Ok(None),
        }
    }

    /// Stores `spec` under `key`; with `if_version`, only if the key is at that
    /// revision (0: only if it has no set). Returns the new revision.
    pub async fn set(
        &self,
        key: &str,
        spec: &LabelSetSpec,
        if_version: Option<u64>,
    ) -> Result<u64, LabelsWriteError> {
        write(&self.store, key, spec, if_version, &self.describe).await
    }
}

async fn write(
    store: &kv::Store,
    key: &str,
    spec: &LabelSetSpec,
    if_version: Option<u64>,
    describe: &str,
) -> Result<u64, LabelsWriteError> {
    let value: bytes::Bytes = spec_to_value(spec).into();
    let result = match if_version {
        None => store.put(key, value).await.map_err(|e| e.to_string()),
        Some(0) => match store.create(key, value).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(conflict(store, key, 0, describe).await);
            }
            Err(e) => Err(e.to_string()),
        },
        Some(expected) => match store.update(key, value, expected).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                return Err(conflict(store, key, expected, describe).await);
            }
            Err(e) => Err(e.to_string()),
        },
    };
    result.map_err(|e| {
        LabelsWriteError::Unavailable(format!("cannot write key {key:?} of {describe}: {e}"))
    })
}

async fn conflict(store: &kv::Store, key: &str, expected: u64, describe: &str) -> LabelsWriteError {
    let current = match store.entry(key.to_string()).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry.revision,
        _ => 0,
    };
    LabelsWriteError::Conflict {
        what: format!("key {key:?} of {describe}"),
        expected,
        current,
    }
}

/// What a binding shares with its task and with the registry.
pub(crate) struct BindingInner {
    key: LabelsKey,
    engine: Weak<Engine>,
    set: String,
    connection: Arc<Connection>,
    /// The revision in use (0: none read yet).
    revision: AtomicU64,
    /// The newest revision refused, and how many were.
    refused_revision: AtomicU64,
    refused: AtomicU64,
    last_refusal: Mutex<String>,
    watching: AtomicBool,
    store: Mutex<Option<kv::Store>>,
}

/// Bindings by engine and label set, for the gRPC service and `ListStreams`.
static BINDINGS: LazyLock<Mutex<Vec<Weak<BindingInner>>>> = LazyLock::new(Default::default);

/// Keeps an engine's label set following a key of a bucket until dropped.
pub struct LabelsBinding {
    inner: Arc<BindingInner>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for LabelsBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.key.describe())
    }
}

impl LabelsBinding {
    /// Binds label set `set` of `engine` to `key`: from now on the set is whatever is
    /// written there, at the entry's revision. When the key has no set yet, `seed` (the
    /// stream's own labels) is written there first. The server is reached in the
    /// background, retried with backoff while it is down.
    pub fn start(
        engine: &Arc<Engine>,
        set: &str,
        key: &LabelsKey,
        seed: &LabelSetSpec,
    ) -> Result<Self, BrokerError> {
        key.check()?;
        let connection = nats::shared(&key.url, key.ca_file.as_deref())?;
        let inner = Arc::new(BindingInner {
            key: key.clone(),
            engine: Arc::downgrade(engine),
            set: set.to_string(),
            connection,
            revision: AtomicU64::new(0),
            refused_revision: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_refusal: Mutex::new(String::new()),
            watching: AtomicBool::new(false),
            store: Mutex::new(None),
        });
        let seed = spec_to_value(seed);
        let task = runtime()?.spawn(follow(inner.clone(), seed));
        let mut bindings = lock(&BINDINGS);
        bindings.retain(|b| b.strong_count() > 0);
        bindings.push(Arc::downgrade(&inner));
        Ok(Self {
            inner,
            task: task.abort_handle(),
        })
    }

    /// Waits up to `timeout` for the key's set to be in use; its revision, or `None`.
    pub fn wait_ready(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let revision = self.inner.revision.load(Ordering::Acquire);
            if revision > 0 {
                return Some(revision);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `spec` to the key (see [`LabelsBinding::start`]) and waits until this
    /// process uses it; its revision.
    pub fn write(
        &self,
        spec: &LabelSetSpec,
        if_version: Option<u64>,
    ) -> Result<u64, LabelsWriteError> {
        self.inner.write(spec, if_version)
    }

    /// The binding as `ListStreams` shows it.
    pub fn to_proto(&self) -> v1::LabelsBinding {
        self.inner.to_proto()
    }
}

impl Drop for LabelsBinding {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BindingInner {
    fn to_proto(&self) -> v1::LabelsBinding {
        v1::LabelsBinding {
            url: redact(&self.key.url),
            bucket: self.key.bucket.clone(),
            key: self.key.key.clone(),
            revision: self.revision.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Relaxed),
            last_refusal: lock(&self.last_refusal).clone(),
            connected: self.watching.load(Ordering::Acquire) && self.connection.connected(),
        }
    }

    pub(crate) fn write(
        &self,
        spec: &LabelSetSpec,
        if_version: Option<u64>,
    ) -> Result<u64, LabelsWriteError> {
        let describe = self.key.describe();
        let store = lock(&self.store).clone().ok_or_else(|| {
            LabelsWriteError::Unavailable(format!("{describe} is not reachable now"))
        })?;
        let (key, spec_owned, what) = (self.key.key.clone(), spec.clone(), describe.clone());
        let revision = run_blocking(
            async move { write(&store, &key, &spec_owned, if_version, &what).await },
            Duration::from_secs(5),
        )
        .map_err(|e| LabelsWriteError::Unavailable(e.to_string()))?
        .ok_or_else(|| LabelsWriteError::Unavailable(format!("{describe} did not answer")))??;
        self.wait_for(revision)?;
        Ok(revision)
    }

    /// Whether `other` follows the same key of the same bucket on the same server.
    pub(crate) fn same_key(&self, other: &BindingInner) -> bool {
        (&self.key.url, &self.key.bucket, &self.key.key)
            == (&other.key.url, &other.key.bucket, &other.key.key)
    }

    /// Waits until this process uses `revision` of the key (or a later one), or has
    /// refused it.
    pub(crate) fn wait_for(&self, revision: u64) -> Result<(), LabelsWriteError> {
        let deadline = Instant::now() + TAKE_TIMEOUT;
        loop {
            if self.revision.load(Ordering::Acquire) >= revision {
                return Ok(());
            }
            if self.refused_revision.load(Ordering::Acquire) >= revision {
                return Err(LabelsWriteError::Refused(lock(&self.last_refusal).clone()));
            }
            if Instant::now() >= deadline {
                return Err(LabelsWriteError::Unavailable(format!(
                    "revision {revision} was written to {} but did not come back within {} s",
                    self.key.describe(),
                    TAKE_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn refuse(&self, revision: u64, why: String) {
        // A set delivered again (a new watch after a reconnect) is not refused twice.
        if self.refused_revision.load(Ordering::Acquire) == revision {
            return;
        }
        tracing::warn!(
            "label set at revision {revision} of {} refused for {:?}: {why}; the set in use stays",
            self.key.describe(),
            self.set
        );
        *lock(&self.last_refusal) = format!("revision {revision}: {why}");
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.refused_revision.store(revision, Ordering::Release);
    }

    /// Takes an entry of the key. The first entry of a watch is taken whatever its
    /// revision (the key may have been recreated, its revisions counting from 1 again,
    /// or the set in use may not come from the key); later ones only when newer.
    async fn apply(&self, entry: kv::Entry, first: bool) {
        if entry.operation != kv::Operation::Put {
            tracing::warn!(
                "{} was deleted; {:?} keeps its labels",
                self.key.describe(),
                self.set
            );
            return;
        }
        let revision = entry.revision;
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        let in_use = engine.labels(&self.set).map(|s| s.version());
        let current = self.revision.load(Ordering::Acquire);
        if (!first && revision <= current) || (revision == current && in_use == Some(revision)) {
            return;
        }
        let spec = match spec_from_value(&entry.value) {
            Ok(spec) => spec,
            Err(why) => return self.refuse(revision, why),
        };
        let set = self.set.clone();
        // Embedding the prompts is CPU work: not on the runtime's thread.
        let installed =
            tokio::task::spawn_blocking(move || engine.install_labels(&set, spec, revision)).await;
        match installed {
            Ok(Ok(_)) => {
                if revision < current {
                    tracing::warn!(
                        "{} went back from revision {current} to {revision} (the bucket was recreated?); taking it",
                        self.key.describe()
                    );
                }
                self.revision.store(revision, Ordering::Release);
                tracing::info!(
                    "label set {:?} now at revision {revision} of {}",
                    self.set,
                    self.key.describe()
                );
            }
            Ok(Err(e)) => self.refuse(revision, e.to_string()),
            Err(e) => self.refuse(revision, format!("the labels' worker failed: {e}")),
        }
    }
}

/// Follows the key for as long as the binding lives: reconnects and re-watches, with
/// backoff, whenever the server goes away.
async fn follow(inner: Arc<BindingInner>, first_seed: Vec<u8>) {
    let mut attempt = 0usize;
    let mut said = String::new();
    loop {
        // A key found empty gets the set in use now (the stream's own labels at first,
        // the group's last set when a lost bucket comes back empty).
        let seed = inner
            .engine
            .upgrade()
            .and_then(|e| e.labels(&inner.set))
            .map_or_else(|| first_seed.clone(), |s| spec_to_value(s.spec()));
        let why = match follow_once(&inner, &seed).await {
            Ok(()) => "the watch ended".to_string(),
            Err(e) => e,
        };
        inner.watching.store(false, Ordering::Release);
        *lock(&inner.store) = None;
        if why != said {
            tracing::warn!("{}: {why}; trying again", inner.key.describe());
            said = why;
        }
        attempt += 1;
        tokio::time::sleep(backoff(attempt)).await;
    }
}

async fn follow_once(inner: &BindingInner, seed: &[u8]) -> Result<(), String> {
    while !inner.connection.connected() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = &inner.key.key;
    let store = open_store(&inner.connection.client, &inner.key.bucket, true).await?;
    match store.create(key, seed.to_vec().into()).await {
        Ok(revision) => tracing::info!(
            "{} had no label set: wrote {:?}'s own (revision {revision})",
            inner.key.describe(),
            inner.set
        ),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot write the first label set: {e}")),
    }
    let mut watch = store
        .watch_with_history(key)
        .await
        .map_err(|e| format!("cannot watch: {e}"))?;
    *lock(&inner.store) = Some(store);
    inner.watching.store(true, Ordering::Release);
    let mut first = true;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| format!("watch: {e}"))?;
        inner.apply(entry, first).await;
        first = false;
    }
    Ok(())
}

/// The binding of `set` of `engine`, if it follows a key.
pub(crate) fn binding_of(engine: &Arc<Engine>, set: &str) -> Option<Arc<BindingInner>> {
    let bindings = lock(&BINDINGS);
    bindings
        .iter()
        .filter_map(Weak::upgrade)
        .find(|b| b.set == set && b.engine.upgrade().is_some_and(|e| Arc::ptr_eq(&e, engine)))
}

/// `ListStreams`' view of the binding of `set` of `engine`.
pub(crate) fn binding_proto(engine: &Arc<Engine>, set: &str) -> Option<v1::LabelsBinding> {
    binding_of(engine, set).map(|b| b.to_proto())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_set_reads_back_and_bad_values_are_refused() {
        let mut spec = LabelSetSpec::from_names(&["a dog", "a cat"]);
        spec.template = "a photo of {}".into();
        spec.top_k = 2;
        let back = spec_from_value(&spec_to_value(&spec)).expect("round trip");
        assert_eq!(back, spec);
        for bad in [
            &b"not json"[..],
            br#"{"labels": []}"#,
            br#"{"labels": [{"name": "a"}], "scoring": "max"}"#,
            br#"{"labels": [{"name": "a"}], "colour": 1}"#,
        ] {
            assert!(
                spec_from_value(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keys_and_buckets_are_checked() {
        let key = |bucket: &str, key: &str| LabelsKey {
            url: "nats://127.0.0.1:4222".into(),
            bucket: bucket.into(),
            key: key.into(),
            ca_file: None,
        };
        key(DEFAULT_BUCKET, "site-a/lobby.day")
            .check()
            .expect("good");
        for (bucket, k) in [
            ("a b", "k"),
            ("", "k"),
            (DEFAULT_BUCKET, ""),
            (DEFAULT_BUCKET, ".k"),
            (DEFAULT_BUCKET, "k*"),
        ] {
            assert!(key(bucket, k).check().is_err(), "{bucket:?} {k:?}");
        }
    }
}

//! The engine: one model, one inference worker, any number of streams and label sets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use cliptag_model::{ClipModel, LoadOptions};
use crossbeam_channel::{Receiver, Sender};

use crate::broadcast::{Broadcast, Subscription};
use crate::error::{EngineError, Result};
use crate::frame::{FrameTiming, VideoFrame};
use crate::label_set::{LabelSet, TextEncoder};
use crate::label_spec::{LabelError, LabelSetSpec};
use crate::results::{Completion, FrameResult, LabelScore};
use crate::stats::StreamStats;
use crate::stream::{Action, ResultCallback, StreamConfig, StreamShared};
use crate::worker;

/// The most frames [`Engine::warm_up`] runs.
pub const WARM_UP_FRAMES: usize = 8;

/// How an engine loads its model and batches frames.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Model directory; `None`: the bundled model.
    pub model: Option<PathBuf>,
    /// `cpu`, `cuda:N` or `auto`.
    pub device: String,
    /// `f32`, `f16`, `bf16` or `auto` (f16 on a GPU; on the CPU bf16 where it has bf16 dot
    /// products, f32 elsewhere).
    pub dtype: String,
    /// Most frames per forward pass.
    pub max_batch: usize,
    /// Longest a frame waits for its batch to fill before inference starts.
    pub max_latency: Duration,
    /// Prompts whose text embeddings are cached.
    pub text_cache: usize,
    /// Results the fan-out keeps for slow observers before they lag.
    pub observer_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model: None,
            device: "cpu".into(),
            dtype: "auto".into(),
            max_batch: 8,
            max_latency: Duration::from_millis(20),
            text_cache: 16_384,
            observer_buffer: 1024,
        }
    }
}

impl EngineConfig {
    /// What identifies the model an engine runs, for sharing checks and messages.
    pub fn model_description(&self) -> String {
        let model = match &self.model {
            Some(dir) => dir.display().to_string(),
            None => "the bundled model".into(),
        };
        format!("{model} on {} in {}", self.device, self.dtype)
    }

    fn validate(&self) -> Result<()> {
        if self.max_batch == 0 {
            return Err(EngineError::Setting("max-batch must be at least 1".into()));
        }
        if self.observer_buffer == 0 {
            return Err(EngineError::Setting(
                "the observer buffer must hold at least one result".into(),
            ));
        }
        Ok(())
    }
}

/// Engine-wide counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Forward passes run.
    pub batches: u64,
    /// `batch_sizes[n]`: batches of `n` frames.
    pub batch_sizes: Vec<u64>,
    /// Prompts in the text-embedding cache.
    pub cached_prompts: usize,
    /// Time spent in batches (preprocessing and the forward pass), in seconds.
    pub batch_seconds: f64,
}

pub(crate) struct Inner {
    pub model: Arc<ClipModel>,
    pub config: EngineConfig,
    streams: Mutex<Vec<Arc<StreamShared>>>,
    label_sets: Mutex<HashMap<String, Arc<LabelSet>>>,
    /// Serializes label edits, so that a version check and its swap are one step.
    edits: Mutex<()>,
    encoder: TextEncoder,
    doorbell_tx: Sender<()>,
    pub doorbell_rx: Receiver<()>,
    pub shutdown: AtomicBool,
    results: Broadcast<Arc<FrameResult>>,
    batches: AtomicU64,
    batch_sizes: Mutex<Vec<u64>>,
    /// Nanoseconds spent in batches.
    batch_nanos: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(crate) fn stream_list(&self) -> Vec<Arc<StreamShared>> {
        lock(&self.streams).clone()
    }

    pub(crate) fn label_set(&self, id: &str) -> Option<Arc<LabelSet>> {
        lock(&self.label_sets).get(id).cloned()
    }

    pub(crate) fn record_batch_time(&self, took: std::time::Duration) {
        self.batch_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_batch(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut sizes = lock(&self.batch_sizes);
        if sizes.len() <= n {
            sizes.resize(n + 1, 0);
        }
        sizes[n] += 1;
    }
}

/// One model in memory and one inference worker, shared by any number of streams.
///
/// Frames from every stream are batched together; label sets are versioned and swapped
/// whole between batches; every result goes back to its stream in frame order and to
/// every observer.
pub struct Engine {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Loads the model the config names and starts the worker.
    pub fn new(config: EngineConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let device = cliptag_model::parse_device(&config.device)?;
        let options = LoadOptions {
            dtype: cliptag_model::parse_dtype_for(&config.dtype, &device)?,
            device,
            plan: None,
        };
        let model = ClipModel::open(config.model.as_deref(), &options)?;
        Self::with_model(Arc::new(model), config)
    }

    /// Starts an engine on a model already loaded (`config.model`, `device` and `dtype`
    /// only describe it).
    pub fn with_model(model: Arc<ClipModel>, config: EngineConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let (doorbell_tx, doorbell_rx) = crossbeam_channel::bounded(1);
        let inner = Arc::new(Inner {
            encoder: TextEncoder::new(model.clone(), config.text_cache),
            results: Broadcast::new(config.observer_buffer),
            model,
            config,
            streams: Mutex::new(Vec::new()),
            label_sets: Mutex::new(HashMap::new()),
            edits: Mutex::new(()),
            doorbell_tx,
            doorbell_rx,
            shutdown: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            batch_sizes: Mutex::new(Vec::new()),
            batch_nanos: AtomicU64::new(0),
        });
        let worker_inner = inner.clone();
        let worker = std::thread::Builder::new()
            .name("cliptag-infer".into())
            .spawn(move || worker::run(worker_inner))
            .map_err(|e| EngineError::Setting(format!("cannot start the inference thread: {e}")))?;
        Ok(Arc::new(Self {
            inner,
            worker: Mutex::new(Some(worker)),
        }))
    }

    /// The model.
    pub fn model(&self) -> &Arc<ClipModel> {
        &self.inner.model
    }

    /// The settings it was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Attaches a stream. `on_result` receives every frame back with its result, in
    /// frame order (see [`ResultCallback`]).
    pub fn attach(
        self: &Arc<Self>,
        id: &str,
        config: StreamConfig,
        on_result: impl Fn(Completion) + Send + Sync + 'static,
    ) -> Result<Stream> {
        let callback: ResultCallback = Arc::new(on_result);
        let mut streams = lock(&self.inner.streams);
        if streams.iter().any(|s| &*s.id == id) {
            return Err(EngineError::StreamExists(id.to_string()));
        }
        let shared = Arc::new(StreamShared::new(
            Arc::from(id),
            config,
            callback,
            self.inner.results.clone(),
            self.inner.doorbell_tx.clone(),
        )?);
        streams.push(shared.clone());
        Ok(Stream {
            shared,
            engine: self.clone(),
        })
    }

    /// Replaces (or creates) label set `set`. With `if_version`, only if the set is at
    /// that version (0: does not exist yet). The text embeddings are computed on the
    /// calling thread before the swap; frames keep being scored by the old set until
    /// then. Returns the new set.
    pub fn set_labels(
        &self,
        set: &str,
        spec: LabelSetSpec,
        if_version: Option<u64>,
    ) -> Result<Arc<LabelSet>> {
        self.edit(set, if_version, true, |_| Ok(spec))
    }

    /// Replaces (or creates) label set `set` at exactly `version`, given from outside,
    /// such as the revision of a key-value store that holds the set for many processes.
    /// The caller owns the numbering (a store's revisions may start again at 1 when it
    /// is recreated): unlike [`Engine::set_labels`], nothing is compared. Version 0
    /// stands for a set that has no outside version yet.
    pub fn install_labels(
        &self,
        set: &str,
        spec: LabelSetSpec,
        version: u64,
    ) -> Result<Arc<LabelSet>> {
        let _serial = lock(&self.inner.edits);
        let compiled = Arc::new(self.inner.encoder.compile(Arc::from(set), version, spec)?);
        lock(&self.inner.label_sets).insert(set.to_string(), compiled.clone());
        Ok(compiled)
    }

    /// Changes an existing label set: `edit` gets the current spec and returns the new
    /// one. Same version check and swap as [`Engine::set_labels`].
    pub fn edit_labels(
        &self,
        set: &str,
        if_version: Option<u64>,
        edit: impl FnOnce(&LabelSetSpec) -> std::result::Result<LabelSetSpec, LabelError>,
    ) -> Result<Arc<LabelSet>> {
        self.edit(set, if_version, false, edit)
    }

    fn edit(
        &self,
        set: &str,
        if_version: Option<u64>,
        create: bool,
        edit: impl FnOnce(&LabelSetSpec) -> std::result::Result<LabelSetSpec, LabelError>,
    ) -> Result<Arc<LabelSet>> {
        let _serial = lock(&self.inner.edits);
        let current = self.inner.label_set(set);
        let version = current.as_ref().map_or(0, |c| c.version());
        if let Some(expected) = if_version
            && expected != version
        {
            return Err(EngineError::VersionMismatch {
                set: set.to_string(),
                expected,
                current: version,
            });
        }
        let base = match &current {
            Some(c) => c.spec().clone(),
            None if create => LabelSetSpec::default(),
            None => return Err(EngineError::UnknownLabelSet(set.to_string())),
        };
        let spec = edit(&base)?;
        let compiled = Arc::new(
            self.inner
                .encoder
                .compile(Arc::from(set), version + 1, spec)?,
        );
        lock(&self.inner.label_sets).insert(set.to_string(), compiled.clone());
        Ok(compiled)
    }

    /// The current version of label set `set`.
    pub fn labels(&self, set: &str) -> Option<Arc<LabelSet>> {
        self.inner.label_set(set)
    }

    /// Every label set, by id.
    pub fn label_sets(&self) -> Vec<Arc<LabelSet>> {
        let mut sets: Vec<_> = lock(&self.inner.label_sets).values().cloned().collect();
        sets.sort_by(|a, b| a.id().cmp(b.id()));
        sets
    }

    /// Observes every result of every stream from now on, without slowing anything: an
    /// observer that falls behind by more than the observer buffer loses the oldest
    /// results and is told how many.
    pub fn subscribe(&self) -> Subscription<Arc<FrameResult>> {
        self.inner.results.subscribe()
    }

    /// Calls `listener` after every result published to observers (to wake async
    /// observers); it must be quick. Returns a key for [`Engine::remove_listener`].
    pub fn add_listener(&self, listener: impl Fn() + Send + Sync + 'static) -> u64 {
        self.inner.results.add_listener(listener)
    }

    /// Removes a listener.
    pub fn remove_listener(&self, key: u64) {
        self.inner.results.remove_listener(key)
    }

    /// The attached streams: id, label set id and stats.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.inner
            .stream_list()
            .iter()
            .map(|s| StreamInfo {
                id: s.id.to_string(),
                label_set: s.label_set_id(),
                stats: s.stats(),
            })
            .collect()
    }

    /// How long a forward pass of `batch` frames takes, measured on the calling thread
    /// with blank frames; also warms caches and lazily initialised kernels. What a frame
    /// adds to a pipeline's latency besides waiting for its batch.
    ///
    /// At most [`WARM_UP_FRAMES`] frames are run: a larger batch is estimated from that
    /// pass in proportion to its size (forward passes grow at most linearly with the
    /// batch), so that warming up for `max_batch` 1024 does not allocate for 1024 frames.
    pub fn warm_up(&self, batch: usize) -> Result<Duration> {
        let model = &self.inner.model;
        let s = model.network.image_size();
        let wanted = batch.max(1);
        let n = wanted.min(WARM_UP_FRAMES);
        let pixels = cliptag_model::candle_core::Tensor::zeros(
            (n, 3, s, s),
            cliptag_model::candle_core::DType::F32,
            model.network.device(),
        )?;
        let start = std::time::Instant::now();
        model.network.image_features(&pixels)?;
        model.network.device().synchronize()?;
        let measured = start.elapsed();
        Ok(measured.mul_f64(wanted as f64 / n as f64))
    }

    /// Builds a label set that is not registered under any id (version 0), through the
    /// same checks and prompt cache as [`Engine::set_labels`]: for one-off scoring with
    /// [`Engine::classify`].
    pub fn compile_labels(&self, spec: LabelSetSpec) -> Result<LabelSet> {
        self.inner.encoder.compile(Arc::from(""), 0, spec)
    }

    /// Scores one still image against `labels` on the calling thread (not through the
    /// worker, so it does not wait for a batch): the set's top-k labels, best first,
    /// without smoothing or pooling.
    pub fn classify(
        &self,
        image: cliptag_model::preprocess::FrameRef<'_>,
        labels: &LabelSet,
    ) -> Result<Vec<LabelScore>> {
        let embedding = self.inner.model.embed_frames(&[image])?;
        let embedding = cliptag_model::l2_normalize(&embedding)?
            .to_dtype(cliptag_model::candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let scores = labels.scores(&labels.cosines(&embedding));
        let mut ranked: Vec<LabelScore> = labels
            .names()
            .iter()
            .zip(scores)
            .map(|(label, score)| LabelScore {
                label: label.clone(),
                score,
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        ranked.truncate(labels.spec().top_k);
        Ok(ranked)
    }

    /// Engine-wide counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            batches: self.inner.batches.load(Ordering::Relaxed),
            batch_sizes: lock(&self.inner.batch_sizes).clone(),
            cached_prompts: self.inner.encoder.cached_prompts(),
            batch_seconds: self.inner.batch_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Release);
        let _ = self.inner.doorbell_tx.try_send(());
        if let Some(worker) = lock(&self.worker).take() {
            // The last handle may be dropped by a result callback on the worker itself.
            if worker.thread().id() != std::thread::current().id() {
                let _ = worker.join();
            }
        }
        self.inner.results.close();
    }
}

/// A stream as [`Engine::streams`] lists it.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// The stream's id.
    pub id: String,
    /// The label set scoring it.
    pub label_set: String,
    /// Its counters.
    pub stats: StreamStats,
}

/// A producer's handle on its stream. Dropping it detaches the stream: frames not yet
/// delivered are dropped.
pub struct Stream {
    shared: Arc<StreamShared>,
    engine: Arc<Engine>,
}

impl Stream {
    /// The stream's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The engine it is attached to.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Submits a frame; returns its number in the stream. Under `block` this waits while
    /// the stream's queue is full; either way it waits while `max_pending` results are
    /// undelivered.
    pub fn submit(&self, frame: impl VideoFrame, timing: FrameTiming) -> Result<u64> {
        self.shared.submit(Box::new(frame), timing)
    }

    /// Drops every frame not yet delivered and forgets scores, pooling and the result
    /// carried frames repeat (a flushing seek).
    pub fn flush(&self) {
        self.shared.flush();
    }

    /// Runs `action` in order with the frames: once every frame submitted before this
    /// call has been handed back to the result callback, on the thread that hands back
    /// the last of them (at once, on this thread, when none is pending). For what must
    /// follow the frames without waiting for them here, such as a pipeline's serialized
    /// events. A flush drops it unrun; an unordered stream runs it at once.
    pub fn after_frames(&self, action: impl FnOnce() + Send + 'static) -> Result<()> {
        let action: Action = Box::new(action);
        self.shared.after_frames(action)
    }

    /// Waits until every submitted frame has been delivered (end of stream); false if
    /// `timeout` passed first.
    pub fn drain(&self, timeout: Duration) -> bool {
        self.shared.drain_all(timeout)
    }

    /// The newest inferred result, possibly of a frame not yet delivered.
    pub fn latest(&self) -> Option<Arc<FrameResult>> {
        self.shared.latest()
    }

    /// The stream's counters.
    pub fn stats(&self) -> StreamStats {
        self.shared.stats()
    }

    /// The stream's settings.
    pub fn config(&self) -> StreamConfig {
        self.shared.settings()
    }

    /// Changes settings while running (all but the queue capacity); applies to frames
    /// submitted afterwards.
    pub fn update(&self, edit: impl FnOnce(&mut StreamConfig)) -> Result<()> {
        self.shared.update(edit)
    }

    /// The label set id scoring this stream.
    pub fn label_set_id(&self) -> String {
        self.shared.label_set_id()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        lock(&self.engine.inner.streams).retain(|s| !Arc::ptr_eq(s, &self.shared));
        self.shared.close();
    }
}

//! One producer's frames: its bounded queue to the worker, and the sequencer that hands
//! results back in frame order.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};

use crate::broadcast::Broadcast;
use crate::error::{EngineError, Result};
use crate::frame::{FrameTiming, VideoFrame};
use crate::label_set::LabelSet;
use crate::results::{Completion, FrameResult};
use crate::stats::{Counters, StreamStats};
use crate::tracker::{Smoothing, Tracker};

/// What a stream does with a frame when its queue to the worker is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overload {
    /// Wait for room: backpressure on the producer.
    #[default]
    Block,
    /// Pass the frame on without inference; its result is stale, carried from the last
    /// inferred frame.
    Skip,
}

/// Settings of one stream; all but `queue_capacity` can change while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// The label set that scores this stream's frames; `None`: the set named like the
    /// stream.
    pub label_set: Option<String>,
    /// Policy when the queue is full.
    pub overload: Overload,
    /// Infer every `interval`-th frame (1: every frame); the others carry the last result.
    pub interval: u32,
    /// Frames the stream's queue to the worker holds.
    pub queue_capacity: usize,
    /// Most frames whose results are not yet delivered; a producer that gets this far
    /// ahead waits (it bounds the frames held behind an inference in progress).
    pub max_pending: usize,
    /// Score smoothing and hysteresis.
    pub smoothing: Smoothing,
    /// Deliver results in frame order, every frame with its own (`true`, the default),
    /// or never wait: `submit` refuses a frame when the queue or the pending window is
    /// full (counted as skipped, the frame dropped), uninferred frames get no result,
    /// and results are delivered as soon as they are computed (for producers that only
    /// read [`Stream::latest`](crate::Stream::latest)).
    pub ordered: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            label_set: None,
            overload: Overload::Block,
            interval: 1,
            queue_capacity: 8,
            max_pending: 64,
            smoothing: Smoothing::default(),
            ordered: true,
        }
    }
}

/// Called with every frame's result, in frame order. It runs on whichever thread
/// completes the frame (usually the inference worker): it must be quick and must not
/// wait on this stream.
pub type ResultCallback = Arc<dyn Fn(Completion) + Send + Sync>;

/// Work queued behind the frames submitted before it (see [`Stream::after_frames`](crate::Stream::after_frames)).
pub(crate) type Action = Box<dyn FnOnce() + Send>;

/// What the delivering thread hands to the stream's owner, in order.
enum Delivery {
    Frame(Completion),
    Action(Action),
}

/// A frame on its way to the worker.
pub(crate) struct Job {
    pub frame_no: u64,
    pub epoch: u64,
    pub frame: Box<dyn VideoFrame>,
    pub timing: FrameTiming,
    pub submitted: Instant,
}

enum Slot {
    /// Queued for inference or being inferred.
    Waiting,
    /// Inferred; waits for the frames before it.
    Done(Arc<FrameResult>, Box<dyn VideoFrame>),
    /// Not inferred; takes the result delivered before it.
    Carry(FrameTiming, Box<dyn VideoFrame>),
    /// Its batch failed as a whole (the worker panicked or the forward pass failed): it
    /// takes the result delivered before it, with the error.
    Failed(FrameTiming, Box<dyn VideoFrame>, Arc<str>),
}

/// Numbers a new frame and decides whether the interval makes it due for inference.
fn admit(st: &mut SeqState, counters: &Counters, interval: u32) -> (u64, bool) {
    let frame_no = st.next_frame;
    st.next_frame += 1;
    Counters::add(&counters.frames_in, 1);
    let due = st.since_inferred == 0 || st.since_inferred >= u64::from(interval);
    (frame_no, due)
}

impl Job {
    fn new(frame_no: u64, epoch: u64, frame: Box<dyn VideoFrame>, timing: FrameTiming) -> Self {
        Self {
            frame_no,
            epoch,
            frame,
            timing,
            submitted: Instant::now(),
        }
    }
}

struct SeqState {
    next_frame: u64,
    next_emit: u64,
    epoch: u64,
    slots: BTreeMap<u64, Slot>,
    /// The last inferred result delivered: what carried frames repeat.
    last: Option<Arc<FrameResult>>,
    /// The newest inferred result computed, possibly ahead of delivery.
    latest: Option<Arc<FrameResult>>,
    tracker: Tracker,
    /// Frames since the last one sent to inference (for `interval`).
    since_inferred: u64,
    /// Actions waiting for the frames before them: (the first frame after them, action).
    markers: VecDeque<(u64, Action)>,
    outbox: VecDeque<Delivery>,
    /// The thread delivering the outbox, if one is.
    deliverer: Option<ThreadId>,
    /// A delivery is in the owner's hands right now (a frame still alive, or an action
    /// running).
    in_hand: bool,
}

impl SeqState {
    /// Frames and actions submitted and not yet handed back: the pending window.
    fn undelivered(&self) -> usize {
        self.slots.len() + self.outbox.len() + usize::from(self.in_hand)
    }

    /// Everything not yet handed back, actions waiting for their frames included.
    fn unfinished(&self) -> usize {
        self.undelivered() + self.markers.len()
    }
}

pub(crate) struct StreamShared {
    pub id: Arc<str>,
    settings: Mutex<StreamConfig>,
    tx: Sender<Job>,
    pub rx: Receiver<Job>,
    state: Mutex<SeqState>,
    /// Signalled whenever results are delivered or dropped.
    progress: Condvar,
    pub counters: Counters,
    on_result: ResultCallback,
    results: Broadcast<Arc<FrameResult>>,
    doorbell: Sender<()>,
    closed: AtomicBool,
}

impl StreamShared {
    pub(crate) fn new(
        id: Arc<str>,
        config: StreamConfig,
        on_result: ResultCallback,
        results: Broadcast<Arc<FrameResult>>,
        doorbell: Sender<()>,
    ) -> Result<Self> {
        validate(&config)?;
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity);
        Ok(Self {
            id,
            settings: Mutex::new(config),
            tx,
            rx,
            state: Mutex::new(SeqState {
                next_frame: 0,
                next_emit: 0,
                epoch: 0,
                slots: BTreeMap::new(),
                last: None,
                latest: None,
                tracker: Tracker::default(),
                since_inferred: 0,
                markers: VecDeque::new(),
                outbox: VecDeque::new(),
                deliverer: None,
                in_hand: false,
            }),
            progress: Condvar::new(),
            counters: Counters::default(),
            on_result,
            results,
            doorbell,
            closed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SeqState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn settings(&self) -> StreamConfig {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn update(&self, edit: impl FnOnce(&mut StreamConfig)) -> Result<()> {
        let mut settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = settings.clone();
        edit(&mut next);
        if next.queue_capacity != settings.queue_capacity {
            return Err(EngineError::Setting(
                "a stream's queue capacity is fixed when it attaches".into(),
            ));
        }
        validate(&next)?;
        *settings = next;
        Ok(())
    }

    /// The label set id this stream is scored by.
    pub(crate) fn label_set_id(&self) -> String {
        self.settings()
            .label_set
            .unwrap_or_else(|| self.id.to_string())
    }

    pub(crate) fn submit(&self, frame: Box<dyn VideoFrame>, timing: FrameTiming) -> Result<u64> {
        let config = self.settings();
        if !config.ordered {
            return self.submit_unordered(frame, timing, &config);
        }
        let mut st = self.lock();
        while st.undelivered() >= config.max_pending {
            if self.closed.load(Ordering::Acquire) {
                return Err(EngineError::Closed);
            }
            st = self
                .progress
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        let (frame_no, due) = admit(&mut st, &self.counters, config.interval);
        if !due {
            st.since_inferred += 1;
            st.slots.insert(frame_no, Slot::Carry(timing, frame));
            Counters::add(&self.counters.skipped, 1);
            self.drain(st);
            return Ok(frame_no);
        }
        st.since_inferred = 1;
        st.slots.insert(frame_no, Slot::Waiting);
        let job = Job::new(frame_no, st.epoch, frame, timing);
        drop(st);
        let refused = match config.overload {
            Overload::Skip => match self.tx.try_send(job) {
                Ok(()) => None,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Some(job),
            },
            Overload::Block => {
                let mut job = job;
                loop {
                    match self.tx.send_timeout(job, Duration::from_millis(50)) {
                        Ok(()) => break None,
                        Err(SendTimeoutError::Timeout(j) | SendTimeoutError::Disconnected(j)) => {
                            if self.closed.load(Ordering::Acquire) {
                                self.forget(j);
                                return Err(EngineError::Closed);
                            }
                            job = j;
                        }
                    }
                }
            }
        };
        match refused {
            Some(job) => {
                Counters::add(&self.counters.skipped, 1);
                let mut st = self.lock();
                if job.epoch == st.epoch {
                    st.slots
                        .insert(job.frame_no, Slot::Carry(job.timing, job.frame));
                }
                self.drain(st);
            }
            None => {
                // Wake the worker; a token already waiting is as good.
                let _ = self.doorbell.try_send(());
            }
        }
        Ok(frame_no)
    }

    /// Never waits: a frame that cannot be queued at once is dropped (counted skipped).
    fn submit_unordered(
        &self,
        frame: Box<dyn VideoFrame>,
        timing: FrameTiming,
        config: &StreamConfig,
    ) -> Result<u64> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        let mut st = self.lock();
        let (frame_no, due) = admit(&mut st, &self.counters, config.interval);
        let room = st.undelivered() < config.max_pending;
        if !due || !room {
            st.since_inferred += 1;
            Counters::add(&self.counters.skipped, 1);
            return Ok(frame_no);
        }
        match self
            .tx
            .try_send(Job::new(frame_no, st.epoch, frame, timing))
        {
            Ok(()) => {
                st.since_inferred = 1;
                st.slots.insert(frame_no, Slot::Waiting);
                drop(st);
                let _ = self.doorbell.try_send(());
            }
            Err(_) => {
                st.since_inferred += 1;
                Counters::add(&self.counters.skipped, 1);
            }
        }
        Ok(frame_no)
    }

    /// A job that will never be inferred: remove its slot.
    fn forget(&self, job: Job) {
        let mut st = self.lock();
        if job.epoch == st.epoch {
            st.slots.remove(&job.frame_no);
            Counters::add(&self.counters.dropped, 1);
        }
        drop(st);
        self.progress.notify_all();
    }

    /// The worker's result for a job: scores from the frame's unit embedding.
    pub(crate) fn complete(
        &self,
        job: Job,
        embedding: Arc<[f32]>,
        set: Option<&Arc<LabelSet>>,
        set_id: &str,
        batch: usize,
    ) {
        let config = self.settings();
        let mut st = self.lock();
        if job.epoch != st.epoch || !st.slots.contains_key(&job.frame_no) {
            Counters::add(&self.counters.dropped, 1);
            return;
        }
        let latency = job.submitted.elapsed();
        let (labels, events, version) = match set {
            Some(set) => {
                let scored = st.tracker.score(set, embedding, config.smoothing);
                (scored.labels, scored.events, set.version())
            }
            None => (Vec::new(), Vec::new(), 0),
        };
        let result = Arc::new(FrameResult {
            stream: self.id.clone(),
            frame: job.frame_no,
            timing: job.timing,
            wall_time: SystemTime::now(),
            label_set: Arc::from(set_id),
            version,
            labels,
            stale: false,
            computed_for: Some(job.frame_no),
            latency,
            events,
        });
        self.counters.record_inference(latency, batch);
        st.latest = Some(result.clone());
        if config.ordered {
            st.slots.insert(job.frame_no, Slot::Done(result, job.frame));
        } else {
            st.slots.remove(&job.frame_no);
            st.last = Some(result.clone());
            st.outbox
                .push_back(Delivery::Frame(Completion::new(result, job.frame)));
        }
        self.drain(st);
    }

    /// A job the worker could not infer: it goes on as a carried frame.
    pub(crate) fn fail(&self, job: Job, error: String) {
        self.counters.record_error(error);
        let mut st = self.lock();
        if job.epoch != st.epoch || !st.slots.contains_key(&job.frame_no) {
            Counters::add(&self.counters.dropped, 1);
            return;
        }
        if !self.settings().ordered {
            st.slots.remove(&job.frame_no);
            drop(st);
            self.progress.notify_all();
            return;
        }
        st.slots
            .insert(job.frame_no, Slot::Carry(job.timing, job.frame));
        self.drain(st);
    }

    /// A job whose whole batch failed (the worker panicked, or the forward pass returned
    /// an error): it is delivered in order with the error, so that the stream's owner
    /// learns that inference stopped instead of waiting for it.
    pub(crate) fn abort(&self, job: Job, error: Arc<str>) {
        self.counters.record_error(error.to_string());
        let mut st = self.lock();
        if job.epoch != st.epoch || !st.slots.contains_key(&job.frame_no) {
            Counters::add(&self.counters.dropped, 1);
            return;
        }
        if self.settings().ordered {
            st.slots
                .insert(job.frame_no, Slot::Failed(job.timing, job.frame, error));
        } else {
            st.slots.remove(&job.frame_no);
            let result = Arc::new(self.carried(&st, job.frame_no, job.timing));
            st.outbox.push_back(Delivery::Frame(
                Completion::new(result, job.frame).with_error(error),
            ));
        }
        self.drain(st);
    }

    /// Moves every ready result at the head into the outbox, with the actions due before
    /// each, then delivers the outbox unless another thread is already delivering (it
    /// will pick these up, in order).
    fn drain<'a>(&'a self, mut st: MutexGuard<'a, SeqState>) {
        loop {
            while st
                .markers
                .front()
                .is_some_and(|(before, _)| *before <= st.next_emit)
            {
                if let Some((_, action)) = st.markers.pop_front() {
                    st.outbox.push_back(Delivery::Action(action));
                }
            }
            let next = st.next_emit;
            let ready = matches!(
                st.slots.get(&next),
                Some(Slot::Done(..) | Slot::Carry(..) | Slot::Failed(..))
            );
            if !ready {
                break;
            }
            let Some(slot) = st.slots.remove(&next) else {
                break;
            };
            st.next_emit += 1;
            let completion = match slot {
                Slot::Done(result, frame) => {
                    st.last = Some(result.clone());
                    Completion::new(result, frame)
                }
                Slot::Carry(timing, frame) => {
                    Completion::new(Arc::new(self.carried(&st, next, timing)), frame)
                }
                Slot::Failed(timing, frame, error) => {
                    Completion::new(Arc::new(self.carried(&st, next, timing)), frame)
                        .with_error(error)
                }
                Slot::Waiting => unreachable!("checked above"),
            };
            st.outbox.push_back(Delivery::Frame(completion));
        }
        if st.deliverer.is_some() {
            return;
        }
        st.deliverer = Some(std::thread::current().id());
        while let Some(delivery) = st.outbox.pop_front() {
            st.in_hand = true;
            drop(st);
            // The owner's code runs outside the lock; should it panic, the stream must
            // not stay marked as delivering (every later result would wait for a
            // delivery that never ends), so the panic goes on only after the marks are
            // cleared.
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| match delivery {
                Delivery::Frame(completion) => {
                    if completion.error.is_none() {
                        self.results.publish(completion.result.clone());
                    }
                    (self.on_result)(completion);
                }
                Delivery::Action(action) => action(),
            }));
            st = self.lock();
            st.in_hand = false;
            if let Err(payload) = outcome {
                st.deliverer = None;
                drop(st);
                self.progress.notify_all();
                panic::resume_unwind(payload);
            }
            self.progress.notify_all();
        }
        st.deliverer = None;
        drop(st);
        self.progress.notify_all();
    }

    /// The result of a frame that was not inferred: the last delivered one, marked stale.
    fn carried(&self, st: &SeqState, frame_no: u64, timing: FrameTiming) -> FrameResult {
        match &st.last {
            Some(last) => FrameResult {
                frame: frame_no,
                timing,
                wall_time: SystemTime::now(),
                stale: true,
                events: Vec::new(),
                ..(**last).clone()
            },
            None => FrameResult {
                stream: self.id.clone(),
                frame: frame_no,
                timing,
                wall_time: SystemTime::now(),
                label_set: Arc::from(self.label_set_id()),
                version: 0,
                labels: Vec::new(),
                stale: true,
                computed_for: None,
                latency: Duration::ZERO,
                events: Vec::new(),
            },
        }
    }

    /// Drops every frame and action not yet delivered and forgets the past (scores,
    /// pooling, the result carried frames repeat): nothing from before a flush reaches a
    /// frame after it. A delivery already in the owner's hands on another thread is
    /// waited for, so that once this returns the owner sees nothing from before it.
    pub(crate) fn flush(&self) {
        let mut st = self.lock();
        st.epoch += 1;
        while self.rx.try_recv().is_ok() {
            // Counted with its slot below.
        }
        let frames = st
            .outbox
            .iter()
            .filter(|d| matches!(d, Delivery::Frame(_)))
            .count();
        let dropped = (st.slots.len() + frames) as u64;
        st.slots.clear();
        // Actions are dropped unrun; what they own (an event, say) goes with them.
        let outbox = std::mem::take(&mut st.outbox);
        let markers = std::mem::take(&mut st.markers);
        st.next_emit = st.next_frame;
        st.last = None;
        st.latest = None;
        st.tracker.reset();
        st.since_inferred = 0;
        let me = std::thread::current().id();
        while st.in_hand && st.deliverer.is_some_and(|t| t != me) {
            st = self
                .progress
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(st);
        drop((outbox, markers));
        Counters::add(&self.counters.dropped, dropped);
        self.progress.notify_all();
    }

    /// Runs `action` once every frame submitted before it has been handed back, in order
    /// with those deliveries (on the thread that delivers the last of them, or at once on
    /// this thread when none is pending). A flush drops it unrun. Unordered streams run
    /// it at once.
    pub(crate) fn after_frames(&self, action: Action) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        if !self.settings().ordered {
            action();
            return Ok(());
        }
        let mut st = self.lock();
        let before = st.next_frame;
        st.markers.push_back((before, action));
        self.drain(st);
        Ok(())
    }

    /// Waits until every submitted frame's result has been delivered and every action
    /// has run; false on timeout.
    pub(crate) fn drain_all(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.unfinished() == 0 && st.deliverer.is_none() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .progress
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub(crate) fn latest(&self) -> Option<Arc<FrameResult>> {
        self.lock().latest.clone()
    }

    pub(crate) fn stats(&self) -> StreamStats {
        let pending = {
            let st = self.lock();
            st.undelivered()
        };
        self.counters.snapshot(self.rx.len(), pending)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush();
    }
}

fn validate(config: &StreamConfig) -> Result<()> {
    if config.interval == 0 {
        return Err(EngineError::Setting("interval must be at least 1".into()));
    }
    if config.queue_capacity == 0 {
        return Err(EngineError::Setting(
            "queue capacity must be at least 1".into(),
        ));
    }
    if config.max_pending == 0 {
        return Err(EngineError::Setting(
            "max-pending must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&config.smoothing.factor) {
        return Err(EngineError::Setting(format!(
            "smoothing {} is outside 0..1",
            config.smoothing.factor
        )));
    }
    if !(0.0..=1.0).contains(&config.smoothing.hysteresis) {
        return Err(EngineError::Setting(format!(
            "hysteresis {} is outside 0..1",
            config.smoothing.hysteresis
        )));
    }
    Ok(())
}

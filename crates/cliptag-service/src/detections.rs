//! One subscriber's detection stream: results of every registered engine, filtered, sent
//! through a small channel whose backpressure only ever delays this subscriber.
//!
//! The engines publish into rings that never wait; a subscriber that reads too slowly
//! falls behind in those rings and is told how many results it lost (`lagged`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use cliptag_engine::{Engine, FrameResult, Received, Subscription};
use cliptag_proto::v1;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::convert;
use crate::hub::hub;

/// Messages buffered per subscriber between the pump and the transport.
pub const CHANNEL_DEPTH: usize = 32;

/// Results taken from one engine before the pump looks at the others (fairness).
const BURST: usize = 64;

/// What a subscriber asked for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    streams: Vec<String>,
    labels: Vec<String>,
    min_score: f32,
    changes_only: bool,
    include_empty: bool,
    /// The top label last sent per stream (changes_only).
    last_top: HashMap<String, Option<String>>,
}

impl Filter {
    /// The filter a request describes.
    pub fn new(request: &v1::StreamDetectionsRequest) -> Result<Self, Status> {
        if !request.min_score.is_finite() {
            return Err(Status::invalid_argument("min_score must be a number"));
        }
        Ok(Self {
            streams: request.streams.clone(),
            labels: request.labels.clone(),
            min_score: request.min_score,
            changes_only: request.changes_only,
            include_empty: request.include_empty,
            last_top: HashMap::new(),
        })
    }

    /// The detection to send for `result`, if any.
    pub fn apply(&mut self, result: &FrameResult) -> Option<v1::Detection> {
        if !self.streams.is_empty() && !self.streams.iter().any(|s| **s == *result.stream) {
            return None;
        }
        self.apply_detection(convert::detection(result))
    }

    /// The same for a detection received from elsewhere (a broker): what of it to
    /// show, if anything.
    pub fn apply_detection(&mut self, mut detection: v1::Detection) -> Option<v1::Detection> {
        if !self.streams.is_empty() && !self.streams.contains(&detection.stream) {
            return None;
        }
        let wanted = |label: &str| self.labels.is_empty() || self.labels.iter().any(|l| l == label);
        detection
            .labels
            .retain(|l| wanted(&l.label) && l.score >= self.min_score);
        detection.events.retain(|e| wanted(&e.label));
        if detection.labels.is_empty() && detection.events.is_empty() && !self.include_empty {
            return None;
        }
        if self.changes_only {
            let top = detection.labels.first().map(|l| l.label.clone());
            let previous = self.last_top.insert(detection.stream.clone(), top.clone());
            if previous.as_ref() == Some(&top) && detection.events.is_empty() {
                return None;
            }
        }
        Some(detection)
    }
}

type Outbox = mpsc::Sender<Result<v1::DetectionEvent, Status>>;

fn lagged(missed: u64) -> v1::DetectionEvent {
    v1::DetectionEvent {
        event: Some(v1::detection_event::Event::Lagged(v1::Lagged { missed })),
    }
}

fn detection(d: v1::Detection) -> v1::DetectionEvent {
    v1::DetectionEvent {
        event: Some(v1::detection_event::Event::Detection(d)),
    }
}

/// One engine's results as a subscriber reads them.
struct Source {
    /// Weak: a subscriber must not keep a stopped element's engine (and model) alive.
    engine: Weak<Engine>,
    subscription: Subscription<Arc<FrameResult>>,
    /// Unregistered: read what is left, then forget.
    departed: bool,
}

/// One subscriber's position in every registered engine's results.
pub struct Subscriber {
    filter: Filter,
    activity: watch::Receiver<u64>,
    membership: watch::Receiver<u64>,
    sources: Vec<Source>,
}

/// The client went away.
struct Gone;

impl Subscriber {
    /// Subscribes now, so that every result published from this call on is either
    /// delivered or counted as missed.
    pub fn new(filter: Filter) -> Self {
        let hub = hub();
        let mut subscriber = Self {
            filter,
            activity: hub.activity(),
            membership: hub.membership(),
            sources: Vec::new(),
        };
        subscriber.follow_membership();
        subscriber
    }

    /// Subscribes to engines that appeared and marks those that went.
    fn follow_membership(&mut self) {
        self.membership.borrow_and_update();
        let engines = hub().engines();
        for source in &mut self.sources {
            if !engines
                .iter()
                .any(|e| Arc::as_ptr(e) == source.engine.as_ptr())
            {
                source.departed = true;
            }
        }
        for engine in engines {
            let known = self
                .sources
                .iter()
                .any(|s| !s.departed && s.engine.as_ptr() == Arc::as_ptr(&engine));
            if !known {
                self.sources.push(Source {
                    engine: Arc::downgrade(&engine),
                    subscription: engine.subscribe(),
                    departed: false,
                });
            }
        }
    }

    /// Sends up to a burst of results from every source (at most `budget[i]` from source
    /// `i` when given); returns whether results are left.
    async fn pass(&mut self, out: &Outbox, mut budget: Option<&mut [u64]>) -> Result<bool, Gone> {
        let mut more = false;
        for (i, source) in self.sources.iter_mut().enumerate() {
            let limit = budget
                .as_deref()
                .map_or(BURST as u64, |b| b[i].min(BURST as u64));
            let mut taken = 0;
            while taken < limit {
                let message = match source.subscription.try_recv() {
                    None | Some(Received::Closed) => break,
                    Some(Received::Lagged(n)) => {
                        hub().count_missed(n);
                        lagged(n)
                    }
                    Some(Received::Item(result)) => {
                        taken += 1;
                        match self.filter.apply(&result) {
                            Some(d) => detection(d),
                            None => continue,
                        }
                    }
                };
                out.send(Ok(message)).await.map_err(|_| Gone)?;
            }
            if let Some(b) = budget.as_deref_mut() {
                b[i] -= taken;
                more |= b[i] > 0 && source.subscription.pending() > 0;
            } else {
                more |= source.subscription.pending() > 0;
            }
        }
        Ok(more)
    }

    /// Forgets departed engines that have been read to the end.
    fn forget_departed(&mut self) {
        self.sources
            .retain(|s| !(s.departed && s.subscription.pending() == 0));
    }

    /// At shutdown: what was published before it, and nothing after.
    async fn finish(&mut self, out: &Outbox) {
        let mut budget: Vec<u64> = self
            .sources
            .iter()
            .map(|s| s.subscription.pending())
            .collect();
        while let Ok(true) = self.pass(out, Some(&mut budget)).await {
            tokio::task::yield_now().await;
        }
    }

    /// Feeds `out` until the client goes away, or `shutdown` turns true and what was
    /// published before it has been sent.
    pub async fn run(mut self, out: Outbox, mut shutdown: watch::Receiver<bool>) {
        let _connected = crate::hub::Connected::new();
        loop {
            if *shutdown.borrow_and_update() {
                self.finish(&out).await;
                return;
            }
            // Anything published after this point wakes the `changed()` below.
            self.activity.borrow_and_update();
            if self.membership.has_changed().unwrap_or(false) {
                self.follow_membership();
            }
            let passed = self.pass(&out, None).await;
            self.forget_departed();
            match passed {
                Err(Gone) => return,
                // Results left: another pass, after looking at membership and shutdown.
                Ok(true) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(false) => {}
            }
            tokio::select! {
                changed = self.activity.changed() => if changed.is_err() { return },
                stopped = shutdown.changed() => if stopped.is_err() { return },
                () = out.closed() => return,
            }
        }
    }
}

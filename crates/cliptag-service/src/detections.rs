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
    last_top: HashMap<Arc<str>, Option<String>>,
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
        let mut detection = convert::detection(result);
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
            let previous = self.last_top.insert(result.stream.clone(), top.clone());
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

/// One subscriber's position in every registered engine's results.
pub struct Subscriber {
    filter: Filter,
    activity: watch::Receiver<u64>,
    membership: watch::Receiver<u64>,
    /// Weak: a subscriber must not keep a stopped element's engine (and model) alive.
    subscriptions: Vec<(Weak<Engine>, Subscription<Arc<FrameResult>>)>,
}

impl Subscriber {
    /// Subscribes now, so that every result published from this call on is either
    /// delivered or counted as missed.
    pub fn new(filter: Filter) -> Self {
        let hub = hub();
        let mut subscriber = Self {
            filter,
            activity: hub.activity(),
            membership: hub.membership(),
            subscriptions: Vec::new(),
        };
        subscriber.follow_membership();
        subscriber
    }

    /// Subscribes to engines that appeared and forgets those that went.
    fn follow_membership(&mut self) {
        self.membership.borrow_and_update();
        let engines = hub().engines();
        self.subscriptions
            .retain(|(e, _)| engines.iter().any(|x| Arc::as_ptr(x) == e.as_ptr()));
        for engine in engines {
            let known = self
                .subscriptions
                .iter()
                .any(|(e, _)| e.as_ptr() == Arc::as_ptr(&engine));
            if !known {
                self.subscriptions
                    .push((Arc::downgrade(&engine), engine.subscribe()));
            }
        }
    }

    /// Sends everything published so far, a burst per engine at a time. Returns false
    /// when the client went away.
    async fn drain(&mut self, out: &Outbox) -> bool {
        loop {
            let mut more = false;
            for (_, subscription) in &mut self.subscriptions {
                for _ in 0..BURST {
                    let message = match subscription.try_recv() {
                        None | Some(Received::Closed) => break,
                        Some(Received::Lagged(n)) => lagged(n),
                        Some(Received::Item(result)) => match self.filter.apply(&result) {
                            Some(d) => detection(d),
                            None => continue,
                        },
                    };
                    if out.send(Ok(message)).await.is_err() {
                        return false;
                    }
                }
                more |= subscription.pending() > 0;
            }
            if !more {
                return true;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Feeds `out` until the client goes away, or `shutdown` turns true and what was
    /// published before it has been sent.
    pub async fn run(mut self, out: Outbox, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stopping = *shutdown.borrow_and_update();
            // Anything published after this point wakes the `changed()` below.
            self.activity.borrow_and_update();
            if self.membership.has_changed().unwrap_or(false) {
                self.follow_membership();
            }
            if !self.drain(&out).await || stopping {
                return;
            }
            tokio::select! {
                changed = self.activity.changed() => if changed.is_err() { return },
                stopped = shutdown.changed() => if stopped.is_err() { return },
                () = out.closed() => return,
            }
        }
    }
}

//! What the engine says about a frame.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::frame::{FrameTiming, VideoFrame};

/// A label and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    /// The label's name.
    pub label: Arc<str>,
    /// Its score: a softmax probability or a sigmoid, smoothed over time when the stream
    /// smooths.
    pub score: f32,
}

/// Whether a label became present or stopped being present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The label's smoothed score rose to the threshold.
    Start,
    /// The label's smoothed score fell below the threshold less the hysteresis margin, or
    /// the label left the set.
    End,
}

/// A label starting or ending on a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelEvent {
    /// The label.
    pub label: Arc<str>,
    /// Start or end.
    pub kind: EventKind,
    /// The smoothed score at the change.
    pub score: f32,
}

/// The result of one frame.
#[derive(Debug, Clone)]
pub struct FrameResult {
    /// The stream.
    pub stream: Arc<str>,
    /// The frame's number in its stream (0 for the first frame submitted).
    pub frame: u64,
    /// The frame's timestamps as submitted.
    pub timing: FrameTiming,
    /// When the result was made.
    pub wall_time: SystemTime,
    /// The label set that scored it.
    pub label_set: Arc<str>,
    /// That set's version; 0 when the stream had no label set yet.
    pub version: u64,
    /// The top-k labels, best first (empty without a label set or an inferred frame).
    pub labels: Vec<LabelScore>,
    /// True when the frame was not inferred (interval, or skipped under overload) and
    /// carries the result of an earlier frame.
    pub stale: bool,
    /// The frame the scores were computed for; `None` when nothing was inferred yet.
    pub computed_for: Option<u64>,
    /// From submission to scores, for the frame the scores were computed for.
    pub latency: Duration,
    /// Labels that started or ended at this frame.
    pub events: Vec<LabelEvent>,
}

impl FrameResult {
    /// The best label, if any.
    pub fn top(&self) -> Option<&LabelScore> {
        self.labels.first()
    }
}

/// A frame handed back to its stream's owner, in frame order, with its result.
pub struct Completion {
    /// The result.
    pub result: Arc<FrameResult>,
    /// Set when the frame's batch failed as a whole: the inference worker panicked or the
    /// forward pass returned an error (the text names the cause). The result is then the
    /// last one delivered, marked stale, and observers do not see it. Inference of this
    /// stream cannot be trusted to go on: an owner should stop and report it.
    pub error: Option<Arc<str>>,
    frame: Box<dyn VideoFrame>,
}

impl Completion {
    pub(crate) fn new(result: Arc<FrameResult>, frame: Box<dyn VideoFrame>) -> Self {
        Self {
            result,
            error: None,
            frame,
        }
    }

    pub(crate) fn with_error(mut self, error: Arc<str>) -> Self {
        self.error = Some(error);
        self
    }

    /// The submitted frame back, as the type it was submitted as; `None` if it was
    /// submitted as another type.
    pub fn into_frame<T: VideoFrame>(self) -> Option<T> {
        self.frame.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("result", &self.result)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

//! Per-stream memory across frames: temporal pooling of image embeddings, exponential
//! smoothing of scores, and hysteresis that turns scores into label start/end events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::label_set::LabelSet;
use crate::label_spec::{MAX_POOLED_FRAMES, Pooling};
use crate::results::{EventKind, LabelEvent, LabelScore};

/// Smoothing and hysteresis settings of a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoothing {
    /// Weight of the past in the exponential moving average, 0 (off) to below 1:
    /// `smoothed = past * s + new * (1 - s)`.
    pub factor: f32,
    /// A present label ends when its smoothed score falls below `threshold - hysteresis`.
    pub hysteresis: f32,
}

impl Default for Smoothing {
    fn default() -> Self {
        Self {
            factor: 0.0,
            hysteresis: 0.05,
        }
    }
}

/// Scores a stream's inferred frames against a label set, remembering what it needs to.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The last unit image embeddings, newest last (only as many as pooling needs).
    recent: VecDeque<Arc<[f32]>>,
    /// Smoothed score by label name.
    smoothed: HashMap<Arc<str>, f32>,
    /// Labels currently present.
    active: HashSet<Arc<str>>,
}

/// What scoring one frame gives.
pub(crate) struct Scored {
    pub labels: Vec<LabelScore>,
    pub events: Vec<LabelEvent>,
}

impl Tracker {
    /// Forgets everything (after a flush: no label crosses it).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Scores one inferred frame's unit embedding.
    pub(crate) fn score(
        &mut self,
        set: &LabelSet,
        embedding: Arc<[f32]>,
        smoothing: Smoothing,
    ) -> Scored {
        let spec = set.spec();
        self.recent.push_back(embedding);
        let keep = match spec.pooling {
            Pooling::Frame => 1,
            Pooling::Mean { frames } => frames.min(MAX_POOLED_FRAMES),
        };
        while self.recent.len() > keep.max(1) {
            self.recent.pop_front();
        }
        let image = self.pooled(keep);
        let scores = set.scores(&set.cosines(&image));

        // Labels that left the set end now; new labels start from their first score.
        let names: HashSet<&Arc<str>> = set.names().iter().collect();
        let mut events = Vec::new();
        let gone: Vec<Arc<str>> = self
            .active
            .iter()
            .filter(|l| !names.contains(l))
            .cloned()
            .collect();
        for label in gone {
            self.active.remove(&label);
            let score = self.smoothed.get(&label).copied().unwrap_or(0.0);
            events.push(LabelEvent {
                label,
                kind: EventKind::End,
                score,
            });
        }
        self.smoothed.retain(|k, _| names.contains(k));

        let factor = smoothing.factor.clamp(0.0, 0.999);
        let on = spec.threshold;
        let off = (spec.threshold - smoothing.hysteresis).max(0.0);
        let mut labels = Vec::with_capacity(scores.len());
        for (name, &raw) in set.names().iter().zip(&scores) {
            let s = match self.smoothed.get(name) {
                Some(&past) => past * factor + raw * (1.0 - factor),
                None => raw,
            };
            self.smoothed.insert(name.clone(), s);
            let present = self.active.contains(name);
            if !present && s >= on {
                self.active.insert(name.clone());
                events.push(LabelEvent {
                    label: name.clone(),
                    kind: EventKind::Start,
                    score: s,
                });
            } else if present && s < off {
                self.active.remove(name);
                events.push(LabelEvent {
                    label: name.clone(),
                    kind: EventKind::End,
                    score: s,
                });
            }
            labels.push(LabelScore {
                label: name.clone(),
                score: s,
            });
        }
        labels.sort_by(|a, b| b.score.total_cmp(&a.score));
        labels.truncate(spec.top_k);
        Scored { labels, events }
    }

    /// The mean of the last `n` embeddings, renormalized.
    fn pooled(&self, n: usize) -> Vec<f32> {
        let Some(last) = self.recent.back() else {
            return Vec::new();
        };
        if n <= 1 || self.recent.len() == 1 {
            return last.to_vec();
        }
        let mut mean = vec![0f32; last.len()];
        for e in self.recent.iter().rev().take(n) {
            for (m, v) in mean.iter_mut().zip(e.iter()) {
                *m += v;
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        mean.iter_mut().for_each(|v| *v /= norm);
        mean
    }
}

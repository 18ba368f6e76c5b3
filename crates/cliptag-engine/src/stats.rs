//! Per-stream counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Latencies kept for the percentiles.
const LATENCY_WINDOW: usize = 1024;

/// A snapshot of a stream's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Frames submitted.
    pub frames_in: u64,
    /// Frames the model ran on.
    pub inferred: u64,
    /// Frames passed on without inference (interval, or a full queue under `skip`).
    pub skipped: u64,
    /// Frames discarded without a result (flushes, detaching).
    pub dropped: u64,
    /// Frames that could not be preprocessed or inferred (see `last_error`).
    pub failed: u64,
    /// Frames waiting in the stream's queue now.
    pub queue_depth: usize,
    /// Frames submitted whose results have not been delivered yet.
    pub pending: usize,
    /// `batch_sizes[n]`: how many of this stream's inferred frames rode in a batch of `n`.
    pub batch_sizes: Vec<u64>,
    /// Median submission-to-result latency of the last inferred frames.
    pub latency_p50: Duration,
    /// 99th percentile of the same.
    pub latency_p99: Duration,
    /// The last inference error, if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames_in: AtomicU64,
    pub inferred: AtomicU64,
    pub skipped: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    detail: Mutex<Detail>,
}

#[derive(Debug, Default)]
struct Detail {
    latencies: VecDeque<Duration>,
    batch_sizes: Vec<u64>,
    last_error: Option<String>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_inference(&self, latency: Duration, batch: usize) {
        Self::add(&self.inferred, 1);
        let mut d = self.detail.lock().unwrap_or_else(PoisonError::into_inner);
        if d.latencies.len() == LATENCY_WINDOW {
            d.latencies.pop_front();
        }
        d.latencies.push_back(latency);
        if d.batch_sizes.len() <= batch {
            d.batch_sizes.resize(batch + 1, 0);
        }
        d.batch_sizes[batch] += 1;
    }

    pub(crate) fn record_error(&self, error: String) {
        Self::add(&self.failed, 1);
        self.detail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error = Some(error);
    }

    pub(crate) fn snapshot(&self, queue_depth: usize, pending: usize) -> StreamStats {
        let d = self.detail.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sorted: Vec<Duration> = d.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: f64| -> Duration {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            let i = ((sorted.len() - 1) as f64 * p).round() as usize;
            sorted[i.min(sorted.len() - 1)]
        };
        StreamStats {
            frames_in: self.frames_in.load(Ordering::Relaxed),
            inferred: self.inferred.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            queue_depth,
            pending,
            batch_sizes: d.batch_sizes.clone(),
            latency_p50: pct(0.5),
            latency_p99: pct(0.99),
            last_error: d.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_histogram() {
        let c = Counters::default();
        for ms in 1..=100 {
            c.record_inference(Duration::from_millis(ms), if ms % 2 == 0 { 8 } else { 1 });
        }
        let s = c.snapshot(3, 4);
        assert_eq!(s.inferred, 100);
        assert_eq!(s.latency_p50, Duration::from_millis(51));
        assert_eq!(s.latency_p99, Duration::from_millis(99));
        assert_eq!(s.batch_sizes[1], 50);
        assert_eq!(s.batch_sizes[8], 50);
        assert_eq!((s.queue_depth, s.pending), (3, 4));
    }
}

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
    /// Every inferred frame's submission-to-result latency since the stream started.
    pub latency_histogram: LatencyHistogram,
}

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus' `le`); a
/// last bucket holds everything above.
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// A histogram of latencies over [`LATENCY_BUCKETS_SECONDS`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyHistogram {
    /// `counts[i]`: latencies at most `LATENCY_BUCKETS_SECONDS[i]` and above the bound
    /// before; the last entry: above every bound.
    pub counts: [u64; LATENCY_BUCKETS_SECONDS.len() + 1],
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    fn record(&mut self, latency: Duration) {
        let s = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += s;
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, latencies at most that)` for each bound, cumulative as Prometheus
    /// reports buckets.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS_SECONDS
            .iter()
            .zip(&self.counts)
            .map(|(le, n)| {
                total += n;
                (*le, total)
            })
            .collect()
    }
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
    histogram: LatencyHistogram,
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
        d.histogram.record(latency);
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
            latency_histogram: d.histogram.clone(),
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
        // 1..=100 ms: 1 at most 1 ms, 1 more up to 2, 3 up to 5, 5 up to 10, 10 up to
        // 20, 30 up to 50, 50 up to 100.
        let h = &s.latency_histogram;
        assert_eq!(h.count(), 100);
        assert_eq!(&h.counts[..8], &[1, 1, 3, 5, 10, 30, 50, 0]);
        assert_eq!(h.cumulative()[6], (0.1, 100));
        assert!((h.sum_seconds - 5.05).abs() < 1e-9, "{}", h.sum_seconds);
    }
}

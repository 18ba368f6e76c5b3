//! The bounded queue between a stream's results and one broker connection.
//!
//! Results arrive on the engine's delivery thread, which must never wait for a network;
//! a sender task takes them out while its broker is connected. When the broker is slow
//! or down the queue fills, and then the oldest unsent detection gives way to the new
//! one: consumers of live tags want the newest, and memory stays bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// One broker link's queue (of results, here) and counters.
pub(crate) struct Outbox<T> {
    capacity: usize,
    queue: Mutex<VecDeque<T>>,
    ready: Notify,
    closed: AtomicBool,
    /// Detections dropped unsent because the queue was full.
    pub dropped: AtomicU64,
    /// Detections handed to the broker's client.
    pub published: AtomicU64,
}

impl<T> Outbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a detection without waiting; drops the oldest one when full.
    pub(crate) fn push(&self, item: T) {
        let mut queue = self.lock();
        if queue.len() >= self.capacity {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(item);
        drop(queue);
        self.ready.notify_one();
    }

    /// Detections waiting now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Waits until something is queued or the outbox is closed; true when something is
    /// queued.
    pub(crate) async fn wait(&self) -> bool {
        loop {
            // Registered before looking, so that a push in between is not missed.
            let notified = self.ready.notified();
            if !self.lock().is_empty() {
                return true;
            }
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            notified.await;
        }
    }

    /// Takes up to `n` detections, oldest first.
    pub(crate) fn take(&self, n: usize) -> Vec<T> {
        let mut queue = self.lock();
        let n = n.min(queue.len());
        queue.drain(..n).collect()
    }

    /// No more pushes: the sender sends what is queued and stops.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let outbox = Outbox::<u64>::new(3);
        for frame in 0..5 {
            outbox.push(frame);
        }
        assert_eq!(outbox.len(), 3);
        assert_eq!(outbox.dropped.load(Ordering::Relaxed), 2);
        let frames: Vec<u64> = outbox.take(10);
        assert_eq!(frames, [2, 3, 4]);
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn a_waiting_sender_wakes_for_a_push_and_for_the_close() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outbox = Arc::new(Outbox::<u64>::new(2));
        let pusher = outbox.clone();
        runtime.block_on(async move {
            let waiting = tokio::spawn({
                let outbox = outbox.clone();
                async move { outbox.wait().await }
            });
            tokio::task::yield_now().await;
            pusher.push(7u64);
            assert!(waiting.await.expect("task"));
            assert_eq!(outbox.take(1), [7]);
            let waiting = tokio::spawn({
                let outbox = outbox.clone();
                async move { outbox.wait().await }
            });
            tokio::task::yield_now().await;
            outbox.close();
            assert!(!waiting.await.expect("task"));
        });
    }
}

//! Fan-out of results to any number of observers without ever blocking the publisher.
//!
//! One ring of the last `capacity` items is shared by every subscriber, so memory does
//! not grow with the number of observers. Each subscriber keeps its own position; one
//! that falls more than `capacity` items behind skips to the oldest item still held and
//! is told how many it missed.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

type Listener = Arc<dyn Fn() + Send + Sync>;

struct Ring<T> {
    items: VecDeque<T>,
    /// Sequence number of `items[0]`.
    first: u64,
    closed: bool,
    listeners: Vec<(u64, Listener)>,
    next_listener: u64,
}

struct Shared<T> {
    capacity: usize,
    ring: Mutex<Ring<T>>,
    published: Condvar,
}

/// The publishing side.
pub struct Broadcast<T> {
    shared: Arc<Shared<T>>,
}

/// What a subscriber receives next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received<T> {
    /// The next item.
    Item(T),
    /// This many items were lost because the subscriber fell behind; the next call
    /// continues with the oldest item still held.
    Lagged(u64),
    /// The publisher is gone and every item has been read.
    Closed,
}

/// One observer's position in the stream of items.
pub struct Subscription<T> {
    shared: Arc<Shared<T>>,
    next: u64,
}

impl<T: Clone> Broadcast<T> {
    /// A broadcast that keeps the last `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                capacity: capacity.max(1),
                ring: Mutex::new(Ring {
                    items: VecDeque::new(),
                    first: 0,
                    closed: false,
                    listeners: Vec::new(),
                    next_listener: 0,
                }),
                published: Condvar::new(),
            }),
        }
    }

    /// Publishes an item; never waits for subscribers.
    pub fn publish(&self, item: T) {
        let listeners: Vec<Listener> = {
            let mut ring = self.lock();
            if ring.items.len() == self.shared.capacity {
                ring.items.pop_front();
                ring.first += 1;
            }
            ring.items.push_back(item);
            ring.listeners.iter().map(|(_, l)| l.clone()).collect()
        };
        self.shared.published.notify_all();
        for l in listeners {
            l();
        }
    }

    /// A subscription that starts with the next item published.
    pub fn subscribe(&self) -> Subscription<T> {
        let ring = self.lock();
        Subscription {
            shared: self.shared.clone(),
            next: ring.first + ring.items.len() as u64,
        }
    }

    /// Calls `listener` after every publish (for waking async tasks); it must be quick.
    /// Returns a key for [`Broadcast::remove_listener`].
    pub fn add_listener(&self, listener: impl Fn() + Send + Sync + 'static) -> u64 {
        let mut ring = self.lock();
        let key = ring.next_listener;
        ring.next_listener += 1;
        ring.listeners.push((key, Arc::new(listener)));
        key
    }

    /// Removes a listener.
    pub fn remove_listener(&self, key: u64) {
        self.lock().listeners.retain(|(k, _)| *k != key);
    }

    /// Marks the end: subscribers read what is left, then get [`Received::Closed`].
    pub fn close(&self) {
        let listeners: Vec<Listener> = {
            let mut ring = self.lock();
            ring.closed = true;
            ring.listeners.iter().map(|(_, l)| l.clone()).collect()
        };
        self.shared.published.notify_all();
        for l in listeners {
            l();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring<T>> {
        self.shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Clone> Subscription<T> {
    /// The next item without waiting; `None` when there is none yet.
    pub fn try_recv(&mut self) -> Option<Received<T>> {
        let ring = self
            .shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        take(&mut self.next, &ring)
    }

    /// Items published and not yet read (at most the capacity; more were lost).
    pub fn pending(&self) -> u64 {
        let ring = self
            .shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (ring.first + ring.items.len() as u64).saturating_sub(self.next.max(ring.first))
    }

    /// The next item, waiting at most `timeout`; `None` on timeout.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Received<T>> {
        let deadline = Instant::now() + timeout;
        let mut ring = self
            .shared
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = take(&mut self.next, &ring) {
                return Some(r);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            ring = self
                .shared
                .published
                .wait_timeout(ring, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The item at position `next`, advancing it; a lag report when it fell out of the ring.
fn take<T: Clone>(next: &mut u64, ring: &Ring<T>) -> Option<Received<T>> {
    if *next < ring.first {
        let missed = ring.first - *next;
        *next = ring.first;
        return Some(Received::Lagged(missed));
    }
    let index = (*next - ring.first) as usize;
    match ring.items.get(index) {
        Some(item) => {
            *next += 1;
            Some(Received::Item(item.clone()))
        }
        None if ring.closed => Some(Received::Closed),
        None => None,
    }
}

impl<T> Clone for Broadcast<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_sees_every_item_in_order() {
        let b = Broadcast::new(8);
        let mut s1 = b.subscribe();
        let mut s2 = b.subscribe();
        for i in 0..5 {
            b.publish(i);
        }
        for s in [&mut s1, &mut s2] {
            let got: Vec<_> = std::iter::from_fn(|| s.try_recv()).collect();
            assert_eq!(got, (0..5).map(Received::Item).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_slow_subscriber_is_told_how_many_it_missed() {
        let b = Broadcast::new(4);
        let mut slow = b.subscribe();
        let mut fast = b.subscribe();
        for i in 0..10 {
            b.publish(i);
            assert_eq!(fast.try_recv(), Some(Received::Item(i)));
        }
        assert_eq!(slow.try_recv(), Some(Received::Lagged(6)));
        let rest: Vec<_> = std::iter::from_fn(|| slow.try_recv()).collect();
        assert_eq!(rest, (6..10).map(Received::Item).collect::<Vec<_>>());
    }

    #[test]
    fn close_ends_subscriptions_after_the_last_item() {
        let b = Broadcast::new(4);
        let mut s = b.subscribe();
        b.publish(1);
        b.close();
        assert_eq!(
            s.recv_timeout(Duration::from_secs(1)),
            Some(Received::Item(1))
        );
        assert_eq!(
            s.recv_timeout(Duration::from_secs(1)),
            Some(Received::Closed)
        );
    }

    #[test]
    fn recv_wakes_on_publish_and_listeners_run() {
        let b = Broadcast::new(4);
        let mut s = b.subscribe();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        b.add_listener(move || {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let p = b.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            p.publish(7);
        });
        assert_eq!(
            s.recv_timeout(Duration::from_secs(5)),
            Some(Received::Item(7))
        );
        t.join().expect("publisher");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

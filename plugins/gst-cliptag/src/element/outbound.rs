//! Sync mode's way out: the frames and events waiting for the source pad's task, and the
//! bound on what the element holds.
//!
//! A frame is *in flight* from the moment the sink pad takes it until the task takes it
//! off the queue to push it downstream: waiting for its batch, being inferred, or waiting
//! for the task. The sink pad reserves a place before it submits a frame and waits while
//! the bound is reached, so a source faster than the sink (a file played to a
//! clock-synchronised sink) is held back there instead of filling memory. Serialized
//! events have a bound of their own, of the same size.
//!
//! Every item carries the *generation* it was taken in; a flush starts a new generation,
//! so whatever from before it is still on its way (a result being delivered while the
//! flush started, an event whose frames were dropped) is recognised and dropped instead of
//! being pushed after the FlushStop.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// What the source pad's task pushes, in order.
pub enum Item {
    Buffer(gst::Buffer),
    Event(gst::Event),
}

/// An item with the generation it was taken in.
pub struct Tagged {
    pub generation: u64,
    pub item: Item,
}

/// What the task finds on the queue.
pub enum Next {
    /// An item of the current generation, already released from the count.
    Item(Item),
    /// Nothing within the wait.
    Idle,
    /// The queue is gone.
    Closed,
}

#[derive(Debug)]
struct Flight {
    generation: u64,
    frames: usize,
    events: usize,
    flushing: bool,
    /// The last flow return of the task's pushes (or an inference failure), returned to
    /// upstream.
    flow: Result<gst::FlowSuccess, gst::FlowError>,
    /// The task paused itself after EOS with nothing queued: the next item restarts it.
    parked: bool,
}

/// The queue to the source pad's task and the in-flight accounting.
pub struct Outbound {
    tx: Sender<Tagged>,
    rx: Receiver<Tagged>,
    flight: Mutex<Flight>,
    room: Condvar,
}

/// How often a waiting thread looks again without being woken (a safety net: every
/// change that makes room wakes it).
const RECHECK: Duration = Duration::from_millis(100);

impl Outbound {
    pub fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            tx,
            rx,
            flight: Mutex::new(Flight {
                generation: 0,
                frames: 0,
                events: 0,
                flushing: false,
                flow: Ok(gst::FlowSuccess::Ok),
                parked: false,
            }),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a frame, waiting while `bound` frames are in flight; the
    /// generation the frame belongs to. Fails with the reason to give upstream: flushing,
    /// or the error that stopped the task.
    pub fn reserve_frame(&self, bound: usize) -> Result<u64, gst::FlowError> {
        self.reserve(bound, |f| &mut f.frames)
    }

    /// Takes a place for a serialized event, waiting while `bound` events are in flight.
    pub fn reserve_event(&self, bound: usize) -> Result<u64, gst::FlowError> {
        self.reserve(bound, |f| &mut f.events)
    }

    fn reserve(
        &self,
        bound: usize,
        count: impl Fn(&mut Flight) -> &mut usize,
    ) -> Result<u64, gst::FlowError> {
        let mut f = self.lock();
        loop {
            if f.flushing {
                return Err(gst::FlowError::Flushing);
            }
            f.flow?;
            if *count(&mut f) < bound.max(1) {
                *count(&mut f) += 1;
                return Ok(f.generation);
            }
            f = self
                .room
                .wait_timeout(f, RECHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Gives back a frame's place (a frame that did not make it to the queue, or that
    /// failed): only if no flush has started a new count since it was taken.
    pub fn release_frame(&self, generation: u64) {
        self.release(generation, |f| &mut f.frames);
    }

    /// Gives back an event's place, as [`Outbound::release_frame`].
    pub fn release_event(&self, generation: u64) {
        self.release(generation, |f| &mut f.events);
    }

    fn release(&self, generation: u64, count: impl Fn(&mut Flight) -> &mut usize) {
        let mut f = self.lock();
        if f.generation == generation {
            let n = count(&mut f);
            *n = n.saturating_sub(1);
            drop(f);
            self.room.notify_all();
        }
    }

    /// Whether `generation` is still the current one (no flush since).
    pub fn is_current(&self, generation: u64) -> bool {
        let f = self.lock();
        f.generation == generation && !f.flushing
    }

    /// Queues an item of `generation` for the task; an item from before a flush is
    /// dropped. `restart` runs, under the queue's lock, when the task had paused itself
    /// after EOS: a new stream goes on without a flush.
    pub fn send(&self, generation: u64, item: Item, restart: impl FnOnce()) {
        let mut f = self.lock();
        if f.generation != generation || f.flushing {
            return;
        }
        // The receiver lives as long as this struct: sending cannot fail.
        let _ = self.tx.send(Tagged { generation, item });
        if f.parked {
            f.parked = false;
            restart();
        }
    }

    /// The task's next item, waiting at most `wait`. Items of an older generation are
    /// dropped on the way; the one returned no longer counts as in flight.
    pub fn next(&self, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        loop {
            let tagged = match self.rx.recv_deadline(deadline) {
                Ok(t) => t,
                Err(RecvTimeoutError::Timeout) => return Next::Idle,
                Err(RecvTimeoutError::Disconnected) => return Next::Closed,
            };
            let mut f = self.lock();
            if tagged.generation != f.generation {
                continue;
            }
            match tagged.item {
                Item::Buffer(_) => f.frames = f.frames.saturating_sub(1),
                Item::Event(_) => f.events = f.events.saturating_sub(1),
            }
            drop(f);
            self.room.notify_all();
            return Next::Item(tagged.item);
        }
    }

    /// After the task pushed EOS: if nothing is queued, marks the task parked and runs
    /// `pause` (the task pausing itself) under the queue's lock, so that an item sent at
    /// the same time either sees the mark and restarts the task, or is seen here.
    pub fn park_if_idle(&self, pause: impl FnOnce()) {
        let mut f = self.lock();
        if self.rx.is_empty() {
            f.parked = true;
            pause();
        }
    }

    /// Records the flow return of a push (or an inference failure); an error wakes every
    /// waiting thread, which then returns it upstream.
    pub fn set_flow(&self, flow: Result<gst::FlowSuccess, gst::FlowError>) {
        let mut f = self.lock();
        // An inference failure stays until the next flush: a later successful push of
        // a frame from before it must not hide it.
        if f.flow == Err(gst::FlowError::Error) && flow.is_ok() {
            return;
        }
        f.flow = flow;
        drop(f);
        self.room.notify_all();
    }

    /// Wakes every thread waiting for room, to look at a changed bound.
    pub fn wake(&self) {
        self.room.notify_all();
    }

    /// The last flow return.
    pub fn flow(&self) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.lock().flow
    }

    /// Frames in flight now.
    pub fn frames(&self) -> usize {
        self.lock().frames
    }

    /// A flush starts: a new generation with nothing in flight; whatever is queued is
    /// dropped, and every waiting thread returns flushing.
    pub fn flush_start(&self) {
        let mut f = self.lock();
        f.flushing = true;
        f.generation += 1;
        f.frames = 0;
        f.events = 0;
        while self.rx.try_recv().is_ok() {}
        drop(f);
        self.room.notify_all();
    }

    /// The flush ends: items are taken again, the flow is reset, and the task (restarted
    /// by the caller) is no longer parked.
    pub fn flush_stop(&self) {
        let mut f = self.lock();
        while self.rx.try_recv().is_ok() {}
        f.flushing = false;
        f.flow = Ok(gst::FlowSuccess::Ok);
        f.parked = false;
        drop(f);
        self.room.notify_all();
    }

    /// Waits until nothing is in flight (for serialized queries that must see every
    /// frame before them out, such as DRAIN); false on flushing, an error or `timeout`.
    pub fn wait_until_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut f = self.lock();
        loop {
            if f.frames == 0 && f.events == 0 {
                return true;
            }
            let now = Instant::now();
            if f.flushing || f.flow.is_err() || now >= deadline {
                return false;
            }
            f = self
                .room
                .wait_timeout(f, (deadline - now).min(RECHECK))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> Item {
        Item::Buffer(gst::Buffer::new())
    }

    #[test]
    fn frames_wait_for_room_and_a_flush_releases_them() {
        gst::init().expect("gst");
        let out = std::sync::Arc::new(Outbound::new());
        let g = out.reserve_frame(2).expect("first");
        out.reserve_frame(2).expect("second");
        let waiter = {
            let out = out.clone();
            std::thread::spawn(move || out.reserve_frame(2))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "a third frame went past a bound of two"
        );
        out.send(g, buffer(), || {});
        assert!(matches!(out.next(Duration::from_secs(1)), Next::Item(_)));
        assert_eq!(waiter.join().expect("waiter"), Ok(g));
        // Two in flight again: a flush lets a waiting frame go, with flushing.
        let waiter = {
            let out = out.clone();
            std::thread::spawn(move || out.reserve_frame(2))
        };
        std::thread::sleep(Duration::from_millis(50));
        out.flush_start();
        assert_eq!(
            waiter.join().expect("waiter"),
            Err(gst::FlowError::Flushing)
        );
        out.flush_stop();
        assert_eq!(out.frames(), 0);
        assert_eq!(out.reserve_frame(2), Ok(g + 1));
    }

    #[test]
    fn items_from_before_a_flush_never_come_out() {
        gst::init().expect("gst");
        let out = Outbound::new();
        let old = out.reserve_frame(4).expect("frame");
        out.send(old, buffer(), || {});
        out.flush_start();
        out.flush_stop();
        // A delivery that was under way when the flush started.
        out.send(old, buffer(), || {});
        let new = out.reserve_frame(4).expect("frame");
        assert_ne!(old, new);
        out.send(new, Item::Event(gst::event::Eos::new()), || {});
        match out.next(Duration::from_secs(1)) {
            Next::Item(Item::Event(_)) => {}
            _ => panic!("a pre-flush buffer came out, or nothing did"),
        }
        assert!(matches!(out.next(Duration::from_millis(10)), Next::Idle));
    }

    #[test]
    fn a_parked_task_is_restarted_by_the_next_item() {
        gst::init().expect("gst");
        let out = Outbound::new();
        let g = out.reserve_event(4).expect("event");
        let mut paused = false;
        out.park_if_idle(|| paused = true);
        assert!(paused);
        let mut restarted = false;
        out.send(g, Item::Event(gst::event::StreamStart::new("next")), || {
            restarted = true
        });
        assert!(restarted, "an item after EOS did not restart the task");
        // Something queued: the task does not park.
        let mut paused_again = false;
        out.park_if_idle(|| paused_again = true);
        assert!(!paused_again);
    }

    #[test]
    fn an_error_wakes_waiters_and_is_returned() {
        gst::init().expect("gst");
        let out = std::sync::Arc::new(Outbound::new());
        out.reserve_frame(1).expect("frame");
        let waiter = {
            let out = out.clone();
            std::thread::spawn(move || out.reserve_frame(1))
        };
        std::thread::sleep(Duration::from_millis(30));
        out.set_flow(Err(gst::FlowError::Error));
        assert_eq!(waiter.join().expect("waiter"), Err(gst::FlowError::Error));
        // A later good push does not hide the failure.
        out.set_flow(Ok(gst::FlowSuccess::Ok));
        assert_eq!(out.flow(), Err(gst::FlowError::Error));
    }
}

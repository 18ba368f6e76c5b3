//! How supervised streams are doing: a program that keeps streams running (restarting
//! them when their source fails, as `cliptag serve` does) reports each stream's state
//! here, and `ListStreams`, the web console and the metrics show it, also while the
//! stream's pipeline is down and its engine knows nothing of it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::hub::hub;

/// Longest error text kept (bytes); longer ones are cut at a character boundary.
const MAX_ERROR_BYTES: usize = 1024;

/// Where a supervised stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Its pipeline is being built and started.
    Starting,
    /// Frames flow through its pipeline.
    Running,
    /// Its last run failed (or ended, to be run again); it starts again at `retry_at`.
    Restarting,
    /// Its input ended and it is not run again.
    Ended,
    /// It failed and is not restarted (its restart policy says never).
    Failed,
}

/// A supervised stream's state, its restarts and its last error.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamHealth {
    /// Where the stream is.
    pub state: StreamState,
    /// Times the stream was started again after a failure or the end of its input.
    pub restarts: u64,
    /// The last failure's message, if it ever failed.
    pub last_error: Option<String>,
    /// When the last failure happened.
    pub last_error_at: Option<SystemTime>,
    /// When the stream starts again (while [`StreamState::Restarting`]).
    pub retry_at: Option<SystemTime>,
    /// The model the stream is configured with, for listing it while it is down.
    pub model: String,
}

/// One supervised stream's report, shared by its handle and the hub.
pub(crate) type Slot = Arc<Mutex<StreamHealth>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A supervisor's handle on its stream's report; the stream is no longer reported once
/// the handle is dropped.
#[derive(Debug)]
pub struct Supervised {
    id: String,
    slot: Slot,
}

impl Supervised {
    /// Starts reporting the stream `id` (in [`StreamState::Starting`]), scored by
    /// `model`. A second handle on one id replaces the first one's report.
    pub fn new(id: &str, model: &str) -> Self {
        let slot = Arc::new(Mutex::new(StreamHealth {
            state: StreamState::Starting,
            restarts: 0,
            last_error: None,
            last_error_at: None,
            retry_at: None,
            model: model.to_string(),
        }));
        hub()
            .supervised_slots()
            .insert(id.to_string(), slot.clone());
        Self {
            id: id.to_string(),
            slot,
        }
    }

    /// Frames flow through the stream's pipeline.
    pub fn running(&self) {
        let mut h = lock(&self.slot);
        h.state = StreamState::Running;
        h.retry_at = None;
    }

    /// The stream's pipeline is being started again (counted as a restart).
    pub fn restarting_now(&self) {
        let mut h = lock(&self.slot);
        h.state = StreamState::Starting;
        h.restarts += 1;
        h.retry_at = None;
    }

    /// The stream failed with `error`; it starts again at `retry_at`, or never.
    pub fn failed(&self, error: &str, retry_at: Option<SystemTime>) {
        let mut h = lock(&self.slot);
        h.state = if retry_at.is_some() {
            StreamState::Restarting
        } else {
            StreamState::Failed
        };
        h.last_error = Some(clip(error));
        h.last_error_at = Some(SystemTime::now());
        h.retry_at = retry_at;
    }

    /// The stream's input ended and it is not run again.
    pub fn ended(&self) {
        let mut h = lock(&self.slot);
        h.state = StreamState::Ended;
        h.retry_at = None;
    }

    /// What is reported now.
    pub fn health(&self) -> StreamHealth {
        lock(&self.slot).clone()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let mut map = hub().supervised_slots();
        // Only this handle's report: a newer handle on the id keeps its own.
        if map
            .get(&self.id)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            map.remove(&self.id);
        }
    }
}

/// `error`, at most [`MAX_ERROR_BYTES`] long.
fn clip(error: &str) -> String {
    if error.len() <= MAX_ERROR_BYTES {
        return error.to_string();
    }
    let mut end = MAX_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &error[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_reported_through_its_life_and_forgotten_with_its_handle() {
        let s = Supervised::new("supervision-test-life", "bundled");
        assert_eq!(
            hub()
                .stream_health("supervision-test-life")
                .map(|h| h.state),
            Some(StreamState::Starting)
        );
        s.running();
        assert_eq!(s.health().state, StreamState::Running);
        let retry = SystemTime::now() + std::time::Duration::from_secs(2);
        s.failed("the source went away", Some(retry));
        let h = s.health();
        assert_eq!(h.state, StreamState::Restarting);
        assert_eq!(h.retry_at, Some(retry));
        assert_eq!(h.last_error.as_deref(), Some("the source went away"));
        assert!(h.last_error_at.is_some());
        s.restarting_now();
        s.running();
        let h = s.health();
        assert_eq!(
            (h.state, h.restarts, h.retry_at),
            (StreamState::Running, 1, None)
        );
        assert_eq!(h.last_error.as_deref(), Some("the source went away"));
        s.failed("again", None);
        assert_eq!(s.health().state, StreamState::Failed);
        assert!(
            hub()
                .supervised()
                .iter()
                .any(|(id, _)| id == "supervision-test-life")
        );
        drop(s);
        assert_eq!(hub().stream_health("supervision-test-life"), None);
    }

    #[test]
    fn a_replaced_handle_does_not_remove_its_successor() {
        let old = Supervised::new("supervision-test-replace", "a");
        let new = Supervised::new("supervision-test-replace", "b");
        drop(old);
        assert_eq!(
            hub()
                .stream_health("supervision-test-replace")
                .map(|h| h.model),
            Some("b".into())
        );
        drop(new);
        assert_eq!(hub().stream_health("supervision-test-replace"), None);
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(2000);
        let cut = clip(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES + 3, "{}", cut.len());
        assert!(cut.ends_with("..."));
        assert_eq!(clip("short"), "short");
    }
}

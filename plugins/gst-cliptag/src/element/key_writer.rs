//! Label properties set on a stream whose labels follow a key: written through the key,
//! like every change of such a set, off the thread that sets the property (a write
//! waits for the server). Changes made in a quick row are written in order and only
//! the newest waiting one is: the last property set wins, as it does without a key.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cliptag_engine::LabelSetSpec;
use cliptag_service::brokers::LabelsBinding;

/// A change waiting: the set, and the version it was made from.
type Pending = Option<(LabelSetSpec, u64)>;

/// One writer per element.
#[derive(Default)]
pub struct KeyWriter {
    /// The newest change not yet written, and whether a thread is writing.
    state: Mutex<(Pending, bool)>,
}

impl KeyWriter {
    fn lock(&self) -> MutexGuard<'_, (Pending, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `spec`, made from the set at `version`, on condition that the key is still
    /// at that version (so that no other process's change is lost); `refused` gets the
    /// reason when a write is not made.
    pub fn submit(
        self: &Arc<Self>,
        binding: Arc<LabelsBinding>,
        spec: LabelSetSpec,
        version: u64,
        refused: impl Fn(String) + Send + 'static,
    ) {
        let mut state = self.lock();
        state.0 = Some((spec, version));
        if state.1 {
            return; // the running writer takes it next
        }
        state.1 = true;
        drop(state);
        let writer = self.clone();
        let spawned = std::thread::Builder::new()
            .name("cliptag-relabel".into())
            .spawn(move || {
                loop {
                    let next = {
                        let mut state = writer.lock();
                        let next = state.0.take();
                        if next.is_none() {
                            state.1 = false;
                        }
                        next
                    };
                    let Some((spec, version)) = next else {
                        return;
                    };
                    if let Err(e) = binding.write(&spec, Some(version)) {
                        refused(e.to_string());
                    }
                }
            });
        if spawned.is_err() {
            self.lock().1 = false;
        }
    }
}

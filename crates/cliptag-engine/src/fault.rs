//! Deliberate failures, for tests of what the engine and its users do when inference
//! breaks (cargo feature `fault-injection`; never in a normal build).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::stream::{Job, StreamShared};

/// Armed streams: id -> the first frame number whose batch panics.
static ARMED: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

/// Makes the inference worker panic on every batch holding a frame of stream `stream`
/// numbered `from_frame` or later, after preprocessing and before the forward pass.
pub fn panic_on_stream(stream: &str, from_frame: u64) {
    ARMED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(HashMap::new)
        .insert(stream.to_string(), from_frame);
}

/// Undoes [`panic_on_stream`].
pub fn disarm(stream: &str) {
    if let Some(armed) = ARMED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        armed.remove(stream);
    }
}

pub(crate) fn check(batch: &[(std::sync::Arc<StreamShared>, Job)]) {
    let hit = {
        let armed = ARMED.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(armed) = armed.as_ref() else {
            return;
        };
        batch.iter().find_map(|(stream, job)| {
            armed
                .get(&*stream.id)
                .filter(|&&from| job.frame_no >= from)
                .map(|_| (stream.id.clone(), job.frame_no))
        })
    };
    if let Some((stream, frame)) = hit {
        panic!("fault injected for stream {stream:?} at frame {frame}");
    }
}

//! The latest picture of each stream, as the program running the pipeline hands it over
//! (JPEG bytes): one per stream, each replacing the last, so memory stays at one picture
//! per stream however fast they come or however rarely they are read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

/// The board. Cheap to clone; every clone shows the same pictures.
#[derive(Clone, Default)]
pub struct Snapshots {
    inner: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl Snapshots {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bytes>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the picture of `stream`.
    pub fn put(&self, stream: &str, jpeg: impl Into<Bytes>) {
        let jpeg = jpeg.into();
        let mut board = self.lock();
        match board.get_mut(stream) {
            Some(slot) => *slot = jpeg,
            None => {
                board.insert(stream.to_string(), jpeg);
            }
        }
    }

    /// Forgets `stream` (it stopped).
    pub fn remove(&self, stream: &str) {
        self.lock().remove(stream);
    }

    /// The latest picture of `stream`, if there is one.
    pub fn get(&self, stream: &str) -> Option<Bytes> {
        self.lock().get(stream).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_picture_per_stream_the_latest() {
        let board = Snapshots::new();
        assert_eq!(board.get("a"), None);
        board.put("a", vec![1u8]);
        board.clone().put("a", vec![2u8]);
        board.put("b", vec![3u8]);
        assert_eq!(board.get("a").as_deref(), Some(&[2u8][..]));
        assert_eq!(board.inner.lock().map(|m| m.len()).unwrap_or(0), 2);
        board.remove("a");
        assert_eq!(board.get("a"), None);
    }
}

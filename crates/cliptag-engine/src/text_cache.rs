//! Text embeddings by prompt, bounded: re-sending a set that differs in a few labels
//! encodes only the new prompts.

use std::collections::HashMap;
use std::sync::Arc;

/// A bounded map from prompt text to its unit text embedding. When full, the least
/// recently used tenth is evicted at once (one sort per eviction, not per insert).
#[derive(Debug)]
pub(crate) struct TextCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (Arc<[f32]>, u64)>,
}

impl TextCache {
    /// A cache holding at most `capacity` prompts (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// The embedding of `prompt`, marking it recently used.
    pub(crate) fn get(&mut self, prompt: &str) -> Option<Arc<[f32]>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(prompt).map(|(e, used)| {
            *used = tick;
            e.clone()
        })
    }

    /// Stores an embedding, evicting the least recently used entries when full.
    pub(crate) fn insert(&mut self, prompt: String, embedding: Arc<[f32]>) {
        self.tick += 1;
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&prompt) {
            let keep = self.capacity - self.capacity.div_ceil(10);
            let mut ages: Vec<(u64, String)> = self
                .entries
                .iter()
                .map(|(k, (_, used))| (*used, k.clone()))
                .collect();
            ages.sort_unstable();
            for (_, key) in ages.into_iter().take(self.entries.len() - keep) {
                self.entries.remove(&key);
            }
        }
        self.entries.insert(prompt, (embedding, self.tick));
    }

    /// Prompts held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(v: f32) -> Arc<[f32]> {
        Arc::from(vec![v])
    }

    #[test]
    fn stays_within_capacity_and_keeps_recent_entries() {
        let mut cache = TextCache::new(20);
        for i in 0..20 {
            cache.insert(format!("p{i}"), emb(i as f32));
        }
        // Touch p0 so that it is the most recent.
        assert!(cache.get("p0").is_some());
        cache.insert("new".into(), emb(99.0));
        assert!(cache.len() <= 20);
        assert!(cache.get("p0").is_some(), "recently used entry evicted");
        assert!(cache.get("new").is_some());
        assert!(cache.get("p1").is_none(), "oldest entry kept");
        for i in 0..1000 {
            cache.insert(format!("q{i}"), emb(0.0));
            assert!(cache.len() <= 20);
        }
    }
}

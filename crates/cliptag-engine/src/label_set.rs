//! Label sets ready for scoring: validated, versioned, with their text embeddings
//! computed (through the prompt cache) before they replace a running set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cliptag_model::candle_core::DType;
use cliptag_model::{ClipModel, l2_normalize};

use crate::error::Result;
use crate::label_spec::{LabelError, LabelSetSpec, Scoring};
use crate::text_cache::TextCache;

/// Prompts encoded per forward pass of the text tower.
const TEXT_BATCH: usize = 128;

/// A label set with one unit embedding per label. Immutable: an update builds a new one
/// and swaps it in whole, so a frame is always scored by exactly one version.
#[derive(Debug)]
pub struct LabelSet {
    id: Arc<str>,
    version: u64,
    spec: LabelSetSpec,
    names: Vec<Arc<str>>,
    dim: usize,
    /// `[labels, dim]`, row-major, unit rows.
    embeddings: Vec<f32>,
    logit_scale: f32,
}

impl LabelSet {
    /// The set's id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Its version: 1 for the first set, one more for every accepted change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What it was built from.
    pub fn spec(&self) -> &LabelSetSpec {
        &self.spec
    }

    /// Label names, in order.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// Cosine similarity of a unit image embedding with every label.
    pub fn cosines(&self, image: &[f32]) -> Vec<f32> {
        debug_assert_eq!(image.len(), self.dim);
        self.embeddings
            .chunks_exact(self.dim)
            .map(|row| row.iter().zip(image).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// Scores from cosines: softmax over the set, or per-label sigmoids.
    pub fn scores(&self, cosines: &[f32]) -> Vec<f32> {
        let s = self.logit_scale;
        match self.spec.scoring {
            Scoring::Softmax => {
                let max = cosines.iter().fold(f32::NEG_INFINITY, |m, &c| m.max(c));
                let exp: Vec<f32> = cosines.iter().map(|&c| ((c - max) * s).exp()).collect();
                let sum: f32 = exp.iter().sum();
                exp.into_iter().map(|e| e / sum).collect()
            }
            Scoring::Sigmoid { center } => cosines
                .iter()
                .map(|&c| 1.0 / (1.0 + (-(c - center) * s).exp()))
                .collect(),
        }
    }
}

/// Computes label embeddings off the inference worker's path (on the caller's thread),
/// sharing a bounded cache of prompt embeddings.
pub(crate) struct TextEncoder {
    model: Arc<ClipModel>,
    cache: Mutex<TextCache>,
}

impl TextEncoder {
    pub(crate) fn new(model: Arc<ClipModel>, cache_capacity: usize) -> Self {
        Self {
            model,
            cache: Mutex::new(TextCache::new(cache_capacity)),
        }
    }

    /// Validates `spec` and embeds its labels. Nothing is cached for a set that fails.
    pub(crate) fn compile(
        &self,
        id: Arc<str>,
        version: u64,
        spec: LabelSetSpec,
    ) -> Result<LabelSet> {
        spec.validate()?;
        let prompts = spec.prompts();
        let tokenizer = &self.model.tokenizer;
        let max = tokenizer.context_length();
        // Refuse the whole set before any encoding if one prompt does not fit.
        for (label, label_prompts) in spec.labels.iter().zip(&prompts) {
            for prompt in label_prompts {
                let tokens = tokenizer.encode(prompt)?;
                if tokens.truncated() {
                    return Err(LabelError::TooLong {
                        label: label.name.clone(),
                        prompt: prompt.clone(),
                        tokens: tokens.full_len,
                        max,
                    }
                    .into());
                }
            }
        }
        let embeddings = self.embed_prompts(&prompts)?;
        let dim = self.model.network.config().projection_dim;
        let mut table = Vec::with_capacity(prompts.len() * dim);
        for per_label in &embeddings {
            // Prompt ensembling: the mean of the unit prompt embeddings, renormalized.
            let mut mean = vec![0f32; dim];
            for e in per_label {
                for (m, v) in mean.iter_mut().zip(e.iter()) {
                    *m += v;
                }
            }
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            table.extend(mean.iter().map(|v| v / norm));
        }
        Ok(LabelSet {
            id,
            version,
            names: spec
                .labels
                .iter()
                .map(|l| Arc::from(l.name.as_str()))
                .collect(),
            spec,
            dim,
            embeddings: table,
            logit_scale: self.model.network.logit_scale(),
        })
    }

    /// Unit embeddings of every prompt, grouped like `prompts`; cached ones are reused.
    fn embed_prompts(&self, prompts: &[Vec<String>]) -> Result<Vec<Vec<Arc<[f32]>>>> {
        let mut known: HashMap<&str, Arc<[f32]>> = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            for p in prompts.iter().flatten() {
                if known.contains_key(p.as_str()) || missing.contains(&p.as_str()) {
                    continue;
                }
                match cache.get(p) {
                    Some(e) => {
                        known.insert(p, e);
                    }
                    None => missing.push(p),
                }
            }
        }
        // Encode without holding the lock: other updates may use the cache meanwhile.
        let mut fresh: Vec<(String, Arc<[f32]>)> = Vec::with_capacity(missing.len());
        for chunk in missing.chunks(TEXT_BATCH) {
            let (embeds, _) = self.model.embed_texts(chunk)?;
            let rows = l2_normalize(&embeds)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (p, row) in chunk.iter().zip(rows) {
                let e: Arc<[f32]> = Arc::from(row);
                known.insert(p, e.clone());
                fresh.push((p.to_string(), e));
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for (p, e) in fresh {
            cache.insert(p, e);
        }
        drop(cache);
        prompts
            .iter()
            .map(|label_prompts| {
                label_prompts
                    .iter()
                    .map(|p| {
                        known.get(p.as_str()).cloned().ok_or_else(|| {
                            crate::EngineError::Setting(format!("prompt {p:?} was not embedded"))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Prompts in the cache.
    pub(crate) fn cached_prompts(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

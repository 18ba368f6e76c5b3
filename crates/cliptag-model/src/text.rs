//! The text tower: token and position embeddings, causal encoder, final norm, pooling at
//! the end-of-text token.

use candle_core::{Module, Tensor};

use crate::config::TextConfig;
use crate::error::{ModelError, Result};
use crate::layers::{Encoder, EncoderShape, LayerNorm, layer_norm};
use crate::profile::stage;
use crate::weights::Weights;

/// The `eos_token_id` of the original OpenAI configs. `transformers` treats it as a flag
/// for the legacy pooling rule (the position of the highest token id).
const LEGACY_EOS_TOKEN_ID: u32 = 2;

/// `text_model.*` of a CLIP checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct TextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_norm: LayerNorm,
    config: TextConfig,
}

impl TextTransformer {
    pub(crate) fn load(w: &Weights, prefix: &str, config: &TextConfig) -> Result<Self> {
        let d = config.hidden_size;
        let shape = EncoderShape {
            hidden: d,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            layers: config.num_hidden_layers,
            act: config.hidden_act,
            eps: config.layer_norm_eps,
        };
        Ok(Self {
            token_embedding: w.get(
                &format!("{prefix}.embeddings.token_embedding.weight"),
                &[config.vocab_size, d],
            )?,
            position_embedding: w.get(
                &format!("{prefix}.embeddings.position_embedding.weight"),
                &[config.max_position_embeddings, d],
            )?,
            encoder: Encoder::load(w, &format!("{prefix}.encoder"), &shape)?,
            final_norm: layer_norm(w, &format!("{prefix}.final_layer_norm"), d, shape.eps)?,
            config: config.clone(),
        })
    }

    /// The position whose output is pooled, picked exactly as `transformers` picks it:
    /// with the legacy `eos_token_id == 2`, the first position of the highest id (the
    /// end-of-text token has the highest id in CLIP's vocabulary); otherwise the first
    /// position of `eos_token_id`, or 0 when it is absent.
    pub(crate) fn pooled_position(&self, ids: &[u32]) -> usize {
        match self.config.eos_token_id {
            Some(LEGACY_EOS_TOKEN_ID) | None => {
                let mut best = 0;
                for (i, &id) in ids.iter().enumerate() {
                    if id > ids[best] {
                        best = i;
                    }
                }
                best
            }
            Some(eos) => ids.iter().position(|&id| id == eos).unwrap_or(0),
        }
    }

    /// Token ids (one row per prompt, any lengths) -> pooled output `[batch, hidden]`.
    ///
    /// The mask is causal, so a position's output depends only on the tokens before it:
    /// the encoder runs on the shortest prefix that holds every row's pooled position, and
    /// rows are padded with their own last token, which no pooled position can see.
    pub(crate) fn forward(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let cfg = &self.config;
        if rows.is_empty() {
            return Err(ModelError::Input("no token sequences".into()));
        }
        let mut pooled = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            if row.is_empty() {
                return Err(ModelError::Input(format!("token sequence {r} is empty")));
            }
            if row.len() > cfg.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "token sequence {r} has {} tokens, the context length is {}",
                    row.len(),
                    cfg.max_position_embeddings
                )));
            }
            if let Some(&bad) = row.iter().find(|&&id| id as usize >= cfg.vocab_size) {
                return Err(ModelError::Input(format!(
                    "token id {bad} in sequence {r} is outside the vocabulary of {}",
                    cfg.vocab_size
                )));
            }
            pooled.push(self.pooled_position(row));
        }
        let len = pooled.iter().max().map_or(1, |&p| p + 1);
        let b = rows.len();
        let mut ids = Vec::with_capacity(b * len);
        for row in rows {
            let last = row[row.len() - 1];
            ids.extend((0..len).map(|i| row.get(i).copied().unwrap_or(last)));
        }
        let device = self.token_embedding.device();
        let d = cfg.hidden_size;
        let x = stage("token embedding", device, || {
            let ids = Tensor::from_vec(ids, (b * len,), device)?;
            let x = self
                .token_embedding
                .index_select(&ids, 0)?
                .reshape((b, len, d))?;
            Ok(x.broadcast_add(&self.position_embedding.narrow(0, 0, len)?)?)
        })?;
        // Only each row's pooled position is computed through the last block.
        let x = self.encoder.forward_at(&x, &pooled, true)?;
        stage("final norm", device, || {
            Ok(self.final_norm.forward(&x)?.squeeze(1)?)
        })
    }
}

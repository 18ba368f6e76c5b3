//! The vision tower: patch embedding, class token, pre-norm, encoder, pooled class token.

use candle_core::{Module, Tensor};

use crate::config::VisionConfig;
use crate::error::{ModelError, Result};
use crate::layers::{Encoder, EncoderShape, LayerNorm, Linear, layer_norm};
use crate::profile::stage;
use crate::weights::Weights;

/// `vision_model.*` of a CLIP checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct VisionTransformer {
    /// The patch convolution as a matmul: `[hidden, 3 * patch * patch]`.
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    config: VisionConfig,
}

impl VisionTransformer {
    pub(crate) fn load(w: &Weights, prefix: &str, config: &VisionConfig) -> Result<Self> {
        let d = config.hidden_size;
        let p = config.patch_size;
        let c = config.num_channels;
        // A stride-p convolution over non-overlapping p x p patches is one matmul over the
        // flattened patches; the kernel flattens in the same (channel, row, column) order.
        let kernel = w.get(
            &format!("{prefix}.embeddings.patch_embedding.weight"),
            &[d, c, p, p],
        )?;
        let patch_embedding = Linear::from_parts(w, kernel.reshape((d, c * p * p))?, None)?;
        let shape = EncoderShape {
            hidden: d,
            intermediate: config.intermediate_size,
            heads: config.num_attention_heads,
            layers: config.num_hidden_layers,
            act: config.hidden_act,
            eps: config.layer_norm_eps,
        };
        Ok(Self {
            patch_embedding,
            class_embedding: w.get(&format!("{prefix}.embeddings.class_embedding"), &[d])?,
            position_embedding: w.get(
                &format!("{prefix}.embeddings.position_embedding.weight"),
                &[config.num_positions(), d],
            )?,
            // "pre_layrnorm" is the name transformers gives this layer.
            pre_norm: layer_norm(w, &format!("{prefix}.pre_layrnorm"), d, shape.eps)?,
            encoder: Encoder::load(w, &format!("{prefix}.encoder"), &shape)?,
            post_norm: layer_norm(w, &format!("{prefix}.post_layernorm"), d, shape.eps)?,
            config: config.clone(),
        })
    }

    /// `pixel_values`: `[batch, 3, S, S]` -> pooled output `[batch, hidden]`.
    pub(crate) fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, c, h, w) = pixel_values.dims4()?;
        if c != cfg.num_channels || h != cfg.image_size || w != cfg.image_size {
            return Err(ModelError::Input(format!(
                "pixel values are [{b}, {c}, {h}, {w}], the vision tower takes [N, {}, {s}, {s}]",
                cfg.num_channels,
                s = cfg.image_size
            )));
        }
        let p = cfg.patch_size;
        let n = cfg.patches_per_side();
        let d = cfg.hidden_size;
        let dev = pixel_values.device();
        let patches = stage("patch embedding", dev, || {
            let patches = pixel_values
                .reshape((b, c, n, p, n, p))?
                .permute((0, 2, 4, 1, 3, 5))?
                .contiguous()?
                .reshape((b, n * n, c * p * p))?;
            self.patch_embedding.forward(&patches)
        })?;
        let x = stage("embeddings + pre-norm", dev, || {
            let class = self.class_embedding.reshape((1, 1, d))?.repeat((b, 1, 1))?;
            let x = Tensor::cat(&[class, patches], 1)?;
            let x = x.broadcast_add(&self.position_embedding)?;
            Ok(self.pre_norm.forward(&x)?)
        })?;
        // Only the class token is pooled.
        let pooled = self
            .encoder
            .forward_at(&x, &vec![0; b], false)?
            .squeeze(1)?;
        stage("final norm", dev, || Ok(self.post_norm.forward(&pooled)?))
    }
}

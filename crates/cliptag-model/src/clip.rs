//! The two towers, their projections into the shared space, and the logit scale.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::ClipConfig;
use crate::error::{ModelError, Result};
use crate::kernels::MatmulPlan;
use crate::layers::{Linear, l2_normalize};
use crate::profile::stage;
use crate::text::TextTransformer;
use crate::vision::VisionTransformer;
use crate::weights::Weights;

/// The CLIP network: `get_image_features`, `get_text_features` and the logits of
/// `CLIPModel` in `transformers`.
#[derive(Debug, Clone)]
pub struct Clip {
    config: ClipConfig,
    vision: VisionTransformer,
    visual_projection: Linear,
    text: TextTransformer,
    text_projection: Linear,
    /// `exp(logit_scale)`, the temperature of the contrastive logits.
    logit_scale: f32,
    plan: MatmulPlan,
    device: Device,
}

impl Clip {
    /// Builds the network from a checkpoint whose tensors follow the `CLIPModel` names.
    pub fn load(config: &ClipConfig, weights: &Weights) -> Result<Self> {
        let p = config.projection_dim;
        let logit_scale = weights
            .get_as("logit_scale", &[], DType::F32)?
            .to_scalar::<f32>()?
            .exp();
        Ok(Self {
            vision: VisionTransformer::load(weights, "vision_model", &config.vision)?,
            visual_projection: Linear::load_no_bias(
                weights,
                "visual_projection",
                config.vision.hidden_size,
                p,
            )?,
            text: TextTransformer::load(weights, "text_model", &config.text)?,
            text_projection: Linear::load_no_bias(
                weights,
                "text_projection",
                config.text.hidden_size,
                p,
            )?,
            logit_scale,
            config: config.clone(),
            plan: weights.plan(),
            device: weights.device().clone(),
        })
    }

    /// Reads `config.json` and the weights of a model directory.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_dir_planned(dir, dtype, device, None)
    }

    /// As [`Clip::from_dir`], on the given plan instead of the one `dtype`, the device and
    /// the CPU give, when there is one.
    pub fn from_dir_planned(
        dir: &Path,
        dtype: DType,
        device: &Device,
        plan: Option<MatmulPlan>,
    ) -> Result<Self> {
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::from_dir(dir, dtype, device)?.with_plan(plan);
        Self::load(&config, &weights)
    }

    /// The config the network was built from.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The precision the network's matmuls run in: bf16 on a CPU with bf16 dot products
    /// (whose activations stay f32) as on a GPU. What reports call the dtype used.
    pub fn dtype(&self) -> DType {
        self.plan.computes
    }

    /// How the weights are held and the matmuls computed.
    pub fn plan(&self) -> MatmulPlan {
        self.plan
    }

    /// The device the network runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `exp(logit_scale)`: multiplies cosine similarities into logits.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Side of the square image the vision tower takes, in pixels.
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size
    }

    /// `pixel_values` `[batch, 3, S, S]` (any float type, any device) -> projected image
    /// embeddings `[batch, projection_dim]` in f32, not normalized.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let x = stage("input to device and dtype", &self.device, || {
            Ok(pixel_values
                .to_device(&self.device)?
                .to_dtype(self.plan.tensors)?)
        })?;
        let pooled = self.vision.forward(&x)?;
        stage("projection", &self.device, || {
            Ok(self
                .visual_projection
                .forward(&pooled)?
                .to_dtype(DType::F32)?)
        })
    }

    /// Token-id rows (with start and end tokens, any lengths up to the context length)
    /// -> projected text embeddings `[rows, projection_dim]` in f32, not normalized.
    pub fn text_features(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let pooled = self.text.forward(ids)?;
        stage("projection", &self.device, || {
            Ok(self
                .text_projection
                .forward(&pooled)?
                .to_dtype(DType::F32)?)
        })
    }

    /// `logits_per_image` `[images, texts]`: `exp(logit_scale)` times the cosine
    /// similarity of every image embedding with every text embedding.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let (_, di) = image_embeds.dims2()?;
        let (_, dt) = text_embeds.dims2()?;
        if di != dt {
            return Err(ModelError::Input(format!(
                "image embeddings have width {di}, text embeddings {dt}"
            )));
        }
        let image = l2_normalize(&image_embeds.to_dtype(DType::F32)?)?;
        let text = l2_normalize(&text_embeds.to_dtype(DType::F32)?)?;
        Ok((image.matmul(&text.t()?)? * f64::from(self.logit_scale))?)
    }
}

//! The options every model-using command shares.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cliptag_model::{ClipModel, LoadOptions};

/// `--model`, `--device` and `--dtype`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Hugging Face CLIP model directory (config.json, model.safetensors, tokenizer.json).
    /// Without it, the bundled model cliptag-tiny.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Device to run on: cpu, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision of the matmuls: f32, f16, bf16, or auto (f16 on a GPU; on the CPU bf16
    /// where it has bf16 dot products (AVX512_BF16), f32 elsewhere).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

impl ModelArgs {
    /// The same options with another precision.
    pub fn with_dtype(&self, dtype: &str) -> Self {
        Self {
            model: self.model.clone(),
            device: self.device.clone(),
            dtype: dtype.into(),
        }
    }

    /// Loads the model these options name.
    pub fn load(&self) -> Result<ClipModel> {
        let device = cliptag_model::parse_device(&self.device)?;
        let options = LoadOptions {
            dtype: cliptag_model::parse_dtype_for(&self.dtype, &device)?,
            device,
            plan: None,
        };
        ClipModel::open(self.model.as_deref(), &options).with_context(|| match &self.model {
            Some(dir) => format!("cannot load model {}", dir.display()),
            None => "cannot load the bundled model".to_string(),
        })
    }
}

//! CLIP on candle: the vision and text towers of a Hugging Face CLIP checkpoint, its BPE
//! tokenizer, and `CLIPImageProcessor`'s preprocessing applied straight to raw video
//! frames.
//!
//! ```no_run
//! use cliptag_model::{ClipModel, LoadOptions};
//! # fn main() -> cliptag_model::Result<()> {
//! let model = ClipModel::load(std::path::Path::new("models/my-clip"), &LoadOptions::default())?;
//! let image = cliptag_model::image_file::load_rgb(std::path::Path::new("cat.jpg"))?;
//! let scores = model.classify(&[image.frame()?], &["a cat", "a dog"])?;
//! println!("{scores:?}");
//! # Ok(()) }
//! ```
//!
//! Nothing here knows about GStreamer or gRPC.

pub mod accuracy;
#[cfg(feature = "bundled")]
pub mod bundled;
mod clip;
pub mod config;
#[cfg(feature = "cuda")]
mod cuda_pool;
mod error;
pub mod image_file;
pub mod kernels;
mod layers;
pub mod preprocess;
pub mod profile;
mod text;
pub mod tokenizer;
mod vision;
pub mod weights;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use candle_core;
pub use clip::Clip;
pub use config::ClipConfig;
pub use error::{ModelError, Result};
pub use kernels::{CpuFeatures, MatmulPlan};
pub use layers::l2_normalize;
pub use preprocess::{FrameRef, PixelFormat, PreprocessConfig, Preprocessor};
pub use tokenizer::{ClipTokenizer, Tokens};

/// Where and in which precision to run a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The device the weights live on.
    pub device: Device,
    /// The precision asked for (f32, f16 or bf16); the model's [`Clip::plan`] says how it
    /// runs on the device.
    pub dtype: DType,
    /// A plan to use instead of the one `dtype`, the device and the CPU give: to run the
    /// bf16 kernels on any CPU (portable code where the CPU lacks bf16 dot products), or
    /// to compare kernels.
    pub plan: Option<MatmulPlan>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            plan: None,
        }
    }
}

/// A device as a name asks for it, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceRequest {
    Cpu,
    Auto,
    Cuda(usize),
}

fn device_request(name: &str) -> Result<DeviceRequest> {
    let name = name.trim();
    let not_a_device = || ModelError::Device(format!("{name:?} is not cpu, auto or cuda:N"));
    match name {
        "cpu" => Ok(DeviceRequest::Cpu),
        "auto" => Ok(DeviceRequest::Auto),
        other => {
            let ordinal = match other.strip_prefix("cuda").ok_or_else(not_a_device)? {
                "" => 0,
                rest => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(not_a_device)?,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Device(format!(
                    "{other}: this build has no CUDA support (build with --features cuda)"
                )));
            }
            Ok(DeviceRequest::Cuda(ordinal))
        }
    }
}

/// Checks a device name without opening the device: `cpu`, `auto`, or `cuda` / `cuda:N`
/// in a build with CUDA.
pub fn check_device_name(name: &str) -> Result<()> {
    device_request(name).map(|_| ())
}

/// Parses a device name: `cpu`, `cuda` / `cuda:N`, or `auto` (the first CUDA device when
/// this build has CUDA and one is present, the CPU otherwise).
pub fn parse_device(name: &str) -> Result<Device> {
    match device_request(name)? {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => match Device::cuda_if_available(0) {
            Ok(device) => prepared(device),
            Err(_) => Ok(Device::Cpu),
        },
        DeviceRequest::Cuda(ordinal) => {
            let device = Device::new_cuda(ordinal)
                .map_err(|e| ModelError::Device(format!("{}: {e}", name.trim())))?;
            prepared(device)
        }
    }
}

/// A device ready for inference: on a GPU, freed memory stays in the process's memory
/// pool between batches instead of going back to the driver at every synchronization.
fn prepared(device: Device) -> Result<Device> {
    #[cfg(feature = "cuda")]
    cuda_pool::retain_freed_memory(&device);
    Ok(device)
}

/// Parses a precision name for a device: `auto` is f16 on a GPU (half the memory traffic,
/// tensor cores), and on the CPU bf16 where it has native bf16 dot products (AVX512_BF16)
/// and f32 elsewhere (f16 and emulated bf16 matmuls are slower than f32); anything else
/// as [`parse_dtype`]. What a requested type actually runs as is the model's
/// [`Clip::dtype`].
pub fn parse_dtype_for(name: &str, device: &Device) -> Result<DType> {
    auto_dtype(name, device, CpuFeatures::detected())
}

fn auto_dtype(name: &str, device: &Device, features: CpuFeatures) -> Result<DType> {
    match name.trim() {
        "auto" if device.is_cpu() && features.native_bf16() => Ok(DType::BF16),
        "auto" if device.is_cpu() => Ok(DType::F32),
        "auto" => Ok(DType::F16),
        other => parse_dtype(other),
    }
}

/// Parses a precision name: `f32`, `f16` or `bf16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(ModelError::Input(format!(
            "precision {other:?} is not f32, f16, bf16 or auto"
        ))),
    }
}

/// Everything a model directory holds: the network, its tokenizer and its preprocessor.
#[derive(Debug, Clone)]
pub struct ClipModel {
    /// The network.
    pub network: Clip,
    /// The tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The image preprocessor.
    pub preprocessor: Preprocessor,
    /// Where it came from: the directory, or the bundled model's name.
    pub source: String,
}

/// Probabilities of every label for one image, in the order the labels were given.
pub type LabelScores = Vec<f32>;

impl ClipModel {
    /// Loads the model in `dir`, or the bundled model when `dir` is `None`.
    pub fn open(dir: Option<&Path>, options: &LoadOptions) -> Result<Self> {
        match dir {
            Some(dir) => Self::load(dir, options),
            None => Self::bundled(options),
        }
    }

    /// Loads a Hugging Face CLIP directory: `config.json`, `model.safetensors` (or
    /// shards), `tokenizer.json` (or `vocab.json` + `merges.txt`) and, when present,
    /// `preprocessor_config.json`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
            ));
        }
        let network = Clip::from_dir_planned(dir, options.dtype, &options.device, options.plan)?;
        let config = network.config();
        let tokenizer = ClipTokenizer::from_dir(dir, config.text.max_position_embeddings)?;
        let preprocessor =
            Preprocessor::new(PreprocessConfig::from_dir(dir, config.vision.image_size)?);
        Self::assemble(
            network,
            tokenizer,
            preprocessor,
            dir,
            dir.display().to_string(),
        )
    }

    /// Loads the bundled model, `cliptag-tiny`, from the bytes compiled into this binary.
    #[cfg(feature = "bundled")]
    pub fn bundled(options: &LoadOptions) -> Result<Self> {
        let dir = Path::new(bundled::DIR);
        let config = ClipConfig::from_json_str(bundled::CONFIG)
            .map_err(|reason| ModelError::config(dir.join("config.json"), reason))?;
        let weights = weights::Weights::from_static(
            &dir.join(weights::SINGLE_FILE),
            bundled::WEIGHTS,
            options.dtype,
            &options.device,
        )?
        .with_plan(options.plan);
        let network = Clip::load(&config, &weights)?;
        let tokenizer = ClipTokenizer::from_tokenizer_json_bytes(
            bundled::TOKENIZER,
            config.text.max_position_embeddings,
            &dir.join("tokenizer.json"),
        )?;
        let preprocess =
            PreprocessConfig::from_json_str(bundled::PREPROCESSOR, config.vision.image_size)
                .map_err(|reason| {
                    ModelError::config(dir.join("preprocessor_config.json"), reason)
                })?;
        let source = format!("{} (bundled)", bundled::NAME);
        Self::assemble(
            network,
            tokenizer,
            Preprocessor::new(preprocess),
            dir,
            source,
        )
    }

    /// Without the `bundled` feature there is no model to fall back on.
    #[cfg(not(feature = "bundled"))]
    pub fn bundled(_options: &LoadOptions) -> Result<Self> {
        Err(ModelError::Input(
            "this build has no bundled model (built without the `bundled` feature): name a model directory".into(),
        ))
    }

    fn assemble(
        network: Clip,
        tokenizer: ClipTokenizer,
        preprocessor: Preprocessor,
        dir: &Path,
        source: String,
    ) -> Result<Self> {
        let vocab = network.config().text.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(ModelError::Tokenizer {
                path: dir.to_path_buf(),
                reason: format!(
                    "the tokenizer has {} tokens, the text tower only {vocab}",
                    tokenizer.vocab_size(),
                ),
            });
        }
        Ok(Self {
            network,
            tokenizer,
            preprocessor,
            source,
        })
    }

    /// Preprocesses frames into one `[n, 3, S, S]` batch on the model's device (on a GPU,
    /// resized and normalized there: [`Preprocessor::pixel_values_on`]).
    pub fn pixel_values(&self, frames: &[FrameRef<'_>]) -> Result<Tensor> {
        let s = self.network.image_size();
        for frame in frames {
            self.check_frame_size(frame)?;
        }
        if !self.network.device().is_cpu() {
            return self
                .preprocessor
                .pixel_values_on(frames, self.network.device());
        }
        let per_image = 3 * s * s;
        let mut batch = vec![0f32; frames.len() * per_image];
        for (frame, out) in frames.iter().zip(batch.chunks_exact_mut(per_image)) {
            self.preprocessor.preprocess_into(frame, out)?;
        }
        Ok(Tensor::from_vec(
            batch,
            (frames.len(), 3, s, s),
            self.network.device(),
        )?)
    }

    /// Whether the preprocessor makes from `frame` the size the vision tower takes.
    pub fn check_frame_size(&self, frame: &FrameRef<'_>) -> Result<()> {
        let s = self.network.image_size();
        let size = self
            .preprocessor
            .output_size(frame.width(), frame.height())?;
        if size != (s, s) {
            return Err(ModelError::Input(format!(
                "the preprocessor makes {}x{} images, the vision tower takes {s}x{s}",
                size.0, size.1
            )));
        }
        Ok(())
    }

    /// Projected image embeddings `[n, projection_dim]` of frames.
    pub fn embed_frames(&self, frames: &[FrameRef<'_>]) -> Result<Tensor> {
        if frames.is_empty() {
            return Err(ModelError::Input("no images".into()));
        }
        self.network.image_features(&self.pixel_values(frames)?)
    }

    /// Projected text embeddings `[n, projection_dim]` of prompts, with the tokens each
    /// prompt became (callers report `Tokens::truncated`).
    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<(Tensor, Vec<Tokens>)> {
        if texts.is_empty() {
            return Err(ModelError::Input("no texts".into()));
        }
        let tokens = self.tokenizer.encode_all(texts)?;
        let ids: Vec<Vec<u32>> = tokens.iter().map(|t| t.ids.clone()).collect();
        Ok((self.network.text_features(&ids)?, tokens))
    }

    /// Zero-shot classification: for each frame, the softmax over `labels` of
    /// `exp(logit_scale)` times cosine similarity.
    pub fn classify<S: AsRef<str>>(
        &self,
        frames: &[FrameRef<'_>],
        labels: &[S],
    ) -> Result<Vec<LabelScores>> {
        let images = self.embed_frames(frames)?;
        let (texts, _) = self.embed_texts(labels)?;
        let logits = self.network.logits(&images, &texts)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        Ok(probs.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine shares one model between threads.
    #[test]
    fn models_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ClipModel>();
        assert_send_sync::<Clip>();
        assert_send_sync::<Preprocessor>();
        assert_send_sync::<ClipTokenizer>();
    }

    #[test]
    fn device_and_dtype_names() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(parse_device("auto").is_ok());
        for bad in ["gpu", "cuda:x", "cuda:", ""] {
            assert!(parse_device(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_dtype("bf16").ok(), Some(DType::BF16));
        assert!(parse_dtype("f64").is_err());
        let bf16 = CpuFeatures {
            avx512f: true,
            avx512_bf16: true,
            amx_bf16: false,
        };
        assert_eq!(
            auto_dtype("auto", &Device::Cpu, bf16).ok(),
            Some(DType::BF16)
        );
        assert_eq!(
            auto_dtype("auto", &Device::Cpu, CpuFeatures::none()).ok(),
            Some(DType::F32)
        );
        assert_eq!(parse_dtype_for("f16", &Device::Cpu).ok(), Some(DType::F16));
        assert!(parse_dtype("auto").is_err());
    }
}

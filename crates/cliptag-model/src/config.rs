//! `config.json` of a Hugging Face CLIP checkpoint, read the way `transformers` reads it.
//!
//! Fields missing from the file take `transformers`' defaults (which are ViT-B/32's), a
//! `null` value counts as missing, and keys this crate does not use are ignored. The
//! legacy `text_config_dict` / `vision_config_dict` keys of the original OpenAI uploads
//! replace `text_config` / `vision_config`, as `CLIPConfig` does (which is why the
//! ViT-L/14 configs pool at the end-of-text token although their `text_config` says
//! `eos_token_id: 2`).

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// The activation of the MLP blocks (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, the activation of the original OpenAI CLIP.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU (with erf), PyTorch's `nn.GELU()`.
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU with the tanh approximation.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `max(0, x)`.
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(x)`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// The text tower's `text_config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Number of tokens in the vocabulary (49408 for CLIP's BPE).
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Context length in tokens (77 for CLIP).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// Id of the padding token.
    pub pad_token_id: Option<u32>,
    /// Id of the start-of-text token.
    pub bos_token_id: Option<u32>,
    /// Id of the end-of-text token. The value 2 (the legacy OpenAI configs) makes the
    /// text tower pool at the highest token id instead, as `transformers` does.
    pub eos_token_id: Option<u32>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

/// The vision tower's `vision_config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Number of input channels (3).
    pub num_channels: usize,
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl VisionConfig {
    /// Number of patches along one side of the image.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Sequence length of the vision transformer: one class token plus the patches.
    pub fn num_positions(&self) -> usize {
        self.patches_per_side() * self.patches_per_side() + 1
    }
}

/// A whole CLIP `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    pub text: TextConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
    /// Initial value of the (log) logit scale; the checkpoint's `logit_scale` tensor is
    /// what scoring uses.
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text: TextConfig::default(),
            vision: VisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }
}

impl ClipConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text).map_err(|reason| ModelError::config(path, reason))
    }

    /// Parses the text of a `config.json`; the error is a reason without the file name.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let root = root
            .as_object()
            .ok_or_else(|| "the top level is not a JSON object".to_string())?;
        let text = section(root, "text_config", "text_config_dict")?;
        let vision = section(root, "vision_config", "vision_config_dict")?;
        let text: TextConfig = serde_path_to_error::deserialize(text)
            .map_err(|e| format!("text_config.{}: {}", e.path(), e.inner()))?;
        let vision: VisionConfig = serde_path_to_error::deserialize(vision)
            .map_err(|e| format!("vision_config.{}: {}", e.path(), e.inner()))?;
        let defaults = Self::default();
        let config = Self {
            text,
            vision,
            projection_dim: number(root, "projection_dim")?
                .map_or(Ok(defaults.projection_dim), |v| {
                    to_usize("projection_dim", v)
                })?,
            logit_scale_init_value: number(root, "logit_scale_init_value")?
                .unwrap_or(defaults.logit_scale_init_value),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text;
        let v = &self.vision;
        let positive = [
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
            ("projection_dim", self.projection_dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.num_channels != 3 {
            return Err(format!(
                "vision_config.num_channels is {}, only 3 (RGB) is supported",
                v.num_channels
            ));
        }
        Ok(())
    }
}

/// The sub-config `key`, nulls removed so that they take the defaults. When the legacy
/// `override_key` is present, `transformers` rebuilds the whole sub-config from it (its
/// defaults filling every gap) and that replaces `key` entirely, so the same happens here.
fn section(
    root: &Map<String, Value>,
    key: &str,
    override_key: &str,
) -> std::result::Result<Value, String> {
    let chosen = match root.get(override_key) {
        None | Some(Value::Null) => key,
        Some(_) => override_key,
    };
    match root.get(chosen) {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(Value::Object(fields)) => Ok(Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )),
        Some(_) => Err(format!("{chosen} is not a JSON object")),
    }
}

fn number(root: &Map<String, Value>, key: &str) -> std::result::Result<Option<f64>, String> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{key} is not a number")),
    }
}

fn to_usize(key: &str, value: f64) -> std::result::Result<usize, String> {
    if value >= 0.0 && value.fract() == 0.0 && value <= u32::MAX as f64 {
        Ok(value as usize)
    } else {
        Err(format!("{key} is not a non-negative integer: {value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_gives_transformers_defaults() {
        let config = ClipConfig::from_json_str("{}").expect("defaults");
        assert_eq!(config, ClipConfig::default());
        assert_eq!(config.vision.num_positions(), 50);
    }

    #[test]
    fn legacy_dict_replaces_and_nulls_take_defaults() {
        let json = r#"{
            "text_config": {"hidden_size": 512, "eos_token_id": 2, "hidden_act": "gelu"},
            "text_config_dict": {"hidden_size": 768, "layer_norm_eps": null},
            "vision_config": {"patch_size": 14, "image_size": 336, "hidden_act": null},
            "vision_config_dict": null,
            "projection_dim": 768
        }"#;
        let config = ClipConfig::from_json_str(json).expect("parses");
        assert_eq!(config.text.hidden_size, 768);
        assert_eq!(config.text.eos_token_id, Some(49407));
        assert_eq!(config.text.hidden_act, Activation::QuickGelu);
        assert_eq!(config.text.layer_norm_eps, 1e-5);
        assert_eq!(config.vision.hidden_act, Activation::QuickGelu);
        assert_eq!(config.vision.num_positions(), 24 * 24 + 1);
        assert_eq!(config.projection_dim, 768);
    }

    #[test]
    fn rejects_inconsistent_shapes_with_a_reason() {
        let err = ClipConfig::from_json_str(r#"{"vision_config": {"image_size": 100}}"#)
            .expect_err("100 is not a multiple of 32");
        assert!(err.contains("patch_size"), "{err}");
        let err = ClipConfig::from_json_str(r#"{"text_config": {"hidden_act": "tanh"}}"#)
            .expect_err("unknown activation");
        assert!(err.contains("tanh"), "{err}");
        let err = ClipConfig::from_json_str("[1]").expect_err("not an object");
        assert!(err.contains("object"), "{err}");
    }
}

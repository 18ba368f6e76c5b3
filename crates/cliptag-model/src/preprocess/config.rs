//! `preprocessor_config.json` of a CLIP checkpoint.

use std::path::Path;

use serde_json::{Map, Value};

use super::resample::Filter;
use crate::error::{ModelError, Result};

/// CLIP's per-channel mean (OpenAI's training set statistics).
pub const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation.
pub const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How the image is resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// The shorter side becomes this many pixels, the aspect ratio is kept (CLIP).
    ShortestEdge(usize),
    /// Exactly this `(width, height)`.
    Exact(usize, usize),
}

impl ResizeTarget {
    /// The resized `(width, height)` of a `width` x `height` image, computed as
    /// `transformers` does (the long side truncated, not rounded).
    pub fn resized(self, width: usize, height: usize) -> (usize, usize) {
        match self {
            Self::Exact(w, h) => (w, h),
            Self::ShortestEdge(s) => {
                let (short, long) = (width.min(height), width.max(height));
                let new_long = ((s * long) as f64 / short as f64) as usize;
                if width <= height {
                    (s, new_long)
                } else {
                    (new_long, s)
                }
            }
        }
    }
}

/// The steps and constants of `CLIPImageProcessor`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Whether to resize.
    pub do_resize: bool,
    /// The resize target.
    pub size: ResizeTarget,
    /// The resampling filter.
    pub resample: Filter,
    /// Whether to crop the center.
    pub do_center_crop: bool,
    /// The crop `(width, height)`.
    pub crop_size: (usize, usize),
    /// Whether to multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Whether to subtract the mean and divide by the standard deviation.
    pub do_normalize: bool,
    /// Per-channel mean (RGB).
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (RGB).
    pub image_std: [f64; 3],
}

impl PreprocessConfig {
    /// CLIP's defaults for a vision tower of `image_size` pixels.
    pub fn clip_defaults(image_size: usize) -> Self {
        Self {
            do_resize: true,
            size: ResizeTarget::ShortestEdge(image_size),
            resample: Filter::Bicubic,
            do_center_crop: true,
            crop_size: (image_size, image_size),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json`; absent keys take CLIP's defaults for `image_size`.
    pub fn from_file(path: &Path, image_size: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, image_size).map_err(|reason| ModelError::config(path, reason))
    }

    /// The model directory's `preprocessor_config.json`, or CLIP's defaults without one.
    pub fn from_dir(dir: &Path, image_size: usize) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if path.is_file() {
            Self::from_file(&path, image_size)
        } else {
            Ok(Self::clip_defaults(image_size))
        }
    }

    /// Parses the text of a `preprocessor_config.json`.
    pub fn from_json_str(text: &str, image_size: usize) -> std::result::Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let map = value
            .as_object()
            .ok_or_else(|| "the top level is not a JSON object".to_string())?;
        let mut cfg = Self::clip_defaults(image_size);
        let flag = |key: &str, default: bool| match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("{key} is not true/false")),
        };
        cfg.do_resize = flag("do_resize", cfg.do_resize)?;
        cfg.do_center_crop = flag("do_center_crop", cfg.do_center_crop)?;
        cfg.do_rescale = flag("do_rescale", cfg.do_rescale)?;
        cfg.do_normalize = flag("do_normalize", cfg.do_normalize)?;
        if let Some(size) = present(map, "size") {
            cfg.size = resize_target(size)?;
        }
        if let Some(crop) = present(map, "crop_size") {
            cfg.crop_size = match crop {
                Value::Number(_) => {
                    let s = positive(crop, "crop_size")?;
                    (s, s)
                }
                Value::Object(m) => (
                    positive(field(m, "width", "crop_size")?, "crop_size.width")?,
                    positive(field(m, "height", "crop_size")?, "crop_size.height")?,
                ),
                _ => return Err("crop_size is neither a number nor {height, width}".into()),
            };
        }
        if let Some(resample) = present(map, "resample") {
            let code = resample
                .as_i64()
                .ok_or_else(|| "resample is not an integer".to_string())?;
            cfg.resample = Filter::from_pillow(code).ok_or_else(|| {
                format!("resample {code} is not supported (1 lanczos, 2 bilinear, 3 bicubic)")
            })?;
        }
        if let Some(f) = present(map, "rescale_factor") {
            cfg.rescale_factor = f
                .as_f64()
                .ok_or_else(|| "rescale_factor is not a number".to_string())?;
        }
        if let Some(mean) = present(map, "image_mean") {
            cfg.image_mean = triple(mean, "image_mean")?;
        }
        if let Some(std) = present(map, "image_std") {
            cfg.image_std = triple(std, "image_std")?;
            if cfg.image_std.iter().any(|&s| s <= 0.0) {
                return Err("image_std has a value that is not positive".into());
            }
        }
        Ok(cfg)
    }
}

fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn field<'a>(m: &'a Map<String, Value>, key: &str, parent: &str) -> Result<&'a Value, String> {
    m.get(key).ok_or_else(|| format!("{parent} has no {key}"))
}

fn positive(v: &Value, what: &str) -> std::result::Result<usize, String> {
    v.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| format!("{what} is not a positive integer"))
}

fn resize_target(v: &Value) -> std::result::Result<ResizeTarget, String> {
    match v {
        // A bare number means the shortest edge for CLIP (`default_to_square=False`).
        Value::Number(_) => Ok(ResizeTarget::ShortestEdge(positive(v, "size")?)),
        Value::Object(m) => {
            if let Some(s) = m.get("shortest_edge") {
                Ok(ResizeTarget::ShortestEdge(positive(
                    s,
                    "size.shortest_edge",
                )?))
            } else if let (Some(h), Some(w)) = (m.get("height"), m.get("width")) {
                Ok(ResizeTarget::Exact(
                    positive(w, "size.width")?,
                    positive(h, "size.height")?,
                ))
            } else {
                Err("size has neither shortest_edge nor height and width".into())
            }
        }
        _ => Err("size is neither a number nor an object".into()),
    }
}

fn triple(v: &Value, what: &str) -> std::result::Result<[f64; 3], String> {
    match v {
        Value::Number(n) => {
            let x = n
                .as_f64()
                .ok_or_else(|| format!("{what} is not a number"))?;
            Ok([x; 3])
        }
        Value::Array(items) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, item) in out.iter_mut().zip(items) {
                *o = item
                    .as_f64()
                    .ok_or_else(|| format!("{what} holds a value that is not a number"))?;
            }
            Ok(out)
        }
        _ => Err(format!("{what} is not a number or a list of three numbers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_style_file_parses() {
        let json = r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true,
            "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#;
        let cfg = PreprocessConfig::from_json_str(json, 224).expect("parses");
        assert_eq!(cfg, PreprocessConfig::clip_defaults(224));
    }

    #[test]
    fn resize_keeps_aspect_and_truncates() {
        let s = ResizeTarget::ShortestEdge(224);
        assert_eq!(s.resized(451, 300), (336, 224));
        assert_eq!(s.resized(300, 451), (224, 336));
        assert_eq!(s.resized(1920, 1080), (398, 224));
        assert_eq!(s.resized(97, 150), (224, 346));
    }

    #[test]
    fn bad_values_are_named() {
        let err = PreprocessConfig::from_json_str(r#"{"resample": 5}"#, 224).expect_err("box");
        assert!(err.contains("resample 5"), "{err}");
        let err = PreprocessConfig::from_json_str(r#"{"image_std": [1, 0, 1]}"#, 224)
            .expect_err("zero std");
        assert!(err.contains("image_std"), "{err}");
        let err = PreprocessConfig::from_json_str(r#"{"size": {"w": 3}}"#, 224).expect_err("size");
        assert!(err.contains("shortest_edge"), "{err}");
    }
}

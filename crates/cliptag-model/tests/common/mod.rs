//! Helpers shared by the integration tests: fixture paths, references, comparisons.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cliptag_model::candle_core::{DType, Device, Tensor};

/// The committed fixtures written by `tools/make_parity_fixtures.py`.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// `reference.safetensors` of a fixture model directory.
pub fn references(dir: &Path) -> HashMap<String, Tensor> {
    cliptag_model::candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read references of {}: {e}", dir.display()))
}

/// `reference.json` of a fixture model directory.
pub fn reference_meta(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json is JSON")
}

/// Photo file names, in the order the references use.
pub fn photos(dir: &Path) -> Vec<String> {
    reference_meta(dir)["photos"]
        .as_array()
        .expect("photos list")
        .iter()
        .map(|p| p.as_str().expect("photo name").to_string())
        .collect()
}

/// `CLIPImageProcessor`'s pixel values of one photo, `[1, 3, S, S]`: the fixture stores
/// the 8-bit crop, and the generator checked that rescaling and normalizing it in f32 gives
/// exactly what `transformers` returned.
pub fn reference_pixel_values(dir: &Path, refs: &HashMap<String, Tensor>, photo: &str) -> Tensor {
    let stem = Path::new(photo)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem");
    let bytes = &refs[&format!("pixels_u8.{stem}")];
    let cfg = cliptag_model::PreprocessConfig::from_dir(dir, 224).expect("preprocessor config");
    let channel =
        |c: usize, values: [f64; 3]| Tensor::new(values[c] as f32, &Device::Cpu).expect("scalar");
    let planes: Vec<Tensor> = (0..3)
        .map(|c| {
            let x = bytes
                .narrow(1, c, 1)
                .and_then(|t| t.to_dtype(DType::F32))
                .expect("plane");
            // Division, not multiplication by 1/255: the rounding must be transformers'.
            let x = x
                .broadcast_div(&Tensor::new(255f32, &Device::Cpu).expect("scalar"))
                .expect("rescale");
            x.broadcast_sub(&channel(c, cfg.image_mean))
                .and_then(|x| x.broadcast_div(&channel(c, cfg.image_std)))
                .expect("normalize")
        })
        .collect();
    Tensor::cat(&planes, 1).expect("pixel values")
}

/// The pixel values of every photo, stacked in reference order.
pub fn reference_pixels(dir: &Path, refs: &HashMap<String, Tensor>) -> Tensor {
    let tensors: Vec<Tensor> = photos(dir)
        .iter()
        .map(|name| reference_pixel_values(dir, refs, name))
        .collect();
    Tensor::cat(&tensors, 0).expect("stack pixel values")
}

/// The reference token-id rows.
pub fn reference_ids(refs: &HashMap<String, Tensor>) -> Vec<Vec<u32>> {
    refs["input_ids"]
        .to_dtype(DType::I64)
        .and_then(|t| t.to_vec2::<i64>())
        .expect("input_ids")
        .into_iter()
        .map(|row| row.into_iter().map(|id| id as u32).collect())
        .collect()
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F32).expect("f32") - b.to_dtype(DType::F32).expect("f32"))
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference")
}

/// Largest absolute value of a tensor.
pub fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max")
}

/// Copies every file of a fixture directory into a fresh temporary directory.
pub fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), dst.path().join(entry.file_name())).expect("copy");
        }
    }
    dst
}

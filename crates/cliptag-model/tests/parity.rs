//! The network against `transformers`: embeddings and logits of random-weight CLIP
//! models, computed by `tools/make_parity_fixtures.py` with `CLIPModel`.
//!
//! Tolerances: f32 max |diff| <= 1e-4 on embeddings and logits. f16 and bf16 weights are
//! compared with the f32 references relative to the largest reference value, with the
//! bounds measured on these fixtures (see `HALF_PRECISION_BOUNDS`).

mod common;

use std::path::Path;

use cliptag_model::candle_core::{DType, Device};
use cliptag_model::{Clip, ClipModel, LoadOptions};
use common::*;

const F32_TOLERANCE: f32 = 1e-4;

/// Max |diff| / max |reference| allowed for (f16, bf16) weights and activations. Measured
/// worst cases: f16 5.5e-3 (ViT-B/32 logits), 1.3e-2 (ViT-L/14 logits, 24 layers);
/// bf16 4.3e-2 (ViT-B/32 logits) with bf16 activations, as candle's generic path and a
/// GPU run it. On the CPU bf16 runs on the bf16 kernels, whose activations stay f32 (or
/// as f32 where the CPU has no bf16 dot products), well within the bound.
const HALF_PRECISION_BOUNDS: [(DType, f32); 2] = [(DType::F16, 2e-2), (DType::BF16, 8e-2)];

const FIXTURES: [&str; 2] = ["tiny-quickgelu", "tiny-gelu"];

struct Diffs {
    image: f32,
    text: f32,
    logits: f32,
}

fn compare(dir: &Path, dtype: DType) -> (Diffs, Diffs) {
    let refs = references(dir);
    let net = Clip::from_dir(dir, dtype, &Device::Cpu).expect("load network");
    let image = net
        .image_features(&reference_pixels(dir, &refs))
        .expect("image features");
    let text = net
        .text_features(&reference_ids(&refs))
        .expect("text features");
    let logits = net.logits(&image, &text).expect("logits");
    let abs = Diffs {
        image: max_abs_diff(&image, &refs["image_embeds"]),
        text: max_abs_diff(&text, &refs["text_embeds"]),
        logits: max_abs_diff(&logits, &refs["logits_per_image"]),
    };
    let rel = Diffs {
        image: abs.image / max_abs(&refs["image_embeds"]),
        text: abs.text / max_abs(&refs["text_embeds"]),
        logits: abs.logits / max_abs(&refs["logits_per_image"]),
    };
    (abs, rel)
}

#[test]
fn f32_embeddings_and_logits_match_transformers() {
    for name in FIXTURES {
        let dir = data_dir().join(name);
        let (d, _) = compare(&dir, DType::F32);
        eprintln!(
            "{name} f32: image {:.2e}, text {:.2e}, logits {:.2e}",
            d.image, d.text, d.logits
        );
        assert!(
            d.image <= F32_TOLERANCE,
            "{name}: image embeds differ by {}",
            d.image
        );
        assert!(
            d.text <= F32_TOLERANCE,
            "{name}: text embeds differ by {}",
            d.text
        );
        assert!(
            d.logits <= F32_TOLERANCE,
            "{name}: logits differ by {}",
            d.logits
        );
    }
}

#[test]
fn half_precision_stays_within_measured_bounds() {
    for name in FIXTURES {
        let dir = data_dir().join(name);
        for (dtype, bound) in HALF_PRECISION_BOUNDS {
            let (_, r) = compare(&dir, dtype);
            eprintln!(
                "{name} {dtype:?}: relative image {:.2e}, text {:.2e}, logits {:.2e}",
                r.image, r.text, r.logits
            );
            for (what, v) in [("image", r.image), ("text", r.text), ("logits", r.logits)] {
                assert!(v <= bound, "{name} {dtype:?} {what}: {v:.2e} > {bound:.0e}");
            }
        }
    }
}

#[test]
fn a_whole_model_directory_embeds_photo_files_like_transformers() {
    // Decoding and preprocessing included: the embeddings of the photo files end to end.
    let dir = data_dir().join("tiny-quickgelu");
    let refs = references(&dir);
    let model = ClipModel::load(&dir, &LoadOptions::default()).expect("load model dir");
    let images: Vec<_> = photos(&dir)
        .iter()
        .map(|p| cliptag_model::image_file::load_rgb(&data_dir().join("photos").join(p)))
        .collect::<Result<_, _>>()
        .expect("decode photos");
    let frames: Vec<_> = images.iter().map(|i| i.frame().expect("frame")).collect();
    let embeds = model.embed_frames(&frames).expect("embed");
    let diff = max_abs_diff(&embeds, &refs["image_embeds"]);
    let rel = diff / max_abs(&refs["image_embeds"]);
    eprintln!("photo files end to end: max diff {diff:.2e} (relative {rel:.2e})");
    // JPEG decoders differ by a level here and there; the preprocessing test bounds the
    // pixels, this bounds what that does to the embeddings.
    assert!(rel <= 2e-2, "relative difference {rel}");
}

/// Full-size shapes, regenerated on demand: `./x parity-full` writes the model and the
/// references with `transformers` and runs this with `CLIPTAG_PARITY_DIR` set.
#[test]
#[ignore = "needs ./x parity-full (torch and transformers) to write the references"]
fn full_size_model_matches_transformers() {
    let dir = std::env::var_os("CLIPTAG_PARITY_DIR").expect("set CLIPTAG_PARITY_DIR");
    let dir = Path::new(&dir);
    let (d, r) = compare(dir, DType::F32);
    eprintln!(
        "{}: f32 image {:.2e}, text {:.2e}, logits {:.2e}",
        dir.display(),
        d.image,
        d.text,
        d.logits
    );
    assert!(d.image <= F32_TOLERANCE && d.text <= F32_TOLERANCE && d.logits <= F32_TOLERANCE);
    assert!(r.image.is_finite());
    for (dtype, bound) in HALF_PRECISION_BOUNDS {
        let (_, r) = compare(dir, dtype);
        eprintln!(
            "{dtype:?}: relative image {:.2e}, text {:.2e}, logits {:.2e}",
            r.image, r.text, r.logits
        );
        assert!(r.image <= bound && r.text <= bound && r.logits <= bound);
    }
}

//! bf16 on the CPU against f32: image embeddings of the full ViT-B/32 vision tower, the
//! bundled model's zero-shot answers, and the plans (what `auto` and `bf16` become on
//! CPUs with and without bf16 dot products, and the f32 fallback they take).
//!
//! The bf16 runs use the bf16 plan whatever the CPU: bf16 dot products where it has
//! them, the portable kernels (the same numbers, slower) elsewhere. f32 is itself checked
//! against `transformers` by the parity tests.

mod common;

use std::collections::HashMap;
use std::path::Path;

use cliptag_model::accuracy::{Manifest, agreement, evaluate};
use cliptag_model::candle_core::{DType, Device, Tensor};
use cliptag_model::weights::Weights;
use cliptag_model::{Clip, ClipConfig, ClipModel, CpuFeatures, LoadOptions, MatmulPlan};
use common::*;

/// Relative L2 error of each bf16 image embedding against f32 (the figure the peers
/// benchmark reports for OpenVINO and PyTorch bf16).
const BF16_EMBEDDING_TOLERANCE: f32 = 1.5e-2;
/// Share of the held-out items whose bf16 top-1 prompt must be f32's.
const BF16_MIN_AGREEMENT: f64 = 0.99;

/// ViT-B/32's vision tower and projection as `openai/clip-vit-base-patch32` has them; a
/// one-layer text tower, which this file does not test.
const VIT_B_32: &str = r#"{
    "projection_dim": 512,
    "logit_scale_init_value": 2.6592,
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"},
    "text_config": {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu"}
}"#;

/// Deterministic values with mean 0 and standard deviation `std` (uniform).
fn uniform(len: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let half_width = std * 3f32.sqrt();
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * half_width
        })
        .collect()
}

/// Random weights for every tensor of a CLIP checkpoint, scaled as `transformers`
/// initializes them (0.02 for matrices and embeddings, unit layer norms).
fn random_checkpoint(config: &ClipConfig) -> HashMap<String, Tensor> {
    let mut tensors = HashMap::new();
    let mut seed = 1u64;
    let mut add = |name: String, shape: &[usize], std: f32, mean: f32| {
        seed += 1;
        let len = shape.iter().product();
        let values: Vec<f32> = uniform(len, std, seed)
            .into_iter()
            .map(|v| v + mean)
            .collect();
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
        tensors.insert(name, tensor);
    };
    let mut encoder = |prefix: &str, d: usize, inner: usize, layers: usize| {
        for i in 0..layers {
            let p = format!("{prefix}.encoder.layers.{i}");
            for norm in ["layer_norm1", "layer_norm2"] {
                add(format!("{p}.{norm}.weight"), &[d], 0.0, 1.0);
                add(format!("{p}.{norm}.bias"), &[d], 0.0, 0.0);
            }
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                add(format!("{p}.self_attn.{proj}.weight"), &[d, d], 0.02, 0.0);
                add(format!("{p}.self_attn.{proj}.bias"), &[d], 0.02, 0.0);
            }
            add(format!("{p}.mlp.fc1.weight"), &[inner, d], 0.02, 0.0);
            add(format!("{p}.mlp.fc1.bias"), &[inner], 0.02, 0.0);
            add(format!("{p}.mlp.fc2.weight"), &[d, inner], 0.02, 0.0);
            add(format!("{p}.mlp.fc2.bias"), &[d], 0.02, 0.0);
        }
    };
    let (v, t) = (&config.vision, &config.text);
    encoder(
        "vision_model",
        v.hidden_size,
        v.intermediate_size,
        v.num_hidden_layers,
    );
    encoder(
        "text_model",
        t.hidden_size,
        t.intermediate_size,
        t.num_hidden_layers,
    );
    let d = v.hidden_size;
    add(
        "vision_model.embeddings.class_embedding".into(),
        &[d],
        0.02,
        0.0,
    );
    add(
        "vision_model.embeddings.patch_embedding.weight".into(),
        &[d, v.num_channels, v.patch_size, v.patch_size],
        0.02,
        0.0,
    );
    add(
        "vision_model.embeddings.position_embedding.weight".into(),
        &[v.num_positions(), d],
        0.02,
        0.0,
    );
    for norm in ["pre_layrnorm", "post_layernorm"] {
        add(format!("vision_model.{norm}.weight"), &[d], 0.0, 1.0);
        add(format!("vision_model.{norm}.bias"), &[d], 0.0, 0.0);
    }
    add(
        "visual_projection.weight".into(),
        &[config.projection_dim, d],
        0.02,
        0.0,
    );
    let dt = t.hidden_size;
    add(
        "text_model.embeddings.token_embedding.weight".into(),
        &[t.vocab_size, dt],
        0.02,
        0.0,
    );
    add(
        "text_model.embeddings.position_embedding.weight".into(),
        &[t.max_position_embeddings, dt],
        0.02,
        0.0,
    );
    add("text_model.final_layer_norm.weight".into(), &[dt], 0.0, 1.0);
    add("text_model.final_layer_norm.bias".into(), &[dt], 0.0, 0.0);
    add(
        "text_projection.weight".into(),
        &[config.projection_dim, dt],
        0.02,
        0.0,
    );
    add("logit_scale".into(), &[], 0.0, 2.6592);
    tensors
}

/// Per-row `|a - b| / |b|` (L2), the worst row.
fn worst_relative_l2(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_vec2::<f32>().expect("a");
    let b = b.to_vec2::<f32>().expect("b");
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let diff: f32 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum();
            let norm: f32 = y.iter().map(|q| q * q).sum();
            (diff / norm).sqrt()
        })
        .fold(0.0, f32::max)
}

fn load(dir: &Path, config: &ClipConfig, plan: Option<MatmulPlan>) -> Clip {
    let weights = Weights::from_dir(dir, DType::F32, &Device::Cpu)
        .expect("weights")
        .with_plan(plan);
    Clip::load(config, &weights).expect("network")
}

#[test]
fn bf16_image_embeddings_of_vit_b_32_stay_within_tolerance_of_f32() {
    let config = ClipConfig::from_json_str(VIT_B_32).expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    cliptag_model::candle_core::safetensors::save(
        &random_checkpoint(&config),
        dir.path().join("model.safetensors"),
    )
    .expect("save");
    let s = config.vision.image_size;
    let images = 2;
    let pixels = Tensor::from_vec(
        uniform(images * 3 * s * s, 1.0, 99),
        (images, 3, s, s),
        &Device::Cpu,
    )
    .expect("pixels");

    let f32_net = load(dir.path(), &config, None);
    assert_eq!(f32_net.dtype(), DType::F32);
    let want = f32_net.image_features(&pixels).expect("f32 features");
    drop(f32_net);

    let bf16_net = load(dir.path(), &config, Some(MatmulPlan::cpu_bf16()));
    assert_eq!(bf16_net.dtype(), DType::BF16);
    let got = bf16_net.image_features(&pixels).expect("bf16 features");
    let rel = worst_relative_l2(&got, &want);
    let max_rel = max_abs_diff(&got, &want) / max_abs(&want);
    eprintln!(
        "ViT-B/32 bf16 vs f32 ({}): relative L2 error {rel:.2e}, max |diff| / max |f32| {max_rel:.2e}",
        CpuFeatures::detected().names()
    );
    assert!(
        rel.is_finite() && rel <= BF16_EMBEDDING_TOLERANCE,
        "{rel:.2e}"
    );
    // And bf16 does round: were it f32 in disguise, the error would be ~1e-6.
    assert!(rel > 1e-4, "bf16 should differ from f32: {rel:.2e}");
}

#[test]
fn bf16_zero_shot_answers_agree_with_f32_on_the_heldout_set() {
    let manifest =
        Manifest::load(&data_dir().join("heldout/manifest.json")).expect("held-out manifest");
    let open = |plan| {
        ClipModel::bundled(&LoadOptions {
            plan,
            ..LoadOptions::default()
        })
        .expect("bundled model")
    };
    let f32_results = evaluate(&open(None), &manifest, 32).expect("f32");
    let bf16_model = open(Some(MatmulPlan::cpu_bf16()));
    assert_eq!(bf16_model.network.dtype(), DType::BF16);
    let bf16_results = evaluate(&bf16_model, &manifest, 32).expect("bf16");
    let (same, total) = agreement(&bf16_results, &f32_results);
    eprintln!("bf16 top-1 = f32 top-1 on {same} of {total} held-out items");
    assert!(total > 200, "the held-out set has {total} items");
    assert!(
        same as f64 >= BF16_MIN_AGREEMENT * total as f64,
        "{same} of {total}"
    );
}

#[test]
fn auto_and_bf16_follow_the_cpu() {
    let none = CpuFeatures::none();
    let avx512 = CpuFeatures {
        avx512f: true,
        ..none
    };
    let bf16 = CpuFeatures {
        avx512_bf16: true,
        ..avx512
    };
    let cpu = Device::Cpu;
    // bf16 where the CPU has bf16 dot products: packed bf16, reported as bf16.
    let plan = MatmulPlan::new(DType::BF16, &cpu, bf16);
    assert_eq!(plan, MatmulPlan::cpu_bf16());
    assert!(plan.fallback_reason(DType::BF16, bf16).is_none());
    // Without them, f32, on packed weights where AVX-512 is, with a reason to log.
    for (features, packed) in [(avx512, true), (none, false)] {
        let plan = MatmulPlan::new(DType::BF16, &cpu, features);
        assert_eq!(plan.computes, DType::F32);
        assert_eq!(plan.tensors, DType::F32);
        assert_eq!(plan.packed.is_some(), packed);
        let reason = plan
            .fallback_reason(DType::BF16, features)
            .expect("a reason");
        assert!(reason.contains("avx512_bf16"), "{reason}");
    }
    // `auto` on the CPU is bf16 exactly where bf16 is native.
    let auto = cliptag_model::parse_dtype_for("auto", &cpu).expect("auto");
    let expected = if CpuFeatures::detected().native_bf16() {
        DType::BF16
    } else {
        DType::F32
    };
    assert_eq!(auto, expected);
}

#[test]
fn the_fallback_without_avx512_gives_the_packed_kernels_numbers() {
    // The bundled model three ways: this CPU's plan in f32, f32 planned as for a CPU
    // without AVX-512 (no packing: the linear layers on the generic matmul), and bf16
    // asked for on that CPU (which falls back to the same f32). Attention and the other
    // kernels follow the CPU itself; `./x test` runs this file again with
    // CLIPTAG_MAX_CPU_ISA=portable for the whole fallback path.
    let weights = || {
        Weights::from_static(
            Path::new("cliptag-tiny"),
            bundled_weights(),
            DType::F32,
            &Device::Cpu,
        )
        .expect("weights")
    };
    let config = ClipConfig::from_json_str(cliptag_model::bundled::CONFIG).expect("config");
    let s = config.vision.image_size;
    let pixels = Tensor::from_vec(uniform(3 * 3 * s * s, 1.0, 5), (3, 3, s, s), &Device::Cpu)
        .expect("pixels");
    let native = Clip::load(&config, &weights()).expect("native");
    let plain =
        Clip::load(&config, &weights().with_cpu_features(CpuFeatures::none())).expect("plain");
    assert_eq!(plain.plan().packed, None);
    let want = native.image_features(&pixels).expect("native features");
    let got = plain.image_features(&pixels).expect("plain features");
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= 1e-4, "{diff}");
    let bf16_weights = Weights::from_static(
        Path::new("cliptag-tiny"),
        bundled_weights(),
        DType::BF16,
        &Device::Cpu,
    )
    .expect("weights")
    .with_cpu_features(CpuFeatures::none());
    let fallback = Clip::load(&config, &bf16_weights).expect("fallback");
    assert_eq!(fallback.dtype(), DType::F32);
    let diff = max_abs_diff(&fallback.image_features(&pixels).expect("features"), &want);
    assert!(diff <= 1e-4, "{diff}");
}

fn bundled_weights() -> &'static [u8] {
    cliptag_model::bundled::WEIGHTS
}

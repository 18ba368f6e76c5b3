//! Checkpoint loading: the published configs, precisions, shards, and every way a
//! checkpoint can be broken, each an error that names the tensor and the file.

mod common;

use std::collections::HashMap;
use std::path::Path;

use cliptag_model::candle_core::{DType, Device, Tensor};
use cliptag_model::{Clip, ClipConfig, ClipModel, LoadOptions, ModelError, PreprocessConfig};
use common::*;

#[test]
fn published_openai_configs_load_with_transformers_values() {
    let dir = data_dir().join("hf-configs");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("JSON");
    let expected = expected.as_object().expect("object");
    assert!(expected.len() >= 4, "{expected:?}");
    let mut checked = 0;
    for (file, want) in expected.iter().filter(|(k, _)| k.ends_with(".config.json")) {
        checked += 1;
        let cfg = ClipConfig::from_file(&dir.join(file)).expect("config loads");
        let t = &cfg.text;
        let v = &cfg.vision;
        let got = [
            ("text.hidden_size", t.hidden_size as f64),
            ("text.intermediate_size", t.intermediate_size as f64),
            ("text.num_hidden_layers", t.num_hidden_layers as f64),
            ("text.num_attention_heads", t.num_attention_heads as f64),
            (
                "text.max_position_embeddings",
                t.max_position_embeddings as f64,
            ),
            ("text.vocab_size", t.vocab_size as f64),
            ("text.eos_token_id", t.eos_token_id.map_or(-1.0, f64::from)),
            ("text.layer_norm_eps", t.layer_norm_eps),
            ("vision.hidden_size", v.hidden_size as f64),
            ("vision.intermediate_size", v.intermediate_size as f64),
            ("vision.num_hidden_layers", v.num_hidden_layers as f64),
            ("vision.num_attention_heads", v.num_attention_heads as f64),
            ("vision.image_size", v.image_size as f64),
            ("vision.patch_size", v.patch_size as f64),
            ("vision.layer_norm_eps", v.layer_norm_eps),
            ("projection_dim", cfg.projection_dim as f64),
            ("logit_scale_init_value", cfg.logit_scale_init_value),
        ];
        for (key, value) in got {
            let (section, field) = key.split_once('.').unwrap_or(("", key));
            let want_value = if section.is_empty() {
                &want[field]
            } else {
                &want[section][field]
            };
            let want_value = want_value
                .as_f64()
                .unwrap_or_else(|| panic!("{file}: expected.json lacks {key}"));
            assert!(
                (want_value - value).abs() <= 1e-9 * want_value.abs().max(1.0),
                "{file}: {key} is {value}, transformers reads {want_value}"
            );
        }
        for (section, act) in [("text", t.hidden_act), ("vision", v.hidden_act)] {
            let want_act = want[section]["hidden_act"].as_str().expect("hidden_act");
            assert_eq!(
                serde_json::to_value(want_act).ok(),
                Some(serde_json::Value::String(want_act.into()))
            );
            let parsed: cliptag_model::config::Activation =
                serde_json::from_value(serde_json::Value::String(want_act.into())).expect("act");
            assert_eq!(parsed, act, "{file}: {section} hidden_act");
        }
    }
    assert_eq!(checked, 4, "the four published configs");
}

#[test]
fn legacy_preprocessor_configs_read_as_transformers_reads_them() {
    use cliptag_model::preprocess::{Filter, ResizeTarget};
    let dir = data_dir().join("hf-configs");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("JSON");
    for size in [224usize, 336] {
        let file = format!("preprocessor_config.legacy-{size}.json");
        let want = &expected[&file];
        let cfg = PreprocessConfig::from_file(&dir.join(&file), 224).expect("parses");
        let edge = want["size"]["shortest_edge"]
            .as_u64()
            .expect("shortest_edge") as usize;
        assert_eq!(cfg.size, ResizeTarget::ShortestEdge(edge), "{file}");
        let crop = (
            want["crop_size"]["width"].as_u64().expect("width") as usize,
            want["crop_size"]["height"].as_u64().expect("height") as usize,
        );
        assert_eq!(cfg.crop_size, crop, "{file}");
        assert_eq!(cfg.resample, Filter::Bicubic);
        let floats = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .expect("list")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        };
        assert_eq!(
            cfg.image_mean.to_vec(),
            floats(&want["image_mean"]),
            "{file}"
        );
        assert_eq!(cfg.image_std.to_vec(), floats(&want["image_std"]), "{file}");
        assert_eq!(Some(cfg.rescale_factor), want["rescale_factor"].as_f64());
    }
}

fn outputs(dir: &Path, dtype: DType) -> (Tensor, Tensor) {
    let refs = references(&data_dir().join("tiny-quickgelu"));
    let net = Clip::from_dir(dir, dtype, &Device::Cpu).expect("load");
    let pixels = reference_pixels(&data_dir().join("tiny-quickgelu"), &refs);
    (
        net.image_features(&pixels).expect("image"),
        net.text_features(&reference_ids(&refs)).expect("text"),
    )
}

/// Rewrites `model.safetensors` of a copied fixture through `edit`.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors =
        cliptag_model::candle_core::safetensors::load(&path, &Device::Cpu).expect("read");
    edit(&mut tensors);
    cliptag_model::candle_core::safetensors::save(&tensors, &path).expect("write");
}

#[test]
fn weights_stored_in_f16_and_bf16_load_and_convert() {
    let original = data_dir().join("tiny-quickgelu");
    let (image, text) = outputs(&original, DType::F32);
    for stored in [DType::F16, DType::BF16] {
        let copy = copy_dir(&original);
        rewrite(copy.path(), |t| {
            for v in t.values_mut() {
                *v = v.to_dtype(stored).expect("convert");
            }
        });
        // Loaded back into f32: the only error is the rounding of the stored weights.
        let (i2, t2) = outputs(copy.path(), DType::F32);
        let rel = max_abs_diff(&image, &i2) / max_abs(&image);
        let rel_t = max_abs_diff(&text, &t2) / max_abs(&text);
        eprintln!("stored {stored:?}, run f32: relative image {rel:.2e}, text {rel_t:.2e}");
        assert!(rel < 5e-2 && rel_t < 5e-2);
    }
}

#[test]
fn a_sharded_checkpoint_equals_the_single_file() {
    let original = data_dir().join("tiny-quickgelu");
    let (image, text) = outputs(&original, DType::F32);
    let copy = copy_dir(&original);
    let all = cliptag_model::candle_core::safetensors::load(
        copy.path().join("model.safetensors"),
        &Device::Cpu,
    )
    .expect("read");
    std::fs::remove_file(copy.path().join("model.safetensors")).expect("remove");
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(3)).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", i + 1);
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        cliptag_model::candle_core::safetensors::save(&part, copy.path().join(&file))
            .expect("write shard");
        for n in chunk {
            weight_map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        copy.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .expect("write index");
    let (i2, t2) = outputs(copy.path(), DType::F32);
    assert_eq!(max_abs_diff(&image, &i2), 0.0);
    assert_eq!(max_abs_diff(&text, &t2), 0.0);
}

fn load_err(dir: &Path) -> String {
    match Clip::from_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_tensor_is_named_with_the_file() {
    let copy = copy_dir(&data_dir().join("tiny-quickgelu"));
    let victim = "vision_model.encoder.layers.1.mlp.fc2.bias";
    rewrite(copy.path(), |t| {
        t.remove(victim).expect("tensor exists");
    });
    let msg = load_err(copy.path());
    assert!(
        msg.contains(victim) && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn a_wrong_shape_is_named_with_the_file() {
    let copy = copy_dir(&data_dir().join("tiny-quickgelu"));
    let victim = "text_model.encoder.layers.0.self_attn.k_proj.weight";
    rewrite(copy.path(), |t| {
        t.insert(
            victim.into(),
            Tensor::zeros((3, 5), DType::F32, &Device::Cpu).expect("zeros"),
        );
    });
    let msg = load_err(copy.path());
    assert!(
        msg.contains(victim) && msg.contains("model.safetensors") && msg.contains("[3, 5]"),
        "{msg}"
    );
}

#[test]
fn a_wrong_dtype_is_named_with_the_file() {
    let copy = copy_dir(&data_dir().join("tiny-quickgelu"));
    rewrite(copy.path(), |t| {
        let v = t["logit_scale"].to_dtype(DType::I64).expect("i64");
        t.insert("logit_scale".into(), v);
    });
    let msg = load_err(copy.path());
    assert!(msg.contains("logit_scale") && msg.contains("I64"), "{msg}");
}

#[test]
fn truncated_and_garbage_files_are_errors_naming_the_file() {
    let copy = copy_dir(&data_dir().join("tiny-quickgelu"));
    let path = copy.path().join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    for cut in [bytes.len() - 1, bytes.len() / 2, 100, 7, 0] {
        std::fs::write(&path, &bytes[..cut]).expect("truncate");
        let msg = load_err(copy.path());
        assert!(msg.contains("model.safetensors"), "cut at {cut}: {msg}");
    }
    std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").expect("garbage");
    let msg = load_err(copy.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn missing_files_and_directories_are_errors_naming_them() {
    let copy = copy_dir(&data_dir().join("tiny-quickgelu"));
    std::fs::remove_file(copy.path().join("model.safetensors")).expect("remove");
    let msg = load_err(copy.path());
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    std::fs::remove_file(copy.path().join("config.json")).expect("remove");
    let msg = load_err(copy.path());
    assert!(msg.contains("config.json"), "{msg}");
    let err = ClipModel::load(Path::new("/nonexistent/model"), &LoadOptions::default())
        .expect_err("no such dir");
    assert!(matches!(err, ModelError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
}

#[test]
fn a_broken_config_is_an_error_naming_the_file() {
    let copy = copy_dir(&data_dir().join("tiny-quickgelu"));
    std::fs::write(
        copy.path().join("config.json"),
        "{\"text_config\": {\"hidden_size\": \"big\"}}",
    )
    .expect("write");
    let msg = load_err(copy.path());
    assert!(
        msg.contains("config.json") && msg.contains("hidden_size"),
        "{msg}"
    );
}

/// The parity tests must be able to fail: a small change to any one kind of layer moves
/// the outputs far past the f32 tolerance.
#[test]
fn a_perturbed_layer_breaks_parity() {
    let original = data_dir().join("tiny-quickgelu");
    let (image, text) = outputs(&original, DType::F32);
    for victim in [
        "vision_model.embeddings.class_embedding",
        "vision_model.pre_layrnorm.bias",
        "vision_model.encoder.layers.1.self_attn.v_proj.bias",
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        "vision_model.post_layernorm.weight",
        "visual_projection.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.1.layer_norm2.weight",
        "text_model.encoder.layers.0.self_attn.q_proj.weight",
        "text_model.final_layer_norm.bias",
        "text_projection.weight",
    ] {
        let copy = copy_dir(&original);
        rewrite(copy.path(), |t| {
            let v = (&t[victim] * 1.02).and_then(|v| v + 0.01).expect("perturb");
            t.insert(victim.into(), v);
        });
        let (i2, t2) = outputs(copy.path(), DType::F32);
        let moved = max_abs_diff(&image, &i2).max(max_abs_diff(&text, &t2));
        assert!(
            moved > 1e-3,
            "perturbing {victim} moved the outputs by only {moved:.1e}"
        );
    }
}

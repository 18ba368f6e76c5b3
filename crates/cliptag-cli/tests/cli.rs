//! The command-line contract: output formats, agreement with `transformers`' references,
//! and one clear line on stderr for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cliptag_model::candle_core::{Device, Tensor};
use serde_json::Value;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cliptag-model/tests/data")
}

fn model() -> PathBuf {
    data().join("tiny-quickgelu")
}

fn photo(name: &str) -> PathBuf {
    data().join("photos").join(name)
}

fn cliptag(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cliptag"))
        .args(args)
        .output()
        .expect("run cliptag")
}

fn json_ok(args: &[&str]) -> Value {
    let out = cliptag(args);
    assert!(
        out.status.success(),
        "cliptag {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect()
}

fn references() -> std::collections::HashMap<String, Tensor> {
    cliptag_model::candle_core::safetensors::load(
        model().join("reference.safetensors"),
        &Device::Cpu,
    )
    .expect("references")
}

fn reference_row(name: &str, row: usize) -> Vec<f32> {
    references()[name]
        .get(row)
        .and_then(|r| r.to_vec1::<f32>())
        .expect("row")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Index of a text or photo in the fixture's reference order.
fn reference_index(key: &str, value: &str) -> usize {
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(model().join("reference.json")).expect("reference.json"),
    )
    .expect("JSON");
    meta[key]
        .as_array()
        .expect("list")
        .iter()
        .position(|v| v.as_str() == Some(value))
        .expect("present")
}

#[test]
fn embed_prints_projected_features_like_transformers() {
    let m = model();
    // f32: what the references are (auto is bf16 on CPUs with bf16 dot products).
    let out = json_ok(&[
        "embed",
        "--dtype",
        "f32",
        "--model",
        m.to_str().expect("utf-8"),
        "--image",
        photo("chelsea.png").to_str().expect("utf-8"),
        "--image",
        photo("rocket.jpg").to_str().expect("utf-8"),
        "--text",
        "a photo of a cat",
        "--text",
        "",
    ]);
    let images = matrix(&out["image_embeds"]);
    let texts = matrix(&out["text_embeds"]);
    assert_eq!((images.len(), texts.len()), (2, 2));
    for (row, name) in images.iter().zip(["chelsea.png", "rocket.jpg"]) {
        let want = reference_row("image_embeds", reference_index("photos", name));
        let d = max_diff(row, &want);
        assert!(d <= 1e-4, "{name}: image embedding differs by {d}");
    }
    for (row, text) in texts.iter().zip(["a photo of a cat", ""]) {
        let want = reference_row("text_embeds", reference_index("texts", text));
        let d = max_diff(row, &want);
        assert!(d <= 1e-4, "{text:?}: text embedding differs by {d}");
    }
}

#[test]
fn embed_omits_the_key_of_a_kind_not_given() {
    let m = model();
    let out = json_ok(&[
        "embed",
        "--model",
        m.to_str().expect("utf-8"),
        "--text",
        "a dog",
    ]);
    let keys: Vec<&String> = out.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["text_embeds"]);
    let out = json_ok(&[
        "embed",
        "--model",
        m.to_str().expect("utf-8"),
        "--image",
        photo("coffee.png").to_str().expect("utf-8"),
    ]);
    let keys: Vec<&String> = out.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["image_embeds"]);
}

/// `--format` hands the image over as a raw frame of that format: packed RGB layouts give
/// the RGB embedding exactly, 4:2:0 YUV a close one (chroma subsampling loses a little),
/// and a format the element does not take is refused with the list of those it does.
#[test]
fn embed_takes_images_as_raw_frames_of_any_format() {
    let m = model();
    let m = m.to_str().expect("utf-8");
    let image = photo("chelsea.png");
    let image = image.to_str().expect("utf-8");
    let embed = |format: &str| {
        matrix(&json_ok(&["embed", "--model", m, "--image", image, "--format", format])["image_embeds"])
            .remove(0)
    };
    let rgb = embed("RGB");
    for packed in ["BGRx", "ARGB", "BGR"] {
        assert_eq!(embed(packed), rgb, "{packed}");
    }
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    };
    for yuv in ["I420", "NV12"] {
        let e = embed(yuv);
        assert_ne!(e, rgb, "{yuv} went through no YUV conversion");
        assert!(
            cosine(&e, &rgb) > 0.99,
            "{yuv}: cosine {}",
            cosine(&e, &rgb)
        );
    }
    let out = cliptag(&["embed", "--model", m, "--image", image, "--format", "YUY2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("\"YUY2\"") && err.contains("NV12"),
        "{err}"
    );
}

#[test]
fn classify_ranks_labels_by_softmax_probability() {
    let m = model();
    let out = json_ok(&[
        "classify",
        "--model",
        m.to_str().expect("utf-8"),
        "--image",
        photo("chelsea.png").to_str().expect("utf-8"),
        "--labels",
        "cat, dog,rocket",
        "--label",
        "a cup, with coffee",
        "--template",
        "a photo of a {}",
        "--json",
    ]);
    let labels = out["labels"].as_array().expect("labels");
    let names: Vec<&str> = labels
        .iter()
        .map(|l| l["label"].as_str().expect("label"))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["a cup, with coffee", "cat", "dog", "rocket"]);
    let scores: Vec<f64> = labels
        .iter()
        .map(|l| l["score"].as_f64().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not best first: {scores:?}"
    );
    let total: f64 = scores.iter().sum();
    assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
    // The same numbers from the embeddings: softmax of exp(logit_scale) * cosine.
    let emb = json_ok(&[
        "embed",
        "--model",
        m.to_str().expect("utf-8"),
        "--image",
        photo("chelsea.png").to_str().expect("utf-8"),
        "--text",
        "a photo of a cat",
        "--text",
        "a photo of a dog",
        "--text",
        "a photo of a rocket",
        "--text",
        "a photo of a a cup, with coffee",
    ]);
    let image = &matrix(&emb["image_embeds"])[0];
    let scale = 2.6592f64.exp();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let logits: Vec<f64> = matrix(&emb["text_embeds"])
        .iter()
        .map(|t| {
            let dot: f64 = t
                .iter()
                .zip(image)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            scale * dot / (norm(t) * norm(image))
        })
        .collect();
    let z: f64 = logits.iter().map(|l| l.exp()).sum();
    for (label, want) in ["cat", "dog", "rocket", "a cup, with coffee"]
        .iter()
        .zip(logits.iter().map(|l| l.exp() / z))
    {
        let got = labels
            .iter()
            .find(|l| l["label"] == *label)
            .and_then(|l| l["score"].as_f64())
            .expect("label present");
        assert!((got - want).abs() < 1e-4, "{label}: {got} vs {want}");
    }
}

#[test]
fn classify_prints_a_table_without_json() {
    let m = model();
    let out = cliptag(&[
        "classify",
        "--model",
        m.to_str().expect("utf-8"),
        "--image",
        photo("coffee.png").to_str().expect("utf-8"),
        "--labels",
        "cup,cat",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with("cup") || l.ends_with("cat")),
        "{text}"
    );
}

#[test]
fn preprocess_writes_pixel_values_and_the_crop() {
    let m = model();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("pixels.safetensors");
    let png = dir.path().join("crop.png");
    let status = cliptag(&[
        "preprocess",
        "--model",
        m.to_str().expect("utf-8"),
        "--image",
        photo("chelsea.png").to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--png",
        png.to_str().expect("utf-8"),
    ]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let tensors = cliptag_model::candle_core::safetensors::load(&out, &Device::Cpu).expect("read");
    let pixels = &tensors["pixel_values"];
    assert_eq!(pixels.dims(), [1, 3, 224, 224]);
    // chelsea.png is byte-identical to transformers' crop, so the values are too.
    let refs = references();
    let crop = refs["pixels_u8.chelsea"]
        .flatten_all()
        .and_then(|t| t.to_vec1::<u8>())
        .expect("crop bytes");
    let image = image::open(&png).expect("png").to_rgb8();
    assert_eq!(image.dimensions(), (224, 224));
    let plane = 224 * 224;
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            assert_eq!(px[c], crop[c * plane + i], "pixel {i} channel {c}");
        }
    }
    let values = pixels
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("values");
    let (mean, std) = (
        cliptag_model::preprocess::CLIP_MEAN,
        cliptag_model::preprocess::CLIP_STD,
    );
    for c in 0..3 {
        let i = c * plane + 1000;
        let want = (f32::from(crop[i]) / 255.0 - mean[c] as f32) / std[c] as f32;
        assert_eq!(values[i], want);
    }
}

/// Runs a command that must fail and returns its stderr, checked to be one line.
fn fails(args: &[&str]) -> String {
    let out = cliptag(args);
    assert!(!out.status.success(), "cliptag {args:?} succeeded");
    let err = String::from_utf8(out.stderr).expect("utf-8");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(out.stdout.is_empty(), "printed to stdout on failure");
    err
}

#[test]
fn bad_input_is_one_clear_line_and_a_failure() {
    let m = model();
    let m = m.to_str().expect("utf-8");
    let chelsea = photo("chelsea.png");
    let chelsea = chelsea.to_str().expect("utf-8");
    let err = fails(&[
        "classify",
        "--model",
        "/no/such/model",
        "--image",
        chelsea,
        "--labels",
        "a",
    ]);
    assert!(err.contains("/no/such/model"), "{err}");
    let err = fails(&[
        "classify",
        "--model",
        m,
        "--image",
        "/no/such.png",
        "--labels",
        "a",
    ]);
    assert!(err.contains("/no/such.png"), "{err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "cause said twice: {err}"
    );
    let garbage = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(garbage.path(), b"not an image").expect("write");
    let garbage = garbage.path().to_str().expect("utf-8").to_string();
    let err = fails(&[
        "classify", "--model", m, "--image", &garbage, "--labels", "a",
    ]);
    assert!(err.contains(&garbage) && err.contains("decode"), "{err}");
    let err = fails(&[
        "classify", "--model", m, "--image", chelsea, "--labels", " , ",
    ]);
    assert!(err.contains("no labels"), "{err}");
    let err = fails(&[
        "classify", "--model", m, "--image", chelsea, "--labels", "a,b,a",
    ]);
    assert!(err.contains("twice"), "{err}");
    let err = fails(&[
        "classify",
        "--model",
        m,
        "--image",
        chelsea,
        "--labels",
        "a",
        "--template",
        "x",
    ]);
    assert!(err.contains("template"), "{err}");
    let err = fails(&["embed", "--model", m]);
    assert!(err.contains("nothing to embed"), "{err}");
    let err = fails(&["embed", "--model", m, "--text", "a", "--device", "tpu"]);
    assert!(err.contains("tpu"), "{err}");
}

/// `cliptag bench --json` on the test model at `batches`, no minimum time, plus `extra`.
fn quick_bench(batches: &str, extra: &[&str]) -> Value {
    let m = model();
    let mut args = vec![
        "bench",
        "--model",
        m.to_str().expect("utf-8"),
        "--batch",
        batches,
        "--seconds",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    json_ok(&args)
}

#[test]
fn bench_reports_throughput_and_preprocessing_as_json() {
    let m = model();
    let out = quick_bench("1,2", &["--iters", "1", "--preprocess", "64x48"]);
    let results = out["results"].as_array().expect("results");
    let batches: Vec<u64> = results
        .iter()
        .map(|r| r["batch"].as_u64().expect("batch"))
        .collect();
    assert_eq!(batches, [1, 2]);
    assert!(
        results
            .iter()
            .all(|r| r["images_per_s"].as_f64().is_some_and(|x| x > 0.0))
    );
    let formats: Vec<&str> = out["preprocessing"]
        .as_array()
        .expect("preprocessing")
        .iter()
        .map(|p| p["format"].as_str().expect("format"))
        .collect();
    assert_eq!(formats, ["BGRx", "NV12", "I420"]);
    let err = fails(&[
        "bench",
        "--model",
        m.to_str().expect("utf-8"),
        "--preprocess",
        "64",
    ]);
    assert!(err.contains("WIDTHxHEIGHT"), "{err}");
}

#[test]
fn bench_profile_breaks_the_forward_pass_into_stages() {
    let out = quick_bench("2", &["--iters", "2", "--profile"]);
    let stages = out["results"][0]["profile"].as_array().expect("profile");
    let calls = |name: &str| {
        stages
            .iter()
            .find(|s| s["stage"] == name)
            .and_then(|s| s["calls_per_batch"].as_f64())
            .unwrap_or_else(|| panic!("no stage {name:?} in {out}"))
    };
    // Every block has two norms and one of each projection; the residual adds are made
    // in the output projection's and fc2's stores.
    let blocks = calls("qkv projection");
    assert!(blocks >= 1.0, "{out}");
    for name in [
        "attention",
        "output projection + residual",
        "mlp fc1 + activation",
        "mlp fc2 + residual",
    ] {
        assert_eq!(calls(name), blocks, "{name}");
    }
    assert_eq!(calls("layer norm"), 2.0 * blocks);
    assert_eq!(calls("patch embedding"), 1.0);
    let ms: Vec<f64> = stages
        .iter()
        .map(|s| s["ms_per_batch"].as_f64().expect("ms"))
        .collect();
    assert!(ms.windows(2).all(|w| w[0] >= w[1]), "longest first: {ms:?}");
    let shares: f64 = stages.iter().filter_map(|s| s["share"].as_f64()).sum();
    assert!((shares - 1.0).abs() < 1e-6, "shares sum to {shares}");
}

/// A frame of `videotestsrc pattern=ball` rendered by GStreamer (from the held-out set).
fn ball_frame() -> PathBuf {
    let dir = data().join("heldout");
    let entries = std::fs::read_dir(&dir).expect("held-out set");
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pattern-ball-"))
        })
        .min()
        .expect("a ball frame in the held-out set")
}

#[test]
fn classify_with_the_bundled_model_ranks_the_ball_first() {
    let frame = ball_frame();
    let v = json_ok(&[
        "classify",
        "--image",
        frame.to_str().expect("utf-8 path"),
        "--labels",
        "smpte color bars,tv static,a checkerboard,concentric circles,a moving ball,a pinwheel",
        "--json",
    ]);
    let labels = v["labels"].as_array().expect("labels");
    assert_eq!(labels[0]["label"], "a moving ball", "{v}");
    let total: f64 = labels.iter().filter_map(|l| l["score"].as_f64()).sum();
    assert!((total - 1.0).abs() < 1e-4, "softmax sums to {total}");
}

#[test]
fn eval_reports_every_task_of_a_manifest() {
    let manifest = data().join("heldout/manifest.json");
    let v = json_ok(&[
        "eval",
        "--manifest",
        manifest.to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert_eq!(v["model"], "cliptag-tiny (bundled)");
    let tasks = v["tasks"].as_array().expect("tasks");
    let names: Vec<&str> = tasks.iter().filter_map(|t| t["task"].as_str()).collect();
    assert_eq!(
        names,
        ["pattern", "colour", "shape_colour", "shape", "zero_shot"]
    );
    for t in tasks {
        let (correct, total) = (t["correct"].as_u64(), t["total"].as_u64());
        let misses = t["misses"].as_array().map(Vec::len);
        assert_eq!(correct.zip(misses).map(|(c, m)| c + m as u64), total, "{t}");
    }
}

#[test]
fn eval_names_a_missing_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("m.json");
    std::fs::write(
        &manifest,
        r#"{"tasks": [{"name": "t", "prompts": ["a", "b"], "items": [{"file": "gone.png", "answer": 0}]}]}"#,
    )
    .expect("write manifest");
    let err = fails(&["eval", "--manifest", manifest.to_str().expect("utf-8")]);
    assert!(err.contains("gone.png"), "{err}");
}

//! Zero-shot tagging of image files with the model crate as a library.
//!
//! ```text
//! cargo run --release -p cliptag-model --example zero_shot -- MODEL_DIR IMAGE... -- LABEL...
//! ```
//!
//! Prints, for every image, its labels ranked by probability (softmax of the logit scale
//! times cosine similarity, prompts "a photo of a {label}").

use std::path::Path;

use cliptag_model::{ClipModel, LoadOptions, image_file};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zero_shot: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("usage: zero_shot MODEL_DIR IMAGE... -- LABEL... (labels after a lone --)")?;
    let (paths, labels) = (&args[..split], &args[split + 1..]);
    let (model_dir, images) = paths.split_first().ok_or("no model directory given")?;
    if images.is_empty() || labels.is_empty() {
        return Err("give at least one image and one label".into());
    }
    let model = ClipModel::load(Path::new(model_dir), &LoadOptions::default())?;
    let prompts: Vec<String> = labels.iter().map(|l| format!("a photo of a {l}")).collect();
    let decoded = images
        .iter()
        .map(|p| image_file::load_rgb(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let frames = decoded
        .iter()
        .map(|i| i.frame())
        .collect::<Result<Vec<_>, _>>()?;
    for (path, scores) in images.iter().zip(model.classify(&frames, &prompts)?) {
        let mut ranked: Vec<(&String, f32)> = labels.iter().zip(scores).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("{path}");
        for (label, score) in ranked {
            println!("  {score:.3}  {label}");
        }
    }
    Ok(())
}

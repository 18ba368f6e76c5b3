//! `cliptag eval`: zero-shot top-1 accuracy over a labelled manifest of images.

use crate::output::outln;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cliptag_model::accuracy::{Manifest, agreement, evaluate};
use cliptag_model::candle_core::DType;
use serde_json::json;

use crate::model_arg::ModelArgs;

/// Arguments of `cliptag eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The manifest: `{"tasks": [{"name", "prompts": [...], "items": [{"file", "answer"}]}]}`,
    /// files relative to it.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Also list every miss (file, expected, predicted).
    #[arg(long)]
    misses: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the accuracy of every task.
pub fn run(args: Args) -> Result<()> {
    let manifest = Manifest::load(&args.manifest)?;
    let model = args.model.load()?;
    let results = evaluate(&model, &manifest, args.batch)
        .with_context(|| format!("evaluating {}", args.manifest.display()))?;
    let dtype = format!("{:?}", model.network.dtype()).to_lowercase();
    // Below f32, how often the reduced precision picks what f32 picks.
    let agree = if model.network.dtype() == DType::F32 {
        None
    } else {
        let f32_model = args.model.with_dtype("f32").load()?;
        let reference = evaluate(&f32_model, &manifest, args.batch)
            .with_context(|| format!("evaluating {} in f32", args.manifest.display()))?;
        Some(agreement(&results, &reference))
    };
    let agree_percent = |(same, total): (usize, usize)| 100.0 * same as f64 / total.max(1) as f64;
    if args.json {
        let tasks: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "task": r.name, "correct": r.correct, "total": r.total,
                    "top1_percent": r.percent(),
                    "misses": r.misses.iter().map(|(f, e, p)| json!({"file": f, "expected": e, "predicted": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let agreement =
            agree.map(|a| json!({"same": a.0, "total": a.1, "percent": agree_percent(a)}));
        outln!(
            "{}",
            json!({ "model": model.source, "dtype": dtype, "tasks": tasks,
                    "top1_agreement_with_f32": agreement })
        )?;
        return Ok(());
    }
    outln!("{:<14} {:>8} {:>7}", "task", "top-1", "items")?;
    for r in &results {
        outln!("{:<14} {:>7.1}% {:>7}", r.name, r.percent(), r.total)?;
    }
    if let Some(a) = agree {
        outln!(
            "{dtype}: top-1 the same as f32 on {:.1}% of items ({} of {})",
            agree_percent(a),
            a.0,
            a.1
        )?;
    }
    if args.misses {
        for r in &results {
            for (file, expected, predicted) in &r.misses {
                outln!(
                    "{}: {file}: expected {expected:?}, got {predicted:?}",
                    r.name
                )?;
            }
        }
    }
    Ok(())
}

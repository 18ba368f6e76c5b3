//! `cliptag eval`: zero-shot top-1 accuracy over a labelled manifest of images.

use crate::output::outln;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cliptag_model::accuracy::{Manifest, evaluate};
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
        outln!("{}", json!({ "model": model.source, "tasks": tasks }))?;
        return Ok(());
    }
    outln!("{:<14} {:>8} {:>7}", "task", "top-1", "items")?;
    for r in &results {
        outln!("{:<14} {:>7.1}% {:>7}", r.name, r.percent(), r.total)?;
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

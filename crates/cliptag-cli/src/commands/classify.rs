//! `cliptag classify`: zero-shot labels for one image.

use crate::output::outln;
use std::path::PathBuf;

use anyhow::{Result, bail};
use cliptag_model::image_file;
use serde_json::json;

use crate::label_args::LabelArgs;
use crate::model_arg::ModelArgs;

/// Arguments of `cliptag classify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The image file (PNG or JPEG).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    #[command(flatten)]
    labels: LabelArgs,
    /// Prompt template; `{}` is replaced by the label.
    #[arg(long, default_value = "{}")]
    template: String,
    /// Print `{"labels": [{"label": ..., "score": ...}]}` instead of a table.
    #[arg(long)]
    json: bool,
}

/// Ranks the labels by probability, best first.
pub fn run(args: Args) -> Result<()> {
    let labels = args.labels.names()?;
    if let Some(dup) = labels
        .iter()
        .enumerate()
        .find(|(i, l)| labels[..*i].contains(l))
    {
        bail!("label {:?} is given twice", dup.1);
    }
    if !args.template.contains("{}") {
        bail!("template {:?} has no {{}} for the label", args.template);
    }
    let prompts: Vec<String> = labels
        .iter()
        .map(|l| args.template.replacen("{}", l, 1))
        .collect();
    let image = image_file::load_rgb(&args.image)?;
    let model = args.model.load()?;
    let scores = model.classify(&[image.frame()?], &prompts)?;
    let mut ranked: Vec<(&String, f32)> = labels.iter().zip(scores[0].iter().copied()).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    if args.json {
        let labels: Vec<_> = ranked
            .iter()
            .map(|(label, score)| json!({"label": label, "score": score}))
            .collect();
        outln!("{}", json!({ "labels": labels }))?;
    } else {
        for (label, score) in ranked {
            outln!("{score:.4}  {label}")?;
        }
    }
    Ok(())
}

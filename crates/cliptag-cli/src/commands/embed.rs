//! `cliptag embed`: projected embeddings as `get_image_features` / `get_text_features`
//! return them (not normalized).

use std::path::PathBuf;

use anyhow::{Result, bail};
use cliptag_model::image_file;
use serde_json::{Map, Value};

use crate::model_arg::ModelArgs;

/// Arguments of `cliptag embed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// An image file (PNG or JPEG); repeat for several.
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// A text prompt; repeat for several.
    #[arg(long = "text", value_name = "TEXT")]
    texts: Vec<String>,
}

/// Prints `{"image_embeds": [[...]], "text_embeds": [[...]]}`, a key only when inputs
/// of its kind were given.
pub fn run(args: Args) -> Result<()> {
    if args.images.is_empty() && args.texts.is_empty() {
        bail!("nothing to embed: give --image FILE and/or --text TEXT");
    }
    let images = args
        .images
        .iter()
        .map(|p| image_file::load_rgb(p))
        .collect::<Result<Vec<_>, _>>()?;
    let model = args.model.load()?;
    let mut out = Map::new();
    if !images.is_empty() {
        let frames = images
            .iter()
            .map(|i| i.frame())
            .collect::<Result<Vec<_>, _>>()?;
        let embeds = model.embed_frames(&frames)?.to_vec2::<f32>()?;
        out.insert("image_embeds".into(), serde_json::to_value(embeds)?);
    }
    if !args.texts.is_empty() {
        let (embeds, tokens) = model.embed_texts(&args.texts)?;
        for (text, t) in args.texts.iter().zip(&tokens) {
            if t.truncated() {
                eprintln!(
                    "cliptag: warning: {text:?} is {} tokens, truncated to {}",
                    t.full_len,
                    t.ids.len()
                );
            }
        }
        out.insert(
            "text_embeds".into(),
            serde_json::to_value(embeds.to_vec2::<f32>()?)?,
        );
    }
    println!("{}", Value::Object(out));
    Ok(())
}

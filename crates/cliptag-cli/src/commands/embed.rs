//! `cliptag embed`: projected embeddings as `get_image_features` / `get_text_features`
//! return them (not normalized).

use crate::output::outln;
use std::path::PathBuf;

use anyhow::{Result, bail};
use cliptag_model::image_file;
use cliptag_model::preprocess::{Colorimetry, FrameRef, PixelFormat};
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
    /// Hand each image to the preprocessor as a raw frame in this GStreamer format (RGB,
    /// BGRx, I420, NV12, ...), as the element would receive it from a video source: to
    /// compare formats and devices.
    #[arg(long, default_value = "RGB", value_parser = parse_format)]
    format: PixelFormat,
    /// A text prompt; repeat for several.
    #[arg(long = "text", value_name = "TEXT")]
    texts: Vec<String>,
}

fn parse_format(name: &str) -> Result<PixelFormat> {
    PixelFormat::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = PixelFormat::ALL.iter().map(|f| f.name()).collect();
        anyhow::anyhow!("unknown format {name:?}: one of {}", known.join(", "))
    })
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
        let format = args.format;
        let planes: Vec<Vec<Vec<u8>>> = images
            .iter()
            .map(|i| i.repack(format, 0, Colorimetry::default()))
            .collect();
        let frames = images
            .iter()
            .zip(&planes)
            .map(|(image, planes)| FrameRef::padded(format, image.width, image.height, planes, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let embeds = model.embed_frames(&frames)?.to_vec2::<f32>()?;
        out.insert("image_embeds".into(), serde_json::to_value(embeds)?);
    }
    if !args.texts.is_empty() {
        let (embeds, tokens) = model.embed_texts(&args.texts)?;
        for (text, t) in args.texts.iter().zip(&tokens) {
            if t.truncated() {
                tracing::warn!(
                    "{text:?} is {} tokens, truncated to {}",
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
    outln!("{}", Value::Object(out))?;
    Ok(())
}

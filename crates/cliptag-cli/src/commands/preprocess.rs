//! `cliptag preprocess`: the pixel values exactly as the vision tower sees them.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cliptag_model::image_file;
use safetensors::tensor::{Dtype, TensorView};

use crate::model_arg::ModelArgs;

/// Arguments of `cliptag preprocess`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The image file (PNG or JPEG).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// Where to write `pixel_values` `[1, 3, S, S]` f32 as safetensors.
    #[arg(long, value_name = "FILE.safetensors")]
    out: PathBuf,
    /// Also write the resized and cropped image as a PNG.
    #[arg(long, value_name = "FILE.png")]
    png: Option<PathBuf>,
}

/// Preprocesses one image with the model directory's preprocessor configuration.
pub fn run(args: Args) -> Result<()> {
    let image = image_file::load_rgb(&args.image)?;
    // Only the preprocessor is needed, but loading the model checks that the directory
    // is one the other commands accept.
    let model = args.model.load()?;
    let frame = image.frame()?;
    let (values, (w, h)) = model.preprocessor.preprocess(&frame)?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![1, 3, h, w], &bytes)?;
    let tensors = HashMap::from([("pixel_values".to_string(), view)]);
    safetensors::serialize_to_file(tensors, None, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if let Some(png) = &args.png {
        let (_, rgb) = model.preprocessor.crop_rgb8(&frame)?;
        image::save_buffer(png, &rgb, w as u32, h as u32, image::ColorType::Rgb8)
            .with_context(|| format!("cannot write {}", png.display()))?;
    }
    Ok(())
}

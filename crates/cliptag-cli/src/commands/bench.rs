//! `cliptag bench`: vision-tower throughput on random pixel values.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use candle_core::{DType, Tensor};
use serde_json::json;

use crate::model_arg::ModelArgs;

/// Arguments of `cliptag bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Minimum measuring time per batch size, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Minimum number of timed batches per batch size.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Times `image_features` at each batch size after one warm-up batch.
pub fn run(args: Args) -> Result<()> {
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("batch sizes must be positive");
    }
    let model = args.model.load()?;
    let net = &model.network;
    let s = net.image_size();
    let threads = candle_core::utils::get_num_threads();
    let mut results = Vec::new();
    for &batch in &args.batch {
        let pixels =
            Tensor::randn(0f32, 1f32, (batch, 3, s, s), net.device())?.to_dtype(DType::F32)?;
        net.image_features(&pixels)?;
        let budget = Duration::from_secs_f64(args.seconds);
        let start = Instant::now();
        let mut done = 0usize;
        while done < args.iters || start.elapsed() < budget {
            let out = net.image_features(&pixels)?;
            // Wait for the device so that asynchronous backends are timed fully.
            net.device().synchronize()?;
            drop(out);
            done += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let per_batch = elapsed / done as f64;
        results.push(json!({
            "batch": batch,
            "images_per_s": batch as f64 / per_batch,
            "ms_per_batch": per_batch * 1e3,
        }));
        if !args.json {
            println!(
                "batch {batch:>4}: {:>8.2} img/s  {:>9.2} ms/batch",
                batch as f64 / per_batch,
                per_batch * 1e3
            );
        }
    }
    if args.json {
        println!(
            "{}",
            json!({
                "engine": "cliptag",
                "device": args.model.device,
                "dtype": args.model.dtype,
                "threads": threads,
                "results": results,
            })
        );
    }
    Ok(())
}

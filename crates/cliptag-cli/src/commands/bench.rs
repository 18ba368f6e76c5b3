//! `cliptag bench`: vision-tower throughput on random pixel values, and optionally
//! preprocessing and the engine end to end.

use crate::output::outln;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use candle_core::Tensor;
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
    /// Also time every stage of the forward pass (embeddings, each block's norms,
    /// projections, attention, MLP, residual adds) over a few extra batches at each
    /// size, waiting for the device around each stage: where the time goes, on any device.
    #[arg(long)]
    profile: bool,
    /// Also time preprocessing of a synthetic frame of this size (e.g. 1920x1080) in
    /// BGRx, NV12 and I420, in milliseconds per frame (a frame's rows are spread over
    /// the threads; RAYON_NUM_THREADS=1 times one thread).
    #[arg(long, value_name = "WxH")]
    preprocess: Option<String>,
    /// Also measure the engine end to end from raw frames of this size (e.g. 1280x720),
    /// in I420 and RGB, at each batch size: preprocessing, inference and scoring.
    #[arg(long, value_name = "WxH")]
    engine: Option<String>,
    /// Labels the engine scores every frame against.
    #[arg(long, default_value_t = 100)]
    labels: usize,
    /// Prompts in each label update while frames flow.
    #[arg(long, default_value_t = 1000)]
    update_prompts: usize,
}

/// Stage times of `passes` forward passes over `pixels`, per batch, longest first.
fn profile_stages(
    net: &cliptag_model::Clip,
    pixels: &Tensor,
    passes: usize,
) -> Result<Vec<serde_json::Value>> {
    let (outcome, stages) = cliptag_model::profile::record(|| -> Result<()> {
        for _ in 0..passes {
            net.image_features(pixels)?;
        }
        Ok(())
    });
    outcome?;
    let total: f64 = stages.iter().map(|s| s.total.as_secs_f64()).sum();
    let mut rows: Vec<serde_json::Value> = stages
        .iter()
        .map(|s| {
            let ms = s.total.as_secs_f64() * 1e3 / passes as f64;
            json!({
                "stage": s.name,
                "ms_per_batch": ms,
                "share": s.total.as_secs_f64() / total.max(f64::MIN_POSITIVE),
                "calls_per_batch": f64::from(s.calls) / passes as f64,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        b["ms_per_batch"]
            .as_f64()
            .partial_cmp(&a["ms_per_batch"].as_f64())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(rows)
}

fn print_stages(stages: &[serde_json::Value]) -> std::io::Result<()> {
    for s in stages {
        outln!(
            "    {:<28} {:>9.3} ms/batch  {:>5.1}%  ({} calls)",
            s["stage"].as_str().unwrap_or("?"),
            s["ms_per_batch"].as_f64().unwrap_or(0.0),
            100.0 * s["share"].as_f64().unwrap_or(0.0),
            s["calls_per_batch"].as_f64().unwrap_or(0.0),
        )?;
    }
    Ok(())
}

fn parse_size(size: &str) -> Result<(usize, usize)> {
    size.split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .ok_or_else(|| anyhow::anyhow!("--preprocess {size:?} is not WIDTHxHEIGHT"))
}

/// Milliseconds per frame to preprocess a `w` x `h` frame in a few formats.
fn time_preprocessing(
    model: &cliptag_model::ClipModel,
    size: &str,
    seconds: f64,
) -> Result<Vec<(&'static str, f64)>> {
    use cliptag_model::{FrameRef, PixelFormat};
    let (w, h) = parse_size(size)?;
    // A smooth pattern: resampling cost does not depend on content, conversion neither.
    let packed: Vec<u8> = (0..w * h * 4)
        .map(|i| (i / 4 % w * 255 / w) as u8)
        .collect();
    let luma: Vec<u8> = (0..w * h).map(|i| (i % w * 255 / w) as u8).collect();
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let chroma = vec![128u8; cw * ch * 2];
    let frames = [
        (
            "BGRx",
            FrameRef::new(PixelFormat::Bgrx, w, h, &[(&packed, w * 4)])?,
        ),
        (
            "NV12",
            FrameRef::new(PixelFormat::Nv12, w, h, &[(&luma, w), (&chroma, cw * 2)])?,
        ),
        (
            "I420",
            FrameRef::new(
                PixelFormat::I420,
                w,
                h,
                &[
                    (&luma, w),
                    (&chroma[..cw * ch], cw),
                    (&chroma[cw * ch..], cw),
                ],
            )?,
        ),
    ];
    let mut out = Vec::new();
    for (name, frame) in frames {
        let (mut values, _) = model.preprocessor.preprocess(&frame)?;
        let start = Instant::now();
        let mut done = 0usize;
        while done < 3 || start.elapsed().as_secs_f64() < seconds {
            model.preprocessor.preprocess_into(&frame, &mut values)?;
            done += 1;
        }
        out.push((name, start.elapsed().as_secs_f64() * 1e3 / done as f64));
    }
    Ok(out)
}

/// Times `image_features` at each batch size after one warm-up batch.
pub fn run(args: Args) -> Result<()> {
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("batch sizes must be positive");
    }
    if let Some(size) = &args.preprocess {
        parse_size(size)?;
    }
    let engine_size = args.engine.as_deref().map(parse_size).transpose()?;
    let model = std::sync::Arc::new(args.model.load()?);
    let net = &model.network;
    let s = net.image_size();
    let threads = candle_core::utils::get_num_threads();
    let dtype = format!("{:?}", net.dtype()).to_lowercase();
    let cpu = cliptag_model::CpuFeatures::detected().names();
    let kernel = net.plan().kernel();
    if !args.json {
        outln!(
            "{} on {}, {dtype} ({kernel}; CPU: {cpu}), {threads} threads",
            model.source,
            args.model.device
        )?;
    }
    let mut results = Vec::new();
    for &batch in &args.batch {
        // Made on the host: random numbers on a GPU would need cuRAND, which only this
        // line would use.
        let pixels = Tensor::randn(0f32, 1f32, (batch, 3, s, s), &candle_core::Device::Cpu)?
            .to_device(net.device())?;
        // Two untimed batches, finished before the clock starts (a GPU queues work).
        for _ in 0..2 {
            net.image_features(&pixels)?;
        }
        net.device().synchronize()?;
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
        let mut result = json!({
            "batch": batch,
            "images_per_s": batch as f64 / per_batch,
            "ms_per_batch": per_batch * 1e3,
        });
        if !args.json {
            outln!(
                "batch {batch:>4}: {:>8.2} img/s  {:>9.2} ms/batch",
                batch as f64 / per_batch,
                per_batch * 1e3
            )?;
        }
        if args.profile {
            let stages = profile_stages(net, &pixels, args.iters.max(1))?;
            if !args.json {
                print_stages(&stages)?;
            }
            result["profile"] = serde_json::Value::Array(stages);
        }
        results.push(result);
    }
    let mut preprocessing = Vec::new();
    if let Some(size) = &args.preprocess {
        for (format, ms) in time_preprocessing(&model, size, args.seconds.min(2.0))? {
            if !args.json {
                outln!("preprocess {size} {format:>4}: {ms:>8.2} ms/frame")?;
            }
            preprocessing.push(json!({"size": size, "format": format, "ms_per_frame": ms}));
        }
    }
    let engine = match engine_size {
        Some(size) => super::bench_engine::run(
            model.clone(),
            size,
            &args.batch,
            args.labels,
            args.update_prompts,
            args.seconds,
            !args.json,
        )?,
        None => serde_json::Value::Null,
    };
    if args.json {
        outln!(
            "{}",
            json!({
                "engine": "cliptag",
                "device": args.model.device,
                "dtype": dtype,
                "kernel": kernel,
                "cpu_features": cpu,
                "threads": threads,
                "results": results,
                "preprocessing": preprocessing,
                "end_to_end": engine,
            })
        )?;
    }
    Ok(())
}

//! `cliptag bench --engine`: end-to-end engine throughput (preprocessing from raw frames,
//! inference, scoring against a label set) and the cost of replacing a large label set
//! while frames flow.

use crate::output::outln;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cliptag_engine::cliptag_model::{ClipModel, FrameRef, PixelFormat};
use cliptag_engine::{
    Completion, Engine, EngineConfig, FrameTiming, LabelSetSpec, StreamConfig, VideoFrame,
};
use serde_json::{Value, json};

/// One synthetic frame shared by every submission: the benchmark measures the engine,
/// not the producer's allocations.
#[derive(Clone)]
struct SharedFrame {
    format: PixelFormat,
    width: usize,
    height: usize,
    planes: Arc<Vec<Vec<u8>>>,
}

impl SharedFrame {
    /// A smooth pattern (conversion and resampling cost do not depend on content).
    fn new(format: PixelFormat, width: usize, height: usize) -> Self {
        let planes = (0..format.plane_count())
            .map(|p| {
                let (row, rows) = format.plane_extent(p, width, height);
                (0..row * rows)
                    .map(|i| (i % row * 255 / row) as u8)
                    .collect()
            })
            .collect();
        Self {
            format,
            width,
            height,
            planes: Arc::new(planes),
        }
    }
}

impl VideoFrame for SharedFrame {
    fn pixels(&self) -> FrameRef<'_> {
        FrameRef::padded(self.format, self.width, self.height, &self.planes, 0)
            .unwrap_or_else(|e| unreachable!("planes sized from the format: {e}"))
    }
}

/// Distinct prompts, none of them cached by an earlier run.
fn prompts(n: usize, salt: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("a photo of object {i} {salt}"))
        .collect()
}

/// Frames per second through one stream for `seconds`, the worker batching up to
/// `batch`; `during` runs alongside and its busy time is returned as a fraction.
fn throughput(
    engine: &Arc<Engine>,
    frame: &SharedFrame,
    seconds: f64,
    during: Option<&(dyn Fn() -> Result<()> + Sync)>,
) -> Result<(f64, f64)> {
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let config = StreamConfig {
        queue_capacity: engine.config().max_batch * 2,
        max_pending: engine.config().max_batch * 4,
        ..StreamConfig::default()
    };
    let stream = engine.attach("bench", config, move |_c: Completion| {
        counter.fetch_add(1, Ordering::Relaxed);
    })?;
    // Warm-up: one full batch.
    for _ in 0..engine.config().max_batch {
        stream.submit(frame.clone(), FrameTiming::default())?;
    }
    stream.drain(Duration::from_secs(600));
    let stop = AtomicBool::new(false);
    let busy = AtomicU64::new(0);
    let start = Instant::now();
    let before = done.load(Ordering::Relaxed);
    let elapsed = std::thread::scope(|scope| -> Result<f64> {
        let side = during.map(|work| {
            scope.spawn(|| -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    work()?;
                    busy.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        });
        while start.elapsed().as_secs_f64() < seconds {
            stream.submit(frame.clone(), FrameTiming::default())?;
        }
        stream.drain(Duration::from_secs(600));
        let elapsed = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        if let Some(side) = side {
            side.join()
                .map_err(|_| anyhow::anyhow!("the label-update thread panicked"))??;
        }
        Ok(elapsed)
    })?;
    let frames = done.load(Ordering::Relaxed) - before;
    let busy = busy.load(Ordering::Relaxed) as f64 / 1e6;
    Ok((frames as f64 / elapsed, (busy / elapsed).min(1.0)))
}

/// An engine batching up to `batch` frames, waiting up to 50 ms to fill a batch.
fn engine_at(model: &Arc<ClipModel>, batch: usize) -> Result<Arc<Engine>> {
    let config = EngineConfig {
        max_batch: batch,
        max_latency: Duration::from_millis(50),
        ..EngineConfig::default()
    };
    Ok(Engine::with_model(model.clone(), config)?)
}

/// Runs the engine benchmarks and returns their JSON.
pub fn run(
    model: Arc<ClipModel>,
    size: (usize, usize),
    batches: &[usize],
    labels: usize,
    update_prompts: usize,
    seconds: f64,
    verbose: bool,
) -> Result<Value> {
    let names = prompts(labels, "in the scene");
    let mut frames = Vec::new();
    for &batch in batches {
        let engine = engine_at(&model, batch)?;
        engine.set_labels("bench", LabelSetSpec::from_names(&names), None)?;
        for format in [PixelFormat::I420, PixelFormat::Rgb] {
            let frame = SharedFrame::new(format, size.0, size.1);
            let (fps, _) = throughput(&engine, &frame, seconds, None)
                .with_context(|| format!("engine at batch {batch}"))?;
            if verbose {
                outln!(
                    "engine {}x{} {:>4} batch {batch:>3}: {fps:>8.2} frames/s ({labels} labels)",
                    size.0,
                    size.1,
                    format.name()
                )?;
            }
            frames.push(json!({
                "format": format.name(), "width": size.0, "height": size.1,
                "batch": batch, "labels": labels, "frames_per_s": fps,
            }));
        }
    }

    // Label updates: encoding alone, then frames while sets of fresh prompts keep
    // replacing the running one.
    let batch = batches.iter().copied().max().unwrap_or(8);
    let engine = engine_at(&model, batch)?;
    engine.set_labels("bench", LabelSetSpec::from_names(&names), None)?;
    let fresh = AtomicU64::new(0);
    let update = || -> Result<()> {
        let salt = format!("take {}", fresh.fetch_add(1, Ordering::Relaxed));
        engine.set_labels(
            "other",
            LabelSetSpec::from_names(&prompts(update_prompts, &salt)),
            None,
        )?;
        Ok(())
    };
    let t = Instant::now();
    update()?;
    let encode_s = t.elapsed().as_secs_f64();
    let frame = SharedFrame::new(PixelFormat::I420, size.0, size.1);
    let (alone, _) = throughput(&engine, &frame, seconds, None)?;
    let (during, busy) = throughput(&engine, &frame, seconds, Some(&update))?;
    if verbose {
        outln!(
            "label update: {update_prompts} prompts in {:.3} s ({:.0} prompts/s)",
            encode_s,
            update_prompts as f64 / encode_s
        )?;
        outln!(
            "frames during updates: {during:.2} frames/s vs {alone:.2} alone ({:.0}% of it); \
             the encoder was busy {:.0}% of the time",
            100.0 * during / alone,
            100.0 * busy
        )?;
    }
    Ok(json!({
        "frames": frames,
        "label_update": {
            "prompts": update_prompts,
            "seconds": encode_s,
            "prompts_per_s": update_prompts as f64 / encode_s,
            "batch": batch,
            "frames_per_s_alone": alone,
            "frames_per_s_during_updates": during,
            "throughput_kept": during / alone,
            "encoder_busy_fraction": busy,
        },
    }))
}

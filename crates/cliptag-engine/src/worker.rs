//! The inference worker: collects batches fairly across streams, preprocesses every frame
//! straight from its planes into the batch tensor, runs the vision tower once per batch,
//! and scores each frame with the label set current when the batch started.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cliptag_model::candle_core::{DType, Tensor};
use cliptag_model::l2_normalize;
use crossbeam_channel::RecvTimeoutError;
use rayon::prelude::*;

use crate::engine::Inner;
use crate::label_set::LabelSet;
use crate::stream::{Job, StreamShared};

type Batch = Vec<(Arc<StreamShared>, Job)>;
/// A batch item with the outcome of preprocessing it.
type Prepared = ((Arc<StreamShared>, Job), Result<(), String>);

pub(crate) fn run(inner: Arc<Inner>) {
    let mut round = 0usize;
    let idle = std::time::Duration::from_millis(100);
    while !inner.shutdown.load(Ordering::Acquire) {
        let streams = inner.stream_list();
        let mut batch: Batch = Vec::new();
        collect(&streams, round, inner.config.max_batch, &mut batch);
        if batch.is_empty() {
            match inner.doorbell_rx.recv_timeout(idle) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Wait for more frames until the batch is full or its oldest frame has waited
        // max-latency.
        let oldest = batch
            .iter()
            .map(|(_, j)| j.submitted)
            .min()
            .unwrap_or_else(Instant::now);
        let deadline = oldest + inner.config.max_latency;
        while batch.len() < inner.config.max_batch {
            let arrived = inner.doorbell_rx.recv_deadline(deadline);
            let streams = inner.stream_list();
            collect(&streams, round, inner.config.max_batch, &mut batch);
            if arrived.is_err() || Instant::now() >= deadline {
                break;
            }
        }
        round = round.wrapping_add(1);
        infer(&inner, batch);
    }
}

/// Takes frames round-robin, one per stream per pass, starting at a different stream each
/// round: a busy stream cannot crowd a quiet one out of the batch.
fn collect(streams: &[Arc<StreamShared>], round: usize, max: usize, batch: &mut Batch) {
    if streams.is_empty() {
        return;
    }
    loop {
        let mut took = false;
        for i in 0..streams.len() {
            if batch.len() >= max {
                return;
            }
            let stream = &streams[(round + i) % streams.len()];
            if let Ok(job) = stream.rx.try_recv() {
                batch.push((stream.clone(), job));
                took = true;
            }
        }
        if !took {
            return;
        }
    }
}

fn infer(inner: &Inner, batch: Batch) {
    let n = batch.len();
    inner.record_batch(n);
    // The label sets are read once per batch: a swap lands between batches, never inside.
    let ids: Vec<String> = batch.iter().map(|(s, _)| s.label_set_id()).collect();
    let mut sets: HashMap<&str, Option<Arc<LabelSet>>> = HashMap::new();
    for id in &ids {
        if !sets.contains_key(id.as_str()) {
            sets.insert(id, inner.label_set(id));
        }
    }
    let model = &inner.model;
    let s = model.network.image_size();
    let per_image = 3 * s * s;
    let mut pixels = vec![0f32; n * per_image];
    // Frames are only Send: each is moved to the thread that preprocesses it and back.
    let prepared: Vec<Prepared> = batch
        .into_par_iter()
        .zip(pixels.par_chunks_mut(per_image))
        .map(|(item, out)| {
            let outcome = preprocess(model, &item.1, s, out);
            (item, outcome)
        })
        .collect();
    let embeddings = Tensor::from_vec(pixels, (n, 3, s, s), model.network.device())
        .map_err(cliptag_model::ModelError::from)
        .and_then(|t| model.network.image_features(&t))
        .and_then(|e| l2_normalize(&e))
        .and_then(|e| Ok(e.to_dtype(DType::F32)?.to_vec2::<f32>()?));
    match embeddings {
        Ok(rows) => {
            let items = prepared.into_iter().zip(rows).zip(&ids);
            for ((((stream, job), prep), row), id) in items {
                match prep {
                    Ok(()) => {
                        let set = sets.get(id.as_str()).cloned().flatten();
                        stream.complete(job, Arc::from(row), set.as_ref(), id, n);
                    }
                    Err(e) => stream.fail(job, e),
                }
            }
        }
        Err(e) => {
            let msg = format!("inference failed: {e}");
            for ((stream, job), _) in prepared {
                stream.fail(job, msg.clone());
            }
        }
    }
}

/// Reads one frame's planes straight into its slot of the batch tensor.
fn preprocess(
    model: &cliptag_model::ClipModel,
    job: &Job,
    s: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let frame = job.frame.pixels();
    let size = model
        .preprocessor
        .output_size(frame.width(), frame.height())
        .map_err(|e| e.to_string())?;
    if size != (s, s) {
        return Err(format!(
            "the preprocessor makes {}x{} images, the vision tower takes {s}x{s}",
            size.0, size.1
        ));
    }
    model
        .preprocessor
        .preprocess_into(&frame, out)
        .map_err(|e| e.to_string())
}

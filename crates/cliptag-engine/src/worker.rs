//! The inference worker: collects batches fairly across streams, preprocesses every frame
//! straight from its planes into the batch tensor, runs the vision tower once per batch,
//! and scores each frame with the label set current when the batch started.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cliptag_model::candle_core::{DType, Tensor};
use cliptag_model::{ClipModel, l2_normalize};
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
    let (prepared, pixels) = if model.network.device().is_cpu() {
        preprocess_on_host(model, batch, s)
    } else {
        preprocess_on_device(model, batch, s)
    };
    if prepared.iter().all(|(_, outcome)| outcome.is_err()) {
        // Nothing to infer: no forward pass on blanks.
        for ((stream, job), outcome) in prepared {
            if let Err(e) = outcome {
                stream.fail(job, e);
            }
        }
        return;
    }
    let embeddings = pixels
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

type Pixels = Result<Tensor, cliptag_model::ModelError>;

/// On the CPU: every frame's planes straight into its slot of the batch tensor, frames
/// in parallel.
fn preprocess_on_host(model: &ClipModel, batch: Batch, s: usize) -> (Vec<Prepared>, Pixels) {
    let n = batch.len();
    let per_image = 3 * s * s;
    let mut pixels = vec![0f32; n * per_image];
    // Frames are only Send: each is moved to the thread that preprocesses it and back.
    let prepared: Vec<Prepared> = batch
        .into_par_iter()
        .zip(pixels.par_chunks_mut(per_image))
        .map(|(item, out)| {
            let outcome = check_size(model, &item.1).and_then(|()| {
                model
                    .preprocessor
                    .preprocess_into(&item.1.frame.pixels(), out)
                    .map_err(|e| e.to_string())
            });
            (item, outcome)
        })
        .collect();
    let tensor = Tensor::from_vec(pixels, (n, 3, s, s), model.network.device());
    (prepared, tensor.map_err(Into::into))
}

/// On a GPU: the frames' regions go to the device together (one upload per plane for
/// frames of one format and size); resize, crop and normalization run there for the
/// whole batch. If that fails, frame by frame, so that a frame that cannot be
/// preprocessed costs only its own slot, which is left blank.
fn preprocess_on_device(model: &ClipModel, batch: Batch, s: usize) -> (Vec<Prepared>, Pixels) {
    let device = model.network.device();
    let mut outcomes: Vec<Result<(), String>> = batch
        .iter()
        .map(|item| check_size(model, &item.1))
        .collect();
    let good: Vec<usize> = (0..batch.len()).filter(|&i| outcomes[i].is_ok()).collect();
    let pixels = {
        let frames: Vec<_> = good.iter().map(|&i| batch[i].1.frame.pixels()).collect();
        if frames.is_empty() {
            Tensor::zeros((0, 3, s, s), DType::F32, device).map_err(Into::into)
        } else {
            model
                .preprocessor
                .pixel_values_on(&frames, device)
                .or_else(|_| one_by_one(model, &frames, &good, &mut outcomes, s))
        }
    };
    // Frames that failed their size check take a blank slot after the others.
    let tensor = pixels.and_then(|t| {
        if good.len() == batch.len() {
            return Ok(t);
        }
        let order = Tensor::from_vec(slot_order(&good, batch.len()), batch.len(), device)?;
        let blank = Tensor::zeros((1, 3, s, s), DType::F32, device)?;
        Ok(Tensor::cat(&[t, blank], 0)?.index_select(&order, 0)?)
    });
    let prepared = batch.into_iter().zip(outcomes).collect();
    (prepared, tensor)
}

/// The frames' pixel values one call each: a frame that fails gets a blank slot, and
/// its error in `outcomes` (indexed by the batch positions `good` gives).
fn one_by_one(
    model: &ClipModel,
    frames: &[cliptag_model::FrameRef<'_>],
    good: &[usize],
    outcomes: &mut [Result<(), String>],
    s: usize,
) -> Pixels {
    let device = model.network.device();
    let mut slots = Vec::with_capacity(frames.len());
    for (frame, &i) in frames.iter().zip(good) {
        match model
            .preprocessor
            .pixel_values_on(std::slice::from_ref(frame), device)
        {
            Ok(t) => slots.push(t),
            Err(e) => {
                outcomes[i] = Err(e.to_string());
                slots.push(Tensor::zeros((1, 3, s, s), DType::F32, device)?);
            }
        }
    }
    Ok(Tensor::cat(&slots, 0)?)
}

/// For each of `n` frames, its row in a tensor of the frames `good` lists (in that order)
/// followed by one blank row: frames not in `good` get the blank.
fn slot_order(good: &[usize], n: usize) -> Vec<u32> {
    let mut order = vec![good.len() as u32; n];
    for (row, &i) in good.iter().enumerate() {
        order[i] = row as u32;
    }
    order
}

/// Whether the preprocessor makes what the vision tower takes from this frame.
fn check_size(model: &ClipModel, job: &Job) -> Result<(), String> {
    model
        .check_frame_size(&job.frame.pixels())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::slot_order;

    #[test]
    fn frames_that_fail_their_check_point_at_the_blank_row() {
        // Frames 1 and 3 of 5 failed: the others are rows 0, 1, 2; the blank is row 3.
        assert_eq!(slot_order(&[0, 2, 4], 5), [0, 3, 1, 3, 2]);
        assert_eq!(slot_order(&[], 2), [0, 0]);
        assert_eq!(slot_order(&[0, 1], 2), [0, 1]);
    }
}

//! The inference worker: collects batches fairly across streams, preprocesses every frame
//! straight from its planes into the batch tensor, runs the vision tower once per batch,
//! and scores each frame with the label set current when the batch started.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cliptag_model::candle_core::{DType, Tensor};
use cliptag_model::{ClipModel, l2_normalize};
use rayon::prelude::*;

use crate::engine::Inner;
use crate::label_set::LabelSet;
use crate::stream::{Job, StreamShared};

type Batch = Vec<(Arc<StreamShared>, Job)>;
/// What preprocessing made of each frame of a batch, in batch order.
type Outcomes = Vec<Result<(), String>>;

pub(crate) fn run(inner: Arc<Inner>) {
    let mut round = 0usize;
    // Jobs stay here, outside the code that may panic, until each is handed back: a
    // panic anywhere in a batch fails the jobs still in it instead of losing them (their
    // producers would wait for them forever).
    let mut batch: Batch = Vec::new();
    while !inner.shutdown.load(Ordering::Acquire) {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            if gather(&inner, round, &mut batch) {
                infer(&inner, &mut batch);
            }
        }));
        if let Err(payload) = outcome {
            let cause: Arc<str> = Arc::from(format!(
                "the inference worker panicked: {}",
                panic_message(payload.as_ref())
            ));
            for (stream, job) in batch.drain(..) {
                // The owner's callback runs in here too: one that panics again must not
                // take the worker, and with it every other stream, down.
                let _ = panic::catch_unwind(AssertUnwindSafe(|| stream.abort(job, cause.clone())));
            }
        }
        round = round.wrapping_add(1);
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Fills `batch`: waits for a first frame, then for more until the batch is full or its
/// oldest frame has waited max-latency. False when there is nothing to infer.
fn gather(inner: &Inner, round: usize, batch: &mut Batch) -> bool {
    let idle = std::time::Duration::from_millis(100);
    let streams = inner.stream_list();
    collect(&streams, round, inner.config.max_batch, batch);
    if batch.is_empty() {
        // Woken by a new frame, or the idle timeout to look at the shutdown flag.
        let _ = inner.doorbell_rx.recv_timeout(idle);
        return false;
    }
    let oldest = batch
        .iter()
        .map(|(_, j)| j.submitted)
        .min()
        .unwrap_or_else(Instant::now);
    let deadline = oldest + inner.config.max_latency;
    while batch.len() < inner.config.max_batch {
        let arrived = inner.doorbell_rx.recv_deadline(deadline);
        let streams = inner.stream_list();
        collect(&streams, round, inner.config.max_batch, batch);
        if arrived.is_err() || Instant::now() >= deadline {
            break;
        }
    }
    true
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

/// Runs one batch and hands every job back to its stream, taking each out of `batch`
/// only as it is handed back.
fn infer(inner: &Inner, batch: &mut Batch) {
    let n = batch.len();
    inner.record_batch(n);
    let started = std::time::Instant::now();
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
    let (outcomes, pixels) = if model.network.device().is_cpu() {
        preprocess_on_host(model, batch, s)
    } else {
        preprocess_on_device(model, batch, s)
    };
    #[cfg(feature = "fault-injection")]
    crate::fault::check(batch);
    let embeddings = if outcomes.iter().all(Result::is_err) {
        // Nothing to infer: no forward pass on blanks.
        Ok(Vec::new())
    } else {
        pixels
            .and_then(|t| model.network.image_features(&t))
            .and_then(|e| l2_normalize(&e))
            .and_then(|e| Ok(e.to_dtype(DType::F32)?.to_vec2::<f32>()?))
    };
    inner.record_batch_time(started.elapsed());
    let mut rows = match embeddings {
        Ok(rows) => rows.into_iter(),
        Err(e) => {
            let cause: Arc<str> = Arc::from(format!("inference failed: {e}"));
            for (stream, job) in batch.drain(..) {
                stream.abort(job, cause.clone());
            }
            return;
        }
    };
    // Back to front is batch order reversed; handing back from the front keeps each
    // stream's deliveries in submission order.
    batch.reverse();
    let mut outcomes = outcomes.into_iter().zip(&ids);
    while let Some((stream, job)) = batch.pop() {
        match (outcomes.next(), rows.next()) {
            (Some((Ok(()), id)), Some(row)) => {
                let set = sets.get(id.as_str()).cloned().flatten();
                stream.complete(job, Arc::from(row), set.as_ref(), id, n);
            }
            (Some((Err(e), _)), _) => stream.fail(job, e),
            _ => stream.abort(
                job,
                Arc::from("inference failed: the model returned too few rows"),
            ),
        }
    }
}

type Pixels = Result<Tensor, cliptag_model::ModelError>;

/// On the CPU: every frame's planes straight into its slot of the batch tensor, frames
/// in parallel.
fn preprocess_on_host(model: &ClipModel, batch: &mut Batch, s: usize) -> (Outcomes, Pixels) {
    let n = batch.len();
    let per_image = 3 * s * s;
    let mut pixels = vec![0f32; n * per_image];
    // Frames are only Send: each thread reads the frames it was handed by `&mut`.
    let outcomes: Outcomes = batch
        .par_iter_mut()
        .zip(pixels.par_chunks_mut(per_image))
        .map(|((_, job), out)| {
            check_size(model, job).and_then(|()| {
                model
                    .preprocessor
                    .preprocess_into(&job.frame.pixels(), out)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let tensor = Tensor::from_vec(pixels, (n, 3, s, s), model.network.device());
    (outcomes, tensor.map_err(Into::into))
}

/// On a GPU: the frames' regions go to the device together (one upload per plane for
/// frames of one format and size); resize, crop and normalization run there for the
/// whole batch. If that fails, frame by frame, so that a frame that cannot be
/// preprocessed costs only its own slot, which is left blank.
fn preprocess_on_device(model: &ClipModel, batch: &mut Batch, s: usize) -> (Outcomes, Pixels) {
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
    (outcomes, tensor)
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

//! Zero-shot accuracy over a labelled set of image files.
//!
//! A manifest (JSON) lists tasks; each task has prompts and items, an item being an
//! image file (relative to the manifest) and the index of the prompt that describes it:
//!
//! ```json
//! {"tasks": [{"name": "shape", "prompts": ["a circle", "a star"],
//!             "items": [{"file": "shape-0.png", "answer": 1}]}]}
//! ```
//!
//! `tools/tiny_data.py eval` writes such manifests for the bundled model; `cliptag eval`
//! and the bundled model's accuracy test read them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ModelError, Result};
use crate::image_file::{RgbImage, load_rgb};
use crate::{ClipModel, l2_normalize};

/// A labelled set of images, grouped into tasks.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The tasks, in the order they are reported.
    pub tasks: Vec<Task>,
    /// Directory the item files are relative to (the manifest's own directory).
    #[serde(skip)]
    pub base: PathBuf,
}

/// One classification task: every item is scored against all of the task's prompts.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    /// Short name of the task.
    pub name: String,
    /// The candidate prompts.
    pub prompts: Vec<String>,
    /// The images and their correct prompt.
    pub items: Vec<Item>,
}

/// An image and the index of its correct prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct Item {
    /// Image file, relative to the manifest.
    pub file: String,
    /// Index into the task's prompts.
    pub answer: usize,
}

/// How one task went.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskAccuracy {
    /// The task's name.
    pub name: String,
    /// Items whose top-1 prompt was the answer.
    pub correct: usize,
    /// Items scored.
    pub total: usize,
    /// Items that went wrong: (file, expected prompt, predicted prompt).
    pub misses: Vec<(String, String, String)>,
    /// The index of the prompt chosen for every item, in manifest order.
    pub predictions: Vec<usize>,
}

impl TaskAccuracy {
    /// Top-1 accuracy in percent.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.correct as f64 / self.total as f64
        }
    }
}

impl Manifest {
    /// Reads and checks a manifest: every answer must index its task's prompts.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let mut manifest: Manifest = serde_path_to_error::deserialize(de)
            .map_err(|e| ModelError::config(path, e.to_string()))?;
        for task in &manifest.tasks {
            if task.prompts.is_empty() {
                return Err(ModelError::config(
                    path,
                    format!("task {} has no prompts", task.name),
                ));
            }
            if let Some(item) = task.items.iter().find(|i| i.answer >= task.prompts.len()) {
                return Err(ModelError::config(
                    path,
                    format!(
                        "task {}: {} has answer {} but only {} prompts",
                        task.name,
                        item.file,
                        item.answer,
                        task.prompts.len()
                    ),
                ));
            }
        }
        manifest.base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(manifest)
    }
}

/// How many items two evaluations of one manifest (say f32 and bf16) gave the same top-1
/// prompt, of how many: `(same, total)`.
pub fn agreement(a: &[TaskAccuracy], b: &[TaskAccuracy]) -> (usize, usize) {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.predictions.iter().zip(&y.predictions))
        .fold((0, 0), |(same, total), (p, q)| {
            (same + usize::from(p == q), total + 1)
        })
}

/// Scores every task of the manifest with the model, `batch` images at a time.
pub fn evaluate(model: &ClipModel, manifest: &Manifest, batch: usize) -> Result<Vec<TaskAccuracy>> {
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(manifest.tasks.len());
    for task in &manifest.tasks {
        let (texts, _) = model.embed_texts(&task.prompts)?;
        let texts = l2_normalize(&texts)?;
        let mut result = TaskAccuracy {
            name: task.name.clone(),
            correct: 0,
            total: 0,
            misses: Vec::new(),
            predictions: Vec::with_capacity(task.items.len()),
        };
        for chunk in task.items.chunks(batch) {
            let images = chunk
                .iter()
                .map(|item| load_rgb(&manifest.base.join(&item.file)))
                .collect::<Result<Vec<RgbImage>>>()?;
            let frames = images
                .iter()
                .map(RgbImage::frame)
                .collect::<Result<Vec<_>>>()?;
            let embeds = l2_normalize(&model.embed_frames(&frames)?)?;
            // The argmax of cosine similarity is the argmax of the softmax.
            let sims = embeds.matmul(&texts.t()?)?.to_vec2::<f32>()?;
            for (item, row) in chunk.iter().zip(sims) {
                let best = argmax(&row);
                result.predictions.push(best);
                result.total += 1;
                if best == item.answer {
                    result.correct += 1;
                } else {
                    result.misses.push((
                        item.file.clone(),
                        task.prompts[item.answer].clone(),
                        task.prompts[best].clone(),
                    ));
                }
            }
        }
        out.push(result);
    }
    Ok(out)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.2]), 1);
    }

    #[test]
    fn manifests_with_out_of_range_answers_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"{"tasks": [{"name": "t", "prompts": ["a"], "items": [{"file": "x.png", "answer": 1}]}]}"#,
        )
        .expect("write");
        let err = Manifest::load(&path).expect_err("answer 1 of 1 prompt");
        assert!(err.to_string().contains("x.png has answer 1"), "{err}");
    }
}

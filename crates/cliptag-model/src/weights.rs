//! Safetensors checkpoints, single-file or sharded, memory-mapped.
//!
//! Headers are parsed once when the files are opened; a tensor's bytes are read from the
//! mapping only when the model asks for it, converted to the requested type and moved
//! to the device. Every failure names the tensor and the file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};

use crate::error::{ModelError, Result};
use crate::kernels::{CpuFeatures, MatmulPlan};

/// Name of the single-file checkpoint in a Hugging Face model directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The bytes of one safetensors file: mapped from disk, or compiled into the binary.
enum FileBytes {
    Mapped(Mmap),
    Static(&'static [u8]),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Static(b) => b,
        }
    }
}

struct MappedFile {
    /// The file's path, or the name errors use for bytes that have no path.
    path: PathBuf,
    bytes: FileBytes,
    /// Tensor name -> (stored type, shape, byte range inside `bytes`).
    tensors: HashMap<String, (StDtype, Vec<usize>, std::ops::Range<usize>)>,
}

/// The tensors of a checkpoint, loaded on demand into one type on one device.
pub struct Weights {
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    owner: HashMap<String, usize>,
    /// The type asked for; `plan` says how it is held and computed.
    requested: DType,
    plan: MatmulPlan,
    device: Device,
}

impl Weights {
    /// Opens the checkpoint in a model directory: `model.safetensors`, or the shards listed
    /// in `model.safetensors.index.json`.
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(SHARD_INDEX);
        if single.is_file() {
            Self::from_files(&[single], dtype, device)
        } else if index.is_file() {
            let shards = shard_files(&index)?;
            Self::from_files(&shards, dtype, device)
        } else {
            Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
            })
        }
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn from_files(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut owner = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = map_file(path)?;
            for name in file.tensors.keys() {
                owner.insert(name.clone(), i);
            }
            files.push(file);
        }
        Ok(Self::planned(files, owner, dtype, device))
    }

    /// Opens a checkpoint held in memory for the life of the program (a model compiled
    /// into the binary); `name` stands for the file in error messages.
    pub fn from_static(
        name: &Path,
        bytes: &'static [u8],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let file = index_file(name, FileBytes::Static(bytes))?;
        let owner = file.tensors.keys().map(|k| (k.clone(), 0)).collect();
        Ok(Self::planned(vec![file], owner, dtype, device))
    }

    fn planned(
        files: Vec<MappedFile>,
        owner: HashMap<String, usize>,
        requested: DType,
        device: &Device,
    ) -> Self {
        let weights = Self {
            files,
            owner,
            requested,
            plan: MatmulPlan::new(requested, device, CpuFeatures::detected()),
            device: device.clone(),
        };
        weights.log_fallback(CpuFeatures::detected());
        weights
    }

    /// Plans the weights as if the CPU had only `features` (how they are held and which
    /// linear-layer kernels they feed): to compare those kernels. The other kernels follow
    /// the CPU itself; `CLIPTAG_MAX_CPU_ISA` caps them all.
    pub fn with_cpu_features(mut self, features: CpuFeatures) -> Self {
        self.plan = MatmulPlan::new(self.requested, &self.device, features);
        self.log_fallback(features);
        self
    }

    /// Holds the tensors and runs the matmuls as `plan` says instead, when there is one.
    pub fn with_plan(mut self, plan: Option<MatmulPlan>) -> Self {
        if let Some(plan) = plan {
            self.plan = plan;
        }
        self
    }

    fn log_fallback(&self, features: CpuFeatures) {
        if let Some(reason) = self.plan.fallback_reason(self.requested, features) {
            tracing::warn!("{reason}");
        }
    }

    /// The type tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.plan.tensors
    }

    /// How the weights are held and the matmuls computed.
    pub fn plan(&self) -> MatmulPlan {
        self.plan
    }

    /// The device tensors are moved to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.owner.contains_key(name)
    }

    /// The tensor `name`, checked against the shape the config implies.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, self.plan.tensors)
    }

    /// The tensor `name` in a type other than the checkpoint's load type (for scalars that
    /// scoring needs in full precision).
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let file = self
            .owner
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                files: self
                    .files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let (stored, found, range) = &file.tensors[name];
        if found.as_slice() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                path: file.path.clone(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        let source = match stored {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    name: name.to_string(),
                    path: file.path.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let bytes = &file.bytes[range.clone()];
        let tensor = Tensor::from_raw_buffer(bytes, source, shape, &Device::Cpu)?;
        Ok(tensor.to_dtype(dtype)?.to_device(&self.device)?)
    }
}

fn map_file(path: &Path) -> Result<MappedFile> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the mapping is read-only and private to this process. A checkpoint that
    // another process truncates while it is mapped can still fault; that is the accepted
    // price of not copying hundreds of megabytes at load time, and the same contract as
    // every other safetensors loader.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    index_file(path, FileBytes::Mapped(mmap))
}

/// Parses a safetensors header once and records where each tensor's bytes are.
fn index_file(path: &Path, bytes: FileBytes) -> Result<MappedFile> {
    let parsed = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Weights {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // `deserialize` has checked that the data offsets fit the file; keep each tensor's
    // byte range relative to the mapping so that later reads need no second parse.
    let base = bytes.as_ptr() as usize;
    let mut tensors = HashMap::new();
    for (name, view) in parsed.iter() {
        let start = view.data().as_ptr() as usize - base;
        let end = start + view.data().len();
        let expected_len =
            view.shape().iter().product::<usize>() * view.dtype().bitsize().div_ceil(8);
        if end - start != expected_len {
            return Err(ModelError::Weights {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor {name} holds {} bytes, its shape {:?} needs {expected_len}",
                    end - start,
                    view.shape()
                ),
            });
        }
        tensors.insert(
            name.to_string(),
            (view.dtype(), view.shape().to_vec(), start..end),
        );
    }
    drop(parsed);
    Ok(MappedFile {
        path: path.to_path_buf(),
        bytes,
        tensors,
    })
}

/// The shard files named by a `model.safetensors.index.json`, in a stable order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Weights {
            path: index.to_path_buf(),
            reason: e.to_string(),
        })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Weights {
            path: index.to_path_buf(),
            reason: "no \"weight_map\" object".to_string(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| ModelError::Weights {
            path: index.to_path_buf(),
            reason: format!("weight_map entry for {tensor} is not a file name"),
        })?;
        if Path::new(file).components().count() != 1 {
            return Err(ModelError::Weights {
                path: index.to_path_buf(),
                reason: format!("weight_map entry for {tensor} leaves the directory: {file}"),
            });
        }
        if !names.contains(&file) {
            names.push(file);
        }
    }
    names.sort_unstable();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

//! One error type for everything that can go wrong while loading or running a model.

use std::path::PathBuf;

/// Errors of the model crate. Every variant that comes from a file names the file,
/// and every variant that comes from a tensor names the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    // The cause is part of the message and deliberately not a `source()`, so that
    // error chains printed outermost-first do not say it twice.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        cause: std::io::Error,
    },
    /// `config.json` or `preprocessor_config.json` is not what a CLIP checkpoint holds.
    #[error("invalid config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A weights file is not a valid safetensors file (truncated, corrupt header, ...).
    #[error("invalid weights file {path}: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model directory has no weights in a known layout.
    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// A tensor the architecture needs is absent from every weights file.
    #[error("tensor {name} is missing from {files}")]
    MissingTensor {
        /// The tensor's name in the checkpoint.
        name: String,
        /// The files searched, comma separated.
        files: String,
    },
    /// A tensor has a shape other than the config implies.
    #[error("tensor {name} in {path} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The tensor's name in the checkpoint.
        name: String,
        /// The file it is in.
        path: PathBuf,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a type this crate cannot convert from.
    #[error("tensor {name} in {path} is stored as {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        /// The tensor's name in the checkpoint.
        name: String,
        /// The file it is in.
        path: PathBuf,
        /// The stored type.
        dtype: String,
    },
    /// The tokenizer files are missing or invalid.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file (or directory when none was found).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A frame or image handed to the preprocessor does not match its description.
    #[error("invalid frame: {0}")]
    Frame(String),
    /// An image file could not be decoded.
    #[error("cannot decode image {path}: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A caller passed arguments the model cannot work with (empty batch, wrong shape, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// A device that this build does not support or that is not present.
    #[error("device {0}")]
    Device(String),
    /// An error inside the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

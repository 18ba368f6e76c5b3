//! The engine's error type.

use crate::label_spec::{LabelError, Quoted};

/// Errors of the engine. Label problems and version conflicts leave every running label
/// set as it was.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A label set was refused.
    #[error("invalid label set: {0}")]
    Labels(#[from] LabelError),
    /// An edit asked for a version that is no longer current.
    #[error(
        "label set {} is at version {current}, the edit expected {expected}",
        Quoted(set)
    )]
    VersionMismatch {
        /// The label set.
        set: String,
        /// The version the edit was based on.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// No label set of this id.
    #[error("no label set {}", Quoted(.0))]
    UnknownLabelSet(String),
    /// No stream of this id.
    #[error("no stream {}", Quoted(.0))]
    UnknownStream(String),
    /// A stream of this id is already attached to the engine.
    #[error("a stream {} is already attached to this engine", Quoted(.0))]
    StreamExists(String),
    /// An engine of this id already runs with other settings.
    #[error("engine {} already runs {existing}; asked for {requested}", Quoted(id))]
    EngineMismatch {
        /// The engine id.
        id: String,
        /// What the running engine uses.
        existing: String,
        /// What was asked for.
        requested: String,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] cliptag_model::ModelError),
    /// The engine or the stream has shut down.
    #[error("the engine has shut down")]
    Closed,
}

impl From<cliptag_model::candle_core::Error> for EngineError {
    fn from(e: cliptag_model::candle_core::Error) -> Self {
        Self::Model(e.into())
    }
}

/// Result of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

//! cliptag's inference engine: everything between "a frame arrived" and "this frame's
//! labels are known", with no GStreamer or gRPC inside.
//!
//! ```text
//! producers ──submit(frame by reference)──► per-stream bounded queue (block | skip)
//!                                               │  round-robin, max-batch / max-latency
//!                                               ▼
//!                           worker: preprocess planes ► vision tower ► unit embeddings
//!                                               │  label set snapshot (versioned)
//!                                               ▼
//!        per-stream tracker: pooling ► softmax / sigmoid ► smoothing ► events ► top-k
//!                                               │
//!                      ┌────────────────────────┴───────────────────────┐
//!           stream callback, in frame order                observers (never block,
//!           (the frame back + its result)                  told how many they lost)
//! ```
//!
//! ```no_run
//! use cliptag_engine::{Engine, EngineConfig, FrameTiming, LabelSetSpec, OwnedFrame, StreamConfig};
//! use cliptag_model::PixelFormat;
//! # fn main() -> cliptag_engine::Result<()> {
//! let engine = Engine::new(EngineConfig::default())?; // the bundled model
//! engine.set_labels("cam1", LabelSetSpec::from_names(&["a moving ball", "tv static"]), None)?;
//! let stream = engine.attach("cam1", StreamConfig::default(), |done| {
//!     println!("{:?}", done.result.top());
//! })?;
//! let frame = OwnedFrame::new(PixelFormat::Rgb, 320, 240, vec![0; 320 * 240 * 3])?;
//! stream.submit(frame, FrameTiming::default())?;
//! stream.drain(std::time::Duration::from_secs(10));
//! # Ok(()) }
//! ```

mod broadcast;
mod engine;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod frame;
mod label_set;
mod label_spec;
mod results;
mod stats;
mod stream;
mod text_cache;
mod tracker;
mod worker;

pub use broadcast::{Received, Subscription};
pub use cliptag_model;
pub use engine::{Engine, EngineConfig, EngineStats, Stream, StreamInfo, WARM_UP_FRAMES};
pub use error::{EngineError, Result};
pub use frame::{FrameTiming, OwnedFrame, VideoFrame};
pub use label_set::LabelSet;
pub use label_spec::{
    Label, LabelError, LabelSetSpec, MAX_LABELS, MAX_POOLED_FRAMES, MAX_PROMPTS_PER_LABEL, Pooling,
    Quoted, Scoring,
};
pub use results::{Completion, EventKind, FrameResult, LabelEvent, LabelScore};
pub use stats::{LATENCY_BUCKETS_SECONDS, LatencyHistogram, StreamStats};
pub use stream::{Overload, ResultCallback, StreamConfig};
pub use tracker::Smoothing;

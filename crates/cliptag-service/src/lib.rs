//! cliptag's gRPC service: change the labels of running streams and stream their
//! detections to any number of clients.
//!
//! The service serves every engine registered with the process's [`Hub`] (every
//! `cliptag` element registers its engine there), whichever element or program started
//! the server. A [`Server`] runs on its own small tokio runtime, so callers need none;
//! one server runs per process and address ([`Server::shared`]).
//!
//! ```no_run
//! use cliptag_engine::{Engine, EngineConfig};
//! use cliptag_service::{Server, ServerConfig, hub};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(EngineConfig::default())?;
//! let _registration = hub().register(&engine);
//! let server = Server::shared(ServerConfig::new("127.0.0.1:50051"))?;
//! println!("serving on {}", server.local_addr());
//! # Ok(()) }
//! ```

mod background;
pub mod brokers;
pub mod console;
mod convert;
mod detections;
mod hub;
pub(crate) mod json;
pub mod metrics;
mod server;
mod service;
mod supervision;

pub use cliptag_proto::{self as proto, v1};
pub use detections::{CHANNEL_DEPTH, Filter};
pub use hub::{Hub, Registration, hub};
pub use server::{Server, ServerConfig, ServerError, TlsFiles, parse_address};
pub use service::{CliptagService, MAX_IMAGE_BYTES};
pub use supervision::{StreamHealth, StreamState, Supervised};

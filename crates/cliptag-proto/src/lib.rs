//! The cliptag gRPC API, package `cliptag.v1`, generated from `proto/cliptag/v1/`.
//!
//! The messages and the service are documented in the `.proto` file; the server lives in
//! `cliptag-service`, clients use [`v1::cliptag_client::CliptagClient`].

/// Package `cliptag.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("cliptag.v1");
}

/// The encoded `FileDescriptorSet` of the API (with its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cliptag_descriptor.bin"));

impl v1::stream_health::State {
    /// The state's name as people read it: starting, running, restarting, ended,
    /// failed (unknown when unspecified).
    pub fn label(self) -> &'static str {
        use v1::stream_health::State;
        match self {
            State::Unspecified => "unknown",
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Ended => "ended",
            State::Failed => "failed",
        }
    }
}

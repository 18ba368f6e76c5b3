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

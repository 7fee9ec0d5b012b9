//! The generated code, in a file of its own so that [`crate::kind`] can
//! use its types without importing from the crate root that re-exports it.
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("sock.v1");

/// Encoded descriptors of every sock service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sock_descriptor");

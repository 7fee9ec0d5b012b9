//! Generated gRPC messages, clients and servers of sock's four services.
//!
//! The `.proto` files live in `proto/sock/v1`, one per service plus
//! `common.proto` for the types they share. [`kind`] holds the one table
//! of error kinds every service and the CLI map errors with.
#![forbid(unsafe_code)]

pub mod kind;
pub use kind::ERROR_HEADER;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sock.v1");

    /// Encoded descriptors of every sock service, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sock_descriptor");
}

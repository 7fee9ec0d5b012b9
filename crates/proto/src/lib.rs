//! Generated gRPC messages, clients and servers of sock's four services.
//!
//! The `.proto` files live in `proto/sock/v1`, one per service plus
//! `common.proto` for the types they share.
#![forbid(unsafe_code)]

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sock.v1");

    /// Encoded descriptors of every sock service, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sock_descriptor");
}

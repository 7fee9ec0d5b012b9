//! Generated gRPC messages, clients and servers of sock's four services.
//!
//! The `.proto` files live in `proto/sock/v1`, one per service plus
//! `common.proto` for the types they share. [`kind`] holds the one table
//! of error kinds every service and the CLI map errors with.
#![forbid(unsafe_code)]

pub mod kind;
pub mod v1;

pub use kind::ERROR_HEADER;

//! Library side of the `sock` command: where a local cluster's services
//! listen (`endpoints.json`) and its tokens, shared with the end-to-end
//! tests.
#![forbid(unsafe_code)]

pub mod auth;
pub mod endpoints;
pub mod failure;
pub mod tokens;

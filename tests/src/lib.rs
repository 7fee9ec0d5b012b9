//! Support for sock's end-to-end tests: start a whole local cluster the way
//! `sock up` does (real processes, real sandboxes), talk to it, and tear it
//! down even when a test fails.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod functions;
pub mod kafka;
pub mod otlp;
pub mod process;
pub mod wheels;

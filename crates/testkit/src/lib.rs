//! What sock's tests share, so that no test file keeps its own copy:
//! services started in the test's own process (the registry, the
//! gateway), fakes of the services they talk to (a sandboxd, a cache),
//! whole local clusters started the way `sock up` does (real processes,
//! real sandboxes) and what the end-to-end tests run beside them (single
//! services, a Kafka broker, an OTLP receiver, functions and wheels).
//! Everything a test starts stops when dropped, even when the test fails.
#![forbid(unsafe_code)]

use std::path::Path;

pub mod cluster;
pub mod fake_cache;
pub mod fake_sandboxd;
pub mod functions;
pub mod gateway;
pub mod kafka;
pub mod otlp;
pub mod process;
pub mod registry;
pub mod serve;
pub mod wheels;

/// The repository's root directory.
pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("this crate is crates/testkit of the repository")
}

/// Every message of a server stream that ends (a `Logs` that does not
/// follow, a watch cut by shutdown).
pub async fn collect<T>(mut stream: tonic::Streaming<T>) -> Vec<T> {
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await.expect("a streamed message") {
        messages.push(message);
    }
    messages
}

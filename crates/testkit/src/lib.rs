//! What sock's tests share: services started in the test's own process
//! (the registry, the gateway), fakes of the services they talk to (a
//! sandboxd, a cache), and whole local clusters started through `sock up`.
//! Everything a test starts stops when dropped, even when the test fails.
#![forbid(unsafe_code)]

pub mod fake_cache;
pub mod fake_sandboxd;
pub mod gateway;
pub mod registry;
pub mod serve;

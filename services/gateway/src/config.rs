//! The gateway's settings (section `[gateway]`, env `SOCK_GATEWAY_*`).
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// gRPC address the public API listens on.
    pub listen: String,
    /// The registry's gRPC endpoint, for function metadata.
    pub registry_addr: String,
    /// The sandbox node's gRPC endpoint.
    pub sandboxd_addr: String,
    /// How long a function's version and config are served from memory
    /// before the registry is asked again.
    pub registry_cache_ms: u64,
    /// Budget of a call when neither the caller nor the function's limits
    /// set a shorter one.
    pub default_timeout_ms: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7070".into(),
            registry_addr: "http://127.0.0.1:7071".into(),
            sandboxd_addr: "http://127.0.0.1:7074".into(),
            registry_cache_ms: 5000,
            default_timeout_ms: 30_000,
        }
    }
}

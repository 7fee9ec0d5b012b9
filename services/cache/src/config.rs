//! The cache's settings: embedded defaults, overridden by the `[cache]`
//! section of the config file and `SOCK_CACHE_*` variables.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC address of the `sock.v1.Cache` service.
    pub listen: String,
    /// Base URL of the registry's HTTP bundle store.
    pub registry_url: String,
    /// Where unpacked code lives; sandboxes read it through bind mounts.
    pub data_dir: PathBuf,
    /// How long a registry answer counts as current before the next
    /// conditional request.
    pub registry_cache_ms: u64,
    /// Address of Prometheus `/metrics`; empty = not served.
    pub metrics_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7073".into(),
            registry_url: "http://127.0.0.1:7072".into(),
            data_dir: PathBuf::from(".sock/cache"),
            registry_cache_ms: 5000,
            metrics_listen: String::new(),
        }
    }
}

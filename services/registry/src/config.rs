//! The registry's settings, loaded by `sock_service::load_config("registry", …)`.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sock_service::{Ceilings, Secret};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address of the gRPC admin API (push, get, list, delete).
    pub grpc_listen: String,
    /// Address of the HTTP bundle store (`GET /functions/{name}`).
    pub http_listen: String,
    /// Where sled keeps functions and bundles.
    pub data_dir: PathBuf,
    /// Largest bundle accepted, compressed, in MiB.
    pub max_bundle_mb: u64,
    /// Space kept free on the data dir's disk, in MiB: a push that would
    /// leave less is refused before anything is written, because sled,
    /// once its log meets a full disk, fails reads too until reopened.
    pub min_free_mb: u64,
    /// Bearer token of the admin API (push, list, delete) and `/metrics`;
    /// none = open, and then only loopback addresses are served.
    pub admin_token: Option<Secret>,
    /// Bearer token of what the gateway and caches read: `GetFunction`
    /// and the bundle store.
    pub node_token: Option<Secret>,
    /// Address of Prometheus `/metrics`; empty = not served.
    pub metrics_listen: String,
    /// The most a function's ol.yaml `limits:` may ask (`max_memory_mb`,
    /// `max_pids`, `max_timeout_ms`, `max_cpu_percent`); a push asking for
    /// more is refused. Keep them equal to sandboxd's, which caps at its own.
    #[serde(flatten)]
    pub ceilings: Ceilings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_listen: "127.0.0.1:7071".into(),
            http_listen: "127.0.0.1:7072".into(),
            data_dir: PathBuf::from(".sock/registry"),
            max_bundle_mb: 32,
            min_free_mb: 64,
            admin_token: None,
            node_token: None,
            metrics_listen: String::new(),
            ceilings: Ceilings::default(),
        }
    }
}

impl Config {
    pub(crate) fn tokens(&self) -> sock_service::Tokens {
        sock_service::Tokens::new(None, self.admin_token.as_ref(), self.node_token.as_ref())
    }

    pub(crate) fn max_bundle_bytes(&self) -> u64 {
        self.max_bundle_mb.saturating_mul(1 << 20)
    }
}

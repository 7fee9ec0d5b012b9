//! The registry's settings, loaded by `sock_service::load_config("registry", …)`.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
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
    /// Bearer token push and delete need; none = open.
    pub admin_token: Option<String>,
    /// Serve the admin API on a non-loopback address without a token.
    pub allow_insecure_admin: bool,
    /// Address of Prometheus `/metrics`; empty = not served.
    pub metrics_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_listen: "127.0.0.1:7071".into(),
            http_listen: "127.0.0.1:7072".into(),
            data_dir: PathBuf::from(".sock/registry"),
            max_bundle_mb: 32,
            admin_token: None,
            allow_insecure_admin: false,
            metrics_listen: String::new(),
        }
    }
}

/// Like a derived Debug, but the token shows only whether it is set: the
/// effective config is logged.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_listen", &self.grpc_listen)
            .field("http_listen", &self.http_listen)
            .field("data_dir", &self.data_dir)
            .field("max_bundle_mb", &self.max_bundle_mb)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_insecure_admin", &self.allow_insecure_admin)
            .field("metrics_listen", &self.metrics_listen)
            .finish()
    }
}

impl Config {
    pub(crate) fn max_bundle_bytes(&self) -> u64 {
        self.max_bundle_mb.saturating_mul(1 << 20)
    }
}

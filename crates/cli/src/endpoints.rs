//! Where the services listen. `sock up` writes them to
//! `<data dir>/endpoints.json`, so the other commands find a local cluster
//! with no flags; flags and env override.
//!
//! Besides each service's address: `gateway_http`, `registry_metrics`,
//! `cache_metrics`, `sandboxd_metrics` and `pids` (service name → pid).
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sock_proto::v1::ErrorKind;

use crate::failure::Failed;

pub const FILE_NAME: &str = "endpoints.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Endpoints {
    pub gateway: String,
    pub registry: String,
    pub registry_http: String,
    pub cache: String,
    pub sandboxd: String,
    /// The gateway's HTTP API (`/run/<name>`, `/metrics`). Files written
    /// before it existed lack it and get the default.
    #[serde(default = "default_gateway_http")]
    pub gateway_http: String,
    /// Prometheus `/metrics` of registry, cache and sandboxd, as base URLs
    /// (the gateway's is on `gateway_http`). Files written before they
    /// existed get the defaults.
    #[serde(default = "default_registry_metrics")]
    pub registry_metrics: String,
    #[serde(default = "default_cache_metrics")]
    pub cache_metrics: String,
    #[serde(default = "default_sandboxd_metrics")]
    pub sandboxd_metrics: String,
    /// Process ids of the services `sock up` started, by service name
    /// (`registry`, `cache`, `sandboxd`, `gateway`); empty when unknown.
    #[serde(default)]
    pub pids: BTreeMap<String, u32>,
}

fn default_gateway_http() -> String {
    "http://127.0.0.1:7075".into()
}

fn default_registry_metrics() -> String {
    "http://127.0.0.1:7076".into()
}

fn default_cache_metrics() -> String {
    "http://127.0.0.1:7077".into()
}

fn default_sandboxd_metrics() -> String {
    "http://127.0.0.1:7078".into()
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            gateway: "http://127.0.0.1:7070".into(),
            registry: "http://127.0.0.1:7071".into(),
            registry_http: "http://127.0.0.1:7072".into(),
            cache: "http://127.0.0.1:7073".into(),
            sandboxd: "http://127.0.0.1:7074".into(),
            gateway_http: default_gateway_http(),
            registry_metrics: default_registry_metrics(),
            cache_metrics: default_cache_metrics(),
            sandboxd_metrics: default_sandboxd_metrics(),
            pids: BTreeMap::new(),
        }
    }
}

impl Endpoints {
    pub fn resolve(data_dir: &Path, gateway: Option<String>, registry: Option<String>) -> Self {
        let mut endpoints = std::fs::read(data_dir.join(FILE_NAME))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let Endpoints {
            gateway: g,
            registry: r,
            ..
        } = &mut endpoints;
        if let Some(gateway) = gateway {
            *g = with_scheme(gateway);
        }
        if let Some(registry) = registry {
            *r = with_scheme(registry);
        }
        endpoints
    }

    /// Writes `<data_dir>/endpoints.json`: aside, then renamed in, so a
    /// reader (the CLI, a script waiting for the suite) never sees a
    /// half-written file.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let mut staged = tempfile::NamedTempFile::new_in(data_dir)?;
        staged.write_all(&serde_json::to_vec_pretty(self)?)?;
        // Addresses and pids only (the tokens live apart): readable by every
        // user's CLI, as a plain write made it.
        staged
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        staged
            .persist(data_dir.join(FILE_NAME))
            .map_err(|e| e.error)?;
        Ok(())
    }
}

/// Accepts `host:port` as well as a URL.
fn with_scheme(addr: String) -> String {
    if addr.contains("://") {
        addr
    } else {
        format!("http://{addr}")
    }
}

pub async fn connect(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| anyhow::anyhow!("invalid address {addr}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(3));
    endpoint.connect().await.map_err(|e| {
        Failed::new(
            ErrorKind::Platform,
            format!("cannot reach {addr}: {e}; is sock running (`sock up`)?"),
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_files_without_gateway_http_still_load() {
        let old = r#"{"gateway":"http://h:1","registry":"http://h:2","registry_http":"http://h:3",
                      "cache":"http://h:4","sandboxd":"http://h:5"}"#;
        let endpoints: Endpoints = serde_json::from_str(old).expect("old file");
        assert_eq!(endpoints.gateway, "http://h:1");
        assert_eq!(endpoints.gateway_http, "http://127.0.0.1:7075");
        assert_eq!(endpoints.sandboxd_metrics, "http://127.0.0.1:7078");
        assert!(endpoints.pids.is_empty());
    }
}

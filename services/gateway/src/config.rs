//! The gateway's settings (section `[gateway]`, env `SOCK_GATEWAY_*`).
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC address the public API listens on.
    pub listen: String,
    /// HTTP address: OpenLambda's `/run/<name>[/<path>]` and `/metrics`.
    pub http_listen: String,
    /// The registry's gRPC endpoint, for function metadata.
    pub registry_addr: String,
    /// One sandbox node's gRPC endpoint; used when `sandboxd_addrs` is empty.
    pub sandboxd_addr: String,
    /// The sandbox nodes: URLs, or `dns:HOST:PORT` for every address the
    /// name resolves to (resolved again every `dns_refresh_ms`).
    pub sandboxd_addrs: Vec<String>,
    /// How long a function's version and config are served from memory
    /// before the registry is asked again.
    pub registry_cache_ms: u64,
    /// Budget of a call when neither the caller nor the function's limits
    /// set a shorter one.
    pub default_timeout_ms: u32,
    /// Calls running at once, over all functions.
    pub max_concurrency: usize,
    /// Calls of one function running at once.
    pub max_concurrency_per_function: usize,
    /// Calls waiting for a slot; beyond it calls are refused (429).
    pub max_queue: usize,
    /// Largest payload (or HTTP request body) accepted.
    pub max_payload_bytes: u64,
    /// Calls one node runs at once before new calls spill to the next node.
    pub max_concurrency_per_node: usize,
    /// How often every node's health is checked.
    pub health_interval_ms: u64,
    /// How often `dns:` node names are resolved again.
    pub dns_refresh_ms: u64,
    /// Bearer token callers must present to invoke functions; none = open.
    pub invoke_token: Option<String>,
    /// Bearer token for `Logs` and `/metrics`; none = open.
    pub admin_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7070".into(),
            http_listen: "127.0.0.1:7075".into(),
            registry_addr: "http://127.0.0.1:7071".into(),
            sandboxd_addr: "http://127.0.0.1:7074".into(),
            sandboxd_addrs: Vec::new(),
            registry_cache_ms: 5000,
            default_timeout_ms: 30_000,
            max_concurrency: 64,
            max_concurrency_per_function: 16,
            max_queue: 256,
            max_payload_bytes: 6 << 20,
            max_concurrency_per_node: 32,
            health_interval_ms: 1000,
            dns_refresh_ms: 5000,
            invoke_token: None,
            admin_token: None,
        }
    }
}

/// Like a derived Debug, but tokens show only whether they are set: the
/// effective config is logged.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("http_listen", &self.http_listen)
            .field("registry_addr", &self.registry_addr)
            .field("sandboxd_addr", &self.sandboxd_addr)
            .field("sandboxd_addrs", &self.sandboxd_addrs)
            .field("registry_cache_ms", &self.registry_cache_ms)
            .field("default_timeout_ms", &self.default_timeout_ms)
            .field("max_concurrency", &self.max_concurrency)
            .field(
                "max_concurrency_per_function",
                &self.max_concurrency_per_function,
            )
            .field("max_queue", &self.max_queue)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_concurrency_per_node", &self.max_concurrency_per_node)
            .field("health_interval_ms", &self.health_interval_ms)
            .field("dns_refresh_ms", &self.dns_refresh_ms)
            .field("invoke_token", &secret(&self.invoke_token))
            .field("admin_token", &secret(&self.admin_token))
            .finish()
    }
}

impl Config {
    /// The configured nodes: `sandboxd_addrs`, or `sandboxd_addr` alone.
    pub(crate) fn node_addrs(&self) -> Vec<String> {
        if self.sandboxd_addrs.is_empty() {
            vec![self.sandboxd_addr.clone()]
        } else {
            self.sandboxd_addrs.clone()
        }
    }
}

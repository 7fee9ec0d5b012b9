//! The gateway's settings (section `[gateway]`, env `SOCK_GATEWAY_*`).
use serde::{Deserialize, Serialize};
use sock_service::Secret;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC address the public API listens on.
    pub listen: String,
    /// HTTP address: OpenLambda's `/run/<name>[/<path>]`, `/status` and
    /// `/registry`, and `/metrics`.
    pub http_listen: String,
    /// The registry's gRPC endpoint, for function metadata.
    pub registry_addr: String,
    /// One sandbox node's gRPC endpoint; used when `sandboxd_addrs` is empty.
    pub sandboxd_addr: String,
    /// The sandbox nodes: URLs, or `dns:HOST:PORT` for every address the
    /// name resolves to (resolved again every `dns_refresh_ms`).
    pub sandboxd_addrs: Vec<String>,
    /// How long a function's version and config are served from memory
    /// before the registry is asked again, while the registry's watch is
    /// down; while it is up, a change is seen as soon as it is made.
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
    /// Largest bundle `POST /registry/<name>` accepts, compressed, in MiB;
    /// the registry checks its own `max_bundle_mb` again (keep them equal).
    pub max_bundle_mb: u64,
    /// Calls one node runs at once before new calls spill to the next node.
    pub max_concurrency_per_node: usize,
    /// How often the registry is asked for every function's cron triggers
    /// (a push or delete through this gateway's `/registry` asks at once).
    pub cron_refresh_ms: u64,
    /// How often every node's health is checked.
    pub health_interval_ms: u64,
    /// How often `dns:` node names are resolved again.
    pub dns_refresh_ms: u64,
    /// How often the registry is asked which functions have Kafka
    /// triggers, to start, replace and stop their consumers; 0 = this
    /// gateway runs no Kafka consumers (others in the cluster may).
    pub kafka_poll_interval_ms: u64,
    /// The Kafka brokers function triggers may name, as `host:port`: a
    /// trigger is consumed only when every one of its `bootstrap_servers`
    /// is here, for its author is not trusted to choose where the gateway
    /// connects. A list, or one string of comma-separated entries (as
    /// `SOCK_GATEWAY_KAFKA_BROKERS` gives it); empty = no trigger is
    /// consumed.
    #[serde(deserialize_with = "sock_service::list_or_commas")]
    pub kafka_brokers: Vec<String>,
    /// Bearer token callers must present to invoke functions; none = open.
    pub invoke_token: Option<Secret>,
    /// Bearer token for `Logs`, `/registry` and `/metrics`; none = open.
    pub admin_token: Option<Secret>,
    /// The token sock's services show each other: sent to the registry
    /// and to sandboxd nodes reached over TCP.
    pub node_token: Option<Secret>,
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
            max_bundle_mb: 32,
            max_concurrency_per_node: 32,
            cron_refresh_ms: 10_000,
            health_interval_ms: 1000,
            dns_refresh_ms: 5000,
            kafka_poll_interval_ms: 10_000,
            kafka_brokers: Vec::new(),
            invoke_token: None,
            admin_token: None,
            node_token: None,
        }
    }
}

impl Config {
    /// What the gateway's own servers accept.
    pub(crate) fn tokens(&self) -> sock_service::Tokens {
        sock_service::Tokens::new(self.invoke_token.as_ref(), self.admin_token.as_ref(), None)
    }

    /// The configured nodes: `sandboxd_addrs`, or `sandboxd_addr` alone.
    pub(crate) fn node_addrs(&self) -> Vec<String> {
        if self.sandboxd_addrs.is_empty() {
            vec![self.sandboxd_addr.clone()]
        } else {
            self.sandboxd_addrs.clone()
        }
    }
}

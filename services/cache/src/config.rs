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
    /// Where unpacked code and installed packages live; sandboxes read
    /// them through bind mounts.
    pub data_dir: PathBuf,
    /// Address of Prometheus `/metrics`; empty = not served.
    pub metrics_listen: String,
    /// Bearer token of `/metrics`; none = open, and then only loopback
    /// addresses are served.
    pub admin_token: Option<sock_service::Secret>,
    /// The token sock's services show each other: sandboxd presents it to
    /// `Prepare`, the cache to the registry's bundle store.
    pub node_token: Option<sock_service::Secret>,
    /// Dirs of wheels pip installs from instead of an index (offline:
    /// `--no-index --find-links`). A list, or one string of
    /// comma-separated dirs (as `SOCK_CACHE_FIND_LINKS` gives it).
    #[serde(deserialize_with = "sock_service::list_or_commas")]
    pub find_links: Vec<PathBuf>,
    /// The package index pip uses when `find_links` is empty.
    pub index_url: String,
    /// How long one pip run may take.
    pub installer_timeout_s: u64,
    /// Packages with no wheel for the sandboxes' platform are built from
    /// their sdist, by sandboxd in a sandbox with no network, during a
    /// cold start. Off: such packages are refused.
    pub allow_source_builds: bool,
    /// `tree`: answer the import-cache tree node that fits each function;
    /// `off`: no zygote chain.
    pub import_cache: sock_service::ImportCache,
    /// The import-cache tree: inline JSON, or a path to a JSON file, in
    /// OpenLambda's shape `{"packages": [...], "children": [...]}`; empty
    /// means a tree learned from this node's cold starts (`learn.rs`).
    pub import_tree: String,
    /// How often a learned tree is rebuilt from what was seen since.
    pub tree_rebuild_ms: u64,
    /// The memory a learned tree may plan for its zygotes (estimated from
    /// their packages' installed size).
    pub tree_budget_mb: u64,
    /// The sandboxes' interpreter, asked once for its marker environment
    /// (python_version, sys_platform, …).
    pub python: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7073".into(),
            registry_url: "http://127.0.0.1:7072".into(),
            data_dir: PathBuf::from(".sock/cache"),
            metrics_listen: String::new(),
            admin_token: None,
            node_token: None,
            find_links: Vec::new(),
            index_url: "https://pypi.org/simple".into(),
            installer_timeout_s: 300,
            allow_source_builds: false,
            import_cache: sock_service::ImportCache::Tree,
            import_tree: String::new(),
            tree_rebuild_ms: 10_000,
            tree_budget_mb: 2048,
            python: PathBuf::from("/usr/bin/python3"),
        }
    }
}

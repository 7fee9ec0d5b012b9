//! sandboxd's settings: where it listens, where it keeps state, and the
//! default limits of a sandbox when a function names none.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where `sock.v1.Sandboxd` answers: `unix:PATH` (the socket file is
    /// 0600, or 0660 with `client_gid`), or `HOST:PORT`, which needs
    /// `node_token`.
    pub listen: String,
    /// The uid and gid besides root that may call over the unix socket
    /// (the gateway's); the socket file is handed to them and each
    /// connection's peer credentials are checked.
    pub client_uid: Option<u32>,
    pub client_gid: Option<u32>,
    /// The token sock's services show each other: required of callers
    /// over TCP, and sent to the cache's `Prepare`.
    pub node_token: Option<sock_service::Secret>,
    /// Bearer token of `/metrics`; none = open, and then only loopback
    /// addresses are served.
    pub admin_token: Option<sock_service::Secret>,
    /// gRPC address of the node's cache.
    pub cache_addr: String,
    /// sandboxd's state: the runtime file and the sandboxes' root mount
    /// point. Never visible inside a sandbox.
    pub data_dir: PathBuf,
    /// Names this daemon's cgroups (`<ctrl>/sock/<instance>/<sandbox>`), so
    /// daemons of parallel test clusters never touch each other's.
    pub instance: String,
    /// Python interpreter, as a path that also exists inside the sandbox
    /// (the host's `/usr` is mounted there).
    pub python: PathBuf,
    /// The ids a source build runs as (`pip wheel` of an sdist).
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    /// Each function sandbox runs as a uid of its own, with a gid of the
    /// same number, from `function_uid_base .. function_uid_base +
    /// function_uids`: host ids nothing else uses (the default sits above
    /// the ranges systemd hands to containers), as many as sandboxes may
    /// live at once.
    pub function_uid_base: u32,
    pub function_uids: u32,
    /// Defaults for a function whose limits say 0. `cpu_percent` is a
    /// CFS quota in percent of one CPU (100 = one CPU), so a function that
    /// asks nothing cannot take the whole machine.
    pub memory_mb: u64,
    pub pids: u32,
    pub timeout_ms: u32,
    pub cpu_percent: u32,
    /// The most any sandbox gets (`max_memory_mb`, `max_pids`,
    /// `max_timeout_ms`, `max_cpu_percent`): limits over them, or defaults
    /// set over them, are lowered to them, whatever the registry let
    /// through.
    #[serde(flatten)]
    pub ceilings: sock_service::Ceilings,
    /// Size of each sandbox's `/tmp`; its pages count against memory_mb.
    pub tmp_mb: u64,
    /// Memory all sandboxes together may reserve (each its memory limit,
    /// a paused one only what it uses);
    /// 0 means the machine's total RAM minus 500 MB.
    pub mem_pool_mb: u64,
    /// An idle sandbox is paused (frozen, memory limit shrunk to its use)
    /// after this long without a call. Long enough that a function called
    /// a few times a second stays thawed, short enough that an idle one
    /// stops using CPU at once.
    pub pause_after_ms: u64,
    /// When the machine's available memory drops below this, idle
    /// sandboxes are evicted until it is back above; 0 turns it off.
    pub min_free_mb: u64,
    /// Empty cgroups and network namespaces kept ready, so that starting
    /// a sandbox creates neither.
    pub cgroup_pool_size: usize,
    pub netns_pool_size: usize,
    /// How long shutdown waits for in-flight calls before it destroys
    /// their sandboxes.
    pub shutdown_grace_ms: u64,
    /// The `sock-sandboxd` binary that is re-executed as each sandbox's
    /// init; unset means this process's own executable. Only programs that
    /// embed sandboxd without its `main` (such as tests) need to set it.
    pub init_program: Option<PathBuf>,
    /// `tree`: cold starts fork from a zygote of the import-cache tree (the
    /// root zygote when the cache names no node); `off`: every cold start
    /// is a fresh sandbox.
    pub import_cache: sock_service::ImportCache,
    /// Memory limit of each zygote, reserved from the pool while it lives.
    pub zygote_memory_mb: u64,
    /// After a zygote failed to start (an import raised, it ran out of
    /// time), cold starts fork from its nearest working ancestor and no
    /// new start is tried for this long; doubled after each further
    /// failure, up to 64 times as long.
    pub zygote_retry_ms: u64,
    /// Host uid and gid that root inside a zygote's user namespace maps
    /// to: unprivileged, and not the functions' uid.
    pub zygote_uid: u32,
    pub zygote_gid: u32,
    /// Remount the host's cgroup2 hierarchy with `favordynmods` at start:
    /// moving a process into a cgroup then costs ~0.3 ms instead of an RCU
    /// grace period (5-15 ms here), which dominates a zygote fork; forks
    /// and exits on the whole machine get slightly dearer. A host-wide
    /// setting, so off unless the operator asks.
    pub cgroup_favor_dynmods: bool,
    /// The cache's data dir: code, package and sdist dirs below it are
    /// opened beneath it, never through a symlink.
    pub cache_data_dir: PathBuf,
    /// Limits of a source build's sandbox (`pip wheel` of an sdist).
    pub installer_mem_mb: u64,
    pub installer_timeout_s: u64,
    /// Address of Prometheus `/metrics`; empty = not served.
    pub metrics_listen: String,
    /// Bytes of stdout+stderr one call may log; the rest is read and
    /// dropped, and the call's log says how much. Each line counts 128
    /// bytes besides its text (what keeping it costs), so empty lines
    /// flood no more than text. 1 MiB holds any honest trace of a call
    /// while a flood costs the node little.
    pub max_output_bytes_per_call: u64,
    /// What a sandbox may log over time, as a token bucket of this rate
    /// whose burst is `max_output_bytes_per_call`: one call can print its
    /// whole allowance at once, but a function called in a tight loop
    /// cannot turn the node's log into a firehose.
    pub output_bytes_per_s: u64,
    /// Bytes of log lines kept per function for `Logs`, and how many
    /// functions keep theirs: the one written longest ago goes first, so
    /// the kept lines stay bounded (at most their product) while a
    /// function just called still has its lines.
    pub log_ring_bytes: u64,
    pub log_ring_functions: usize,
    /// The largest result (JSON, or an HTTP response body) a function may
    /// return; the runtime refuses larger ones with a clear error, and
    /// sandboxd never reads a larger reply. 6 MiB, as AWS Lambda.
    pub max_result_bytes: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "unix:.sock/sandboxd.sock".into(),
            client_uid: None,
            client_gid: None,
            node_token: None,
            admin_token: None,
            cache_addr: "http://127.0.0.1:7073".into(),
            data_dir: ".sock/sandboxd".into(),
            instance: "default".into(),
            python: "/usr/bin/python3".into(),
            sandbox_uid: 65534,
            sandbox_gid: 65534,
            function_uid_base: 1_879_048_192,
            function_uids: 65_536,
            memory_mb: 128,
            pids: 32,
            timeout_ms: 30_000,
            cpu_percent: 100,
            ceilings: sock_service::Ceilings::default(),
            tmp_mb: 64,
            mem_pool_mb: 0,
            pause_after_ms: 500,
            min_free_mb: 256,
            cgroup_pool_size: 16,
            netns_pool_size: 8,
            shutdown_grace_ms: 10_000,
            init_program: None,
            import_cache: sock_service::ImportCache::Tree,
            zygote_memory_mb: 256,
            zygote_retry_ms: 5_000,
            zygote_uid: 65533,
            zygote_gid: 65533,
            cgroup_favor_dynmods: false,
            cache_data_dir: ".sock/cache".into(),
            installer_mem_mb: 512,
            installer_timeout_s: 300,
            metrics_listen: String::new(),
            max_output_bytes_per_call: 1 << 20,
            output_bytes_per_s: 256 << 10,
            log_ring_bytes: 1 << 20,
            log_ring_functions: 64,
            max_result_bytes: 6 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock.toml");
        std::fs::write(
            &path,
            "[sandboxd]\ninstance = \"ci\"\nmemory_mb = 256\nmax_pids = 64\n\
             init_program = \"/opt/sock-sandboxd\"\n",
        )
        .expect("write config");
        let config: Config = sock_service::load_config("sandboxd", Some(&path)).expect("load");
        assert_eq!(config.instance, "ci");
        assert_eq!(config.memory_mb, 256);
        assert_eq!(config.ceilings.max_pids, 64);
        assert_eq!(
            config.ceilings.max_memory_mb,
            sock_service::Ceilings::default().max_memory_mb
        );
        assert_eq!(
            config.init_program,
            Some(PathBuf::from("/opt/sock-sandboxd"))
        );
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn defaults_load_without_a_file() {
        let config: Config = sock_service::load_config("sandboxd", None).expect("load");
        assert_eq!(config.init_program, None);
        assert_eq!(config.sandbox_uid, 65534);
    }
}

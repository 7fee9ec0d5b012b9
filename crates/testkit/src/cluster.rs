//! A local sock cluster started through `sock up`, stopped on drop.
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sock_cli::endpoints::Endpoints;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::invoke_response::Outcome;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_proto::v1::{
    InvokeRequest, InvokeResponse, LogLine, LogsRequest, PushFunctionRequest, StatusRequest,
    StatusResponse,
};
use sock_service::limits::Carrying;
use tonic::transport::Channel;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// True when the tests may create sandboxes. CI runs as root. Elsewhere a
/// test that needs root fails, unless `SOCK_TEST_ALLOW_SKIP=1` says a skip
/// is wanted: then it prints a loud notice and the caller returns.
pub fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("SOCK_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1"),
        "this test creates sandboxes and needs root; set SOCK_TEST_ALLOW_SKIP=1 to skip it"
    );
    eprintln!(
        "\n*** SKIPPED: this test creates sandboxes and needs root (SOCK_TEST_ALLOW_SKIP=1) ***\n"
    );
    false
}

/// A client channel that sends a bearer token.
pub type Authed = sock_service::Bearer<Channel>;

/// Directory holding the workspace's binaries, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--workspace", "--bins", "--quiet"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(crate::repository())
            .status()
            .expect("run cargo build for the service binaries");
        assert!(status.success(), "building the service binaries failed");
        dir
    })
}

/// A running cluster: `sock up` and its four services.
pub struct Cluster {
    up: Child,
    /// The lines `sock up` itself wrote to stderr so far.
    up_stderr: Arc<Mutex<Vec<String>>>,
    data_dir: tempfile::TempDir,
    pub endpoints: Endpoints,
    /// The sandboxd instance name: its cgroups live under `sock/<instance>`.
    pub instance: String,
}

impl Cluster {
    /// Starts a cluster on free ports with a fresh data dir.
    pub fn start() -> Cluster {
        Cluster::start_with_env(&[])
    }

    /// Starts a cluster with extra environment for every service (config
    /// via `SOCK_<SERVICE>_<KEY>`, OpenTelemetry via `OTEL_*`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Cluster {
        Cluster::start_from(bin_dir(), "e2e", env)
    }

    /// Starts a cluster from the binaries in `bin` (such as
    /// `target/release` for benchmarks); `prefix` names its sandboxd
    /// instance and data dir.
    pub fn start_from(bin: &Path, prefix: &str, env: &[(&str, &str)]) -> Cluster {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let instance = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let data_dir = tempfile::Builder::new()
            .prefix(&format!("sock-{prefix}-"))
            .tempdir()
            .expect("temp data dir");
        let mut up = Command::new(bin.join("sock"))
            .args(["up", "--port", "0", "--bin-dir"])
            .arg(bin)
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("SOCK_SANDBOXD_INSTANCE", &instance)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sock up");
        let up_stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr = up.stderr.take().expect("piped");
        let lines = up_stderr.clone();
        // All of it is copied to the test's stderr; only `sock up`'s own
        // lines are kept, not its services' (tagged `[<service>]`), which
        // a long benchmark would pile up.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if !line.starts_with('[') {
                    lines.lock().expect("no panic while held").push(line);
                }
            }
        });
        let mut cluster = Cluster {
            up,
            up_stderr,
            data_dir,
            endpoints: Endpoints::default(),
            instance,
        };
        cluster.endpoints = cluster.wait_up();
        cluster
    }

    fn wait_up(&mut self) -> Endpoints {
        let file = self.data_dir.path().join(sock_cli::endpoints::FILE_NAME);
        let started = Instant::now();
        loop {
            if let Ok(bytes) = std::fs::read(&file) {
                return serde_json::from_slice(&bytes).expect("endpoints.json is valid");
            }
            if let Some(status) = self.up.try_wait().expect("poll sock up") {
                panic!("sock up exited before the cluster was up: {status}");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "cluster not up after {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The lines `sock up` itself wrote to stderr so far (not its
    /// services').
    pub fn up_stderr(&self) -> Vec<String> {
        self.up_stderr.lock().expect("no panic while held").clone()
    }

    /// `service`'s pid as `sock up` records it now: `None` while the
    /// service is down, a new one once a restarted run answers health.
    pub fn pid(&self, service: &str) -> Option<u32> {
        let file = self.data_dir().join(sock_cli::endpoints::FILE_NAME);
        let endpoints: Endpoints =
            serde_json::from_slice(&std::fs::read(file).ok()?).expect("endpoints.json is valid");
        endpoints.pids.get(service).copied()
    }

    /// The processes `sock up` started for this cluster, whatever their
    /// state: those whose environment names its data dir.
    pub fn processes(&self) -> Vec<i32> {
        let dir = self.data_dir().as_os_str().as_encoded_bytes();
        pids_where(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(dir.len()).any(|w| w == dir))
        })
    }

    /// Waits up to `within` for `sock up` to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.up.try_wait().expect("poll sock up") {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "sock up still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A token of this cluster (`sock up` made them in its data dir).
    pub fn token(&self, kind: sock_cli::tokens::Kind) -> String {
        sock_cli::tokens::read(self.data_dir(), kind).expect("sock up made its tokens")
    }

    /// The gateway, with the invoke token.
    pub async fn gateway(&self) -> GatewayClient<Authed> {
        GatewayClient::new(
            self.authed(&self.endpoints.gateway, sock_cli::tokens::Kind::Invoke)
                .await,
        )
        .carrying(sock_service::limits::MAX_CALL_BYTES)
    }

    /// The registry, with the admin token.
    pub async fn registry(&self) -> RegistryClient<Authed> {
        RegistryClient::new(
            self.authed(&self.endpoints.registry, sock_cli::tokens::Kind::Admin)
                .await,
        )
        .max_encoding_message_size(64 << 20)
    }

    /// The lines `function` printed that the nodes keep, through the
    /// gateway's `Logs` (admin token).
    pub async fn logs(&self, function: &str) -> Vec<LogLine> {
        let mut gateway = GatewayClient::new(
            self.authed(&self.endpoints.gateway, sock_cli::tokens::Kind::Admin)
                .await,
        );
        let stream = gateway
            .logs(LogsRequest {
                function: function.into(),
                follow: false,
            })
            .await
            .expect("logs")
            .into_inner();
        crate::collect(stream).await
    }

    /// A channel to `addr` that sends this cluster's `kind` token.
    pub async fn authed(&self, addr: &str, kind: sock_cli::tokens::Kind) -> Authed {
        let token = sock_service::Secret::from(self.token(kind));
        sock_service::Bearer::new(channel(addr).await, Some(&token)).expect("tokens are ASCII")
    }

    /// Pushes a bundle of `files` (path, contents) as the next version of
    /// `name`; answers the version.
    pub async fn push(&self, name: &str, files: &[(&str, &str)]) -> Result<u64, tonic::Status> {
        self.push_bundle(name, crate::functions::bundle(files))
            .await
    }

    /// Pushes a ready bundle as the next version of `name`.
    pub async fn push_bundle(&self, name: &str, bundle: Vec<u8>) -> Result<u64, tonic::Status> {
        let info = self
            .registry()
            .await
            .push_function(PushFunctionRequest {
                name: name.into(),
                bundle,
            })
            .await?
            .into_inner();
        Ok(info.version)
    }

    /// Calls `name` through the gateway's gRPC API.
    pub async fn invoke(
        &self,
        name: &str,
        payload: &[u8],
        timeout_ms: Option<u32>,
    ) -> Result<InvokeResponse, tonic::Status> {
        let response = self
            .gateway()
            .await
            .invoke(InvokeRequest {
                function: name.into(),
                payload: payload.to_vec(),
                timeout_ms,
            })
            .await?;
        Ok(response.into_inner())
    }

    /// sandboxd over its unix socket: the tests run as root, whom its
    /// peer-credential check admits.
    /// Calls `name` with `{}` and answers its JSON result, or the call's
    /// error status; a function that raised fails the test.
    pub async fn call_json(
        &self,
        name: &str,
        timeout_ms: u32,
    ) -> Result<serde_json::Value, tonic::Status> {
        let response = self.invoke(name, b"{}", Some(timeout_ms)).await?;
        match response.outcome.expect("an outcome") {
            Outcome::Result(bytes) => Ok(serde_json::from_slice(&bytes).expect("JSON result")),
            Outcome::Error(e) => panic!("{name} failed: {} {}", e.message, e.traceback),
        }
    }

    pub async fn sandboxd(&self) -> SandboxdClient<Channel> {
        SandboxdClient::new(channel(&self.endpoints.sandboxd).await)
            .carrying(sock_service::limits::MAX_CALL_BYTES)
    }

    /// sandboxd's `Status`.
    pub async fn status(&self) -> StatusResponse {
        self.sandboxd()
            .await
            .status(StatusRequest::default())
            .await
            .expect("status")
            .into_inner()
    }

    /// Stops the cluster as Ctrl-C would, and says whether `sock up` exited
    /// cleanly.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.stop_in_place()
    }

    /// [`Cluster::stop`], keeping the data dir to look at after.
    pub fn stop_in_place(&mut self) -> std::process::ExitStatus {
        if let Some(status) = self.up.try_wait().expect("poll sock up") {
            return status;
        }
        let pid = Pid::from_raw(i32::try_from(self.up.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Some(status) = self.up.try_wait().expect("poll sock up") {
                return status;
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = self.up.kill();
                return self.up.wait().expect("reap sock up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_in_place();
    }
}

/// A channel to `addr` that sends no token.
pub async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(addr.to_string())
        .expect("valid endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Processes in the cgroups of one sandboxd instance's sandboxes, in any
/// hierarchy: the sandboxes' inits, runtimes and zygotes.
pub fn sandbox_pids(instance: &str) -> Vec<i32> {
    let below = format!("/sock/{instance}/");
    pids_where(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|cgroups| cgroups.contains(&below))
    })
}

/// The processes of this machine for which `keep` holds.
fn pids_where(keep: impl Fn(i32) -> bool) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| keep(*pid))
        .collect()
}

/// Cgroup directories of one sandboxd instance that still exist, in any
/// hierarchy (v1 controllers and the v2 mount).
pub fn leftover_cgroups(instance: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for root in roots.flatten() {
        let dir = root.path().join("sock").join(instance);
        if dir.exists() {
            found.push(dir);
        }
    }
    let v2 = Path::new("/sys/fs/cgroup/sock").join(instance);
    if v2.exists() {
        found.push(v2);
    }
    found
}

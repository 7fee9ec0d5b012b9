//! Single services a test starts beside a cluster (a second node, a
//! second gateway), from the workspace's binaries.
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::bin_dir;

/// A process of ours, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process(Child);

impl Process {
    /// Sends `signal` and waits up to 20 s for the process to exit, then
    /// kills it.
    pub fn stop(&mut self, signal: Signal) {
        if self.0.try_wait().expect("poll").is_none() {
            let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
            let _ = kill(pid, signal);
            let started = Instant::now();
            while self.0.try_wait().expect("poll").is_none() {
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = self.0.kill();
                    let _ = self.0.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Signal::SIGTERM);
    }
}

/// A loopback address nothing listens on (until someone binds it).
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// Starts the workspace binary `binary` with `env` (its config).
pub fn start(binary: &str, env: &[(&str, String)]) -> Process {
    Process(
        Command::new(bin_dir().join(binary))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .expect("start service"),
    )
}

/// Waits until `addr` (a URL) takes connections, 30 s at most.
pub async fn wait_for(addr: &str) {
    let started = Instant::now();
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string()).expect("url");
        if endpoint.connect().await.is_ok() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{addr} never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `sock-registry` process serving gRPC on `grpc` and its bundle store on
/// `http` from `data_dir`, with `env` besides, once it takes connections.
pub async fn registry(data_dir: &Path, grpc: &str, http: &str, env: &[(&str, String)]) -> Process {
    let mut all = vec![
        ("SOCK_REGISTRY_GRPC_LISTEN", grpc.to_string()),
        ("SOCK_REGISTRY_HTTP_LISTEN", http.to_string()),
        ("SOCK_REGISTRY_DATA_DIR", data_dir.display().to_string()),
    ];
    all.extend_from_slice(env);
    let process = start("sock-registry", &all);
    wait_for(&format!("http://{grpc}")).await;
    process
}

/// The bundle a registry's store at `http` serves at `path`
/// (`/functions/NAME[/versions/N]`), with its `x-sock-version`.
pub async fn bundle_at(http: &str, path: &str) -> (u64, Vec<u8>) {
    let url = format!("http://{http}{path}");
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
        .get(&url)
        .send()
        .await
        .expect("GET a bundle");
    assert_eq!(response.status(), 200, "{url}");
    let version = response
        .headers()
        .get("x-sock-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-sock-version");
    (version, response.bytes().await.expect("body").to_vec())
}

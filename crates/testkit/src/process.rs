//! Single services a test starts beside a cluster (a second node, a
//! second gateway), from the workspace's binaries.
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

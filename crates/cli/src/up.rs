//! `sock up`: the whole platform on one machine, as four processes.
//!
//! Each service is its own binary next to `sock` (or in `--bin-dir`); `up`
//! gives each its addresses and data dir through `SOCK_<SERVICE>_*`
//! variables, waits until all four answer `grpc.health.v1` with SERVING,
//! records the endpoints in `<data dir>/endpoints.json`, and on Ctrl-C or
//! SIGTERM stops them in call order (gateway first, registry last).
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::select_all;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use sock_cli::endpoints::{Endpoints, FILE_NAME};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Addresses `sock up` hands out: see [`addresses`].
const PORTS: u16 = 9;

#[derive(clap::Args)]
pub struct UpArgs {
    /// TOML file with [gateway], [registry], [cache] and [sandboxd] sections.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Gateway port; registry gRPC, registry HTTP, cache, sandboxd, the
    /// gateway's HTTP API and the /metrics of registry, cache and sandboxd
    /// take the next eight. 0 picks free ports.
    #[arg(long, default_value_t = 7070)]
    port: u16,
    /// Address every service listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Where the sock-* service binaries are [default: next to `sock`]
    #[arg(long, env = "SOCK_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// When a service exits, report it and keep the others running instead
    /// of stopping them all: for rehearsing an outage of one service (its
    /// pid is in endpoints.json).
    #[arg(long, env = "SOCK_UP_KEEP_GOING")]
    keep_going: bool,
}

/// One service in start order, with the environment that wires it up.
struct Service {
    name: &'static str,
    health_addr: String,
    env: Vec<(String, String)>,
}

fn plan(endpoints: &Endpoints, data_dir: &Path) -> Vec<Service> {
    let dir = |s: &str| data_dir.join(s).display().to_string();
    let listen = |url: &str| url.trim_start_matches("http://").to_string();
    let env = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect::<Vec<_>>()
    };
    vec![
        Service {
            name: "registry",
            health_addr: endpoints.registry.clone(),
            env: env(&[
                ("SOCK_REGISTRY_GRPC_LISTEN", listen(&endpoints.registry)),
                (
                    "SOCK_REGISTRY_HTTP_LISTEN",
                    listen(&endpoints.registry_http),
                ),
                ("SOCK_REGISTRY_DATA_DIR", dir("registry")),
                (
                    "SOCK_REGISTRY_METRICS_LISTEN",
                    listen(&endpoints.registry_metrics),
                ),
            ]),
        },
        Service {
            name: "cache",
            health_addr: endpoints.cache.clone(),
            env: env(&[
                ("SOCK_CACHE_LISTEN", listen(&endpoints.cache)),
                ("SOCK_CACHE_REGISTRY_URL", endpoints.registry_http.clone()),
                ("SOCK_CACHE_DATA_DIR", dir("cache")),
                (
                    "SOCK_CACHE_METRICS_LISTEN",
                    listen(&endpoints.cache_metrics),
                ),
                ("SOCK_CACHE_SANDBOXD_ADDR", endpoints.sandboxd.clone()),
            ]),
        },
        Service {
            name: "sandboxd",
            health_addr: endpoints.sandboxd.clone(),
            env: env(&[
                ("SOCK_SANDBOXD_LISTEN", listen(&endpoints.sandboxd)),
                ("SOCK_SANDBOXD_CACHE_ADDR", endpoints.cache.clone()),
                ("SOCK_SANDBOXD_DATA_DIR", dir("sandboxd")),
                (
                    "SOCK_SANDBOXD_METRICS_LISTEN",
                    listen(&endpoints.sandboxd_metrics),
                ),
                // Install writes packages only below the cache's dir.
                ("SOCK_SANDBOXD_CACHE_DATA_DIR", dir("cache")),
            ]),
        },
        Service {
            name: "gateway",
            health_addr: endpoints.gateway.clone(),
            env: env(&[
                ("SOCK_GATEWAY_LISTEN", listen(&endpoints.gateway)),
                ("SOCK_GATEWAY_HTTP_LISTEN", listen(&endpoints.gateway_http)),
                ("SOCK_GATEWAY_REGISTRY_ADDR", endpoints.registry.clone()),
                ("SOCK_GATEWAY_SANDBOXD_ADDR", endpoints.sandboxd.clone()),
            ]),
        },
    ]
}

/// Nine addresses: consecutive ports from `base`, or free ones for 0.
fn addresses(host: &str, base: u16) -> anyhow::Result<Endpoints> {
    let mut ports = Vec::with_capacity(usize::from(PORTS));
    if base == 0 {
        // Hold every listener until all are picked so they differ; the
        // services bind them right after, a window no other sock process
        // races for in practice.
        let held = (0..PORTS)
            .map(|_| TcpListener::bind((host, 0)))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("cannot find free ports on {host}"))?;
        for l in &held {
            ports.push(l.local_addr()?.port());
        }
    } else {
        for i in 0..PORTS {
            ports.push(base.checked_add(i).context("--port is too high")?);
        }
    }
    let url = |p: u16| format!("http://{host}:{p}");
    Ok(Endpoints {
        gateway: url(ports[0]),
        registry: url(ports[1]),
        registry_http: url(ports[2]),
        cache: url(ports[3]),
        sandboxd: url(ports[4]),
        gateway_http: url(ports[5]),
        registry_metrics: url(ports[6]),
        cache_metrics: url(ports[7]),
        sandboxd_metrics: url(ports[8]),
        pids: Default::default(),
    })
}

pub async fn up(args: UpArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("cannot tell where the sock binary is")?
            .to_path_buf(),
    };
    let mut endpoints = addresses(&args.host, args.port)?;
    let services = plan(&endpoints, &data_dir);

    let mut children: Vec<(&'static str, Child)> = Vec::new();
    let started = start_all(&services, &bin_dir, args.config.as_deref(), &mut children).await;
    if let Err(err) = started {
        stop_all(&mut children).await;
        return Err(err);
    }
    endpoints.pids = children
        .iter()
        .filter_map(|(name, child)| Some(((*name).to_string(), child.id()?)))
        .collect();
    let endpoints_file = data_dir.join(FILE_NAME);
    std::fs::write(&endpoints_file, serde_json::to_vec_pretty(&endpoints)?)?;
    println!(
        "sock is up: gateway {} (HTTP {}) · registry {} (bundles {}) · cache {} · sandboxd {}",
        endpoints.gateway,
        endpoints.gateway_http,
        endpoints.registry,
        endpoints.registry_http,
        endpoints.cache,
        endpoints.sandboxd
    );
    println!(
        "metrics: {}/metrics (admin token) · {}/metrics · {}/metrics · {}/metrics",
        endpoints.gateway_http,
        endpoints.registry_metrics,
        endpoints.cache_metrics,
        endpoints.sandboxd_metrics
    );
    println!("data in {}; Ctrl-C stops everything", data_dir.display());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let code = loop {
        tokio::select! {
            _ = term.recv() => break ExitCode::SUCCESS,
            _ = int.recv() => break ExitCode::SUCCESS,
            (name, status) = first_exit(&mut children) => {
                if !args.keep_going {
                    eprintln!("sock-{name} stopped unexpectedly ({status}); stopping the others");
                    break ExitCode::FAILURE;
                }
                eprintln!("sock-{name} stopped unexpectedly ({status}); the others keep running (--keep-going)");
            }
        }
    };
    let _ = std::fs::remove_file(&endpoints_file);
    stop_all(&mut children).await;
    println!("sock is down");
    Ok(code)
}

async fn start_all(
    services: &[Service],
    bin_dir: &Path,
    config: Option<&Path>,
    children: &mut Vec<(&'static str, Child)>,
) -> anyhow::Result<()> {
    for service in services {
        let binary = bin_dir.join(format!("sock-{}", service.name));
        let mut command = Command::new(&binary);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .envs(service.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        prefix_output(service.name, &mut child);
        children.push((service.name, child));
    }
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    for service in services {
        wait_serving(service, children, deadline).await?;
    }
    Ok(())
}

/// Copies a child's stdout and stderr to ours, each line tagged with the
/// service, so the four logs stay readable in one terminal.
fn prefix_output(name: &'static str, child: &mut Child) {
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[{name}] {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
    }
}

async fn wait_serving(
    service: &Service,
    children: &mut [(&'static str, Child)],
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    loop {
        if let Some((name, child)) = children.iter_mut().find(|(n, _)| *n == service.name)
            && let Some(status) = child.try_wait()?
        {
            bail!("sock-{name} exited during start-up ({status}); its log is above");
        }
        if serving(&service.health_addr).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "sock-{} did not become healthy at {} within {:?}",
                service.name,
                service.health_addr,
                START_TIMEOUT
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serving(addr: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(addr.to_string()) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    matches!(
        HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await,
        Ok(response) if response.get_ref().status() == ServingStatus::Serving
    )
}

/// The first of the children still running to exit; never, when none is.
async fn first_exit(
    children: &mut [(&'static str, Child)],
) -> (&'static str, std::process::ExitStatus) {
    // A reaped child has no id; waiting on it again would answer at once.
    let waits: Vec<_> = children
        .iter_mut()
        .filter(|(_, child)| child.id().is_some())
        .map(|(name, child)| {
            Box::pin(async move {
                let status = child.wait().await;
                (*name, status)
            })
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    let ((name, status), _, _) = select_all(waits).await;
    match status {
        Ok(status) => (name, status),
        Err(_) => (name, std::process::ExitStatus::default()),
    }
}

/// SIGTERM in reverse start order, so the gateway stops taking calls
/// before the services it needs go away; SIGKILL what is left after the
/// grace period.
async fn stop_all(children: &mut Vec<(&'static str, Child)>) {
    for (name, child) in children.iter_mut().rev() {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("sock-{name} did not stop within {STOP_GRACE:?}; killing it");
                let _ = child.kill().await;
            }
        }
    }
    children.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_and_metrics_endpoint_gets_its_own_port() {
        let free = addresses("127.0.0.1", 0).expect("free ports");
        let mut urls = vec![
            free.gateway,
            free.registry,
            free.registry_http,
            free.cache,
            free.sandboxd,
            free.gateway_http,
            free.registry_metrics,
            free.cache_metrics,
            free.sandboxd_metrics,
        ];
        urls.sort();
        urls.dedup();
        assert_eq!(urls.len(), usize::from(PORTS));

        let fixed = addresses("127.0.0.1", 7070).expect("fixed ports");
        assert_eq!(fixed.registry_metrics, "http://127.0.0.1:7076");
        assert_eq!(fixed.sandboxd_metrics, "http://127.0.0.1:7078");
        let err = addresses("127.0.0.1", u16::MAX - 3).expect_err("past the last port");
        assert!(err.to_string().contains("--port is too high"), "{err}");
    }

    #[test]
    fn each_service_is_told_its_metrics_address() {
        let endpoints = addresses("127.0.0.1", 7070).expect("fixed ports");
        let services = plan(&endpoints, Path::new("/data"));
        for (service, key, want) in [
            ("registry", "SOCK_REGISTRY_METRICS_LISTEN", "127.0.0.1:7076"),
            ("cache", "SOCK_CACHE_METRICS_LISTEN", "127.0.0.1:7077"),
            ("sandboxd", "SOCK_SANDBOXD_METRICS_LISTEN", "127.0.0.1:7078"),
        ] {
            let env = &services
                .iter()
                .find(|s| s.name == service)
                .expect("planned")
                .env;
            assert!(
                env.contains(&(key.to_string(), want.to_string())),
                "{service}: {env:?}"
            );
        }
    }
}

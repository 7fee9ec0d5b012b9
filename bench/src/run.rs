//! One benchmark run: two sock clusters (zygotes on, then off), the
//! density run's cluster, then the baselines, on the same machine, one
//! after the other. Also the helpers every phase shares: the binaries, the
//! machine, starting a cluster.
//!
//! It builds the service binaries of its own profile and starts clusters
//! with `sock_e2e::cluster::Cluster::start_from` (zygotes on, then
//! `SOCK_SANDBOXD_IMPORT_CACHE=off`); `sock.rs` then measures through the
//! public gRPC API only.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use sock_testkit::cluster::Cluster;

use crate::baselines;
use crate::density::{self, Density, Fill, FillSizes};
use crate::sock;
use crate::stats::{self, Series};

/// How much of everything a run does.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub warmup: usize,
    pub warm_calls: usize,
    /// Calls per client with 8 clients.
    pub warm8_calls: usize,
    pub throughput_clients: Vec<usize>,
    pub throughput_time: Duration,
    pub cold: usize,
    pub churn_clients: usize,
    pub churn_time: Duration,
    pub baseline_calls: usize,
    pub fill: FillSizes,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                warmup: 20,
                warm_calls: 300,
                warm8_calls: 50,
                throughput_clients: vec![8],
                throughput_time: Duration::from_secs(1),
                cold: 5,
                churn_clients: 2,
                churn_time: Duration::from_secs(1),
                baseline_calls: 5,
                fill: FillSizes {
                    pool_mb: 512,
                    // Small, so that big batches fit the small pool.
                    memory_mb: 32,
                    warm_calls: 10,
                    within: Duration::from_secs(60),
                },
            }
        } else {
            Sizes {
                warmup: 200,
                warm_calls: 5000,
                warm8_calls: 1000,
                throughput_clients: vec![1, 2, 4, 8, 16],
                throughput_time: Duration::from_secs(5),
                cold: 100,
                churn_clients: 2,
                churn_time: Duration::from_secs(10),
                baseline_calls: 100,
                fill: FillSizes {
                    pool_mb: 4096,
                    memory_mb: 128,
                    warm_calls: 100,
                    within: Duration::from_secs(600),
                },
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub nproc: usize,
    pub ram_gib: f64,
    pub kernel: String,
    pub cpu: String,
    pub python: String,
    pub date: String,
    pub commit: String,
    pub profile: String,
    pub load_before: String,
    pub load_after: String,
}

/// What one sock cluster measured.
pub struct SockRun {
    pub cold: Series,
    /// Cold starts of the run that sandboxd says were zygote forks.
    pub cold_forks: u64,
    pub churn_rate: f64,
    pub churn_cold_starts: u64,
    pub density: Density,
}

pub struct Results {
    pub quick: bool,
    pub sizes: Sizes,
    pub machine: Machine,
    pub warm1: Series,
    pub warm8: Series,
    /// (clients, calls/s)
    pub throughput: Vec<(usize, f64)>,
    /// import_cache = tree: cold starts fork the root zygote.
    pub tree: SockRun,
    /// import_cache = off: every cold start is a fresh sandbox.
    pub fresh: SockRun,
    pub baselines: Vec<Series>,
    /// The density run: paused sandboxes until the pool is full.
    pub fill: Fill,
}

fn sh(program: &str, args: &[&str], dir: &Path) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn machine(bin: &Path) -> Machine {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let dirty = !sh(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        repo,
    )
    .is_empty();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        ram_gib: ram_kib / (1024.0 * 1024.0),
        kernel: sh("uname", &["-r"], repo),
        cpu,
        python: sh(baselines::PYTHON, &["--version"], repo),
        date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"], repo),
        commit: format!(
            "{}{}",
            sh("git", &["rev-parse", "--short", "HEAD"], repo),
            if dirty {
                " (with uncommitted changes in the tree)"
            } else {
                ""
            }
        ),
        profile: bin
            .file_name()
            .map_or("unknown".into(), |p| p.to_string_lossy().into_owned()),
        load_before: loadavg(),
        load_after: String::new(),
    }
}

/// The directory of the service binaries: next to this one
/// (`target/<profile>`), built first when run through cargo.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of sock-bench")?;
    let dir = exe
        .parent()
        .context("sock-bench has a directory")?
        .to_path_buf();
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--bins"]);
        for p in [
            "sock-cli",
            "sock-gateway",
            "sock-registry",
            "sock-cache",
            "sock-sandboxd",
        ] {
            build.args(["-p", p]);
        }
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .context("run cargo build for the service binaries")?;
        if !status.success() {
            bail!("building the service binaries failed");
        }
    }
    for b in [
        "sock",
        "sock-gateway",
        "sock-registry",
        "sock-cache",
        "sock-sandboxd",
    ] {
        if !dir.join(b).is_file() {
            bail!(
                "{b} is not in {}; build it with `cargo build --release --bins`",
                dir.display()
            );
        }
    }
    Ok(dir)
}

async fn cold_run(
    cluster: &Cluster,
    sizes: &Sizes,
    label: &str,
    command: &str,
) -> anyhow::Result<SockRun> {
    let prefix = "cold";
    let forks_before = sock::status(cluster).await?.zygote_forks_total;
    eprintln!("sock-bench: {label}: {} cold starts", sizes.cold);
    let mut cold = Series::new(label, command);
    cold.samples = sock::cold_starts(
        cluster,
        prefix,
        &[("f.py", sock::ECHO)],
        sizes.cold,
        Duration::ZERO,
    )
    .await?;
    let cold_forks = sock::status(cluster).await?.zygote_forks_total - forks_before;
    eprintln!(
        "sock-bench: {label}: sandbox churn for {:?}",
        sizes.churn_time
    );
    let (churn_rate, churn_cold_starts) =
        sock::churn(cluster, sizes.churn_clients, sizes.churn_time).await?;
    eprintln!("sock-bench: {label}: density of paused sandboxes");
    let density = density::measure(cluster, sizes.cold).await?;
    Ok(SockRun {
        cold,
        cold_forks,
        churn_rate,
        churn_cold_starts,
        density,
    })
}

/// The warm calls of the echo function, pushed here.
struct Warm {
    warm1: Series,
    warm8: Series,
    /// (clients, calls/s)
    throughput: Vec<(usize, f64)>,
}

/// One echo call through the gateway, as the report names it.
const INVOKE: &str = "gRPC sock.v1.Gateway/Invoke(echo, {\"hello\":\"world\"})";

/// A bench cluster whose sandboxd has `import_cache` (`tree` or `off`).
async fn start_cluster(bin: &Path, import_cache: &'static str) -> anyhow::Result<Cluster> {
    let bin = bin.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || {
        sock::start(&bin, &[("SOCK_SANDBOXD_IMPORT_CACHE", import_cache)])
    })
    .await?)
}

async fn warm(cluster: &Cluster, sizes: &Sizes) -> anyhow::Result<Warm> {
    sock::push(cluster, "echo", &[("f.py", sock::ECHO)]).await?;
    eprintln!("sock-bench: warm latency, 1 client × {}", sizes.warm_calls);
    let mut warm1 = Series::new(
        "sock warm, 1 client",
        format!("{INVOKE}, 1 client, sequential"),
    );
    warm1.samples = sock::warm_latency(cluster, "echo", 1, sizes.warm_calls, sizes.warmup).await?;
    eprintln!(
        "sock-bench: warm latency, 8 clients × {}",
        sizes.warm8_calls
    );
    let mut warm8 = Series::new(
        "sock warm, 8 clients",
        format!("{INVOKE}, 8 clients (own connections), closed loop"),
    );
    warm8.samples =
        sock::warm_latency(cluster, "echo", 8, sizes.warm8_calls, sizes.warmup / 4).await?;
    let mut throughput = Vec::new();
    for &clients in &sizes.throughput_clients {
        let rate = sock::throughput(cluster, "echo", clients, sizes.throughput_time).await?;
        eprintln!("sock-bench: throughput, {clients} clients: {rate:.0} calls/s");
        throughput.push((clients, rate));
    }
    Ok(Warm {
        warm1,
        warm8,
        throughput,
    })
}

/// `--only warm`: the warm rows of a full run, printed.
pub async fn warm_only(bin: &Path, quick: bool) -> anyhow::Result<()> {
    let sizes = Sizes::new(quick);
    let cluster = start_cluster(bin, "tree").await?;
    let measured = warm(&cluster, &sizes).await;
    sock::stop(cluster).await?;
    let Warm {
        warm1,
        warm8,
        throughput,
    } = measured?;
    for series in [warm1, warm8] {
        let s = series.summary();
        println!(
            "{}: {} calls, p50 {}, p90 {}, p99 {}, mean {}",
            series.label,
            s.n,
            stats::ms(s.p50),
            stats::ms(s.p90),
            stats::ms(s.p99),
            stats::ms(s.mean)
        );
    }
    for (clients, rate) in throughput {
        println!("throughput, {clients} clients: {rate:.0} calls/s");
    }
    Ok(())
}

pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Results> {
    // Before anything is measured, so a baseline that cannot be installed
    // fails the run at once.
    tokio::task::spawn_blocking(baselines::install).await??;
    let sizes = Sizes::new(quick);
    let mut machine = machine(bin);

    let cluster = start_cluster(bin, "tree").await?;
    let Warm {
        warm1,
        warm8,
        throughput,
    } = warm(&cluster, &sizes).await?;
    let tree = cold_run(
        &cluster,
        &sizes,
        "sock cold, zygote fork",
        &format!("{INVOKE} of a function never called before (code unpacked), import_cache = tree"),
    )
    .await?;
    sock::stop(cluster).await?;

    let cluster = start_cluster(bin, "off").await?;
    let fresh = cold_run(
        &cluster,
        &sizes,
        "sock cold, fresh sandbox",
        &format!("{INVOKE} of a function never called before (code unpacked), SOCK_SANDBOXD_IMPORT_CACHE=off"),
    )
    .await?;
    sock::stop(cluster).await?;

    eprintln!(
        "sock-bench: density: paused sandboxes until the {} MB pool is full",
        sizes.fill.pool_mb
    );
    let fill = density::fill(bin, &sizes.fill).await?;

    let code = tempfile::Builder::new().prefix("sock-bench-").tempdir()?;
    baselines::write_code(code.path(), sock::ECHO)?;
    let calls = sizes.baseline_calls;
    let path = code.path().to_path_buf();
    let baselines = tokio::task::spawn_blocking(move || baselines::run(&path, calls)).await??;
    machine.load_after = loadavg();
    Ok(Results {
        quick,
        sizes,
        machine,
        warm1,
        warm8,
        throughput,
        tree,
        fresh,
        baselines,
        fill,
    })
}

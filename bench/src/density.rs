//! Memory of idle paused sandboxes: PSS of their processes, found through
//! the cgroups sandboxd keeps under `sock/<instance>`.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sock_e2e::cluster::Cluster;

use crate::sock;

const FREEZER: &str = "/sys/fs/cgroup/freezer/sock";
/// Where sandboxd freezes instead, when the machine mounts cgroup2.
const UNIFIED: &str = "/sys/fs/cgroup/unified/sock";
const MEMORY: &str = "/sys/fs/cgroup/memory/sock";

#[derive(Clone, Debug, Default)]
pub struct Density {
    /// Paused sandboxes measured.
    pub paused: usize,
    /// Mean PSS per paused sandbox (all processes of its cgroup), MiB.
    pub pss_mib: f64,
    /// Mean memory its cgroup charges, MiB.
    pub charged_mib: f64,
    /// Live zygotes and their total PSS, MiB (shared by their children).
    pub zygotes: usize,
    pub zygote_pss_mib: f64,
}

impl Density {
    /// Paused sandboxes whose PSS fits in `mib` next to the zygotes.
    pub fn fit_in(&self, mib: f64) -> f64 {
        if self.pss_mib <= 0.0 {
            return 0.0;
        }
        ((mib - self.zygote_pss_mib) / self.pss_mib).floor()
    }
}

/// Waits until every sandbox of the cluster is paused (at least `want`),
/// then measures them.
pub async fn measure(cluster: &Cluster, want: usize) -> anyhow::Result<Density> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = sock::status(cluster).await?;
        if s.idle == 0 && s.running == 0 && s.paused as usize >= want {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "sandboxes not paused after 30 s: {} idle, {} running, {} paused",
                s.idle,
                s.running,
                s.paused
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scan(&cluster.instance)
}

/// Frozen by the v1 freezer or by sandboxd's cgroup2 leaf.
fn is_frozen(freezer: &Path, unified: &Path, name: &std::ffi::OsStr) -> bool {
    let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    read(freezer.join(name).join("freezer.state")).trim() == "FROZEN"
        || read(unified.join(name).join("cgroup.events"))
            .lines()
            .any(|l| l == "frozen 1")
}

fn scan(instance: &str) -> anyhow::Result<Density> {
    let freezer = Path::new(FREEZER).join(instance);
    let unified = Path::new(UNIFIED).join(instance);
    let memory = Path::new(MEMORY).join(instance);
    let mut d = Density::default();
    let (mut pss, mut charged) = (0u64, 0u64);
    for dir in std::fs::read_dir(&memory).with_context(|| format!("read {}", memory.display()))? {
        let dir = dir?.path();
        if !dir.is_dir() {
            continue;
        }
        let pids = procs(&dir)?;
        if pids.is_empty() {
            continue;
        }
        let name = dir.file_name().context("cgroup name")?;
        let kib: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
        if is_frozen(&freezer, &unified, name) {
            d.paused += 1;
            pss += kib;
            charged += read_u64(&dir.join("memory.usage_in_bytes"))?;
        } else {
            // Not frozen while every sandbox is paused: a zygote.
            d.zygotes += 1;
            d.zygote_pss_mib += kib as f64 / 1024.0;
        }
    }
    if d.paused == 0 {
        bail!("no paused sandbox found under {}", memory.display());
    }
    d.pss_mib = pss as f64 / 1024.0 / d.paused as f64;
    d.charged_mib = charged as f64 / (1024.0 * 1024.0) / d.paused as f64;
    Ok(d)
}

fn procs(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("read {}/cgroup.procs", dir.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// `Pss:` of /proc/<pid>/smaps_rollup in KiB; 0 for a process that is gone.
fn pss_kib(pid: u32) -> u64 {
    let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn read_u64(path: &Path) -> anyhow::Result<u64> {
    std::fs::read_to_string(path)
        .with_context(|| format!("read {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("parse {}", path.display()))
}

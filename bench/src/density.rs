//! Memory of idle paused sandboxes: PSS of their processes, found through
//! the cgroups sandboxd keeps under `sock/<instance>`; and the density run,
//! which pauses new sandboxes until the node's memory pool is full.
//!
//! PSS is read for the pids of the `sock/<instance>/pool-N` cgroups that are
//! frozen (the cgroup2 leaf, or the v1 freezer).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sock_proto::v1::StatusResponse;
use sock_testkit::cluster::Cluster;

use crate::sock::{self, Refusal};
use crate::stats::Series;

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
    settle(cluster, want).await?;
    scan(&cluster.instance)
}

/// Waits until every sandbox of the cluster is paused (at least `want`);
/// answers sandboxd's Status then.
async fn settle(cluster: &Cluster, want: usize) -> anyhow::Result<StatusResponse> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = sock::status(cluster).await?;
        if s.idle == 0 && s.running == 0 && s.paused as usize >= want {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "sandboxes not paused after 30 s: {} idle, {} running, {} paused",
                s.idle,
                s.running,
                s.paused
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a sandbox of the density run stays idle before sandboxd
/// pauses it (500 ms by default): only how long each batch waits, not what
/// a paused sandbox holds.
pub const PAUSE_AFTER_MS: u64 = 100;
/// Calls in flight while filling the pool, each client its own connection.
pub const IN_FLIGHT: usize = 8;
/// Most new functions between two waits for their sandboxes to pause.
pub const MAX_BATCH: usize = 64;

/// How far the density run goes.
#[derive(Clone, Debug)]
pub struct FillSizes {
    /// sandboxd's memory pool, MB.
    pub pool_mb: u64,
    /// Every sandbox's memory limit, MB, set on the cluster so that each
    /// batch fits what the pool has free.
    pub memory_mb: u64,
    /// Warm calls afterwards: one to each of the last functions pushed.
    pub warm_calls: usize,
    /// The run stops, not full, after the first batch that ends later.
    pub within: Duration,
}

/// How the density run ended.
pub enum End {
    /// Full: sandboxd evicted this many sandboxes to admit the last batch.
    Evicted(u64),
    /// Full: a call was refused, no memory by its deadline.
    Refused(String),
    /// Not full by [`FillSizes::within`].
    OutOfTime,
}

impl End {
    /// In a few words, for the log and the report.
    pub fn describe(&self) -> String {
        match self {
            End::Evicted(n) => format!("pool full: {n} evicted"),
            End::Refused(message) => format!("pool full: a call refused: {message}"),
            End::OutOfTime => "not full in time".into(),
        }
    }

    /// Whether the pool was full.
    pub fn full(&self) -> bool {
        !matches!(self, End::OutOfTime)
    }
}

/// What the density run measured.
pub struct Fill {
    pub sizes: FillSizes,
    /// Functions pushed, each called once.
    pub functions: usize,
    /// The most paused sandboxes held at once whose processes live (frozen
    /// cgroups that hold some), just before the last batch or after it.
    pub held: usize,
    /// sandboxd's Status then.
    pub at_held: StatusResponse,
    /// Of the sandboxes that Status then counted paused, those whose
    /// processes had died: sandboxd still counts them and holds their
    /// reservations.
    pub dead: usize,
    pub end: End,
    /// The calls the platform killed (OOM, or their process died), while
    /// filling and warm.
    pub killed: Vec<String>,
    /// PSS of the paused sandboxes and zygotes at the end.
    pub memory: Density,
    /// The last functions pushed that were still paused, each called once
    /// more.
    pub warm_functions: usize,
    /// Those calls' latency.
    pub warm: Series,
    /// Of those, the calls sandboxd served with an existing sandbox.
    pub warm_starts: u64,
    /// Of those, the calls refused for memory.
    pub warm_refused: usize,
    /// From the cluster's start until the pool was full.
    pub fill_time: Duration,
}

impl Fill {
    /// What the pool reserved per paused sandbox, MB: everything but the
    /// zygotes' reservations, when every sandbox was paused.
    pub fn reserved_per_paused_mb(&self) -> f64 {
        let s = &self.at_held;
        let zygotes: u64 = s.zygotes.iter().map(|z| z.memory_reserved_mb).sum();
        s.pool_reserved_mb.saturating_sub(zygotes) as f64 / f64::from(s.paused.max(1))
    }

    pub fn zygote_reserved_mb(&self) -> u64 {
        self.at_held
            .zygotes
            .iter()
            .map(|z| z.memory_reserved_mb)
            .sum()
    }
}

/// The density run: a cluster of its own whose memory pool is
/// `sizes.pool_mb`; new echo functions are pushed and each called once (a
/// fork of the root zygote), in batches no larger than the pool's free
/// memory holds at their full limit, each batch left to pause before the
/// next, until a batch needs an eviction or a call is refused for memory
/// (the pool is full) or time is up.
/// Then one warm call to each of the last `sizes.warm_calls` functions,
/// one at a time, each once the previous one's sandbox is paused again.
pub async fn fill(bin: &Path, sizes: &FillSizes) -> anyhow::Result<Fill> {
    let env = [
        ("SOCK_SANDBOXD_MEM_POOL_MB", sizes.pool_mb.to_string()),
        ("SOCK_SANDBOXD_MEMORY_MB", sizes.memory_mb.to_string()),
        ("SOCK_SANDBOXD_PAUSE_AFTER_MS", PAUSE_AFTER_MS.to_string()),
    ];
    let cluster = sock::start_shared(bin, &env).await?;
    let filled = fill_pool(&cluster, sizes).await;
    // Every task holding the cluster has ended.
    if let Some(cluster) = Arc::into_inner(cluster) {
        let stopping = Instant::now();
        sock::stop(cluster).await?;
        eprintln!(
            "sock-bench: density: cluster stopped in {:.1} s",
            stopping.elapsed().as_secs_f64()
        );
    }
    filled
}

async fn fill_pool(cluster: &Arc<Cluster>, sizes: &FillSizes) -> anyhow::Result<Fill> {
    let started = Instant::now();
    let mut before = (sock::status(cluster).await?, 0);
    let evictions = before.0.evictions_total;
    let mut names: Vec<String> = Vec::new();
    let mut killed = Vec::new();
    let ((at_held, held), end, left) = loop {
        let batch = batch_size(names.len(), &before.0, sizes.memory_mb);
        let first = names.len();
        names.extend((first..first + batch).map(|i| format!("dense-{i}")));
        let mut refused = None;
        for refusal in push_and_call(cluster, &names[first..]).await? {
            match refusal {
                Refusal::Killed(m) => killed.push(m),
                Refusal::PoolFull(m) => {
                    refused.get_or_insert(m);
                }
            }
        }
        let status = settle(cluster, 0).await?;
        let live = live_paused(&cluster.instance)?;
        let end = if let Some(message) = refused {
            Some(End::Refused(message))
        } else if status.evictions_total > evictions {
            Some(End::Evicted(status.evictions_total - evictions))
        } else if started.elapsed() > sizes.within {
            Some(End::OutOfTime)
        } else {
            None
        };
        let after = (status, live);
        if let Some(end) = end {
            let left = after.1;
            let at = if after.1 > before.1 { after } else { before };
            eprintln!(
                "sock-bench: density: {} after {} functions: {} paused held ({} by sandboxd's count)",
                end.describe(),
                names.len(),
                at.1,
                at.0.paused
            );
            break (at, end, left);
        }
        if before.1 / 250 != after.1 / 250 {
            eprintln!(
                "sock-bench: density: {} paused ({} by sandboxd's count), {} of {} MB reserved",
                after.1, after.0.paused, after.0.pool_reserved_mb, after.0.pool_total_mb
            );
        }
        before = after;
    };
    let fill_time = started.elapsed();
    let memory = match left {
        0 => Density::default(),
        _ => scan(&cluster.instance)?,
    };

    // The functions pushed last whose sandboxes are still paused: the
    // evictions took the least recently used, the first ones pushed.
    let last = &names[names.len().saturating_sub(sizes.warm_calls.min(left))..];
    eprintln!(
        "sock-bench: density: warm calls to the last {} functions",
        last.len()
    );
    let mut warm = Series::new(
        "sock warm, paused sandbox in a full pool",
        "gRPC sock.v1.Gateway/Invoke of a function whose sandbox is paused, the pool full",
    );
    let mut warm_refused = 0;
    let mut client = sock::gateway(cluster).await?;
    let warm_before = sock::status(cluster).await?.warm_starts_total;
    for name in last {
        settle(cluster, 0).await?;
        let called = Instant::now();
        match sock::echo_or_refused(&mut client, name).await? {
            None => warm.samples.push(called.elapsed()),
            Some(Refusal::Killed(m)) => killed.push(m),
            Some(Refusal::PoolFull(_)) => warm_refused += 1,
        }
    }
    let warm_starts = sock::status(cluster).await?.warm_starts_total - warm_before;
    Ok(Fill {
        sizes: sizes.clone(),
        functions: names.len(),
        held,
        dead: (at_held.paused as usize).saturating_sub(held),
        at_held,
        end,
        killed,
        memory,
        warm_functions: last.len(),
        warm,
        warm_starts,
        warm_refused,
        fill_time,
    })
}

/// How many new functions to call next, after `called` so far, when
/// sandboxd's Status (every sandbox paused) is `now`: as many as the pool's
/// free memory holds at their full limit (`memory_mb`), since each is idle at its full
/// limit until it pauses; at least one, which needs an eviction when none
/// fits (so the pool is full). The first call alone: it makes the root
/// zygote, which reserves memory of its own.
fn batch_size(called: usize, now: &StatusResponse, memory_mb: u64) -> usize {
    if called == 0 {
        return 1;
    }
    let free = now.pool_total_mb.saturating_sub(now.pool_reserved_mb);
    usize::try_from(free / memory_mb)
        .unwrap_or(MAX_BATCH)
        .clamp(1, MAX_BATCH)
}

/// Pushes each of `names` (the echo function, prepared) and calls it
/// once, [`IN_FLIGHT`] at a time; answers the calls refused for memory.
async fn push_and_call(cluster: &Arc<Cluster>, names: &[String]) -> anyhow::Result<Vec<Refusal>> {
    let names: Arc<[String]> = names.into();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT.min(names.len()) {
        let (cluster, names, next) = (cluster.clone(), names.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = sock::gateway(&cluster).await?;
            let mut refused = Vec::new();
            while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                sock::push(&cluster, name, &[("f.py", sock::ECHO)]).await?;
                refused.extend(sock::echo_or_refused(&mut client, name).await?);
            }
            anyhow::Ok(refused)
        }));
    }
    // Every task ends before this returns, even when one failed.
    let mut refused = Vec::new();
    let mut failed = None;
    for task in tasks {
        match task.await {
            Ok(Ok(r)) => refused.extend(r),
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(e.into());
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(refused),
    }
}

/// Frozen by the v1 freezer or by sandboxd's cgroup2 leaf.
fn is_frozen(freezer: &Path, unified: &Path, name: &std::ffi::OsStr) -> bool {
    let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    read(freezer.join(name).join("freezer.state")).trim() == "FROZEN"
        || read(unified.join(name).join("cgroup.events"))
            .lines()
            .any(|l| l == "frozen 1")
}

/// The memory cgroups of `instance` that hold processes, each with its
/// pids and whether it is frozen.
fn live_cgroups(instance: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u32>, bool)>> {
    let freezer = Path::new(FREEZER).join(instance);
    let unified = Path::new(UNIFIED).join(instance);
    let memory = Path::new(MEMORY).join(instance);
    let mut live = Vec::new();
    for dir in std::fs::read_dir(&memory).with_context(|| format!("read {}", memory.display()))? {
        let dir = dir?.path();
        if !dir.is_dir() {
            continue;
        }
        let pids = procs(&dir)?;
        if pids.is_empty() {
            continue;
        }
        let frozen = is_frozen(&freezer, &unified, dir.file_name().context("cgroup name")?);
        live.push((dir, pids, frozen));
    }
    Ok(live)
}

/// Paused sandboxes whose processes live: frozen cgroups that hold some.
fn live_paused(instance: &str) -> anyhow::Result<usize> {
    Ok(live_cgroups(instance)?
        .iter()
        .filter(|(_, _, frozen)| *frozen)
        .count())
}

fn scan(instance: &str) -> anyhow::Result<Density> {
    let mut d = Density::default();
    let (mut pss, mut charged) = (0u64, 0u64);
    for (dir, pids, frozen) in live_cgroups(instance)? {
        let kib: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
        if frozen {
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
        bail!("no paused sandbox found under {MEMORY}/{instance}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(total_mb: u64, reserved_mb: u64) -> StatusResponse {
        StatusResponse {
            pool_total_mb: total_mb,
            pool_reserved_mb: reserved_mb,
            ..StatusResponse::default()
        }
    }

    #[test]
    fn batches_fit_the_free_pool_at_the_full_limit() {
        assert_eq!(
            batch_size(0, &pool(4096, 0), 128),
            1,
            "the zygote's call alone"
        );
        assert_eq!(batch_size(1, &pool(4096, 256 + 128), 128), 29);
        assert_eq!(batch_size(900, &pool(4096, 1600), 128), 19);
        assert_eq!(batch_size(900, &pool(65536, 1600), 128), MAX_BATCH);
        assert_eq!(
            batch_size(2400, &pool(4096, 4000), 128),
            1,
            "one call to evict"
        );
        assert_eq!(batch_size(30, &pool(4096, 4096), 128), 1);
    }

    #[test]
    fn reserved_each_leaves_out_the_zygotes() {
        let mut at_held = pool(4096, 256 + 2000 * 2);
        at_held.paused = 2000;
        at_held.zygotes = vec![sock_proto::v1::ZygoteStatus {
            memory_reserved_mb: 256,
            ..Default::default()
        }];
        let fill = Fill {
            sizes: FillSizes {
                pool_mb: 4096,
                memory_mb: 128,
                warm_calls: 100,
                within: Duration::from_secs(1),
            },
            functions: 2001,
            held: 2000,
            dead: 0,
            at_held,
            end: End::Evicted(1),
            killed: Vec::new(),
            memory: Density::default(),
            warm_functions: 0,
            warm: Series::new("warm", "call"),
            warm_starts: 0,
            warm_refused: 0,
            fill_time: Duration::from_secs(1),
        };
        assert_eq!(fill.zygote_reserved_mb(), 256);
        assert!((fill.reserved_per_paused_mb() - 2.0).abs() < 1e-9);
    }
}

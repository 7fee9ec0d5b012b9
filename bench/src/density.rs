//! Memory of idle paused sandboxes: PSS of their processes, found through
//! the cgroups sandboxd keeps under `sock/<instance>`; and the density run,
//! which pauses new sandboxes until the node's memory pool is full.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sock_e2e::cluster::Cluster;
use sock_proto::v1::StatusResponse;

use crate::run;
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

/// The memory limit of every function of the density run, set on its
/// cluster (sandboxd's default) so each batch fits what the pool has free.
pub const FILL_MEMORY_MB: u64 = 128;
/// Calls in flight while filling the pool, each client its own connection.
pub const IN_FLIGHT: usize = 8;
/// Most new functions between two waits for their sandboxes to pause.
pub const MAX_BATCH: usize = 64;

/// How far the density run goes.
#[derive(Clone, Debug)]
pub struct FillSizes {
    /// sandboxd's memory pool, MB.
    pub pool_mb: u64,
    /// Warm calls afterwards: one to each of the last functions pushed.
    pub warm_calls: usize,
    /// The run fails when the pool is not full by then.
    pub within: Duration,
}

/// What showed the pool full.
pub enum Full {
    /// sandboxd evicted this many sandboxes to admit the last batch.
    Evicted(u64),
    /// A call was refused: no memory by its deadline.
    Refused(String),
}

/// What the density run measured.
pub struct Fill {
    pub sizes: FillSizes,
    /// Functions pushed, each called once.
    pub functions: usize,
    /// The most paused sandboxes sandboxd held at once, just before or
    /// after the batch that found the pool full.
    pub held: usize,
    /// sandboxd's Status when it held them.
    pub at_full: StatusResponse,
    pub full: Full,
    /// Messages of the calls that were OOM-killed (filling and warm).
    pub oom_killed: Vec<String>,
    /// PSS of the paused sandboxes and zygotes once the pool was full.
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
        let s = &self.at_full;
        let zygotes: u64 = s.zygotes.iter().map(|z| z.memory_reserved_mb).sum();
        s.pool_reserved_mb.saturating_sub(zygotes) as f64 / f64::from(s.paused.max(1))
    }

    pub fn zygote_reserved_mb(&self) -> u64 {
        self.at_full
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
/// next, until a batch needs an eviction or a call is refused for memory.
/// Then one warm call to each of the last `sizes.warm_calls` functions,
/// one at a time, each once the previous one's sandbox is paused again.
pub async fn fill(bin: &Path, sizes: &FillSizes) -> anyhow::Result<Fill> {
    let pool = sizes.pool_mb.to_string();
    let cluster = Arc::new(
        tokio::task::spawn_blocking({
            let bin = bin.to_path_buf();
            move || {
                run::start(
                    &bin,
                    &[
                        ("SOCK_SANDBOXD_MEM_POOL_MB", pool.as_str()),
                        ("SOCK_SANDBOXD_MEMORY_MB", &FILL_MEMORY_MB.to_string()),
                    ],
                )
            }
        })
        .await?,
    );
    let filled = fill_pool(&cluster, sizes).await;
    // Every task holding the cluster has ended.
    if let Some(cluster) = Arc::into_inner(cluster) {
        let stopping = Instant::now();
        run::stop(cluster).await?;
        eprintln!(
            "sock-bench: density: cluster stopped in {:.1} s",
            stopping.elapsed().as_secs_f64()
        );
    }
    filled
}

async fn fill_pool(cluster: &Arc<Cluster>, sizes: &FillSizes) -> anyhow::Result<Fill> {
    let started = Instant::now();
    let mut before = sock::status(cluster).await?;
    let evictions = before.evictions_total;
    let mut names: Vec<String> = Vec::new();
    let mut oom_killed = Vec::new();
    let (held, at_full, full, left) = loop {
        if started.elapsed() > sizes.within {
            bail!(
                "the {} MB memory pool was not full after {} functions in {:?}: {} sandboxes paused, \
                 {} of {} MB reserved",
                sizes.pool_mb,
                names.len(),
                sizes.within,
                before.paused,
                before.pool_reserved_mb,
                before.pool_total_mb
            );
        }
        let batch = batch_size(names.len(), &before);
        let first = names.len();
        names.extend((first..first + batch).map(|i| format!("dense-{i}")));
        let mut refused = None;
        for refusal in push_and_call(cluster, &names[first..]).await? {
            match refusal {
                Refusal::OutOfMemory(m) => oom_killed.push(m),
                Refusal::PoolFull(m) => {
                    refused.get_or_insert(m);
                }
            }
        }
        let after = settle(cluster, 0).await?;
        let evicted = after.evictions_total - evictions;
        let full = match refused {
            Some(message) => Some(Full::Refused(message)),
            None if evicted > 0 => Some(Full::Evicted(evicted)),
            None => None,
        };
        if let Some(full) = full {
            let left = after.paused as usize;
            let at = if after.paused > before.paused {
                after
            } else {
                before
            };
            eprintln!(
                "sock-bench: density: pool full after {} functions: {} paused held, {evicted} evicted",
                names.len(),
                at.paused,
            );
            break (at.paused as usize, at, full, left);
        }
        if before.paused / 250 != after.paused / 250 {
            eprintln!(
                "sock-bench: density: {} paused, {} of {} MB reserved",
                after.paused, after.pool_reserved_mb, after.pool_total_mb
            );
        }
        before = after;
    };
    let fill_time = started.elapsed();
    let memory = scan(&cluster.instance)?;

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
            Some(Refusal::OutOfMemory(m)) => oom_killed.push(m),
            Some(Refusal::PoolFull(_)) => warm_refused += 1,
        }
    }
    let warm_starts = sock::status(cluster).await?.warm_starts_total - warm_before;
    Ok(Fill {
        sizes: sizes.clone(),
        functions: names.len(),
        held,
        at_full,
        full,
        oom_killed,
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
/// free memory holds at their full limit, since each is idle at its full
/// limit until it pauses; at least one, which needs an eviction when none
/// fits (so the pool is full). The first call alone: it makes the root
/// zygote, which reserves memory of its own.
fn batch_size(called: usize, now: &StatusResponse) -> usize {
    if called == 0 {
        return 1;
    }
    let free = now.pool_total_mb.saturating_sub(now.pool_reserved_mb);
    usize::try_from(free / FILL_MEMORY_MB)
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
        assert_eq!(batch_size(0, &pool(4096, 0)), 1, "the zygote's call alone");
        assert_eq!(batch_size(1, &pool(4096, 256 + 128)), 29);
        assert_eq!(batch_size(900, &pool(4096, 1600)), 19);
        assert_eq!(batch_size(900, &pool(65536, 1600)), MAX_BATCH);
        assert_eq!(batch_size(2400, &pool(4096, 4000)), 1, "one call to evict");
        assert_eq!(batch_size(30, &pool(4096, 4096)), 1);
    }

    #[test]
    fn reserved_each_leaves_out_the_zygotes() {
        let mut at_full = pool(4096, 256 + 2000 * 2);
        at_full.paused = 2000;
        at_full.zygotes = vec![sock_proto::v1::ZygoteStatus {
            memory_reserved_mb: 256,
            ..Default::default()
        }];
        let fill = Fill {
            sizes: FillSizes {
                pool_mb: 4096,
                warm_calls: 100,
                within: Duration::from_secs(1),
            },
            functions: 2001,
            held: 2000,
            at_full,
            full: Full::Evicted(1),
            oom_killed: Vec::new(),
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

//! One cgroup per sandbox, below `<controller>/sock/<instance>/`,
//! through cgroups-rs: memory, pids and cpu on v1 (what the test machines
//! run), the unified tree on v2.
//!
//! Freezing and killing use a cgroup v2 leaf wherever the machine mounts
//! cgroup2, also on a v1 host (hybrid): v1's freezer holds a frozen task
//! even against SIGKILL, so a daemon killed while a sandbox was paused, or
//! between the freeze and the thaw of a kill, left tasks nothing could end
//! (and a container whose pid 1 waits for them could not even restart).
//! v2's `cgroup.freeze` lets fatal signals through, and `cgroup.kill`
//! reaches processes in every pid namespace, also those of a previous run
//! in another container. Only a v1 host without a cgroup2 mount uses the v1
//! freezer.
//!
//! Cgroups are made ahead of time, `cgroup_pool_size` of them, as
//! `<controller>/sock/<instance>/pool-N` (v1: memory, pids and cpu; never
//! cpuset, whose new cgroups have no cpus), and recycled after their
//! sandbox dies: killed, `force_empty`, limits rewritten, OOM count
//! re-based. Destroying a sandbox freezes it, SIGKILLs its pid namespace's
//! processes first (the init then reaps the runtime), then whatever is
//! left, thaws and waits until the cgroup is empty; only then does the
//! cgroup go back to the pool (and sandboxd release its memory). When the
//! pool closes (sandboxd's shutdown, after it killed every sandbox and
//! waited a few seconds for their owners) the ready cgroups and
//! `sock/<instance>` go, and a sandbox that ends later removes its cgroup
//! and the parents rather than keep it: the process may exit right after,
//! so nothing waits for a last reference to drop. At start
//! ([`remove_leftovers`]) a crashed run's cgroups are cleaned up:
//! `cgroup.kill` on every leaf under `sock/<instance>` (the old run's pids
//! may be in another container's pid namespace, unseen), then every
//! cgroup killed and removed. Inits die with sandboxd (parent-death
//! signal), runtimes with their init, a zygote's children with the zygote
//! (its pid namespace).
//!
//! Architecture invariant: sandboxd only ever creates, kills or removes
//! cgroups below `sock/<instance>`, so daemons of other instances (parallel
//! test clusters) are never touched.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cgroups_rs::fs::cgroup::Cgroup;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controller, MaxValue};
use cgroups_rs::{CgroupPid, FreezerState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::spares::Spares;

/// The v1 controllers a sandbox joins; the freezer only where no cgroup2
/// mount offers a killable one. cpuset is left out on purpose: a new v1
/// cpuset cgroup has no cpus until configured, so joining it fails.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// Top of every cgroup sock creates.
const ROOT: &str = "sock";
/// CFS period for `cpu_percent`; quota = period × percent / 100.
const CPU_PERIOD_US: u64 = 100_000;
/// How long destroy waits for killed processes to leave the cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pausing waits for every process of a sandbox to freeze.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// What can go wrong with a sandbox's cgroup. sandboxd reports each as
/// "cannot set up the sandbox's cgroup" to its callers.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: cannot {op}: {source}")]
    Cgroup {
        op: &'static str,
        path: String,
        source: cgroups_rs::fs::error::Error,
    },
    #[error("cgroup {path}: cannot {op}: {source}", path = path.display())]
    Leaf {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path}: its processes did not freeze within 1 s")]
    Freeze { path: String },
    #[error("the {controller} cgroup controller is not available on this machine")]
    CgroupMissing { controller: &'static str },
}

/// Limits written into a sandbox's cgroup. Zero means "no limit".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u32,
    pub cpu_percent: u32,
}

/// Which cgroup hierarchy this machine uses.
pub fn version() -> u32 {
    if hierarchies::is_cgroup2_unified_mode() {
        2
    } else {
        1
    }
}

fn relative_path(instance: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{ROOT}/{instance}/{id}"),
        None => format!("{ROOT}/{instance}"),
    }
}

/// A handle on `sock/<instance>/<id>` in every controller we use. Loading it
/// creates nothing; `create` does.
fn load(instance: &str, id: Option<&str>) -> Cgroup {
    let hier = hierarchies::auto();
    let path = relative_path(instance, id);
    if hier.v2() {
        // v2 has one tree; the freezer is part of it (cgroup.freeze).
        Cgroup::load(hier, path)
    } else {
        let freezer = cgroup2_root().is_none().then_some("freezer");
        let controllers = V1_CONTROLLERS
            .iter()
            .copied()
            .chain(freezer)
            .map(String::from)
            .collect();
        Cgroup::load_with_specified_controllers(hier, path, controllers)
    }
}

/// Where cgroup2 is mounted, if anywhere (read once).
fn cgroup2_root() -> Option<&'static Path> {
    static ROOT2: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT2
        .get_or_init(|| {
            let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            cgroup2_mount(&table).map(|(point, _)| PathBuf::from(point))
        })
        .as_deref()
}

/// The cgroup v2 leaf that freezes and kills one sandbox: its own cgroup on
/// a v2 host, `<cgroup2 mount>/sock/<instance>/<id>` beside the v1 ones on
/// a hybrid host.
#[derive(Debug)]
struct Leaf(PathBuf);

impl Leaf {
    fn of(instance: &str, id: Option<&str>) -> Option<Leaf> {
        cgroup2_root().map(|root| Leaf(root.join(relative_path(instance, id))))
    }

    fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.0.join(file), value)
    }

    /// Whether `cgroup.events` has `key 1`.
    fn event(&self, key: &str) -> bool {
        std::fs::read_to_string(self.0.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|l| l == format!("{key} 1")))
    }

    fn freeze(&self, frozen: bool) -> std::io::Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    fn is_frozen(&self) -> bool {
        self.event("frozen")
    }

    fn is_populated(&self) -> bool {
        self.event("populated")
    }
}

fn dirs_of(cg: &Cgroup) -> Vec<PathBuf> {
    if cg.v2() {
        vec![hierarchies::auto().root().join(cg.path())]
    } else {
        cg.subsystems()
            .iter()
            .map(|s| s.to_controller().path().to_path_buf())
            .collect()
    }
}

/// The pre-created cgroups (`sock/<instance>/pool-N`) sandboxes take and
/// give back, so that starting a sandbox creates no cgroup: a recycled one
/// is emptied and gets the next sandbox's limits written over the old.
#[derive(Debug)]
pub struct CgroupPool {
    instance: String,
    /// The names of the empty cgroups ready, up to the pool's size. Once
    /// closed ([`CgroupPool::close`]), nothing is kept or made ready any
    /// more, so a sandbox that ends after it leaves nothing behind.
    free: Spares<String>,
    next: AtomicU64,
}

impl CgroupPool {
    pub fn new(instance: &str, spares: usize) -> CgroupPool {
        let pool = CgroupPool {
            instance: instance.to_string(),
            free: Spares::new(spares),
            next: AtomicU64::new(0),
        };
        pool.refill();
        pool
    }

    /// Empty cgroups ready right now.
    pub fn spare(&self) -> usize {
        self.free.len()
    }

    fn create(&self) -> Result<String, CgroupError> {
        let name = format!("pool-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let path = relative_path(&self.instance, Some(&name));
        let cg = load(&self.instance, Some(&name));
        create_with_retry(&cg, &path)?;
        if !cg.v2()
            && let Some(leaf) = Leaf::of(&self.instance, Some(&name))
            && let Err(source) = std::fs::create_dir_all(&leaf.0)
        {
            let _ = cg.delete();
            return Err(CgroupError::Leaf {
                op: "create",
                path: leaf.0,
                source,
            });
        }
        Ok(name)
    }

    /// Creates cgroups until the pool holds as many as its size; a pool
    /// closed meanwhile removes the one just made.
    pub fn refill(&self) {
        if let Err(e) = self
            .free
            .refill(|| self.create(), |name| self.discard(&name))
        {
            tracing::warn!(error = %e, "cannot pre-create a sandbox cgroup");
        }
    }

    /// A cgroup with `limits` written, from the pool when it has one.
    pub fn take(&self, limits: CgroupLimits) -> Result<SandboxCgroup, CgroupError> {
        let recycled = self.free.take();
        let name = match recycled {
            Some(name) => name,
            None => self.create()?,
        };
        let mut cgroup = SandboxCgroup::load(&self.instance, &name, limits);
        if let Err(e) = cgroup.apply() {
            cgroup.remove();
            return Err(e);
        }
        // A recycled cgroup remembers the OOM kills of earlier sandboxes.
        cgroup.oom_kills_before = cgroup.oom_kills();
        Ok(cgroup)
    }

    /// Kills what is left in the cgroup and keeps it for the next sandbox,
    /// or removes it when enough are ready, the pool is closed or it will
    /// not empty.
    pub fn recycle(&self, cgroup: &SandboxCgroup) {
        cgroup.kill();
        let name = cgroup.name.rsplit('/').next().expect("split yields one");
        if cgroup.cg.exists() && cgroup.cg.procs().is_empty() {
            cgroup.release_pages();
            if self.free.put(name.to_string()).is_ok() {
                return;
            }
        }
        cgroup.remove();
        if self.free.is_closed() {
            // The last sandbox to end after close takes the parents along.
            remove_parents(&self.instance);
        }
    }

    fn discard(&self, name: &str) {
        SandboxCgroup::load(&self.instance, name, CgroupLimits::default()).delete();
    }

    /// At shutdown: removes the ready cgroups and the instance's parent
    /// dirs, and from now on removes every cgroup given back instead of
    /// keeping it. Parents that still hold a sandbox's cgroup stay until
    /// that sandbox is recycled.
    pub fn close(&self) {
        // A refill under way ends at its next cgroup, which it removes.
        let names = self.free.close();
        for name in names {
            self.discard(&name);
        }
        remove_parents(&self.instance);
    }
}

/// A sandbox's cgroup. Every method is safe to call after the processes
/// are gone.
#[derive(Debug)]
pub struct SandboxCgroup {
    cg: Cgroup,
    name: String,
    limits: CgroupLimits,
    oom_kills_before: u64,
    /// Freezes and kills; None on a v1 host without cgroup2.
    leaf: Option<Leaf>,
}

impl SandboxCgroup {
    /// A handle on `sock/<instance>/<id>`; creates nothing.
    fn load(instance: &str, id: &str, limits: CgroupLimits) -> SandboxCgroup {
        SandboxCgroup {
            cg: load(instance, Some(id)),
            name: relative_path(instance, Some(id)),
            limits,
            oom_kills_before: 0,
            leaf: Leaf::of(instance, Some(id)),
        }
    }

    /// The cgroup2 leaf when it is a directory of its own (hybrid host).
    fn hybrid_leaf(&self) -> Option<&Leaf> {
        self.leaf.as_ref().filter(|_| !self.cg.v2())
    }

    fn err(&self, op: &'static str) -> impl FnOnce(cgroups_rs::fs::error::Error) -> CgroupError {
        let path = self.name.clone();
        move |source| CgroupError::Cgroup { op, path, source }
    }

    fn memory(&self) -> Result<&MemController, CgroupError> {
        self.cg.controller_of().ok_or(CgroupError::CgroupMissing {
            controller: "memory",
        })
    }

    /// Writes every limit, also the unlimited ones, as the cgroup may hold
    /// an earlier sandbox's.
    fn apply(&self) -> Result<(), CgroupError> {
        let limits = self.limits;
        let memory = self.memory()?;
        let bytes = if limits.memory_bytes > 0 {
            i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX)
        } else {
            -1
        };
        // v1 refuses a memory limit above memory+swap: lift that one first.
        let memsw = !self.cg.v2() && memory.path().join("memory.memsw.limit_in_bytes").exists();
        if memsw {
            memory
                .set_memswap_limit(-1)
                .map_err(self.err("lift memory+swap limit"))?;
        }
        memory
            .set_limit(bytes)
            .map_err(self.err("set memory limit"))?;
        // Without a swap limit a v1 sandbox could page out past its limit.
        if memsw {
            memory
                .set_memswap_limit(bytes)
                .map_err(self.err("set memory+swap limit"))?;
        }
        let pids: &PidController = self
            .cg
            .controller_of()
            .ok_or(CgroupError::CgroupMissing { controller: "pids" })?;
        let max = match limits.pids {
            0 => MaxValue::Max,
            n => MaxValue::Value(i64::from(n)),
        };
        pids.set_pid_max(max).map_err(self.err("set pids.max"))?;
        let cpu: &cgroups_rs::fs::cpu::CpuController = self
            .cg
            .controller_of()
            .ok_or(CgroupError::CgroupMissing { controller: "cpu" })?;
        let quota = match limits.cpu_percent {
            0 => -1,
            n => i64::try_from(CPU_PERIOD_US * u64::from(n) / 100).unwrap_or(i64::MAX),
        };
        cpu.set_cfs_quota_and_period(Some(quota), Some(CPU_PERIOD_US))
            .map_err(self.err("set cpu quota"))?;
        Ok(())
    }

    /// Writes `limits` over the ones the cgroup has (a parked child taking
    /// on the limits of the function it becomes).
    pub fn set_limits(&mut self, limits: CgroupLimits) -> Result<(), CgroupError> {
        self.limits = limits;
        self.apply()
    }

    /// Memory charged to the cgroup now, in bytes.
    pub fn memory_usage(&self) -> u64 {
        let Ok(memory) = self.memory() else {
            return 0;
        };
        let file = if self.cg.v2() {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        std::fs::read_to_string(memory.path().join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The processes in the cgroup now (host pids, as this process sees
    /// them).
    pub fn pids(&self) -> Vec<u32> {
        self.cg
            .procs()
            .into_iter()
            .filter_map(|pid| u32::try_from(pid.pid).ok())
            .collect()
    }

    /// Freezes every process and shrinks the memory limit to what the
    /// cgroup uses, so a paused sandbox can neither run nor grow. Returns
    /// the memory limit now in force, in bytes (0: none): the sandbox's
    /// use, or its full limit when the kernel would not shrink it.
    pub fn pause(&self) -> Result<u64, CgroupError> {
        let freezer = self.freezer()?;
        freezer.set(true)?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        while !freezer.is_frozen() {
            if Instant::now() >= deadline {
                return Err(CgroupError::Freeze {
                    path: self.name.clone(),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let full = self.limits.memory_bytes;
        if full == 0 {
            return Ok(0);
        }
        let page = 4096;
        let usage = self.memory_usage().div_ceil(page) * page;
        let memory = self.memory()?;
        // v1's usage lags the charges by the per-CPU batches not yet
        // flushed, so a limit of exactly that may be refused (EBUSY, it
        // cannot reclaim down to it): then a MiB more. Refused again, the
        // sandbox keeps its full limit.
        for limit in [usage, usage + (1 << 20)] {
            if limit >= full {
                break;
            }
            match memory.set_limit(i64::try_from(limit).unwrap_or(i64::MAX)) {
                Ok(()) => return Ok(limit),
                Err(e) => {
                    tracing::debug!(cgroup = %self.name, limit, error = %e, "memory limit not shrunk");
                }
            }
        }
        Ok(full)
    }

    /// Restores the memory limit, then thaws.
    pub fn unpause(&self) -> Result<(), CgroupError> {
        if self.limits.memory_bytes > 0 {
            let bytes = i64::try_from(self.limits.memory_bytes).unwrap_or(i64::MAX);
            self.memory()?
                .set_limit(bytes)
                .map_err(self.err("restore memory limit"))?;
        }
        self.freezer()?.set(false)
    }

    fn freezer(&self) -> Result<Freezer<'_>, CgroupError> {
        match &self.leaf {
            Some(leaf) => Ok(Freezer::V2(leaf)),
            None => self
                .cg
                .controller_of()
                .map(Freezer::V1)
                .ok_or(CgroupError::CgroupMissing {
                    controller: "freezer",
                }),
        }
    }

    /// Returns page cache charged to the cgroup to the system before
    /// reuse, so the next sandbox starts with nothing charged.
    fn release_pages(&self) {
        if let Ok(memory) = self.memory()
            && !self.cg.v2()
        {
            let _ = std::fs::write(memory.path().join("memory.force_empty"), "0");
        }
    }

    /// Moves a process (and so everything it forks later) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        self.cg
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(|source| CgroupError::Cgroup {
                op: "add process",
                path: self.name.clone(),
                source,
            })?;
        if let Some(leaf) = self.hybrid_leaf() {
            leaf.write("cgroup.procs", &pid.to_string())
                .map_err(|source| CgroupError::Leaf {
                    op: "add process",
                    path: leaf.0.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// OOM kills in this cgroup since it was created.
    fn oom_kills(&self) -> u64 {
        let Ok(memory) = self.memory() else {
            return 0;
        };
        if self.cg.v2() {
            return std::fs::read_to_string(memory.path().join("memory.events"))
                .map(|events| v2_oom_kills(&events))
                .unwrap_or(0);
        }
        memory.memory_stat().oom_control.oom_kill
    }

    /// Whether the kernel's OOM killer has acted on this sandbox.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills() > self.oom_kills_before
    }

    /// The cgroup's directories: one per controller on v1, and the
    /// cgroup2 leaf on a hybrid host.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = dirs_of(&self.cg);
        dirs.extend(self.hybrid_leaf().map(|leaf| leaf.0.clone()));
        dirs
    }

    /// Kills every process in the cgroup and waits until it is empty.
    /// Blocks for as long as the kernel needs to reap the processes
    /// (milliseconds), bounded by DRAIN_TIMEOUT. Logs instead of failing:
    /// there is nothing better to do with a stuck cgroup than to report it.
    pub fn kill(&self) {
        if !self.cg.exists() {
            return;
        }
        let freezer = self.freezer().ok();
        if let Err(e) = kill_all(&self.cg, freezer) {
            tracing::warn!(cgroup = %self.name, error = %e, "cgroup still has processes");
        }
    }

    /// Kills everything in the cgroup and removes it.
    pub fn remove(&self) {
        self.kill();
        self.delete();
    }

    /// Removes the (empty) cgroup's directories.
    fn delete(&self) {
        if self.cg.exists()
            && let Err(e) = self.cg.delete()
        {
            tracing::warn!(cgroup = %self.name, error = %e, "cannot remove cgroup");
        }
        if let Some(leaf) = self.hybrid_leaf()
            && let Err(e) = std::fs::remove_dir(&leaf.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(cgroup = %leaf.0.display(), error = %e, "cannot remove cgroup");
        }
    }

    /// Kills what a previous run left, whatever pid namespace it is in
    /// (a daemon restarted in a new container sees none of its pids), and
    /// waits for the leaf to empty. A no-op without cgroup2.
    fn kill_unseen(&self) {
        let Some(leaf) = &self.leaf else {
            return;
        };
        if !leaf.0.is_dir() {
            return;
        }
        if let Err(e) = leaf.write("cgroup.kill", "1") {
            tracing::warn!(cgroup = %leaf.0.display(), error = %e, "cannot kill the cgroup");
            return;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while leaf.is_populated() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The freezer a sandbox uses: its cgroup2 leaf, or the v1 controller.
#[derive(Clone, Copy)]
enum Freezer<'a> {
    V1(&'a FreezerController),
    V2(&'a Leaf),
}

impl Freezer<'_> {
    /// Freezes (true) or thaws (false).
    fn set(self, frozen: bool) -> Result<(), CgroupError> {
        let op = if frozen { "freeze" } else { "thaw" };
        match self {
            Freezer::V1(f) => {
                if frozen { f.freeze() } else { f.thaw() }.map_err(|source| CgroupError::Cgroup {
                    op,
                    path: f.path().display().to_string(),
                    source,
                })
            }
            Freezer::V2(leaf) => leaf.freeze(frozen).map_err(|source| CgroupError::Leaf {
                op,
                path: leaf.0.clone(),
                source,
            }),
        }
    }

    /// Frozen for sure: an unreadable state is not.
    fn is_frozen(self) -> bool {
        match self {
            Freezer::V1(f) => matches!(f.state(), Ok(FreezerState::Frozen)),
            Freezer::V2(leaf) => leaf.is_frozen(),
        }
    }
}

/// A concurrent `remove_parents` may delete `sock/<instance>` between the
/// creation of the parents and of the leaf; trying again recreates them.
fn create_with_retry(cg: &Cgroup, name: &str) -> Result<(), CgroupError> {
    let mut last = None;
    for _ in 0..3 {
        match cg.create() {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    // Leave no half-created directories behind.
    let _ = cg.delete();
    Err(CgroupError::Cgroup {
        op: "create",
        path: name.to_string(),
        source: last.expect("the loop ran at least once"),
    })
}

fn v2_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
enum KillError {
    #[error("{0} processes left after {1:?}")]
    Stuck(usize, Duration),
}

/// v2 with `cgroup.kill` kills atomically. Otherwise freeze first so
/// nothing can fork between listing and killing, SIGKILL what is listed,
/// thaw so the signals are delivered, and wait until it is empty.
///
/// The first round spares the init (the one process outside the sandbox's
/// pid namespace): killing the runtime, pid 1 there, makes the kernel kill
/// and reap the rest of the namespace, and the init then reaps the runtime
/// and exits. Killing the init first would orphan the runtime to the
/// host's pid 1, which may never reap it.
fn kill_all(cg: &Cgroup, freezer: Option<Freezer<'_>>) -> Result<(), KillError> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    if cg.v2() && cg.kill().is_ok() {
        return wait_empty(cg, deadline);
    }
    let own_pid_ns = pid_namespace("self");
    let mut spare_init = true;
    loop {
        if let Some(f) = freezer {
            freeze(f, deadline);
        }
        let mut killed = 0;
        for pid in cg.procs() {
            if spare_init && pid_namespace(&pid.pid.to_string()) == own_pid_ns {
                continue;
            }
            if let Ok(pid) = i32::try_from(pid.pid) {
                // ESRCH: it died on its own meanwhile, which is the goal.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed += 1;
            }
        }
        if let Some(f) = freezer {
            let _ = f.set(false);
        }
        if spare_init && killed == 0 {
            // Nothing inside the namespace (the init has not forked yet,
            // or the runtime is already gone): the init goes now.
            spare_init = false;
            continue;
        }
        spare_init = false;
        let round = Instant::now() + Duration::from_millis(500).min(remaining(deadline));
        match wait_empty(cg, round) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
    }
}

fn pid_namespace(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn freeze(f: Freezer<'_>, deadline: Instant) {
    if f.set(true).is_err() {
        return;
    }
    let limit = Instant::now() + Duration::from_millis(200).min(remaining(deadline));
    while !f.is_frozen() && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_empty(cg: &Cgroup, deadline: Instant) -> Result<(), KillError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let left = cg.procs().len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KillError::Stuck(left, started.elapsed()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Turns on `favordynmods` on the machine's cgroup2 mount (the flag is
/// global: it speeds up task migration in the v1 hierarchies too).
pub fn favor_dynmods() -> Result<(), String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let (point, options) = cgroup2_mount(&table).ok_or("no cgroup2 mount")?;
    if options.split(',').any(|o| o == "favordynmods") {
        return Ok(());
    }
    let options: Vec<&str> = options
        .split(',')
        .filter(|o| !["rw", "ro"].contains(o))
        .chain(["favordynmods"])
        .collect();
    nix::mount::mount(
        None::<&str>,
        point.as_str(),
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some(options.join(",").as_str()),
    )
    .map_err(|e| format!("remount {point} with favordynmods: {e}"))
}

/// Mount point and super options of the first cgroup2 mount.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let mut rest = rest.split(' ');
        (rest.next()? == "cgroup2").then_some(())?;
        let options = rest.nth(1)?.to_string();
        Some((fields.split(' ').nth(4)?.to_string(), options))
    })
}

/// Removes what an earlier run of this instance left: kills the processes
/// of every `sock/<instance>/*` cgroup and removes them. Returns how many
/// it removed.
pub fn remove_leftovers(instance: &str) -> usize {
    let mut ids: Vec<String> = parent_dirs(instance)
        .iter()
        .flat_map(|dir| child_dirs(dir))
        .collect();
    ids.sort();
    ids.dedup();
    for id in &ids {
        tracing::warn!(instance, sandbox = %id, "removing a sandbox left by an earlier run");
        let cgroup = SandboxCgroup::load(instance, id, CgroupLimits::default());
        cgroup.kill_unseen();
        cgroup.remove();
    }
    ids.len()
}

/// `sock/<instance>` in every hierarchy sandboxes join.
fn parent_dirs(instance: &str) -> Vec<PathBuf> {
    let mut dirs = dirs_of(&load(instance, None));
    if !hierarchies::is_cgroup2_unified_mode() {
        dirs.extend(Leaf::of(instance, None).map(|leaf| leaf.0));
    }
    dirs
}

fn child_dirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Removes `sock/<instance>` and, when no other instance uses it, `sock`.
/// Directories that still have children stay (rmdir refuses them).
pub fn remove_parents(instance: &str) {
    for dir in parent_dirs(instance) {
        let _ = std::fs::remove_dir(&dir);
        if let Some(root) = dir.parent() {
            let _ = std::fs::remove_dir(root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgroups_rs::fs::Subsystem;

    #[test]
    fn paths_are_scoped_by_instance() {
        assert_eq!(relative_path("ci-1", Some("abc")), "sock/ci-1/abc");
        assert_eq!(relative_path("ci-1", None), "sock/ci-1");
    }

    #[test]
    fn the_cgroup2_mount_is_found_with_its_options() {
        let table = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            cgroup2_mount(table),
            Some(("/sys/fs/cgroup/unified".into(), "rw,nsdelegate".into()))
        );
        assert_eq!(
            cgroup2_mount("32 31 0:29 / /x rw - cgroup cgroup rw,cpu\n"),
            None
        );
    }

    #[test]
    fn v2_oom_kill_count_is_read_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(v2_oom_kills(events), 2);
        assert_eq!(v2_oom_kills("low 0\n"), 0);
    }

    #[test]
    fn v1_sandboxes_never_join_cpuset() {
        if version() != 1 {
            return;
        }
        let names: Vec<String> = load("unit", Some("x"))
            .subsystems()
            .iter()
            .map(Subsystem::controller_name)
            .collect();
        assert!(names.iter().any(|n| n == "memory"), "{names:?}");
        assert!(!names.iter().any(|n| n == "cpuset"), "{names:?}");
    }
}

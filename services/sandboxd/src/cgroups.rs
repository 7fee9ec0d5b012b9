//! One cgroup per sandbox, at `<controller>/sock/<instance>/<sandbox-id>`,
//! through cgroups-rs: memory, pids, cpu and freezer on v1 (what the test
//! machines run), the unified tree on v2.
//!
//! Architecture invariant: sandboxd only ever creates, kills or removes
//! cgroups below `sock/<instance>`, so daemons of other instances (parallel
//! test clusters) are never touched.
use std::path::{Path, PathBuf};
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

use crate::error::Error;

/// The v1 controllers a sandbox joins. cpuset is left out on purpose: a
/// new v1 cpuset cgroup has no cpus until configured, so joining it fails.
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];
/// Top of every cgroup sock creates.
const ROOT: &str = "sock";
/// CFS period for `cpu_percent`; quota = period × percent / 100.
const CPU_PERIOD_US: u64 = 100_000;
/// How long destroy waits for killed processes to leave the cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits written into a sandbox's cgroup. Zero means "no limit".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u32,
    pub cpu_percent: u32,
}

/// Which cgroup hierarchy this machine uses.
pub(crate) fn version() -> u32 {
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
        let controllers = V1_CONTROLLERS.iter().map(|c| c.to_string()).collect();
        Cgroup::load_with_specified_controllers(hier, path, controllers)
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

/// A sandbox's cgroup. Every method is safe to call after the processes
/// are gone, and `destroy` twice.
#[derive(Debug)]
pub(crate) struct SandboxCgroup {
    cg: Cgroup,
    name: String,
}

impl SandboxCgroup {
    /// Creates the cgroup and writes its limits.
    pub fn create(instance: &str, id: &str, limits: CgroupLimits) -> Result<Self, Error> {
        let name = relative_path(instance, Some(id));
        let cg = load(instance, Some(id));
        create_with_retry(&cg, &name)?;
        let cgroup = SandboxCgroup { cg, name };
        if let Err(e) = cgroup.apply(limits) {
            cgroup.destroy();
            return Err(e);
        }
        Ok(cgroup)
    }

    fn apply(&self, limits: CgroupLimits) -> Result<(), Error> {
        let err = |op: &'static str| {
            let name = self.name.clone();
            move |source| Error::Cgroup {
                op,
                path: name,
                source,
            }
        };
        if limits.memory_bytes > 0 {
            let memory: &MemController =
                self.cg
                    .controller_of()
                    .ok_or_else(|| Error::CgroupMissing {
                        controller: "memory",
                    })?;
            let bytes = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
            memory.set_limit(bytes).map_err(err("set memory limit"))?;
            // Without a swap limit a v1 sandbox could page out past its
            // limit; the file only exists where swap accounting is on.
            if !self.cg.v2() && memory.path().join("memory.memsw.limit_in_bytes").exists() {
                memory
                    .set_memswap_limit(bytes)
                    .map_err(err("set memory+swap limit"))?;
            }
        }
        if limits.pids > 0 {
            let pids: &PidController = self
                .cg
                .controller_of()
                .ok_or(Error::CgroupMissing { controller: "pids" })?;
            pids.set_pid_max(MaxValue::Value(i64::from(limits.pids)))
                .map_err(err("set pids.max"))?;
        }
        if limits.cpu_percent > 0 {
            let cpu: &cgroups_rs::fs::cpu::CpuController = self
                .cg
                .controller_of()
                .ok_or(Error::CgroupMissing { controller: "cpu" })?;
            let quota = CPU_PERIOD_US * u64::from(limits.cpu_percent) / 100;
            cpu.set_cfs_quota_and_period(
                Some(i64::try_from(quota).unwrap_or(i64::MAX)),
                Some(CPU_PERIOD_US),
            )
            .map_err(err("set cpu quota"))?;
        }
        Ok(())
    }

    /// Moves a process (and so everything it forks later) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), Error> {
        self.cg
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(|source| Error::Cgroup {
                op: "add process",
                path: self.name.clone(),
                source,
            })
    }

    /// Whether the kernel's OOM killer has acted inside this cgroup.
    pub fn oom_killed(&self) -> bool {
        let Some(memory) = self.cg.controller_of::<MemController>() else {
            return false;
        };
        if self.cg.v2() {
            return std::fs::read_to_string(memory.path().join("memory.events"))
                .map(|events| v2_oom_kills(&events) > 0)
                .unwrap_or(false);
        }
        let oom = memory.memory_stat().oom_control;
        oom.oom_kill > 0 || oom.under_oom
    }

    /// The cgroup's directories, one per controller on v1.
    pub fn dirs(&self) -> Vec<PathBuf> {
        dirs_of(&self.cg)
    }

    /// Kills every process in the cgroup, waits until it is empty and
    /// removes it. Blocks for as long as the kernel needs to reap the
    /// processes (milliseconds), bounded by DRAIN_TIMEOUT. Logs instead of
    /// failing: there is nothing better to do with a stuck cgroup than to
    /// report it.
    pub fn destroy(&self) {
        if !self.cg.exists() {
            return;
        }
        if let Err(e) = kill_all(&self.cg) {
            tracing::warn!(cgroup = %self.name, error = %e, "cgroup still has processes");
        }
        if let Err(e) = self.cg.delete() {
            tracing::warn!(cgroup = %self.name, error = %e, "cannot remove cgroup");
        }
    }
}

/// A concurrent `remove_parents` may delete `sock/<instance>` between the
/// creation of the parents and of the leaf; trying again recreates them.
fn create_with_retry(cg: &Cgroup, name: &str) -> Result<(), Error> {
    let mut last = None;
    for _ in 0..3 {
        match cg.create() {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    // Leave no half-created directories behind.
    let _ = cg.delete();
    Err(Error::Cgroup {
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
fn kill_all(cg: &Cgroup) -> Result<(), KillError> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    if cg.v2() && cg.kill().is_ok() {
        return wait_empty(cg, deadline);
    }
    let freezer: Option<&FreezerController> = cg.controller_of();
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
            let _ = f.thaw();
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

fn freeze(f: &FreezerController, deadline: Instant) {
    if f.freeze().is_err() {
        return;
    }
    let limit = Instant::now() + Duration::from_millis(200).min(remaining(deadline));
    while !matches!(f.state(), Ok(FreezerState::Frozen) | Err(_)) && Instant::now() < limit {
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

/// Removes what an earlier run of this instance left: kills the processes
/// of every `sock/<instance>/*` cgroup and removes them. Returns how many
/// it removed.
pub(crate) fn remove_leftovers(instance: &str) -> usize {
    let parent = load(instance, None);
    let mut ids: Vec<String> = dirs_of(&parent)
        .iter()
        .flat_map(|dir| child_dirs(dir))
        .collect();
    ids.sort();
    ids.dedup();
    for id in &ids {
        tracing::warn!(instance, sandbox = %id, "removing a sandbox left by an earlier run");
        SandboxCgroup {
            cg: load(instance, Some(id)),
            name: relative_path(instance, Some(id)),
        }
        .destroy();
    }
    ids.len()
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
pub(crate) fn remove_parents(instance: &str) {
    let parent = load(instance, None);
    for dir in dirs_of(&parent) {
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

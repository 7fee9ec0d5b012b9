//! The lockdown: the one sequence that turns a process already inside its
//! sandbox (root, namespaces, cgroups) into the unprivileged process a
//! function runs in. Every birth path goes through [`Lockdown::apply`]: a
//! fresh sandbox's init before it execs Python, a source build's command,
//! and a zygote's child before it returns to Python (through the C library,
//! see `zygote.rs`).
//!
//! The order matters: limits and the bounding set while still privileged,
//! then the ids (which clears every capability), then `no_new_privs`, the
//! working dir and the fds, and seccomp last, so none of the steps before
//! runs under the filter; with TSYNC the filter covers every thread, and a
//! process with a second thread is refused before anything changes.
//!
//! In full: refuse a process with more than one thread
//! (`/proc/self/status`: ids change on every thread, but the bounding set
//! and `no_new_privs` are per thread); RLIMIT_NOFILE 1024 and RLIMIT_CORE
//! 0; drop the whole bounding set; `setgroups([])`, `setresgid`,
//! `setresuid` to the sandbox's uid (which clears every capability); the
//! parent-death signal again (for a fresh sandbox: the credential change
//! cleared it); `no_new_privs`; the working dir; close every fd above 3;
//! then seccomp with `SECCOMP_FILTER_FLAG_TSYNC`.
use std::path::Path;

use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use crate::seccomp::{Insn, Programs};

/// Open files a sandbox process may hold.
pub(crate) const NOFILE: u64 = 1024;
/// The fd a sandbox process finds its socket on; every fd above it is
/// closed by the lockdown.
pub(crate) const SOCKET_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    #[error(
        "refusing to lock down a process with {0} threads: a thread started before the lockdown would escape it"
    )]
    Threads(usize),
    #[error("seccomp: {0}")]
    Seccomp(String),
}

pub(crate) fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> LockdownError {
    move |source| LockdownError::Sys { what, source }
}

/// What a sandbox process becomes.
#[derive(Debug)]
pub struct Lockdown<'a> {
    /// The unprivileged ids it runs as.
    pub uid: u32,
    pub gid: u32,
    /// Its working dir, a sandbox path.
    pub cwd: &'a Path,
    /// Whether it dies when its parent does: a fresh sandbox's runtime
    /// with its init. The credential change clears the parent-death
    /// signal, so it is set again after.
    pub die_with_parent: bool,
    /// The filters, installed last on every thread.
    pub seccomp: &'a Programs,
}

impl Lockdown<'_> {
    /// Applies the lockdown to the calling process; on error the process
    /// must not run anything of the function's (its callers exit).
    pub fn apply(&self) -> Result<(), LockdownError> {
        single_threaded()?;
        limit_resources()?;
        drop_bounding_set().map_err(sys("drop capability bounding set"))?;
        set_ids(Uid::from_raw(self.uid), Gid::from_raw(self.gid))?;
        if self.die_with_parent {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("set pdeathsig"))?;
        }
        prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
        nix::unistd::chdir(self.cwd).map_err(sys("chdir"))?;
        close_fds_above(SOCKET_FD).map_err(sys("close_range"))?;
        install_seccomp(self.seccomp)
    }
}

/// The rlimits every sandbox process has: few open files, no core dumps.
pub(crate) fn limit_resources() -> Result<(), LockdownError> {
    setrlimit(Resource::RLIMIT_NOFILE, NOFILE, NOFILE).map_err(sys("setrlimit NOFILE"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys("setrlimit CORE"))
}

/// No supplementary groups, then `gid` and `uid` (real, effective, saved).
/// Changing from uid 0 without keep-caps clears every capability.
pub(crate) fn set_ids(uid: Uid, gid: Gid) -> Result<(), LockdownError> {
    setgroups(&[]).map_err(sys("setgroups"))?;
    setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    setresuid(uid, uid, uid).map_err(sys("setresuid"))
}

/// Refuses a process with more than one thread: ids change on every
/// thread (glibc broadcasts them), but `no_new_privs` and the bounding set
/// are per thread, so another thread could keep what this one drops.
/// Needs `/proc`; a process without it cannot be checked and is refused.
pub(crate) fn single_threaded() -> Result<(), LockdownError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| LockdownError::Sys {
        what: "read /proc/self/status to count threads",
        source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .ok_or(LockdownError::Sys {
            what: "count threads in /proc/self/status",
            source: nix::errno::Errno::EINVAL,
        })?;
    match threads {
        1 => Ok(()),
        n => Err(LockdownError::Threads(n)),
    }
}

/// Drops every capability from the bounding set, so nothing the process
/// execs can ever gain one back.
#[allow(unsafe_code)]
pub(crate) fn drop_bounding_set() -> nix::Result<()> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 {
            return match nix::errno::Errno::last() {
                // Past the last capability this kernel knows.
                nix::errno::Errno::EINVAL if cap > 0 => Ok(()),
                e => Err(e),
            };
        }
    }
    Ok(())
}

/// Closes every fd above `fd`: nothing the sandbox's maker held stays open.
#[allow(unsafe_code)]
pub(crate) fn close_fds_above(fd: i32) -> nix::Result<()> {
    // SAFETY: close_range takes plain integers; every fd above `fd` belongs
    // to this process alone, and no Rust owner of one is used again (the
    // callers exec or return to code that never saw them).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0) };
    if rc < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Installs the filters on every thread of the process (TSYNC). Needs
/// `no_new_privs` or CAP_SYS_ADMIN.
pub(crate) fn install_seccomp(programs: &Programs) -> Result<(), LockdownError> {
    for program in programs {
        let bpf: seccompiler::BpfProgram = program
            .iter()
            .map(|Insn(code, jt, jf, k)| seccompiler::sock_filter {
                code: *code,
                jt: *jt,
                jf: *jf,
                k: *k,
            })
            .collect();
        seccompiler::apply_filter_all_threads(&bpf)
            .map_err(|e| LockdownError::Seccomp(e.to_string()))?;
    }
    Ok(())
}

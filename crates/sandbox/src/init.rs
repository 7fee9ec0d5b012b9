//! The sandbox init: `sock-sandboxd __sandbox-init`, started by sandboxd in
//! new namespaces and already inside the sandbox's cgroups.
//!
//! It reads its [`InitSpec`] from stdin, builds the root file system, sets
//! the hostname, then forks: the child is pid 1 of the
//! new pid namespace, mounts `/proc`, drops every privilege and execs the
//! Python runtime. The init waits for it and exits with its status.
//!
//! sandboxd starts it as `sock-sandboxd __sandbox-init` (`/proc/self/exe`,
//! or its `init_program` for embedders such as tests), in new mnt, pid,
//! ipc and uts namespaces and a network namespace from the pool (`setns`),
//! joined to a pooled cgroup (see [`crate::cgroups`]) before it reads its
//! JSON spec on stdin. The runtime it execs is pid 1 of the pid namespace
//! with a masked `/proc`, locked down by [`crate::Lockdown::apply`] (its
//! own uid, no capabilities, the allow-list filter compiled once at
//! sandboxd's start and passed in the spec), cwd `/code`:
//! `python3 -I -S -B /sock/sock_runtime.py /code ENTRY [/packages/N…]`.
//! Its environment is a clean one, nothing of the host's: `PATH`, `HOME`
//! (`/tmp`), `LANG` and `PYTHONDONTWRITEBYTECODE`, then ol.yaml's
//! `environment` over them ([`envp`], also for a zygote's children).
//! A source build's spec names pip's command instead; a root zygote's
//! ([`ZygoteInit`]) makes the runtime leave host root for `zygote_uid`
//! before it creates its user namespace, so that namespace, and every
//! per-user kernel count of what runs in it, belongs to that uid. A
//! failed setup exits 125 before the runtime says `ready`; sandboxd
//! reports it as `platform`, with the details only in its log.
//!
//! Architecture invariant: this runs single-threaded (main dispatches here
//! before any runtime starts), which is what makes `fork` sound.
use std::ffi::{CString, NulError};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, raise};
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, execve, fork};
use serde::{Deserialize, Serialize};

use crate::lockdown::{
    Lockdown, LockdownError, SOCKET_FD, close_fds_above, install_seccomp, limit_resources, set_ids,
};
use crate::mounts::{self, MountError, RealHost, RootSpec};
use crate::namespaces::set_hostname;
use crate::proc::{Proc, mount_proc};
use crate::seccomp::Programs;

/// `argv[1]` that makes `sock-sandboxd` run as a sandbox init.
pub const INIT_ARG: &str = "__sandbox-init";
/// Exit status of an init whose setup failed (as `docker run` uses 125 for
/// its own failures), so sandboxd can tell it from the function's exit.
pub const SETUP_FAILED: i32 = 125;
const RUNTIME_FILE: &str = "sock_runtime.py";
pub const ZYGOTE_FILE: &str = "sock_zygote.py";

/// Everything the init needs, sent by sandboxd as JSON on stdin. Host paths
/// are only used before `pivot_root`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitSpec {
    /// Empty directory the root tmpfs is mounted on.
    pub mount_point: PathBuf,
    /// None for a zygote or the installer, which serve no function.
    pub code_dir: Option<PathBuf>,
    pub runtime_dir: PathBuf,
    pub package_dirs: Vec<PathBuf>,
    pub tmp_mb: u64,
    pub uid: u32,
    pub gid: u32,
    /// Interpreter path, valid inside the sandbox.
    pub python: PathBuf,
    pub entry_file: String,
    /// The function's environment, applied over the defaults.
    pub environment: Vec<(String, String)>,
    /// Compiled seccomp filters for the runtime.
    pub seccomp: Programs,
    /// Makes this sandbox a zygote (see [`ZygoteInit`]).
    #[serde(default)]
    pub zygote: Option<ZygoteInit>,
    /// Runs this command (sandbox paths) instead of the runtime: the
    /// installer's pip. Same uid, capabilities and seccomp filter.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// More host dirs in the root: (host dir, sandbox path, writable).
    #[serde(default)]
    pub extra_dirs: Vec<(PathBuf, String, bool)>,
    /// The cache's data dir: dirs below it are opened beneath it.
    #[serde(default)]
    pub cache_data_dir: Option<PathBuf>,
}

/// A zygote's runtime becomes root of a user namespace of its own: root
/// inside is `host_uid`/`host_gid` outside (unprivileged), and the
/// function uids/gids map to themselves. That root can chroot and unshare
/// for its children, and nothing on the host. It runs under the zygote
/// seccomp profile, which allows exactly those calls besides a function's;
/// its function children install the function filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZygoteInit {
    pub host_uid: u32,
    pub host_gid: u32,
    /// The ids its function children take (each its own), mapped to
    /// themselves.
    pub function_uid_base: u32,
    pub function_uids: u32,
    /// `sock_zygote.py`'s argument: JSON with `package_dirs` (sandbox
    /// paths) and `imports`.
    pub config: String,
}

impl InitSpec {
    /// The runtime's command line, with paths as the sandbox sees them.
    pub(crate) fn argv(&self) -> Vec<String> {
        if let Some(command) = &self.command {
            return command.clone();
        }
        if let Some(zygote) = &self.zygote {
            return vec![
                self.python.display().to_string(),
                "-I".into(),
                "-S".into(),
                "-B".into(),
                format!("{}/{ZYGOTE_FILE}", mounts::RUNTIME_DIR),
                zygote.config.clone(),
            ];
        }
        let mut argv = vec![
            self.python.display().to_string(),
            // Isolated (no env, no user site), no site module, no .pyc
            // writes (the code is read-only anyway).
            "-I".into(),
            "-S".into(),
            "-B".into(),
            format!("{}/{RUNTIME_FILE}", mounts::RUNTIME_DIR),
            mounts::CODE_DIR.into(),
            self.entry_file.clone(),
        ];
        argv.extend((0..self.package_dirs.len()).map(mounts::package_dir));
        argv
    }

    /// A clean environment: the defaults, then the function's own.
    pub(crate) fn envp(&self) -> Vec<String> {
        envp(&self.environment)
    }
}

/// A clean environment: the defaults, then `environment` over them.
pub fn envp(environment: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<(String, String)> = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (key, value) in environment {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("cannot read the spec from stdin: {0}")]
    Spec(#[from] serde_json::Error),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    #[error("argument or environment contains a NUL byte: {0}")]
    Nul(#[from] NulError),
    #[error(transparent)]
    Lockdown(#[from] LockdownError),
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> InitError {
    move |source| InitError::Sys { what, source }
}

/// Runs the init; returns the process exit status.
pub fn sandbox_init() -> i32 {
    match init() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("sandbox init: {e}");
            SETUP_FAILED
        }
    }
}

fn init() -> Result<i32, InitError> {
    umask(Mode::from_bits_truncate(0o022));
    let spec: InitSpec = serde_json::from_reader(std::io::stdin().lock())?;
    let argv = cstrings(spec.argv())?;
    let envp = cstrings(spec.envp())?;
    let steps = mounts::plan(
        &RootSpec {
            code_dir: spec.code_dir.as_deref(),
            runtime_dir: &spec.runtime_dir,
            package_dirs: &spec.package_dirs,
            tmp_mb: spec.tmp_mb,
            extra: &spec.extra_dirs,
            cache_data_dir: spec.cache_data_dir.as_deref(),
        },
        &RealHost,
    );
    mounts::build_root(&spec.mount_point, &steps)?;
    set_hostname().map_err(sys("sethostname"))?;

    // A zygote's runtime unshares its user namespace; only the init, root
    // outside it, may then write its id maps.
    let (from_runtime, to_init) = nix::unistd::pipe().map_err(sys("pipe"))?;
    let (from_init, to_runtime) = nix::unistd::pipe().map_err(sys("pipe"))?;

    #[allow(unsafe_code)]
    // SAFETY: the init is single-threaded (see the module docs), so the
    // child is a complete copy and may allocate and run any code.
    let forked = unsafe { fork() }.map_err(sys("fork"))?;
    match forked {
        ForkResult::Child => {
            drop((from_runtime, to_runtime));
            let err = exec_runtime(&spec, &argv, &envp, (to_init, from_init));
            eprintln!("sandbox init: {err}");
            std::process::exit(SETUP_FAILED);
        }
        ForkResult::Parent { child } => {
            drop((to_init, from_init));
            if let Some(zygote) = &spec.zygote {
                map_user_namespace(zygote, from_runtime, to_runtime)?;
            }
            close_socket();
            wait_for(child)
        }
    }
}

/// Waits for the zygote runtime to unshare its user namespace, writes its
/// id maps, and lets it go on. A runtime that failed before (EOF) gets
/// nothing written; its exit status tells sandboxd.
fn map_user_namespace(
    zygote: &ZygoteInit,
    from_runtime: OwnedFd,
    to_runtime: OwnedFd,
) -> Result<(), InitError> {
    let mut byte = [0u8; 1];
    if nix::unistd::read(&from_runtime, &mut byte).map_err(sys("read from runtime"))? == 0 {
        return Ok(());
    }
    // The runtime mounted /proc of its pid namespace before it unshared,
    // and is pid 1 there.
    let write = |file: &str, map: String| {
        std::fs::write(format!("/proc/1/{file}"), map).map_err(|e| InitError::Sys {
            what: "write id map",
            source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    };
    let (base, count) = (zygote.function_uid_base, zygote.function_uids);
    write(
        "uid_map",
        format!("0 {} 1\n{base} {base} {count}\n", zygote.host_uid),
    )?;
    write(
        "gid_map",
        format!("0 {} 1\n{base} {base} {count}\n", zygote.host_gid),
    )?;
    nix::unistd::write(&to_runtime, b"m").map_err(sys("write to runtime"))?;
    Ok(())
}

fn cstrings(strings: Vec<String>) -> Result<Vec<CString>, NulError> {
    strings.into_iter().map(CString::new).collect()
}

/// Only the runtime keeps the socket, so sandboxd sees it close the moment
/// the runtime dies.
#[allow(unsafe_code)]
fn close_socket() {
    // SAFETY: fd 3 is the socket sandboxd passed, owned by nothing else in
    // this process; wrapping it once and dropping it closes it once.
    drop(unsafe { OwnedFd::from_raw_fd(SOCKET_FD) });
}

/// Becomes the unprivileged runtime through the one lockdown every
/// sandbox goes through (or a zygote, root of its own user namespace
/// only). Returns only on failure.
fn exec_runtime(
    spec: &InitSpec,
    argv: &[CString],
    envp: &[CString],
    (to_init, from_init): (OwnedFd, OwnedFd),
) -> InitError {
    let run = || -> Result<std::convert::Infallible, InitError> {
        if let Some(zygote) = &spec.zygote {
            become_zygote(zygote, spec, (to_init, from_init))?;
        } else {
            drop((to_init, from_init));
            mount_proc(Proc::Masked)?;
            let cwd = match (&spec.code_dir, &spec.command) {
                (Some(_), _) => mounts::CODE_DIR,
                (None, Some(_)) => "/tmp",
                (None, None) => "/",
            };
            if spec.command.is_some() {
                // The installer's output is its answer: sandboxd reads it
                // from the socket, in order, both streams together.
                nix::unistd::dup2_stdout(socket_fd()).map_err(sys("dup2 stdout"))?;
                nix::unistd::dup2_stderr(socket_fd()).map_err(sys("dup2 stderr"))?;
            }
            Lockdown {
                uid: spec.uid,
                gid: spec.gid,
                cwd: Path::new(cwd),
                die_with_parent: true,
                seccomp: &spec.seccomp,
            }
            .apply()?;
        }
        execve(&argv[0], argv, envp).map_err(sys("execve"))
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// A zygote's runtime: it leaves host root for the zygote's host uid
/// first, so the user namespace it then creates is owned by that uid and
/// every per-user kernel count of its children (inotify instances, user
/// namespaces, …) is charged there, never to host root. The init maps root
/// inside to that uid; the zygote keeps an unmasked `/proc` (its children
/// mount their own) and runs under the zygote filter.
fn become_zygote(
    zygote: &ZygoteInit,
    spec: &InitSpec,
    (to_init, from_init): (OwnedFd, OwnedFd),
) -> Result<(), InitError> {
    mount_proc(Proc::Unmasked)?;
    limit_resources()?;
    set_ids(
        Uid::from_raw(zygote.host_uid),
        Gid::from_raw(zygote.host_gid),
    )?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(sys("unshare user namespace"))?;
    nix::unistd::write(&to_init, b"u").map_err(sys("write to init"))?;
    let mut byte = [0u8; 1];
    if nix::unistd::read(&from_init, &mut byte).map_err(sys("read from init"))? == 0 {
        return Err(InitError::Sys {
            what: "wait for the user namespace's id maps",
            source: nix::errno::Errno::EPIPE,
        });
    }
    drop((to_init, from_init));
    // Root inside: capabilities over the new user namespace only.
    set_ids(Uid::from_raw(0), Gid::from_raw(0))?;
    // The credential changes cleared the parent-death signal.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("set pdeathsig"))?;
    prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    nix::unistd::chdir("/").map_err(sys("chdir"))?;
    close_fds_above(SOCKET_FD).map_err(sys("close_range"))?;
    install_seccomp(&spec.seccomp)?;
    Ok(())
}

#[allow(unsafe_code)]
fn socket_fd() -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: fd 3 is the socket sandboxd passed; it stays open for the
    // life of this process (until exec, which keeps it).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(SOCKET_FD) }
}

/// Waits for the runtime and passes its fate on: the same exit code, or
/// death by the same signal.
fn wait_for(child: Pid) -> Result<i32, InitError> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                // Die the same way, without leaving a core file behind.
                let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
                let _ = raise(signal);
                return Ok(128 + signal as i32);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(InitError::Sys {
                    what: "waitpid",
                    source: e,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InitSpec {
        InitSpec {
            mount_point: "/data/root".into(),
            code_dir: Some("/cache/code/f/1".into()),
            runtime_dir: "/data/runtime".into(),
            package_dirs: vec!["/cache/pkg/a".into(), "/cache/pkg/b".into()],
            tmp_mb: 64,
            uid: 65534,
            gid: 65534,
            python: "/usr/bin/python3".into(),
            entry_file: "f.py".into(),
            environment: vec![
                ("GREETING".into(), "hi".into()),
                ("LANG".into(), "de_DE.UTF-8".into()),
            ],
            seccomp: vec![],
            zygote: None,
            command: None,
            extra_dirs: vec![],
            cache_data_dir: Some("/cache".into()),
        }
    }

    #[test]
    fn runtime_sees_only_sandbox_paths() {
        assert_eq!(
            spec().argv(),
            [
                "/usr/bin/python3",
                "-I",
                "-S",
                "-B",
                "/sock/sock_runtime.py",
                "/code",
                "f.py",
                "/packages/0",
                "/packages/1"
            ]
        );
    }

    #[test]
    fn environment_is_clean_and_the_function_may_override_defaults() {
        let env = spec().envp();
        assert!(env.contains(&"HOME=/tmp".to_string()));
        assert!(env.contains(&"GREETING=hi".to_string()));
        assert!(env.contains(&"LANG=de_DE.UTF-8".to_string()));
        assert!(!env.contains(&"LANG=C.UTF-8".to_string()));
        assert_eq!(env.len(), 5, "{env:?}");
    }

    #[test]
    fn spec_survives_the_trip_over_stdin() {
        let json = serde_json::to_string(&spec()).expect("encode");
        assert_eq!(
            serde_json::from_str::<InitSpec>(&json).expect("decode"),
            spec()
        );
    }
}

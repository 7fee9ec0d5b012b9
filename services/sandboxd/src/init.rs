//! The sandbox init: `sock-sandboxd __sandbox-init`, started by sandboxd in
//! new namespaces and already inside the sandbox's cgroups.
//!
//! It reads its [`InitSpec`] from stdin, builds the root file system, sets
//! the hostname, then forks: the child is pid 1 of the
//! new pid namespace, mounts `/proc`, drops every privilege and execs the
//! Python runtime. The init waits for it and exits with its status.
//!
//! Architecture invariant: this runs single-threaded (main dispatches here
//! before any runtime starts), which is what makes `fork` sound.
use std::ffi::{CString, NulError};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, raise};
use nix::sys::stat::{Mode, umask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, execve, fork, setgroups, setresgid, setresuid};
use serde::{Deserialize, Serialize};

use crate::mounts::{self, MountError, RealHost, RootSpec};
use crate::namespaces::{self, SANDBOX_SOCKET_FD};
use crate::seccomp::{self, Programs, SeccompError};

/// `argv[1]` that makes `sock-sandboxd` run as a sandbox init.
pub const INIT_ARG: &str = "__sandbox-init";
/// Exit status of an init whose setup failed (as `docker run` uses 125 for
/// its own failures), so sandboxd can tell it from the function's exit.
pub(crate) const SETUP_FAILED: i32 = 125;
const RUNTIME_FILE: &str = "sock_runtime.py";
const NOFILE: u64 = 1024;

/// Everything the init needs, sent by sandboxd as JSON on stdin. Host paths
/// are only used before `pivot_root`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    /// Empty directory the root tmpfs is mounted on.
    pub mount_point: PathBuf,
    pub code_dir: PathBuf,
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
}

impl InitSpec {
    /// The runtime's command line, with paths as the sandbox sees them.
    pub fn argv(&self) -> Vec<String> {
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
    pub fn envp(&self) -> Vec<String> {
        let mut env: Vec<(String, String)> = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (key, value) in &self.environment {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
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
    Seccomp(#[from] SeccompError),
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
            code_dir: &spec.code_dir,
            runtime_dir: &spec.runtime_dir,
            package_dirs: &spec.package_dirs,
            tmp_mb: spec.tmp_mb,
        },
        &RealHost,
    );
    mounts::build_root(&spec.mount_point, &steps)?;
    namespaces::set_hostname().map_err(sys("sethostname"))?;

    #[allow(unsafe_code)]
    // SAFETY: the init is single-threaded (see the module docs), so the
    // child is a complete copy and may allocate and run any code.
    let forked = unsafe { fork() }.map_err(sys("fork"))?;
    match forked {
        ForkResult::Child => {
            let err = exec_runtime(&spec, &argv, &envp);
            eprintln!("sandbox init: {err}");
            std::process::exit(SETUP_FAILED);
        }
        ForkResult::Parent { child } => {
            close_socket();
            wait_for(child)
        }
    }
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
    drop(unsafe { OwnedFd::from_raw_fd(SANDBOX_SOCKET_FD) });
}

/// Becomes the unprivileged runtime. Returns only on failure.
fn exec_runtime(spec: &InitSpec, argv: &[CString], envp: &[CString]) -> InitError {
    let run = || -> Result<std::convert::Infallible, InitError> {
        mounts::mount_proc()?;
        setrlimit(Resource::RLIMIT_NOFILE, NOFILE, NOFILE).map_err(sys("setrlimit NOFILE"))?;
        setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys("setrlimit CORE"))?;
        drop_bounding_set().map_err(sys("drop capability bounding set"))?;
        setgroups(&[]).map_err(sys("setgroups"))?;
        let gid = Gid::from_raw(spec.gid);
        setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
        let uid = Uid::from_raw(spec.uid);
        // Changing from uid 0 without keep-caps clears every capability.
        setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
        // The credential change cleared the parent-death signal; set it
        // again so the runtime dies with its init.
        prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("set pdeathsig"))?;
        prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
        nix::unistd::chdir(mounts::CODE_DIR).map_err(sys("chdir /code"))?;
        close_inherited_fds().map_err(sys("close_range"))?;
        // Last, so none of the setup above runs under the filter.
        seccomp::install(&spec.seccomp)?;
        execve(&argv[0], argv, envp).map_err(sys("execve python"))
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Drops every capability from the bounding set, so nothing the function
/// execs can ever gain one back.
#[allow(unsafe_code)]
fn drop_bounding_set() -> nix::Result<()> {
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

/// Leaves only stdin, stdout, stderr and the socket open.
#[allow(unsafe_code)]
fn close_inherited_fds() -> nix::Result<()> {
    // SAFETY: close_range takes plain integers; every fd above the socket
    // belongs to this process alone, which owns none of them any more.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            SANDBOX_SOCKET_FD + 1,
            libc::c_uint::MAX,
            0,
        )
    };
    if rc < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
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
            code_dir: "/cache/code/f/1".into(),
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

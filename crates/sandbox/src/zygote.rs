//! The zygote's fork loop, as a C function (`sock_zygote_serve`) the Python
//! zygote calls through ctypes once its imports are done, so that its
//! children are set up and locked down by the same Rust as every other
//! sandbox, no Python (no package code, no at-fork hook) runs in a child
//! before its lockdown is complete, and the zygote itself runs no Python
//! between forks.
//!
//! Why no Python between forks: a page the zygote writes after a fork is
//! copied while its children keep the old one, and the copy is charged to
//! the zygote's cgroup, so Python's own fork loop made a zygote with many
//! live children run out of memory (bench/RESULTS.md has the numbers). The
//! Python zygote (`runtime/sock_zygote.py`) hands its control socket to
//! this loop through ctypes `PyDLL`, with `PyOS_BeforeFork` and
//! `PyOS_AfterFork_Parent` as its hooks; the loop returns only in a child,
//! where Python (`PyOS_AfterFork_Child`, the zygote's at-fork hooks
//! included) resumes after the lockdown. No ctypes lockdown remains in the
//! runtime.
//!
//! The loop takes each `fork` frame and its fds from sandboxd (the frames:
//! [`crate::protocol`]). Every function child parks first: a `spare` frame
//! carries only the child's socket and cgroup files, and the function's
//! request (ids, environment, seccomp), root and output come later over
//! the child's own socket, never through the zygote's memory. A cold fork
//! is park + give; a parked spare skips the park. The child:
//! 1. joins its cgroups (sandboxd opened their `cgroup.procs`), unshares
//!    pid, network, ipc, uts and mount namespaces (owned by the zygote's
//!    user namespace) and forks once more, so it is pid 1 there;
//! 2. a `spare` says `parked` and waits on its own socket for its root,
//!    stdout and stderr and then the function's `fork` frame: the
//!    function's environment and ids reach the child only, never the
//!    zygote's memory; a `zygote` child got its root and output already;
//! 3. attaches its root (a detached mount tree sandboxd built) to its own
//!    mount namespace (`move_mount` over `/`), chroots into it and mounts
//!    `/proc` for its pid namespace;
//! 4. is locked down: a function child by [`Lockdown`] (its uid, no
//!    capabilities, `no_new_privs`, its seccomp filter on every thread); a
//!    zygote child stays root of the user namespace under the zygote's
//!    filter;
//! 5. says `forked` and returns to Python with the request it serves.
//!
//! Any failure in the child is written to its stderr and ends it with
//! status 125; it never returns to Python unlocked.
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sched::{CloneFlags, unshare};
use nix::unistd::{ForkResult, fork};
use serde::Deserialize;

use crate::frame::{self, FrameError, MAX_HEADER_BYTES};
use crate::init::SETUP_FAILED;
use crate::lockdown::{
    Lockdown, LockdownError, SOCKET_FD, close_fds_above, install_seccomp, single_threaded,
};
use crate::namespaces::{bring_up_loopback, set_hostname};
use crate::proc::{Proc, mount_proc};
use crate::seccomp::Programs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    /// A child that will serve a function: parked until one comes.
    Spare,
    /// A child zygote, with its root and output from the start.
    Zygote,
    /// The frame a parked child gets: the function it serves.
    Function,
}

/// The parts of a `fork` frame ([`crate::protocol::ForkRequest`]) the
/// child acts on; the rest is Python's.
#[derive(Debug, Deserialize)]
struct ForkFrame {
    kind: Kind,
    #[serde(default)]
    cgroups: usize,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    seccomp: Programs,
}

#[derive(Debug, thiserror::Error)]
enum ChildError {
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    #[error(transparent)]
    Lockdown(#[from] LockdownError),
    #[error("talking to sandboxd: {0}")]
    Frame(#[from] FrameError),
    #[error("the request is not valid: {0}")]
    Request(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> ChildError {
    move |source| ChildError::Sys { what, source }
}

/// A hook of the runtime's around `fork` (Python: `PyOS_BeforeFork`,
/// `PyOS_AfterFork_Parent`).
pub type ForkHook = unsafe extern "C" fn();

/// The zygote's loop (see the module docs): takes `fork` frames and their
/// fds from sandboxd on the control socket (fd 3) and forks a child for
/// each, without going back to Python in the zygote between forks. Every
/// page the zygote writes after a fork is copied for it while its children
/// keep the old one, charged to the zygote's cgroup: Python's loop wrote
/// ~450 KB of pages per fork (refcounts, its allocator, per-fork buffers),
/// so a 256 MB zygote was OOM-killed after ~370 live children. This loop
/// writes a few pages of its own stack and heap.
///
/// `before_fork` and `after_fork_parent` are called around each fork, in
/// the zygote. Returns 0 in a child once it is locked down, with the JSON
/// request it serves in `out` and its length in `*out_len`; in the zygote,
/// 1 once sandboxd closed the socket, or a negative errno when the socket
/// broke. A frame that is not a valid `spare` or `zygote` fork with its
/// fds is logged and skipped (its fds closed: sandboxd sees that fork
/// fail).
///
/// # Safety
///
/// `out` must point to `out_cap` writable bytes and `out_len` to a
/// writable `usize`. The caller must hold what keeps its runtime
/// consistent across a fork (Python: the GIL), and the hooks must be safe
/// to call with it held.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sock_zygote_serve(
    before_fork: ForkHook,
    after_fork_parent: ForkHook,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> libc::c_long {
    // SAFETY: the caller passes a valid buffer and length (see above).
    let (out, out_len) = unsafe { (std::slice::from_raw_parts_mut(out, out_cap), &mut *out_len) };
    if out.len() < MAX_HEADER_BYTES {
        return -libc::c_long::from(libc::EINVAL);
    }
    // The zygote's own socket: borrowed, Python owns fd 3.
    let mut control = std::mem::ManuallyDrop::new(socket());
    loop {
        let (fds, request) = match frame::recv_fds(&control)
            .and_then(|fds| Ok((fds, frame::read_header(&mut *control)?)))
        {
            Ok(next) => next,
            Err(FrameError::Closed) => return 1,
            Err(e) => {
                say(&format!("sock zygote: the control socket broke: {e}\n"));
                return -libc::c_long::from(libc::EIO);
            }
        };
        let frame = match serde_json::from_slice::<ForkFrame>(&request) {
            Ok(frame) if frame.fds() == Some(fds.len()) => frame,
            _ => {
                say("sock zygote: ignoring a frame that is not a fork with its fds\n");
                continue;
            }
        };
        // SAFETY: the hook is the runtime's, called as the caller allows.
        unsafe { before_fork() };
        // SAFETY: the caller holds the runtime's fork locks (see above); the
        // child runs only the code below, which takes no lock another thread
        // of the zygote could hold (no stdio locks: errors go out by write(2)).
        let forked = unsafe { fork() };
        if let Ok(ForkResult::Child) = forked {
            return match child(frame, &request, fds) {
                Ok(served) if served.len() <= out.len() => {
                    out[..served.len()].copy_from_slice(&served);
                    *out_len = served.len();
                    0
                }
                Ok(served) => fail(&ChildError::Refused(format!(
                    "a request of {} bytes is over the limit",
                    served.len()
                ))),
                Err(e) => fail(&e),
            };
        }
        // SAFETY: as before_fork.
        unsafe { after_fork_parent() };
        if let Err(e) = forked {
            say(&format!("sock zygote: fork failed: {e}\n"));
        }
        // The child has its copies; a failed fork closes the child's socket
        // here, which sandboxd sees as the fork failing.
        drop(fds);
    }
}

impl ForkFrame {
    /// How many fds a fork of this kind comes with: the child's socket,
    /// for a zygote its root, stdout and stderr, then one `cgroup.procs`
    /// per cgroup. None: not a frame the zygote forks for.
    fn fds(&self) -> Option<usize> {
        match self.kind {
            Kind::Spare => Some(1 + self.cgroups),
            Kind::Zygote => Some(4 + self.cgroups),
            Kind::Function => None,
        }
    }
}

/// A line on stderr, by write(2): no stdio lock is taken.
fn say(line: &str) {
    let _ = nix::unistd::write(std::io::stderr().as_fd(), line.as_bytes());
}

/// Ends a child whose setup failed, saying why on its stderr.
#[allow(unsafe_code)]
fn fail(error: &ChildError) -> ! {
    say(&format!("sock zygote: child setup failed: {error}\n"));
    // SAFETY: _exit ends the process at once: nothing of the zygote's
    // (Python's atexit, buffered output) runs in the child.
    unsafe { libc::_exit(SETUP_FAILED) }
}

/// The child's whole setup; returns the request it serves.
fn child(frame: ForkFrame, request: &[u8], fds: Vec<OwnedFd>) -> Result<Vec<u8>, ChildError> {
    let mut fds = fds.into_iter();
    let conn = fds.next().ok_or(ChildError::Refused("no socket".into()))?;
    let output = match frame.kind {
        Kind::Zygote => Some([fds.next(), fds.next(), fds.next()]),
        _ => None,
    };
    enter(conn, fds.collect())?;
    // Python serves on fd 3 after this returns: borrowed, never closed here.
    let mut sock = std::mem::ManuallyDrop::new(socket());
    match (frame.kind, output) {
        (Kind::Zygote, Some([Some(root), Some(out), Some(err)])) => {
            settle(root, out, err, Proc::Unmasked)?;
            single_threaded()?;
            close_fds_above(SOCKET_FD).map_err(sys("close_range"))?;
            nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
            install_seccomp(&frame.seccomp)?;
            frame::write_header(&mut sock, br#"{"type":"forked"}"#)?;
            Ok(request.to_vec())
        }
        (Kind::Spare, None) => {
            frame::write_header(&mut sock, br#"{"type":"parked"}"#)?;
            let [root, out, err]: [OwnedFd; 3] = frame::recv_fds(&sock)?
                .try_into()
                .map_err(|_| ChildError::Refused("expected 3 fds".into()))?;
            let served = frame::read_header(&mut *sock)?;
            let function: ForkFrame = serde_json::from_slice(&served)?;
            if function.kind != Kind::Function {
                return Err(ChildError::Refused(format!(
                    "a parked child got a {:?} request",
                    function.kind
                )));
            }
            settle(root, out, err, Proc::Masked)?;
            Lockdown {
                uid: function.uid,
                gid: function.gid,
                cwd: Path::new("/code"),
                die_with_parent: false,
                seccomp: &function.seccomp,
            }
            .apply()?;
            frame::write_header(&mut sock, br#"{"type":"forked"}"#)?;
            Ok(served)
        }
        _ => Err(ChildError::Refused("missing fds".into())),
    }
}

/// Joins the cgroups, enters new namespaces and becomes their pid 1, with
/// `conn` as fd 3.
#[allow(unsafe_code)]
fn enter(conn: OwnedFd, cgroups: Vec<OwnedFd>) -> Result<(), ChildError> {
    // The zygote's own socket is fd 3; the child's takes its place below.
    let _ = nix::unistd::close(SOCKET_FD);
    for cgroup in cgroups {
        // "0": the writing process.
        nix::unistd::write(&cgroup, b"0").map_err(sys("join cgroup"))?;
    }
    unshare(
        CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNS,
    )
    .map_err(sys("unshare"))?;
    // SAFETY: this process runs only this code (see sock_zygote_serve).
    match unsafe { fork() }.map_err(sys("fork"))? {
        // The zygote reaps the new pid 1's parent once it is gone.
        // SAFETY: _exit, as in `fail`: nothing of the zygote's runs here.
        ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        ForkResult::Child => {}
    }
    // Nothing mounted here reaches the zygote's namespace.
    crate::mounts::make_private().map_err(sys("make mounts private"))?;
    set_hostname().map_err(sys("sethostname"))?;
    bring_up_loopback().map_err(sys("bring up lo"))?;
    // SAFETY: fd 3 was closed above and nothing in this process owns it:
    // dup2 makes it the child's socket, which `socket()` then owns.
    let socket = unsafe { nix::unistd::dup2_raw(&conn, SOCKET_FD) };
    // The new fd stays open as fd 3 (`socket()` takes it), not as an OwnedFd.
    std::mem::forget(socket.map_err(sys("dup2 socket"))?);
    Ok(())
}

/// The child's socket, fd 3.
#[allow(unsafe_code)]
fn socket() -> UnixStream {
    // SAFETY: `enter` made fd 3 the child's socket, owned by nothing else.
    unsafe { UnixStream::from_raw_fd(SOCKET_FD) }
}

/// Its output, its root (with `/proc`) and stdin from `/dev/null`.
fn settle(root: OwnedFd, out: OwnedFd, err: OwnedFd, proc: Proc) -> Result<(), ChildError> {
    nix::unistd::dup2_stdout(&out).map_err(sys("dup2 stdout"))?;
    nix::unistd::dup2_stderr(&err).map_err(sys("dup2 stderr"))?;
    drop((out, err));
    // The root is a detached tree; attached to this mount namespace (over
    // the zygote's root, which the child then never sees again), it can
    // take the child's own mounts.
    move_mount(&root).map_err(sys("attach root"))?;
    nix::unistd::fchdir(&root).map_err(sys("fchdir root"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    drop(root);
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open /dev/null"))?;
    nix::unistd::dup2_stdin(&null).map_err(sys("dup2 stdin"))?;
    mount_proc(proc)?;
    Ok(())
}

#[allow(unsafe_code)]
fn move_mount(tree: &OwnedFd) -> nix::Result<()> {
    // SAFETY: move_mount takes an fd we own, two NUL-terminated strings
    // that outlive the call and flags; no other pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

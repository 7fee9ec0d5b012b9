//! Namespaces: the `pre_exec` hook that puts a new sandbox init into its own
//! mount, pid, ipc and uts namespaces and into a network namespace from the
//! pool, the pool of ready network namespaces itself, and what a sandbox's
//! new namespaces need set up from inside: the hostname of its UTS
//! namespace and the loopback device of its network namespace.
//!
//! A new network namespace is the slowest part of a container start (the
//! kernel sets up and later tears down a whole network stack), so it is
//! made ahead of time: a short-lived thread unshares its own network
//! namespace, brings `lo` up, opens `/proc/thread-self/ns/net` and exits;
//! the fd keeps the namespace alive until the sandbox init `setns`es into
//! it. Each namespace serves one sandbox only; sandboxd keeps
//! `netns_pool_size` of them ready, refilled in the background.
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::lockdown::SOCKET_FD;
use crate::spares::Spares;

/// The sandbox's hostname, the same for every sandbox.
pub(crate) const HOSTNAME: &str = "sandbox";

pub(crate) fn set_hostname() -> nix::Result<()> {
    nix::unistd::sethostname(HOSTNAME)
}

/// The namespaces every sandbox gets new; the network namespace comes from
/// the pool. The pid namespace applies to the init's children: the runtime
/// it forks is pid 1 there.
fn sandbox_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
}

/// Arranges for the spawned init to join `netns` (None: keep the host's
/// network, for the installer), enter new namespaces, to die with
/// sandboxd, and to find `socket` as fd 3.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, so spawn
/// only from a thread that lives as long as sandboxd (a runtime worker,
/// never a `spawn_blocking` thread).
#[allow(unsafe_code)]
pub fn prepare_init(cmd: &mut tokio::process::Command, socket: &OwnedFd, netns: Option<&OwnedFd>) {
    let fd = socket.as_raw_fd();
    let netns = netns.map(AsRawFd::as_raw_fd);
    let hook = move || -> std::io::Result<()> {
        if let Some(netns) = netns {
            // SAFETY: setns takes an fd that stays open until spawn returns
            // (the parent holds it) and a namespace type; no pointers.
            if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        unshare(sandbox_namespaces())?;
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        if fd == SOCKET_FD {
            // dup2 onto itself keeps FD_CLOEXEC, so clear it by hand.
            // SAFETY: fcntl on an fd we own; F_SETFD takes an int flag set.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        // SAFETY: dup2 only replaces fd 3 in the child, which holds nothing
        // else of ours after stdio was set up; `fd` is open (the parent
        // keeps `socket` alive until spawn returns).
        } else if unsafe { libc::dup2(fd, SOCKET_FD) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec in a copy of a
    // multi-threaded process, so it must be async-signal-safe: it only
    // makes raw syscalls (setns, unshare, prctl, fcntl, dup2) and allocates
    // nothing (io::Error from an errno does not allocate).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Ready, empty network namespaces (only `lo`, up), held as fds.
#[derive(Debug)]
pub struct NetnsPool {
    free: Spares<OwnedFd>,
    refilling: AtomicBool,
}

impl NetnsPool {
    /// Fills the pool before returning.
    pub fn new(spares: usize) -> Arc<NetnsPool> {
        let pool = Arc::new(NetnsPool {
            free: Spares::new(spares),
            refilling: AtomicBool::new(false),
        });
        pool.refill();
        pool
    }

    pub fn spare(&self) -> usize {
        self.free.len()
    }

    fn refill(&self) {
        // Never closed: nothing made is discarded.
        if let Err(e) = self.free.refill(new_netns, drop) {
            tracing::warn!(error = %e, "cannot pre-create a network namespace");
        }
    }

    /// A ready namespace; made on the spot when the pool ran dry. Refills
    /// in the background (call from within a tokio runtime).
    pub fn take(self: &Arc<Self>) -> std::io::Result<OwnedFd> {
        let ready = self.free.take();
        if self.spare() < self.free.cap() && !self.refilling.swap(true, Ordering::AcqRel) {
            let pool = self.clone();
            tokio::task::spawn_blocking(move || {
                pool.refill();
                pool.refilling.store(false, Ordering::Release);
            });
        }
        match ready {
            Some(fd) => Ok(fd),
            None => new_netns(),
        }
    }
}

/// Makes a network namespace on a thread of its own, which exits right
/// after: unsharing changes the namespace of the calling thread only, and
/// no other work must ever run in it.
fn new_netns() -> std::io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("sock-netns".into())
        .spawn(|| -> std::io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            bring_up_loopback()?;
            Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the network namespace thread panicked"))?
}

/// A new network namespace has only `lo`, and it is down: bring it up so
/// functions can talk to themselves on 127.0.0.1 (and nothing else).
#[allow(unsafe_code)]
pub(crate) fn bring_up_loopback() -> nix::Result<()> {
    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`
    // into `req`, a valid, live ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS only reads `req`, a valid ifreq naming `lo`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

//! Namespaces: the `pre_exec` hook that puts a new sandbox init into its own
//! mount, pid, ipc, uts and network namespaces, and the init's setup of the
//! uts and network namespaces it got.
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The fd the runtime finds its socket on (ARCHITECTURE.md).
pub(crate) const SANDBOX_SOCKET_FD: RawFd = 3;

/// The namespaces every sandbox gets. The pid namespace applies to the
/// init's children: the runtime it forks is pid 1 there.
fn sandbox_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET
}

/// Arranges for the spawned init to enter new namespaces, to die with
/// sandboxd, and to find `socket` as fd 3.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, so spawn
/// only from a thread that lives as long as sandboxd (a runtime worker,
/// never a `spawn_blocking` thread).
#[allow(unsafe_code)]
pub(crate) fn prepare_init(cmd: &mut tokio::process::Command, socket: &OwnedFd) {
    let fd = socket.as_raw_fd();
    let hook = move || -> std::io::Result<()> {
        unshare(sandbox_namespaces())?;
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        if fd == SANDBOX_SOCKET_FD {
            // dup2 onto itself keeps FD_CLOEXEC, so clear it by hand.
            // SAFETY: fcntl on an fd we own; F_SETFD takes an int flag set.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        // SAFETY: dup2 only replaces fd 3 in the child, which holds nothing
        // else of ours after stdio was set up; `fd` is open (the parent
        // keeps `socket` alive until spawn returns).
        } else if unsafe { libc::dup2(fd, SANDBOX_SOCKET_FD) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec in a copy of a
    // multi-threaded process, so it must be async-signal-safe: it only
    // makes raw syscalls (unshare, prctl, fcntl, dup2) and allocates
    // nothing (io::Error from an errno does not allocate).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The sandbox's hostname, the same for every sandbox.
const HOSTNAME: &str = "sandbox";

pub(crate) fn set_hostname() -> nix::Result<()> {
    nix::unistd::sethostname(HOSTNAME)
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

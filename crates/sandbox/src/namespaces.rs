//! What a sandbox's new namespaces need set up from inside: the hostname
//! of its UTS namespace and the loopback device of its network namespace.
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The sandbox's hostname, the same for every sandbox.
pub const HOSTNAME: &str = "sandbox";

pub fn set_hostname() -> nix::Result<()> {
    nix::unistd::sethostname(HOSTNAME)
}

/// A new network namespace has only `lo`, and it is down: bring it up so
/// functions can talk to themselves on 127.0.0.1 (and nothing else).
#[allow(unsafe_code)]
pub fn bring_up_loopback() -> nix::Result<()> {
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

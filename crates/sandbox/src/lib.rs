//! sock's sandbox mechanics that every birth path shares, with no RPC in
//! them: the lockdown a process goes through to become a sandboxed one
//! ([`Lockdown`]), the seccomp programs it installs, `/proc` with its
//! masks, and, built as `libsock_sandbox.so`, the C entry point the Python
//! zygote forks its children with (`sock_zygote_fork`), so that they are
//! set up and locked down by this same code before any Python runs in them.
mod frame;
mod lockdown;
mod namespaces;
mod proc;
pub mod seccomp;
mod zygote;

pub use lockdown::{
    Lockdown, LockdownError, NOFILE, SOCKET_FD, close_fds_above, limit_resources, set_ids,
};
pub use namespaces::{HOSTNAME, bring_up_loopback, set_hostname};
pub use proc::{Proc, mount_proc};

/// The file name of the C library the zygote loads.
pub const LIBRARY_FILE: &str = "libsock_sandbox.so";

/// The stamp of the sources this crate was built from, as it appears in
/// the library's bytes: a library without this sandboxd's stamp is from
/// another build (see build.rs).
pub const BUILD_STAMP: &str = concat!("sock-sandbox-build:", env!("SOCK_SANDBOX_BUILD_ID"));

/// The stamp, kept in the library's data (`#[used]`: no code reads it).
#[used]
static STAMP: [u8; BUILD_STAMP.len()] = stamp();

const fn stamp() -> [u8; BUILD_STAMP.len()] {
    let mut out = [0u8; BUILD_STAMP.len()];
    let bytes = BUILD_STAMP.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Whether `library` (the bytes of a `libsock_sandbox.so`) was built from
/// the same sources as this crate.
pub fn same_build(library: &[u8]) -> bool {
    library
        .windows(BUILD_STAMP.len())
        .any(|window| window == BUILD_STAMP.as_bytes())
}

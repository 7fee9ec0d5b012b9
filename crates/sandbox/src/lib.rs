//! sock's sandbox mechanics, with no RPC in them: sandboxd's service sits
//! on top. Its two halves:
//!
//! - make a sandbox with this spec: the sandbox init ([`init`]: an
//!   [`InitSpec`] in, a sandboxed runtime out) with its root file system
//!   ([`mounts`]), its namespaces and the pool of network namespaces
//!   ([`namespaces`]), and its cgroup ([`cgroups`]), both pools keeping
//!   their spares alike (`spares`);
//! - lock down this process: the one lockdown every sandbox process goes
//!   through, for every birth path ([`Lockdown`]), with the seccomp
//!   programs it installs ([`seccomp`]: the rules, their compilation and
//!   their installation) and `/proc` with its masks.
//!
//! Besides, the sandbox ⇄ runtime frame protocol ([`protocol`]) and, built
//! as `libsock_sandbox.so`, the C entry point the Python zygote forks its
//! children with (`sock_zygote_serve`), so that they are set up and locked
//! down by this same code before any Python runs in them.
//!
//! A program that uses [`init`] must hand a re-execution with `argv[1]`
//! equal to [`INIT_ARG`] to [`sandbox_init`] before it starts any thread,
//! as `sock-sandboxd`'s main does.
pub mod cgroups;
mod frame;
pub mod init;
mod lockdown;
pub mod mounts;
pub mod namespaces;
mod proc;
pub mod protocol;
pub mod seccomp;
mod spares;
mod zygote;

pub use init::{INIT_ARG, InitSpec, sandbox_init};
pub use lockdown::{Lockdown, LockdownError};

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

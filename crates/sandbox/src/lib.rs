//! sock's sandbox mechanics, with no RPC in them: sandboxd's service sits
//! on top. Its two halves:
//!
//! - make a sandbox with this spec: the sandbox init ([`init`]: an
//!   [`InitSpec`] in, a sandboxed runtime out) with its root file system
//!   ([`mounts`]), its namespaces and the pool of network namespaces
//!   ([`namespaces`]), and its cgroup ([`cgroups`]), both pools keeping
//!   their spares alike ([`spares`], which sandboxd's zygotes use for their
//!   parked children too);
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
//! sandboxd decides *which* sandbox and *when* (RPC, memory pool,
//! evictor, zygote tree, warm set); this crate is *how*, with no idea of
//! functions, calls or the cache (no tonic, no sock-proto). Every process
//! that will run code nobody vetted is sandboxed through one function,
//! [`Lockdown::apply`], written once in Rust, whichever way it is born:
//!
//! ```text
//!                        sandboxd (root): RPC, pool, evictor, zygote tree
//!                           │  sock_sandbox: cgroups, mounts, netns, init spec, protocol
//!     ┌──────────────┬──────┴────────┬─────────────────┬──────────────────────────┐
//!   fresh          source build    root zygote       zygote child              parked spare
//!   __sandbox-init __sandbox-init  __sandbox-init    sock_zygote.py ─ctypes─▶  libsock_sandbox.so
//!   (runtime)      (pip wheel)     setresuid(zygote) sock_zygote_serve: cgroups, unshare
//!     │              │             then userns        (own mnt ns), fork → pid 1, park,
//!     │              │               │                ids+env+seccomp over its own socket,
//!     │              │               │                attach root, chroot, /proc
//!     ▼              ▼               ▼                  ▼                          ▼
//!   Lockdown::apply  Lockdown::apply zygote lockdown  Lockdown::apply (function) / zygote lockdown
//!   own uid          sandbox_uid     zygote seccomp   own uid, before any Python, at-fork hooks too
//!     │              │               │                  │
//!   exec python      exec pip        exec python:      return to Python: serve the function
//!                                    imports, forks    (or import and fork, a child zygote)
//! ```
//!
//! A zygote's lockdown differs from a function's only where a zygote must:
//! it stays root of its user namespace and installs the zygote profile.
//!
//! The library carries [`BUILD_STAMP`], a hash of the sources it was built
//! from (`build.rs`): sandboxd loads into zygotes only a library with its
//! own stamp, since a stale build would lock children down with other code.
//!
//! A program that uses [`init`] must hand a re-execution with `argv[1]`
//! equal to [`INIT_ARG`] to [`sandbox_init`] before it starts any thread,
//! as `sock-sandboxd`'s main does.
pub mod cgroups;
pub mod frame;
pub mod init;
mod lockdown;
pub mod mounts;
pub mod namespaces;
mod proc;
pub mod protocol;
pub mod seccomp;
pub mod spares;
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

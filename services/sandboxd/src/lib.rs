//! sock's privileged node daemon: it owns the node's sandboxes
//! (namespaces, pooled cgroups and network namespaces, a read-only root, an
//! unprivileged uid under seccomp), keeps them warm per function version,
//! pauses idle ones, bounds them all by a memory pool and evicts the least
//! recently used when memory is short.
//!
//! The library API is [`Config`] and [`run`] for the service, and
//! [`Sandboxes`] / [`Sandbox`] to drive single sandboxes directly. A
//! program that embeds sandboxd must hand a re-execution with `argv[1]`
//! equal to [`INIT_ARG`] to [`sandbox_init`] before it starts any thread,
//! as `sock-sandboxd`'s main does, or point `Config::init_program` at
//! `sock-sandboxd`.
//!
//! The privileged mechanics (init, mounts, namespaces, cgroups, seccomp,
//! the lockdown and the frame protocol) are `sock-sandbox`'s
//! (crates/sandbox); this crate is the service on top: RPC, pool, evictor
//! and zygote tree.
//!
//! Besides sock-sandbox, this is the only sock crate with unsafe code: each
//! use is a function marked `#[allow(unsafe_code)]` with a `// SAFETY:`
//! comment per block.
//!
//! `warm.rs` (`Manager`) owns the node's sandboxes; `sandbox.rs`
//! (`Sandboxes::create` → `Sandbox::invoke` → destroy, also on `Drop`)
//! builds one; `safe.rs` (`SafeSandbox`) is the only handle the rest holds.
//! sandboxd parses no untrusted archive or requirement: it takes dirs the
//! cache unpacked and installed.
//!
//! # Sandboxes (`sandbox.rs`)
//!
//! Limits come from ol.yaml, else from [`Config`] (`cpu_percent` 100 = one
//! CPU): memory (and memsw on v1), pids, cpu quota and timeout, each then
//! capped at the operator's ceilings (`sock_service::Ceilings`), whatever
//! the registry let through; the timeout also caps the caller's. A timeout
//! is TIMEOUT "function exceeded its timeout of N ms", an OOM kill
//! OUT_OF_MEMORY "function ran out of memory (limit N MB)"; both destroy
//! the sandbox. Other outcomes: the runtime's `invalid_result` is
//! FUNCTION; a runtime gone is OUT_OF_MEMORY when the memory cgroup saw an
//! OOM kill, else KILLED; an init that exits 125 before `ready` is a failed
//! setup (`platform`, the details only in the log); an entry file that does
//! not import is CANNOT_START. Destroying (see `sock_sandbox::cgroups`)
//! returns the cgroup to the pool, and only then the memory. At SIGTERM,
//! after a grace period, every sandbox is destroyed.
//!
//! # Zygotes (`zygote.rs`)
//!
//! A root zygote is a fresh sandbox whose runtime becomes root of a user
//! namespace of its own, owned by `zygote_uid` (65533), not host root. A
//! fork: sandboxd takes a pooled cgroup and opens its `cgroup.procs`
//! files, and builds the child's root as a *detached* mount tree (a thread
//! with a private mount namespace builds it as the init does, then
//! `open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`): the chain's package dirs at
//! the zygote's `/packages/N`, then `/code` and the function's other
//! package dirs. A child zygote gets its root, output and cgroup files
//! with its `fork` frame; a function child is parked first and gets
//! everything of its function over its own socket (`sock_sandbox`'s
//! zygote loop). Copy-on-write pages stay charged to the zygote (v1 moves
//! no charges). A fork that fails (the zygote died under it, no cgroup or
//! root for the child) is tried from each living ancestor, deepest first.
//!
//! Each zygote keeps children parked (`Zygote::park_spare`, refilled in
//! the background after every fork, with default limits), as many as its
//! peak of concurrent forks in this 60 s window or the last (`Demand`, 1
//! to 4), so a burst for one node does not queue on its fork loop; a fork
//! then writes the function's limits over the spare's cgroup and gives it
//! the function. A parked child is no zygote child (not counted, not in
//! the pool) and dies with its zygote. Children live in their zygote's pid
//! namespace, so a zygote's death kills them (sandboxd then skips a dead
//! idle sandbox and starts another).
//!
//! sandboxd copies `libsock_sandbox.so` into its runtime dir from beside
//! its binary (or cargo's `deps/`), and only a library whose bytes carry
//! the stamp of the sources sandboxd was built from
//! (`sock_sandbox::BUILD_STAMP`).
//!
//! # Source builds (`build.rs`)
//!
//! Only when the cache allows them: a cold start's `Prepare` may answer
//! `builds` (the pin, the cache's dir holding only the sdist, its file
//! name); sandboxd builds each, then calls `Prepare` again with the wheels
//! (at most 16 rounds). A build is a spawned task, so a caller giving up
//! wastes no build; one build per requirement at a time, and other cold
//! starts wait and ask again. It runs `python3 -I -m pip wheel --no-deps
//! --no-index --no-build-isolation --wheel-dir /out /in/FILE` as
//! `sandbox_uid` under seccomp, in a netns from the pool (only `lo`), `/in`
//! read-only, with `installer_mem_mb` (also for `/tmp`),
//! `installer_timeout_s` and memory from the pool. `/out` is made by
//! sandboxd in its own `builds/` (root's, 0700) with `mkdirat` and handed
//! over by `fchown` on its fd; afterwards exactly one regular `*.whl` is
//! read through that fd (`openat` `O_NOFOLLOW`, at most
//! `sock_service::limits::MAX_WHEEL_BYTES`) and the dir removed. A failure
//! is `cannot_start` "function 'f' cannot start: package 'x==1' failed to
//! build from source: <pip's tail>". No RPC takes a path to install into.
#![deny(unsafe_code)]

mod build;
mod call;
mod children;
mod config;
mod demand;
mod error;
mod fork;
mod listener;
mod logs;
mod metrics;
mod pool;
mod report;
mod runtime;
#[cfg(test)]
mod runtime_tests;
mod safe;
mod sandbox;
mod sandboxes;
mod service;
mod spec;
mod tree;
mod uids;
mod warm;
mod zygote;

pub use call::Outcome;
pub use config::Config;
pub use error::Error;
pub use listener::{Listener, bind};
pub use sandbox::Sandbox;
pub use sandboxes::Sandboxes;
pub use service::run;
pub use sock_sandbox::{INIT_ARG, sandbox_init};
pub use spec::{Limits, SandboxSpec};
pub use zygote::{Zygote, ZygoteSpec};

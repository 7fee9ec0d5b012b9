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
//! builds one (limits: `spec.rs`; outcomes: `call.rs`), `zygote.rs` forks
//! one (plumbing: `fork.rs`; parked children: `demand.rs`); `safe.rs`
//! (`SafeSandbox`) is the only handle the rest holds. Source builds are
//! `build.rs`'s.
//! sandboxd parses no untrusted archive or requirement: it takes dirs the
//! cache unpacked and installed.
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
pub use error::{Error, StartError};
pub use listener::{Listener, bind};
pub use sandbox::Sandbox;
pub use sandboxes::Sandboxes;
pub use service::run;
pub use sock_sandbox::{INIT_ARG, sandbox_init};
pub use spec::{Limits, SandboxSpec};
pub use zygote::{Zygote, ZygoteSpec};

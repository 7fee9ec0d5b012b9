//! sock's node-local code cache.
//!
//! `sock.v1.Cache/Prepare` makes sure a function's code is unpacked on
//! local disk, where sandboxd bind-mounts it into sandboxes. Bundles come
//! from the registry's HTTP store with conditional requests
//! (`If-None-Match` / `If-Modified-Since`): an exact version once, "the
//! latest" (version 0) on each ask.
//! The cache runs unprivileged; it is where untrusted archives get
//! unpacked, never sandboxd.
#![forbid(unsafe_code)]

mod closure;
mod config;
mod error;
mod installer;
mod learn;
mod markers;
mod metadata;
mod metrics;
mod packages;
mod plan;
mod prepare;
mod registry;
mod requirement;
mod sdist;
mod server;
mod store;
mod tree;
mod version;

pub use config::Config;
pub use error::{Error, PackageError, StartError};
pub use server::run;

/// Reads one requirement line (a function's requirements.txt or a
/// package's `Requires-Dist`, both untrusted) as the cache does, and
/// returns what pip would be asked to install and whether the line's
/// marker holds for CPython 3.11 on x86_64 Linux; or why the line is
/// refused. Public for the fuzzer (`fuzz/`), which holds the requirement,
/// specifier and marker parsers to their invariants.
pub fn read_requirement(line: &str) -> Result<(String, bool), String> {
    let requirement = requirement::Requirement::parse(line)?;
    let env = markers::Environment::cpython311_linux();
    let holds = requirement
        .marker
        .as_ref()
        .is_none_or(|marker| marker.evaluate(&env, &requirement.extras));
    Ok((requirement.pip_spec(), holds))
}

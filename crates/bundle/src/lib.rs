//! Function bundles: a gzip-compressed tar of a function directory in
//! OpenLambda's shape (`f.py` or another entry file, optional
//! `requirements.txt` and `ol.yaml`).
//!
//! Everything here treats the archive as hostile. [`validate`] and
//! [`unpack`] share one reader that refuses, with an error naming the entry,
//! anything that is not a file, a directory or a symlink staying inside the
//! bundle, and anything past the [`BundleLimits`]; unpacking only ever
//! creates those three kinds, never writing through a symlink.
#![forbid(unsafe_code)]

mod config;
mod cron;
mod error;
mod name;
mod pack;
mod reader;
mod tree;
mod unpack;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::io::{self, Read};
use std::path::Path;

use sock_proto::v1::FunctionConfig;

pub use cron::Schedule;
pub use error::{BundleError, Size};
pub use name::validate_name;
pub use reader::{BundleLimits, Manifest};

/// Validates an untrusted bundle without writing anything to disk.
pub fn validate(bundle: &[u8], limits: &BundleLimits) -> Result<Manifest, BundleError> {
    reader::read(bundle, limits, &mut Discard)
}

/// Unpacks a bundle into `dest` (which must not exist yet; its parent
/// must), validating it on the way. Files are 0644 (0755 if the archive gave
/// any execute bit), directories 0755, whatever the archive says. On error
/// `dest` is removed again.
pub fn unpack(bundle: &[u8], dest: &Path, limits: &BundleLimits) -> Result<Manifest, BundleError> {
    unpack::unpack(bundle, dest, limits)
}

/// Reads a function's config from the bytes of its `ol.yaml` and
/// `requirements.txt` (either may be absent) as [`validate`] does, less
/// the checks against the bundle's files (that the entry file exists).
/// Public for the fuzzer (`fuzz/`), which holds this parser of hostile
/// text to its invariants.
pub fn read_config(
    ol_yaml: Option<&[u8]>,
    requirements: Option<&[u8]>,
) -> Result<FunctionConfig, BundleError> {
    config::function_config(ol_yaml, requirements)
}

/// Packs a function directory into a bundle, leaving out `.git`,
/// `__pycache__` and `*.pyc`. Symlinks are kept as symlinks and must stay
/// inside `dir`; other special files are refused.
pub fn pack(dir: &Path) -> Result<Vec<u8>, BundleError> {
    pack::pack(dir)
}

/// The sink of `validate`: reads everything (so truncation and the gzip
/// checksum are caught) and keeps nothing.
struct Discard;

impl reader::Sink for Discard {
    fn dir(&mut self, _: &str) -> Result<(), BundleError> {
        Ok(())
    }

    fn file(&mut self, path: &str, _: bool, data: &mut dyn Read) -> Result<(), BundleError> {
        io::copy(data, &mut io::sink())
            .map(drop)
            .map_err(|e| BundleError::io("read", path, e))
    }

    fn hard_link(&mut self, _: &str, _: &str) -> Result<(), BundleError> {
        Ok(())
    }

    fn symlink(&mut self, _: &str, _: &str) -> Result<(), BundleError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;

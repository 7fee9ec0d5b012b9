//! Function bundles: a gzip-compressed tar of a function directory in
//! OpenLambda's shape (`f.py` or another entry file, optional
//! `requirements.txt` and `ol.yaml`).
//!
//! Everything here treats the archive as hostile: validation refuses
//! anything that is not a plain file or directory inside the bundle, and
//! unpacking only ever creates those.
#![forbid(unsafe_code)]

use std::path::Path;

use sock_proto::v1::FunctionConfig;

/// Size bounds applied while reading an archive.
#[derive(Clone, Copy, Debug)]
pub struct BundleLimits {
    /// Compressed size of the bundle.
    pub max_bundle_bytes: u64,
    /// Sum of the unpacked file sizes (guards against gzip bombs).
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_bundle_bytes: 32 << 20,
            max_unpacked_bytes: 256 << 20,
            max_entries: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("placeholder")]
    Todo,
}

/// What validation learned from a bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub config: FunctionConfig,
}

/// Checks a function name: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), BundleError> {
    let _ = name;
    Err(BundleError::Todo)
}

/// Validates an untrusted bundle without writing anything to disk.
pub fn validate(bundle: &[u8], limits: &BundleLimits) -> Result<Manifest, BundleError> {
    let _ = (bundle, limits);
    Err(BundleError::Todo)
}

/// Unpacks a bundle into `dest` (which must not exist yet), validating it
/// on the way. Files are world-readable, directories world-traversable.
pub fn unpack(bundle: &[u8], dest: &Path, limits: &BundleLimits) -> Result<Manifest, BundleError> {
    let _ = (bundle, dest, limits);
    Err(BundleError::Todo)
}

/// Packs a function directory into a bundle.
pub fn pack(dir: &Path) -> Result<Vec<u8>, BundleError> {
    let _ = dir;
    Err(BundleError::Todo)
}

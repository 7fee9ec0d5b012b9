//! The one error type of the cache, and its single mapping to gRPC status.
//!
//! Kinds are stamped where an error starts. Code: an unknown function, or a
//! version the registry no longer keeps, is `not_found` (in the registry's
//! words); registry down is the cached copy (with a warning) or `platform`
//! "registry unavailable: …"; a bad bundle or name is `invalid_request`.
//! Packages: a bad requirement line is `cannot_start` naming the function
//! and the line; pip failed is `cannot_start` "function 'f' cannot start:
//! package 'x==1' failed to install: <pip's tail>"; a package with no wheel
//! while source builds are off is `cannot_start` "package 'x==1' has no
//! wheel for this platform, and source builds are off …"; pip not runnable
//! is `platform`. Disk and storage failures are `platform` with a fixed
//! message, the details in the log.
use std::path::PathBuf;

use sock_bundle::BundleError;
use sock_proto::v1::ErrorKind;
use tonic::Status;

/// Why a package is not ready. Cloned to every waiter of a flight, hence
/// strings only.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PackageError {
    #[error("package '{requirement}' failed to install: {log}")]
    Install { requirement: String, log: String },
    #[error(
        "package '{requirement}' has no wheel for this platform, and source builds are off (the operator can allow them with allow_source_builds): {log}"
    )]
    NoWheel { requirement: String, log: String },
    #[error(
        "package '{requirement}' has no wheel for this platform and cannot be built from source: {reason}"
    )]
    SourceBuild { requirement: String, reason: String },
    /// Not a failure: the caller builds `file_name` from `dir` and asks
    /// again with the wheel.
    #[error("package '{requirement}' must be built from source first")]
    NeedsBuild {
        requirement: String,
        dir: String,
        file_name: String,
    },
    #[error("the package installer is unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("cannot store package '{requirement}': {reason}")]
    Storage { requirement: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request names no function; set PrepareRequest.function")]
    MissingFunction,
    #[error("{source}")]
    InvalidName { source: BundleError },
    #[error("function '{name}' does not exist; push it with `sock push`")]
    NotFound { name: String },
    /// The registry has no such version (any more, or yet), or no such
    /// function; `reason` is its word for which.
    #[error("function '{name}' version {asked} is not available: {reason}")]
    VersionNotKept {
        name: String,
        asked: u64,
        reason: String,
    },
    #[error("registry unavailable: {reason}")]
    RegistryUnavailable { reason: String },
    #[error("registry sent an unusable answer for function '{name}': {reason}")]
    RegistryProtocol { name: String, reason: String },
    #[error("bundle of function '{name}' version {version} is invalid: {source}")]
    InvalidBundle {
        name: String,
        version: u64,
        source: BundleError,
    },
    #[error("cannot unpack function '{name}' version {version}: {source}")]
    Unpack {
        name: String,
        version: u64,
        source: BundleError,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "function '{name}' version {version} has a requirement the package cache cannot install: {reason}; fix requirements.txt and push again"
    )]
    Requirement {
        name: String,
        version: u64,
        reason: String,
    },
    #[error("function '{name}' cannot start: {source}")]
    Package { name: String, source: PackageError },
}

/// What keeps the cache from starting or serving: the operator's to fix,
/// never the answer to a `Prepare`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid cache config: {0}")]
    InvalidConfig(String),
    #[error("invalid registry_url '{url}': {reason}")]
    RegistryUrl { url: String, reason: String },
    #[error("cannot build the registry http client: {0}")]
    HttpClient(reqwest::Error),
    #[error("cannot set up the data dir: {0}")]
    DataDir(#[from] Error),
    #[error("cache gRPC server failed: {0}")]
    Serve(tonic::transport::Error),
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let kind = match err {
            Error::MissingFunction | Error::InvalidName { .. } => ErrorKind::InvalidRequest,
            // The registry checked this bundle with the same rules when it
            // was pushed: one that fails them now was damaged on its way
            // here or at rest, which is not the caller's doing.
            Error::InvalidBundle { .. } => {
                tracing::error!(error = %message, "a bundle the registry accepted fails validation");
                ErrorKind::Platform
            }
            // The function's own requirements: only a new push helps.
            Error::Requirement { .. }
            | Error::Package {
                source:
                    PackageError::Install { .. }
                    | PackageError::NoWheel { .. }
                    | PackageError::SourceBuild { .. },
                ..
            } => ErrorKind::CannotStart,
            // Not found, as the function would be: whoever resolved the
            // version looks the function up again.
            Error::NotFound { .. } | Error::VersionNotKept { .. } => ErrorKind::NotFound,
            Error::RegistryUnavailable { .. }
            | Error::Package {
                source: PackageError::Unavailable { .. },
                ..
            } => ErrorKind::Platform,
            // Host paths and client internals stay in the log.
            Error::RegistryProtocol { .. }
            | Error::Unpack { .. }
            | Error::Package {
                source: PackageError::Storage { .. } | PackageError::NeedsBuild { .. },
                ..
            }
            | Error::Io { .. } => {
                tracing::error!(error = %message, "prepare failed");
                return ErrorKind::Platform.status(if sock_service::disk_full(&err) {
                    "the code cache's disk is full (no space left on device); nothing was kept \
                     of this function, and functions prepared before still serve"
                } else {
                    "the code cache failed to prepare the function; see the cache's log"
                });
            }
        };
        kind.status(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_is_stamped_with_its_kind_and_has_the_kinds_code() {
        let cases = [
            (Error::MissingFunction, ErrorKind::InvalidRequest),
            (
                Error::Requirement {
                    name: "f".into(),
                    version: 1,
                    reason: "'-e .' is not a requirement".into(),
                },
                ErrorKind::CannotStart,
            ),
            (
                Error::Package {
                    name: "f".into(),
                    source: PackageError::Install {
                        requirement: "nope==1.0".into(),
                        log: "No matching distribution found for nope==1.0".into(),
                    },
                },
                ErrorKind::CannotStart,
            ),
            (Error::NotFound { name: "f".into() }, ErrorKind::NotFound),
            (
                Error::VersionNotKept {
                    name: "f".into(),
                    asked: 1,
                    reason: "the registry keeps 2 and 3".into(),
                },
                ErrorKind::NotFound,
            ),
            (
                Error::RegistryUnavailable {
                    reason: "connection refused".into(),
                },
                ErrorKind::Platform,
            ),
            (
                Error::io(
                    "create",
                    "/var/lib/sock/cache/code",
                    std::io::Error::other("disk full"),
                ),
                ErrorKind::Platform,
            ),
        ];
        for (error, kind) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), kind.grpc_code(), "{status:?}");
            assert_eq!(ErrorKind::stamped(&status), Some(kind), "{status:?}");
        }
    }
}

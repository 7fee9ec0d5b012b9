//! The one error type of the cache, and its single mapping to gRPC status.
use std::path::PathBuf;

use sock_bundle::BundleError;
use sock_proto::v1::ErrorKind;
use tonic::Status;

use crate::packages::PackageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request names no function; set PrepareRequest.function")]
    MissingFunction,
    #[error("{source}")]
    InvalidName { source: BundleError },
    #[error("function '{name}' does not exist; push it with `sock push`")]
    NotFound { name: String },
    #[error(
        "function '{name}' version {asked} is not available: the registry's latest is version {latest}"
    )]
    VersionNotAvailable {
        name: String,
        asked: u64,
        latest: u64,
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
    #[error("invalid cache config: {0}")]
    InvalidConfig(String),
    #[error("invalid registry_url '{url}': {reason}")]
    RegistryUrl { url: String, reason: String },
    #[error("cannot build the registry http client: {0}")]
    HttpClient(reqwest::Error),
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
            Error::MissingFunction | Error::InvalidName { .. } | Error::InvalidBundle { .. } => {
                ErrorKind::InvalidRequest
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
            Error::NotFound { .. } => ErrorKind::NotFound,
            // Like an outage, a version the registry does not have is
            // passing: the caller's idea of the latest is behind the
            // registry's, and its next lookup catches up.
            Error::VersionNotAvailable { .. }
            | Error::RegistryUnavailable { .. }
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
            | Error::InvalidConfig(_)
            | Error::Io { .. }
            | Error::RegistryUrl { .. }
            | Error::HttpClient(_)
            | Error::Serve(_)
            | Error::Metrics(_) => {
                tracing::error!(error = %message, "prepare failed");
                return ErrorKind::Platform
                    .status("the code cache failed to prepare the function; see the cache's log");
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
                Error::VersionNotAvailable {
                    name: "f".into(),
                    asked: 3,
                    latest: 2,
                },
                ErrorKind::Platform,
            ),
            (
                Error::RegistryUnavailable {
                    reason: "connection refused".into(),
                },
                ErrorKind::Platform,
            ),
            (
                Error::InvalidConfig("data_dir is empty".into()),
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

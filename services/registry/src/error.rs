//! The registry's error type for requests, and the two places it becomes a
//! protocol status: `tonic::Status` for gRPC and an HTTP response for the
//! store; and, apart, what can keep the registry from starting
//! ([`StartError`]).
//! Storage failures are logged here in full and shown to callers only as a
//! short message, so host paths and sled internals stay in the log.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sock_bundle::BundleError;
use sock_proto::v1::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid function name or a refused bundle.
    #[error(transparent)]
    Invalid(#[from] BundleError),

    /// A push whose ol.yaml asks for more than the operator allows.
    #[error(transparent)]
    OverCeiling(#[from] sock_service::OverCeiling),

    #[error("function '{0}' does not exist; push it with `sock push`")]
    NotFound(String),

    /// A version older than the two the registry keeps, or not pushed yet.
    #[error(
        "function '{name}' has no version {asked} here: the registry keeps the current version \
         ({current}) and the one before it"
    )]
    VersionNotKept {
        name: String,
        asked: u64,
        current: u64,
    },

    #[error("store failed: {0}")]
    Storage(#[from] sled::Error),

    #[error(
        "the registry's disk is full: {free_mb} MiB and {free_inodes} files free, and a push of \
         {bundle_mb} MiB must leave {keep_mb} MiB (min_free_mb) and 64 files; nothing was \
         stored, and what was pushed before still serves"
    )]
    DiskFull {
        free_mb: u64,
        free_inodes: u64,
        bundle_mb: u64,
        keep_mb: u64,
    },

    #[error("cannot tell the free space of the store's disk: {0}")]
    FreeSpace(#[source] nix::Error),

    #[error("stored record of function '{name}' is corrupt: {reason}")]
    Corrupt { name: String, reason: String },

    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What keeps the registry from starting or serving: the operator's to
/// fix, never the answer to a request.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store in {path}: {source}", path = .path.display())]
    Open {
        path: std::path::PathBuf,
        source: sled::Error,
    },

    #[error("the task opening the store failed: {0}")]
    Task(#[from] tokio::task::JoinError),

    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),

    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),

    #[error("cannot serve metrics: {0}")]
    Metrics(#[source] std::io::Error),

    /// A listener others could reach, and no token to check.
    #[error("{0}")]
    Insecure(String),
}

/// What callers see of a failure that is ours, not theirs.
const INTERNAL: &str = "the registry failed to read or write its store; see the registry's log";
/// What callers see when the store's disk is full: nothing was stored, and
/// what was stored before still serves.
const DISK_FULL: &str = "the registry's disk is full (no space left on device): nothing was stored; \
     what was pushed before still serves";

impl Error {
    /// The store's disk (or the data dir's quota) is full.
    fn is_disk_full(&self) -> bool {
        matches!(self, Error::Storage(sled::Error::Io(io)) if sock_service::disk_full(io))
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match error {
            e @ (Error::Invalid(_) | Error::OverCeiling(_)) => {
                ErrorKind::InvalidRequest.status(e.to_string())
            }
            e @ (Error::NotFound(_) | Error::VersionNotKept { .. }) => {
                ErrorKind::NotFound.status(e.to_string())
            }
            e @ Error::DiskFull { .. } => {
                tracing::warn!(error = %e, "push refused");
                ErrorKind::Platform.status(e.to_string())
            }
            e => {
                tracing::error!(error = %e, "registry request failed");
                ErrorKind::Platform.status(if e.is_disk_full() {
                    DISK_FULL
                } else {
                    INTERNAL
                })
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            e @ (Error::Invalid(_) | Error::OverCeiling(_)) => {
                (StatusCode::BAD_REQUEST, e.to_string()).into_response()
            }
            e @ (Error::NotFound(_) | Error::VersionNotKept { .. }) => {
                (StatusCode::NOT_FOUND, e.to_string()).into_response()
            }
            e => {
                tracing::error!(error = %e, "registry request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL).into_response()
            }
        }
    }
}

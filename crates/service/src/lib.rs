//! What every sock service shares: start-up (arguments, config in layers,
//! telemetry), the shutdown signal, the frame of a gRPC server (health, reflection, graceful
//! stop), the size of its messages, and the `/metrics` endpoint. Service logic never lives here.
#![forbid(unsafe_code)]

pub mod auth;
mod ceilings;
mod config;
pub mod limits;
mod metrics;
mod server;
mod shutdown;
mod start;

pub use auth::{
    Access, AuthLayer, AuthedChannel, Bearer, PeerCredLayer, Secret, Tokens, authed, require_tokens,
};
pub use ceilings::{Ceilings, OverCeiling};
pub use config::{ConfigError, ImportCache, list_or_commas, load_config};
pub use metrics::{METRICS_CONTENT_TYPE, render_metrics, serve_metrics};
pub use server::{bind, grpc_incoming, http_incoming, with_standard_services};
pub use shutdown::shutdown_on_signals;
pub use start::{Started, start};

/// `at` as milliseconds since the Unix epoch, the form the protos carry
/// times in; 0 for a time before it.
pub fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `error`, or an error it was caused by, is an I/O error of a full
/// disk or quota: the operator's to free, worth saying to callers.
pub fn disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    })
}

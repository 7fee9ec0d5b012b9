//! The registry: sock's code store.
//!
//! Function bundles and their versions live in sled under `data_dir`. The
//! gRPC admin API (`sock.v1.Registry`) pushes, describes, lists and
//! deletes functions; every push is validated as a hostile archive before
//! anything is stored, and a refused push leaves the previous version
//! serving. The HTTP store serves the latest bundle of each function with
//! ETag / Last-Modified validators and answers 304 to a current copy; the
//! latest and the previous version are also served by number.
//!
//! With no token configured at all, the registry serves loopback only.
#![forbid(unsafe_code)]

mod config;
mod error;
mod functions;
mod grpc;
mod http;
mod metrics;
mod store;

use sock_bundle::BundleLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, StartError};

use functions::Functions;
use store::Store;

/// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` is cancelled
/// and in-flight requests are done, or until either server fails.
pub async fn run(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tokens = config.tokens();
    for listener in [&grpc, &http] {
        let addr = listener.local_addr().map_err(StartError::Http)?;
        sock_service::require_tokens("the registry", addr, &tokens)
            .map_err(StartError::Insecure)?;
    }
    let data_dir = config.data_dir.clone();
    let min_free = config.min_free_mb.saturating_mul(1 << 20);
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, min_free)).await??;
    let limits = BundleLimits {
        max_bundle_bytes: config.max_bundle_bytes(),
        ..BundleLimits::default()
    };
    let functions = Functions::new(store, limits, config.ceilings);
    // One server failing stops the others rather than leaving half a
    // registry running.
    let stop = shutdown.child_token();
    let _stop_on_return = stop.clone().drop_guard();
    let (metrics, exposed) = metrics::Metrics::new();
    sock_service::serve_metrics(&config.metrics_listen, exposed, &tokens, stop.clone())
        .await
        .map_err(StartError::Metrics)?;
    tracing::info!(
        grpc = %local_addr(&grpc),
        http = %local_addr(&http),
        "registry serving"
    );
    tokio::try_join!(
        grpc::serve(
            functions.clone(),
            grpc,
            limits.max_bundle_bytes,
            tokens.clone(),
            metrics.clone(),
            stop.clone()
        ),
        http::serve(functions, metrics, http, tokens, stop.clone()),
    )?;
    Ok(())
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}

//! The gateway: sock's public gRPC API.
//!
//! `Invoke` looks the function's current version and config up in a cache
//! of the registry's answers (`metadata`), bounds the call in time
//! (`deadline`), and runs it on a sandbox node (`invoke`). Errors become
//! gRPC statuses in one place (`error`).
#![forbid(unsafe_code)]

mod config;
mod deadline;
mod error;
mod invoke;
mod metadata;

use std::time::Duration;

use sock_proto::v1::gateway_server::GatewayServer;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_telemetry::grpc::{ServerTraceLayer, traced};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Server};

pub use config::Config;
pub use error::Error;
pub use invoke::CALL_ID_HEADER;

use invoke::InvokeService;
use metadata::MetadataCache;

/// A peer that does not accept a connection within this is treated as
/// down, rather than holding calls for the kernel's much longer timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound on one registry lookup; past it the last known version is served.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the gateway on `listener` until `shutdown` is cancelled, then
/// lets in-flight calls finish. The registry and sandboxd are connected to
/// lazily, so the gateway starts (and reports the failure per call) while
/// they are down.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let registry = endpoint("registry_addr", &config.registry_addr)?.timeout(REGISTRY_TIMEOUT);
    let registry = RegistryClient::new(traced(registry.connect_lazy()));
    let sandboxd = SandboxdClient::new(traced(
        endpoint("sandboxd_addr", &config.sandboxd_addr)?.connect_lazy(),
    ));
    let functions = MetadataCache::new(registry, Duration::from_millis(config.registry_cache_ms));
    let service = InvokeService::new(functions, sandboxd, config.default_timeout_ms);

    let (health, _) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<InvokeService>>().await;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "gateway listening");
    }
    let mut server = Server::builder().layer(ServerTraceLayer);
    sock_service::with_standard_services(&mut server, health)
        .add_service(GatewayServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
        .map_err(Error::Serve)
}

/// The endpoint of a peer from the config field `field`.
fn endpoint(field: &'static str, addr: &str) -> Result<Endpoint, Error> {
    let endpoint =
        Endpoint::from_shared(addr.to_string()).map_err(|source| Error::InvalidAddress {
            field,
            value: addr.to_string(),
            source,
        })?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT))
}

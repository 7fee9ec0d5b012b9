//! The gateway: sock's public API, over gRPC (`sock.v1.Gateway`) and
//! OpenLambda-style HTTP (`/run/<name>[/<path>]`, `/status`, `/registry`).
//!
//! A call looks the function's current version and config up in a cache
//! of the registry's answers (`metadata`, kept current by the registry's
//! announcements: `watch`), is checked against the function
//! (method, kind, size) and bounded in time (`deadline`), passes admission
//! control (`admission`: concurrency limits and a bounded queue), and runs
//! on the sandbox node its function hashes to (`nodes`). `invoke` holds
//! that path; `grpc` and `http` are its two doors, `cron` fires the
//! functions' cron triggers through it and `kafka` turns messages of their
//! Kafka triggers into calls on it. `openlambda` passes OpenLambda's
//! registry API on to the registry. Errors become gRPC
//! statuses and HTTP responses in one place (`error`).
//!
//! Both servers carry `sock_service::AuthLayer` (`access` below):
//! `invoke_token` for `Invoke` and `/run`, `admin_token` for `Logs`,
//! `Tree`, `/registry…` and `/metrics`; `/status` is open. The gateway
//! sends `node_token` to the registry and to nodes reached over TCP.
//!
//! The registry and the nodes are connected to lazily ([`run`]): the
//! gateway starts, and reports SERVING, while they are down, and each call
//! reports what it could not reach. At shutdown both servers stop taking
//! calls, those in flight finish, and the cron scheduler, the Kafka
//! consumers and the watch stop with them.
#![forbid(unsafe_code)]

mod admission;
mod body;
mod config;
mod cron;
mod deadline;
mod error;
mod grpc;
mod http;
mod invoke;
mod kafka;
mod metadata;
mod metrics;
mod nodes;
mod openlambda;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use sock_proto::v1::gateway_server::GatewayServer;
use sock_proto::v1::registry_client::RegistryClient;
use sock_service::limits::{self, Carrying};
use sock_telemetry::grpc::ServerTraceLayer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

pub use config::Config;
pub use cron::{FIRE_TIME_HEADER, SCHEDULE_HEADER, TRIGGER_HEADER};
pub use error::{CALL_ID_HEADER, ERROR_HEADER, Error, StartError};
pub use http::{TIMEOUT_HEADER, http_invocation};
pub use invoke::Invocation;
pub use openlambda::VERSION_HEADER;

use grpc::GatewayService;
use invoke::{Invoker, Limits};
use metadata::MetadataCache;
use nodes::Nodes;

/// Bound on one registry lookup; past it the last known version is served.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on one `/registry` operation: a push sends and validates a whole
/// bundle.
const REGISTRY_ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` is cancelled,
/// then lets in-flight calls finish. The registry and sandboxd are
/// connected to lazily, so the gateway starts (and reports the failure per
/// call) while they are down.
pub async fn run(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tokens = config.tokens();
    for (field, listener) in [("listen", &grpc), ("http_listen", &http)] {
        let addr = listener.local_addr().map_err(StartError::ServeHttp)?;
        sock_service::require_tokens("the gateway", addr, &tokens).map_err(|reason| {
            StartError::InvalidConfig {
                field,
                value: addr.to_string(),
                reason,
            }
        })?;
    }
    if config.cron_refresh_ms == 0 {
        return Err(StartError::InvalidConfig {
            field: "cron_refresh_ms",
            value: "0".into(),
            reason: "the registry would be asked without pause; give milliseconds".into(),
        });
    }
    if config.max_payload_bytes > limits::MAX_CALL_BYTES {
        return Err(StartError::InvalidConfig {
            field: "max_payload_bytes",
            value: config.max_payload_bytes.to_string(),
            reason: format!(
                "sandboxd takes payloads of at most {} bytes",
                limits::MAX_CALL_BYTES
            ),
        });
    }
    let kafka_brokers = kafka::Brokers::parse(&config.kafka_brokers)?;
    let registry = nodes::endpoint("registry_addr", &config.registry_addr)?;
    let registry_admin = RegistryClient::new(nodes::with_token(
        registry.clone().timeout(REGISTRY_ADMIN_TIMEOUT),
        None,
    )?);
    // A watch is one long call, so its channel has no per-call timeout.
    let registry_watch = RegistryClient::new(nodes::with_token(
        registry.clone(),
        config.node_token.as_ref(),
    )?);
    let registry = RegistryClient::new(nodes::with_token(
        registry.timeout(REGISTRY_TIMEOUT),
        config.node_token.as_ref(),
    )?);
    let functions = MetadataCache::new(
        registry.clone(),
        Duration::from_millis(config.registry_cache_ms),
    );
    // Background tasks stop with the servers, however they end.
    let stop = shutdown.child_token();
    let _stop_on_return = stop.clone().drop_guard();
    let nodes = Nodes::start(
        config.node_addrs(),
        config.node_token.clone(),
        config.max_concurrency_per_node,
        Duration::from_millis(config.health_interval_ms),
        Duration::from_millis(config.dns_refresh_ms),
        stop.clone(),
    )
    .await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let invoker = Arc::new(Invoker::new(
        functions,
        nodes.clone(),
        Limits {
            max_concurrency: config.max_concurrency,
            max_concurrency_per_function: config.max_concurrency_per_function,
            max_queue: config.max_queue,
            default_timeout_ms: config.default_timeout_ms,
            max_payload_bytes: config.max_payload_bytes,
        },
        metrics.clone(),
    ));
    let cron = Arc::new(cron::Scheduler {
        registry: registry.clone(),
        invoker: invoker.clone(),
        metrics: metrics.clone(),
        refresh_every: Duration::from_millis(config.cron_refresh_ms),
        refresh: cron::Refresh::default(),
        holder: format!("gateway-{}", uuid::Uuid::new_v4()),
    });

    let watch = watch::follow(
        registry_watch,
        watch::Watchers {
            invoker: invoker.clone(),
            cron: cron.refresh.clone(),
        },
        stop.clone(),
    );
    let kafka = kafka::run(
        registry,
        Arc::new(kafka::Deliver {
            invoker: invoker.clone(),
            metrics: metrics.clone(),
        }),
        kafka_brokers,
        Duration::from_millis(config.kafka_poll_interval_ms),
        stop.clone(),
    );

    let (health, _) = tonic_health::server::health_reporter();
    health.set_serving::<GatewayServer<GatewayService>>().await;
    for (what, listener) in [("gRPC", &grpc), ("HTTP", &http)] {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "gateway {what} listening");
        }
    }
    let service = GatewayServer::new(GatewayService {
        invoker: invoker.clone(),
        nodes: nodes.clone(),
    })
    .carrying(config.max_payload_bytes);
    // What tonic refuses is more than a whole envelope over the limit.
    let too_large = Error::PayloadTooLarge {
        size: config
            .max_payload_bytes
            .saturating_add(limits::ENVELOPE_BYTES),
        limit: config.max_payload_bytes,
    };
    let auth = sock_service::AuthLayer::new(tokens, access);
    let mut server = Server::builder()
        .layer(ServerTraceLayer)
        .layer(auth.clone())
        .layer(limits::refuse_too_large(too_large.into()));
    let grpc_server = sock_service::with_standard_services(&mut server, health)
        .add_service(service)
        .serve_with_incoming_shutdown(
            sock_service::grpc_incoming(grpc),
            stop.clone().cancelled_owned(),
        );

    let openlambda = Arc::new(openlambda::OpenLambda {
        registry: registry_admin,
        invoker: invoker.clone(),
        cron: cron.refresh.clone(),
        nodes: nodes.clone(),
        max_bundle_bytes: config.max_bundle_mb.saturating_mul(1 << 20),
    });
    let state = Arc::new(http::HttpState {
        invoker,
        nodes,
        metrics,
        strip_authorization: config.invoke_token.is_some(),
    });
    let app = http::router(state, openlambda)
        .layer(auth)
        .layer(sock_telemetry::http::ServerTraceLayer);
    let http_server = axum::serve(sock_service::http_incoming(http), app)
        .with_graceful_shutdown(stop.clone().cancelled_owned());

    // One server failing stops the other rather than leaving half a
    // gateway. The cron scheduler and the Kafka consumers stop with them
    // and are waited for: firings finish, consumers leave their groups.
    let stop_grpc = stop.clone();
    let stop_http = stop.clone();
    let scheduler = cron.run(stop.clone());
    tokio::try_join!(
        async move {
            tokio::join!(scheduler, kafka, watch);
            Ok(())
        },
        async move {
            let served = grpc_server.await.map_err(StartError::Serve);
            stop_grpc.cancel();
            served
        },
        async move {
            let served = http_server.await.map_err(StartError::ServeHttp);
            stop_http.cancel();
            served
        },
    )?;
    Ok(())
}

/// What each path of the gateway's two servers needs.
fn access(path: &str) -> sock_service::Access {
    use sock_service::Access;
    match path {
        "/sock.v1.Gateway/Invoke" => Access::Invoke,
        "/sock.v1.Gateway/Logs" | "/sock.v1.Gateway/Tree" | "/metrics" => Access::Admin,
        p if p.starts_with("/run/") => Access::Invoke,
        // Changing or listing what is deployed; any path under it, so a
        // route added later is not open by mistake.
        p if p.starts_with("/registry") => Access::Admin,
        // OpenLambda's `/status`, health and reflection: probes.
        _ => Access::Open,
    }
}

#[cfg(test)]
mod tests {
    use sock_service::Access;

    use super::access;

    #[test]
    fn registry_routes_are_the_operators_and_status_is_a_probe() {
        for path in [
            "/registry",
            "/registry/",
            "/registry/echo",
            "/registry/echo/config",
        ] {
            assert_eq!(access(path), Access::Admin, "{path}");
        }
        assert_eq!(access("/sock.v1.Gateway/Tree"), Access::Admin);
        assert_eq!(access("/status"), Access::Open);
        assert_eq!(access("/run/echo"), Access::Invoke);
    }
}

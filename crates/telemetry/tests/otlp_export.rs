//! Span export and trace propagation, end to end through a real OTLP/gRPC
//! receiver.
//!
//! `init` installs process-global state (subscriber, propagator, tracer
//! provider), so each test runs its scenario again in a child process of
//! this test binary with the `OTEL_*` variables it needs, and checks from
//! the parent what the child exported and printed.
use std::process::Output;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::cache_server::{Cache, CacheServer};
use sock_proto::v1::{PrepareRequest, PrepareResponse, TreeRequest, TreeResponse};
use sock_telemetry::grpc::{ServerTraceLayer, traced};
use sock_telemetry::http::inject_context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;
use tracing::Instrument;

#[path = "../../testkit/src/otlp.rs"]
mod otlp;

use otlp::{OtlpReceiver, Span};

/// Set in the child process: run the scenario instead of the parent side.
const CHILD: &str = "SOCK_TELEMETRY_TEST_CHILD";

#[tokio::test]
async fn one_call_is_one_trace_across_grpc_and_http() {
    if std::env::var_os(CHILD).is_some() {
        return make_traced_calls().await;
    }
    let receiver = OtlpReceiver::start().await;
    let child = run_child(
        "one_call_is_one_trace_across_grpc_and_http",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("RUST_LOG", "info,otlp_export=debug".into()),
        ],
    )
    .await;
    assert_child_succeeded(&child);

    let spans = receiver
        .wait_for(
            |spans| {
                [
                    "grpc client",
                    "grpc /sock.v1.Cache/Prepare",
                    "http client",
                    "HTTP GET /items/{id}",
                ]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
                    && spans
                        .iter()
                        .filter(|s| s.name == "HTTP GET /items/{id}")
                        .count()
                        == 2
            },
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|timeout| panic!("{timeout}"));
    assert!(
        spans.iter().all(|s| s.service == "sock-telemetry-test"),
        "{spans:#?}"
    );

    let grpc_client = named(&spans, "grpc client");
    let grpc_server = named(&spans, "grpc /sock.v1.Cache/Prepare");
    assert_eq!(grpc_client.kind, "client");
    assert_eq!(grpc_server.kind, "server");
    assert_eq!(grpc_server.trace_id, grpc_client.trace_id, "{spans:#?}");
    assert_eq!(
        grpc_server.parent_id.as_deref(),
        Some(grpc_client.span_id.as_str())
    );
    assert_eq!(grpc_server.attribute("rpc.system"), Some("grpc"));
    assert_eq!(grpc_server.attribute("rpc.service"), Some("sock.v1.Cache"));
    assert_eq!(grpc_server.attribute("rpc.method"), Some("Prepare"));
    assert!(
        spans.iter().all(|s| !s.name.contains("grpc.health.v1")),
        "health probes make no spans: {spans:#?}"
    );

    let http_client = named(&spans, "http client");
    let (continued, fresh): (Vec<&Span>, Vec<&Span>) = spans
        .iter()
        .filter(|s| s.name == "HTTP GET /items/{id}")
        .partition(|s| s.parent_id.is_some());
    assert_eq!((continued.len(), fresh.len()), (1, 1), "{spans:#?}");
    let http_server = continued[0];
    assert_eq!(http_server.kind, "server");
    assert_eq!(http_server.trace_id, http_client.trace_id);
    assert_eq!(
        http_server.parent_id.as_deref(),
        Some(http_client.span_id.as_str())
    );
    assert_eq!(http_server.attribute("http.route"), Some("/items/{id}"));
    assert_eq!(
        http_server.attribute("http.response.status_code"),
        Some("200")
    );
    assert_ne!(
        fresh[0].trace_id, http_client.trace_id,
        "a request without traceparent starts a new trace"
    );
}

/// The child's side: a traced gRPC call to a traced server, and an HTTP
/// request with injected context to a traced axum router. The servers run
/// outside the client spans, so only the headers can link them.
async fn make_traced_calls() {
    let telemetry = sock_telemetry::init("telemetry-test");

    let (addr, server) = serve_health().await;
    let channel = traced(
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy(),
    );
    let mut client = CacheClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    async {
        client
            .prepare(PrepareRequest::default())
            .await
            .expect("a call through the traced channel");
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check through the traced channel");
    }
    .instrument(tracing::info_span!("grpc client", otel.kind = "client"))
    .await;

    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .layer(ServerTraceLayer);
    let mut request = http::Request::get("/items/7")
        .body(Body::empty())
        .expect("request");
    // The debug span is logged but not traced (the parent sets RUST_LOG),
    // so the context to send is that of the span around it.
    tracing::info_span!("http client", otel.kind = "client").in_scope(|| {
        tracing::debug_span!("build request").in_scope(|| inject_context(request.headers_mut()))
    });
    let response = app.clone().oneshot(request).await.expect("routed");
    assert_eq!(response.status(), http::StatusCode::OK);
    let untraced = http::Request::get("/items/8")
        .body(Body::empty())
        .expect("request");
    app.oneshot(untraced).await.expect("routed");

    server.abort();
    // Dropping the guard inside this current-thread runtime must flush.
    drop(telemetry);
}

#[tokio::test]
async fn unreachable_collector_neither_blocks_calls_nor_floods_the_log() {
    if std::env::var_os(CHILD).is_some() {
        return call_with_collector_down().await;
    }
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let child = run_child(
        "unreachable_collector_neither_blocks_calls_nor_floods_the_log",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "20".into()),
        ],
    )
    .await;
    assert_child_succeeded(&child);
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert_eq!(
        stderr
            .matches("cannot export spans to the OTLP collector")
            .count(),
        1,
        "one warning per outage, not one per batch:\n{stderr}"
    );
    assert!(
        !stderr.contains("ERROR"),
        "export failures are not errors of the service:\n{stderr}"
    );
}

async fn call_with_collector_down() {
    let telemetry = sock_telemetry::init("telemetry-test");
    let (addr, server) = serve_health().await;
    let mut client = HealthClient::new(traced(
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy(),
    ));
    // Rounds of calls spread over several batch intervals, so that more
    // than one export fails.
    for round in 0..10 {
        for _ in 0..5 {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .instrument(tracing::info_span!("call", round))
                .await
                .expect("calls work while the collector is down");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    server.abort();
    drop(telemetry);
}

/// A gRPC service to trace that is not a health probe.
struct EmptyCache;

#[tonic::async_trait]
impl Cache for EmptyCache {
    async fn prepare(
        &self,
        _: tonic::Request<PrepareRequest>,
    ) -> Result<tonic::Response<PrepareResponse>, tonic::Status> {
        Ok(tonic::Response::new(PrepareResponse::default()))
    }

    async fn tree(
        &self,
        _: tonic::Request<TreeRequest>,
    ) -> Result<tonic::Response<TreeResponse>, tonic::Status> {
        Ok(tonic::Response::new(TreeResponse::default()))
    }
}

async fn serve_health() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(ServerTraceLayer)
            .add_service(health)
            .add_service(CacheServer::new(EmptyCache))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("health server");
    });
    (addr, server)
}

/// Runs the test `name` of this binary in a child process with `env`. The
/// generous timeout is the failure condition for a hang (the child is
/// killed when it hits).
async fn run_child(name: &str, env: &[(&str, String)]) -> Output {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--exact", name, "--nocapture"])
        .env(CHILD, "1")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the child test finishes within 60 s")
        .expect("run the child test")
}

fn assert_child_succeeded(child: &Output) {
    assert!(
        child.status.success(),
        "child failed ({}):\n{}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

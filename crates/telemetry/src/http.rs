//! Trace context over HTTP: inject into outgoing headers, and a tower layer
//! that continues the caller's trace on the server side. gRPC metadata are
//! HTTP/2 headers, so both serve gRPC as well.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use opentelemetry::global;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use pin_project_lite::pin_project;
use tracing::Instrument;
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Injects the current span's context into outgoing HTTP headers
/// (`traceparent`, `tracestate`).
pub fn inject_context(headers: &mut http::HeaderMap) {
    let mut context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        // The current span is one OpenTelemetry does not record (below
        // `info`); the innermost one it does record is active instead.
        context = opentelemetry::Context::current();
    }
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Tower layer for HTTP and gRPC servers: runs each request in a server
/// span whose parent is the context found in the request headers.
///
/// gRPC requests get a span named `grpc <path>` with `rpc.*` attributes;
/// other requests `HTTP <method> <route>`, where the route is axum's
/// matched path (add the layer with `Router::layer` so it is known).
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerTraceLayer;

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;
    fn layer(&self, inner: S) -> ServerTrace<S> {
        ServerTrace { inner }
    }
}

/// The service `ServerTraceLayer` wraps around a server.
#[derive(Clone, Debug)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ServerTraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let protocol = Protocol::of(&request);
        let span = server_span(protocol, &request);
        let future = span.in_scope(|| self.inner.call(request));
        ServerTraceFuture {
            inner: future.instrument(span),
            protocol,
        }
    }
}

pin_project! {
    /// Response future of `ServerTrace`: records the outcome on the span.
    pub struct ServerTraceFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        protocol: Protocol,
    }
}

impl<F, R, E> Future for ServerTraceFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut inner = this.inner;
        let result = ready!(inner.as_mut().poll(cx));
        let span = inner.as_ref().get_ref().span();
        match &result {
            Ok(response) => this.protocol.record_response(span, response),
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        Poll::Ready(result)
    }
}

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    fn of<B>(request: &http::Request<B>) -> Protocol {
        let content_type = request.headers().get(http::header::CONTENT_TYPE);
        match content_type {
            Some(v) if v.as_bytes().starts_with(b"application/grpc") => Protocol::Grpc,
            _ => Protocol::Http,
        }
    }

    fn record_response<R>(self, span: &tracing::Span, response: &http::Response<R>) {
        match self {
            Protocol::Grpc => {
                // Failed unary calls answer "trailers-only", so their status
                // is in the headers; a success's status comes in trailers
                // after this span ends and stays unrecorded.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok());
                if let Some(code) = code {
                    span.record("rpc.grpc.status_code", code);
                    if is_server_error(tonic::Code::from_i32(code)) {
                        span.record("otel.status_code", "ERROR");
                    }
                }
            }
            Protocol::Http => {
                let status = response.status();
                span.record("http.response.status_code", status.as_u16());
                if status.is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
            }
        }
    }
}

/// gRPC codes that mean the server failed, per the OpenTelemetry RPC
/// conventions; the others describe the caller's request.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

/// Health probes arrive every few seconds from every peer and orchestrator;
/// as spans they would drown the traces of real calls.
const HEALTH_SERVICE_PREFIX: &str = "/grpc.health.v1.Health/";

fn server_span<B>(protocol: Protocol, request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    let span = match protocol {
        Protocol::Grpc if path.starts_with(HEALTH_SERVICE_PREFIX) => tracing::Span::none(),
        Protocol::Grpc => {
            let (service, method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or((path, ""));
            tracing::info_span!(
                "grpc",
                otel.name = format!("grpc {path}"),
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
            )
        }
        Protocol::Http => {
            let method = request.method().as_str();
            let route = request
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map(|p| p.as_str());
            let name = match route {
                Some(route) => format!("HTTP {method} {route}"),
                None => format!("HTTP {method}"),
            };
            tracing::info_span!(
                "http",
                otel.name = name,
                otel.kind = "server",
                otel.status_code = Empty,
                http.request.method = method,
                http.route = route,
                url.path = path,
                http.response.status_code = Empty,
            )
        }
    };
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    if parent.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, when there is no
        // trace to continue anyway.
        let _ = span.set_parent(parent);
    }
    span
}

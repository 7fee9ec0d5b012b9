//! Prometheus text at `GET /metrics` on an address of its own, for the
//! services whose other ports speak gRPC or serve bundles.
//!
//! It wants the admin token. Registry, cache and sandboxd serve it on their
//! own `metrics_listen`, whose default `""` serves nothing (so embedded
//! services and tests bind no port; `sock up` gives them ports of their
//! own); the gateway serves it on its HTTP API instead. Each service's
//! `metrics.rs` says what it exposes.
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::auth::{Access, AuthLayer, Tokens};

/// The media type of [`render_metrics`]'s output.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text exposition of `registry` now; collectors are read at this call.
pub fn render_metrics(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// Serves `registry` at `GET /metrics` on `listen` until `shutdown`, to
/// callers with the admin token of `tokens` (and only on loopback when
/// there is none); an empty `listen` serves nothing and answers `None`. The address is
/// bound before this returns (and answered), so a taken port fails the
/// service's start rather than going unnoticed; the server then runs in a
/// task of its own.
pub async fn serve_metrics(
    listen: &str,
    registry: Registry,
    tokens: &Tokens,
    shutdown: CancellationToken,
) -> std::io::Result<Option<SocketAddr>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = crate::bind(listen).await?;
    let addr = listener.local_addr()?;
    crate::require_tokens("/metrics", addr, tokens).map_err(std::io::Error::other)?;
    tracing::info!("metrics at http://{addr}/metrics");
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = render_metrics(&registry);
            async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response() }
        }),
    )
    .layer(AuthLayer::new(tokens.clone(), |_| Access::Admin));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(%err, "the metrics server stopped");
        }
    });
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn scrapes_see_the_registry_as_it_is_then() {
        let mut registry = Registry::with_prefix("sock_test");
        let calls: Counter = Counter::default();
        registry.register("calls", "Calls", calls.clone());
        let shutdown = CancellationToken::new();
        let addr = serve_metrics(
            "127.0.0.1:0",
            registry,
            &Tokens::default(),
            shutdown.clone(),
        )
        .await
        .expect("serve")
        .expect("an address was given");
        calls.inc();
        let text = scrape(addr).await;
        assert!(text.contains("sock_test_calls_total 1"), "{text}");
        calls.inc();
        let text = scrape(addr).await;
        assert!(text.contains("sock_test_calls_total 2"), "{text}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = serve_metrics(
            &addr,
            Registry::default(),
            &Tokens::default(),
            CancellationToken::new(),
        )
        .await
        .expect_err("the port is taken");
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[tokio::test]
    async fn empty_listen_serves_nothing() {
        let served = serve_metrics(
            "",
            Registry::default(),
            &Tokens::default(),
            CancellationToken::new(),
        )
        .await
        .expect("nothing to bind");
        assert_eq!(served, None);
    }

    /// A bare HTTP/1.0 GET, so the test needs no HTTP client.
    async fn scrape(addr: std::net::SocketAddr) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        answer
    }
}

//! The registry's Prometheus metrics: pushes by outcome and bundle-store
//! answers (sent, not modified, not found), served at `metrics_listen`.
//!
//! `sock_registry_pushes_total{outcome=ok|refused|error}` (a refusal for a
//! missing token happens in the auth layer, before the handler, and is not
//! counted) and
//! `sock_registry_fetches_total{answer=bundle|not_modified|not_found|error}`
//! (a middleware on the bundle store).
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

pub(crate) struct Metrics {
    pushes: Family<Labels, Counter>,
    fetches: Family<Labels, Counter>,
}

impl Metrics {
    /// The metrics and the registry that exposes them.
    pub fn new() -> (Arc<Metrics>, Registry) {
        let mut registry = Registry::with_prefix("sock_registry");
        let pushes = Family::<Labels, Counter>::default();
        registry.register(
            "pushes",
            "Pushes by outcome: ok, refused (invalid bundle or name), error",
            pushes.clone(),
        );
        let fetches = Family::<Labels, Counter>::default();
        registry.register(
            "fetches",
            "Bundle-store requests by answer: bundle (200), not_modified (304), not_found, error",
            fetches.clone(),
        );
        (Arc::new(Metrics { pushes, fetches }), registry)
    }

    pub fn pushed(&self, outcome: Result<(), tonic::Code>) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted) => "refused",
            Err(_) => "error",
        };
        self.pushes.get_or_create(&[("outcome", outcome)]).inc();
    }

    fn fetched(&self, status: StatusCode) {
        let answer = match status {
            StatusCode::OK => "bundle",
            StatusCode::NOT_MODIFIED => "not_modified",
            StatusCode::NOT_FOUND => "not_found",
            _ => "error",
        };
        self.fetches.get_or_create(&[("answer", answer)]).inc();
    }
}

/// Middleware of the bundle store: counts each answer by its status.
pub(crate) async fn count_fetches(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    metrics.fetched(response.status());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_and_fetches_are_counted_by_outcome() {
        let (metrics, registry) = Metrics::new();
        metrics.pushed(Ok(()));
        metrics.pushed(Ok(()));
        metrics.pushed(Err(tonic::Code::InvalidArgument));
        metrics.fetched(StatusCode::OK);
        metrics.fetched(StatusCode::NOT_MODIFIED);
        metrics.fetched(StatusCode::NOT_MODIFIED);
        metrics.fetched(StatusCode::INTERNAL_SERVER_ERROR);
        let text = sock_service::render_metrics(&registry);
        for line in [
            r#"sock_registry_pushes_total{outcome="ok"} 2"#,
            r#"sock_registry_pushes_total{outcome="refused"} 1"#,
            r#"sock_registry_fetches_total{answer="bundle"} 1"#,
            r#"sock_registry_fetches_total{answer="not_modified"} 2"#,
            r#"sock_registry_fetches_total{answer="error"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}

//! The cache's Prometheus metrics, served at `metrics_listen`: prepares
//! answered from what it holds (hits) and its requests to the registry by
//! answer.
//!
//! `sock_cache_hits_total` (answered with no HTTP) and
//! `sock_cache_fetches_total{answer=bundle|not_modified|not_found|unavailable|error}`.
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::Error;
use crate::registry::Fetched;

type Labels = [(&'static str, &'static str); 1];

pub(crate) struct Metrics {
    hits: Counter,
    fetches: Family<Labels, Counter>,
}

impl Metrics {
    /// The metrics and the registry that exposes them.
    pub fn new() -> (Arc<Metrics>, Registry) {
        let mut registry = Registry::with_prefix("sock_cache");
        let hits = Counter::default();
        registry.register(
            "hits",
            "Prepares answered from the unpacked code without asking the registry",
            hits.clone(),
        );
        let fetches = Family::<Labels, Counter>::default();
        registry.register(
            "fetches",
            "Requests to the registry (conditional for the latest version, or for an exact \
             one) by answer: bundle, not_modified, not_found, unavailable, error",
            fetches.clone(),
        );
        (Arc::new(Metrics { hits, fetches }), registry)
    }

    pub fn hit(&self) {
        self.hits.inc();
    }

    /// One request to the registry, by its answer; `answered` names a
    /// successful one.
    pub fn fetched<T>(&self, result: &Result<T, Error>, answered: impl FnOnce(&T) -> &'static str) {
        let answer = match result {
            Ok(fetched) => answered(fetched),
            Err(Error::NotFound { .. } | Error::VersionNotKept { .. }) => "not_found",
            Err(Error::RegistryUnavailable { .. }) => "unavailable",
            Err(_) => "error",
        };
        self.fetches.get_or_create(&[("answer", answer)]).inc();
    }
}

/// How [`Metrics::fetched`] names a conditional request's answer.
pub fn fetched_answer(fetched: &Fetched) -> &'static str {
    match fetched {
        Fetched::Bundle(_) => "bundle",
        Fetched::NotModified => "not_modified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_and_fetches_are_counted_by_answer() {
        let (metrics, registry) = Metrics::new();
        metrics.hit();
        metrics.hit();
        metrics.fetched(&Ok(Fetched::NotModified), fetched_answer);
        metrics.fetched::<Fetched>(
            &Err(Error::RegistryUnavailable {
                reason: "connection refused".into(),
            }),
            fetched_answer,
        );
        metrics.fetched::<Fetched>(&Err(Error::NotFound { name: "f".into() }), fetched_answer);
        metrics.fetched::<()>(
            &Err(Error::VersionNotKept {
                name: "f".into(),
                asked: 1,
                reason: "gone".into(),
            }),
            |_| "bundle",
        );
        let text = sock_service::render_metrics(&registry);
        for line in [
            "sock_cache_hits_total 2",
            r#"sock_cache_fetches_total{answer="not_modified"} 1"#,
            r#"sock_cache_fetches_total{answer="unavailable"} 1"#,
            r#"sock_cache_fetches_total{answer="not_found"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}

//! The gateway's Prometheus metrics, served as text at `/metrics`.
//!
//! `sock_gateway_calls_total{function,outcome}` (a cron firing counts as a
//! call too), `sock_gateway_call_duration_seconds{function}`,
//! `sock_gateway_queue_depth`, `sock_gateway_nodes`,
//! `sock_gateway_nodes_healthy`,
//! `sock_gateway_cron_firings_total{function,outcome}`,
//! `sock_gateway_kafka_messages_total{function,outcome}` and
//! `sock_gateway_kafka_triggers_total{function,outcome}`.
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub(crate) struct Metrics {
    registry: Registry,
    calls: Family<Labels, Counter>,
    cron_firings: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge<i64, AtomicI64>,
    nodes_healthy: Gauge<i64, AtomicI64>,
    nodes: Gauge<i64, AtomicI64>,
    kafka_messages: Family<Labels, Counter>,
    kafka_triggers: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sock_gateway");
        let calls = Family::<Labels, Counter>::default();
        registry.register(
            "calls",
            "Calls by function and outcome (ok or the error kind)",
            calls.clone(),
        );
        let cron_firings = Family::<Labels, Counter>::default();
        registry.register(
            "cron_firings",
            "Cron fire times this gateway met, by function and outcome: ok or failed \
             (it fired), lost (another gateway claimed it), claim_failed (the registry \
             could not be asked, so nothing fired)",
            cron_firings.clone(),
        );
        let duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "call_duration_seconds",
            "Time from a call's arrival to its answer, by function",
            duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Calls waiting in admission control",
            queue_depth.clone(),
        );
        let nodes = Gauge::default();
        registry.register("nodes", "Sandbox nodes known", nodes.clone());
        let nodes_healthy = Gauge::default();
        registry.register(
            "nodes_healthy",
            "Sandbox nodes passing their health checks",
            nodes_healthy.clone(),
        );
        let kafka_messages = Family::<Labels, Counter>::default();
        registry.register(
            "kafka_messages",
            "Kafka messages by function and what became of them (ok, function_error, \
             refused, retried)",
            kafka_messages.clone(),
        );
        let kafka_triggers = Family::<Labels, Counter>::default();
        registry.register(
            "kafka_triggers",
            "Kafka triggers by function and what became of them: refused (a bootstrap \
             server not in kafka_brokers, so never connected to; once per function version)",
            kafka_triggers.clone(),
        );
        Metrics {
            registry,
            calls,
            cron_firings,
            duration,
            queue_depth,
            nodes_healthy,
            nodes,
            kafka_messages,
            kafka_triggers,
        }
    }

    /// One delivery of a Kafka message to `function`; `outcome` is one of
    /// the few words `kafka` uses, never a message's content.
    pub fn record_kafka_message(&self, function: &str, outcome: &'static str) {
        count(&self.kafka_messages, function, outcome);
    }

    /// A Kafka trigger of `function` not consumed: it names a server the
    /// operator did not allow.
    pub fn kafka_trigger_refused(&self, function: &str) {
        count(&self.kafka_triggers, function, "refused");
    }

    /// One call of `function` that ended in `outcome` (ok or the error
    /// kind) after `took`.
    pub fn record_call(&self, function: &str, outcome: &str, took: Duration) {
        count(&self.calls, function, outcome);
        self.duration
            .get_or_create(&vec![("function", function.to_string())])
            .observe(took.as_secs_f64());
    }

    pub fn cron_firing(&self, function: &str, outcome: &'static str) {
        count(&self.cron_firings, function, outcome);
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, queue_depth: usize, nodes: usize, healthy: usize) -> String {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_depth.set(as_i64(queue_depth));
        self.nodes.set(as_i64(nodes));
        self.nodes_healthy.set(as_i64(healthy));
        sock_service::render_metrics(&self.registry)
    }
}

/// One more of `outcome` for `function` in a counter labelled by both.
fn count(family: &Family<Labels, Counter>, function: &str, outcome: &str) {
    family
        .get_or_create(&vec![
            ("function", function.to_string()),
            ("outcome", outcome.to_string()),
        ])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_function_and_outcome() {
        let metrics = Metrics::new();
        metrics.record_call("echo", "ok", Duration::from_millis(3));
        metrics.record_call("echo", "ok", Duration::from_millis(3));
        metrics.record_call("echo", "overloaded", Duration::ZERO);
        metrics.record_call("", "not_found", Duration::ZERO);
        metrics.cron_firing("tick", "lost");
        metrics.cron_firing("tick", "ok");
        metrics.cron_firing("tick", "ok");
        let text = metrics.render(7, 2, 1);
        assert!(
            text.contains(r#"sock_gateway_calls_total{function="echo",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sock_gateway_calls_total{function="echo",outcome="overloaded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sock_gateway_calls_total{function="",outcome="not_found"} 1"#),
            "{text}"
        );
        assert!(text.contains("sock_gateway_queue_depth 7"), "{text}");
        assert!(
            text.contains(r#"sock_gateway_cron_firings_total{function="tick",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sock_gateway_cron_firings_total{function="tick",outcome="lost"} 1"#),
            "{text}"
        );
        assert!(text.contains("sock_gateway_nodes_healthy 1"), "{text}");
        assert!(
            text.contains(r#"sock_gateway_call_duration_seconds_count{function="echo"} 3"#),
            "{text}"
        );
    }
}

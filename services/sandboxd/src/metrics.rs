//! sandboxd's Prometheus metrics, served at `metrics_listen`. They are read
//! on each scrape from the same counters and snapshot the `Status` RPC
//! answers, so the two never disagree and nothing is counted twice.
//!
//! `sock_sandboxd_calls_total`, `sock_sandboxd_sandboxes{state}`,
//! `sock_sandboxd_pool_memory_bytes{kind=total|reserved|free|used}`,
//! `sock_sandboxd_pool_waiting`, `sock_sandboxd_starts_total{kind=warm|cold}`,
//! `sock_sandboxd_zygote_forks_total`,
//! `sock_sandboxd_zygote_start_failures_total`,
//! `sock_sandboxd_zygote_hits_total{zygote}`,
//! `sock_sandboxd_zygote_misses_total{zygote}`,
//! `sock_sandboxd_evictions_total`, `sock_sandboxd_zygotes` and
//! `sock_sandboxd_output_dropped_bytes_total{reason}` (see `logs.rs`).
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::tree::Uses;
use crate::warm::{Manager, NodeStatus};

/// The registry that exposes `manager`'s state, the service's call count
/// and the output the node's sandboxes had dropped.
pub(crate) fn registry(manager: Arc<Manager>, calls: Arc<AtomicU64>) -> Registry {
    node_registry(Box::new(move || manager.status()), calls, || {
        crate::logs::ring().dropped()
    })
}

type Snapshot = Box<dyn Fn() -> NodeStatus + Send + Sync>;
/// Output bytes dropped: (over the per-call limit, over the rate limit).
type Dropped = fn() -> (u64, u64);

fn node_registry(status: Snapshot, calls: Arc<AtomicU64>, dropped: Dropped) -> Registry {
    let mut registry = Registry::with_prefix("sock_sandboxd");
    registry.register_collector(Box::new(Node {
        status,
        calls,
        dropped,
    }));
    registry
}

struct Node {
    status: Snapshot,
    calls: Arc<AtomicU64>,
    dropped: Dropped,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sandboxd node metrics")
    }
}

impl Collector for Node {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        encode(
            &(self.status)(),
            self.calls.load(Ordering::Relaxed),
            (self.dropped)(),
            encoder,
        )
    }
}

fn encode(
    node: &NodeStatus,
    calls: u64,
    (over_call, over_rate): (u64, u64),
    mut encoder: DescriptorEncoder,
) -> fmt::Result {
    const MB: u64 = 1 << 20;
    let total = node.pool.total_mb.saturating_mul(MB);
    let reserved = node.pool.reserved_kib.saturating_mul(1024);
    counter(&mut encoder, "calls", "Invoke calls received", calls)?;
    gauges(
        &mut encoder,
        "sandboxes",
        "Live sandboxes by state",
        "state",
        &[
            ("idle", u64::from(node.idle)),
            ("paused", u64::from(node.paused)),
            ("running", u64::from(node.running)),
        ],
    )?;
    gauges(
        &mut encoder,
        "pool_memory_bytes",
        "The memory pool: its size, what sandboxes reserved, what is left, \
         and what idle and paused sandboxes' cgroups charge",
        "kind",
        &[
            ("total", total),
            ("reserved", reserved),
            ("free", total.saturating_sub(reserved)),
            ("used", node.used_bytes),
        ],
    )?;
    gauge(
        &mut encoder,
        "pool_waiting",
        "Cold starts waiting for memory",
        u64::from(node.pool.waiting),
    )?;
    let starts = [("warm", node.warm_starts), ("cold", node.cold_starts)];
    let mut family = encoder.encode_descriptor(
        "starts",
        "Calls by how their sandbox started: warm (an idle or paused one) or cold",
        None,
        MetricType::Counter,
    )?;
    for (kind, n) in starts {
        ConstCounter::new(n).encode(family.encode_family(&[("kind", kind)])?)?;
    }
    counter(
        &mut encoder,
        "zygote_forks",
        "Cold starts forked from a zygote",
        node.forks,
    )?;
    counter(
        &mut encoder,
        "zygote_start_failures",
        "Zygotes that failed to start; each then waits out a back-off, \
         and cold starts fork from its nearest working ancestor",
        node.zygote_start_failures,
    )?;
    per_zygote(
        &mut encoder,
        "zygote_hits",
        "Cold starts forked from a zygote, by zygote",
        &node.zygote_uses,
        |uses| uses.hits,
    )?;
    per_zygote(
        &mut encoder,
        "zygote_misses",
        "Cold starts whose chain ended at a zygote that could not serve them \
         (an ancestor's zygote or a fresh sandbox did), by zygote",
        &node.zygote_uses,
        |uses| uses.misses,
    )?;
    counter(
        &mut encoder,
        "evictions",
        "Sandboxes evicted to free memory",
        node.evictions,
    )?;
    gauge(
        &mut encoder,
        "zygotes",
        "Live zygotes",
        u64::try_from(node.zygotes.len()).unwrap_or(u64::MAX),
    )?;
    let mut family = encoder.encode_descriptor(
        "output_dropped_bytes",
        "Bytes sandboxes wrote to stdout and stderr that were read and not logged: \
         over the per-call limit, or over the rate limit",
        None,
        MetricType::Counter,
    )?;
    for (reason, n) in [("call_limit", over_call), ("rate_limit", over_rate)] {
        ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, n: u64) -> fmt::Result {
    let counter = ConstCounter::new(n);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, n: u64) -> fmt::Result {
    let gauge = ConstGauge::new(n);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// One counter per import-cache tree node id. The ids are the cache's
/// tree nodes, and the tree keeps a bounded number of them.
fn per_zygote(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    uses: &[(String, Uses)],
    count: fn(&Uses) -> u64,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (id, uses) in uses {
        ConstCounter::new(count(uses)).encode(family.encode_family(&[("zygote", id.as_str())])?)?;
    }
    Ok(())
}

/// One gauge per value of `label`.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, n) in values {
        ConstGauge::new(*n).encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolSnapshot;

    #[test]
    fn a_scrape_shows_the_status_of_that_moment() {
        let calls = Arc::new(AtomicU64::new(0));
        let registry = node_registry(
            Box::new(|| NodeStatus {
                idle: 2,
                paused: 1,
                running: 3,
                pool: PoolSnapshot {
                    total_mb: 1000,
                    reserved_kib: 256 * 1024,
                    waiting: 4,
                },
                used_bytes: 5 << 20,
                warm_starts: 7,
                cold_starts: 6,
                forks: 5,
                zygote_start_failures: 2,
                evictions: 1,
                zygote_uses: vec![("root/numpy==2.2.3".into(), Uses { hits: 8, misses: 3 })],
                ..NodeStatus::default()
            }),
            calls.clone(),
            || (3, 4),
        );
        calls.fetch_add(9, Ordering::Relaxed);
        let text = sock_service::render_metrics(&registry);
        for line in [
            "sock_sandboxd_calls_total 9",
            r#"sock_sandboxd_sandboxes{state="idle"} 2"#,
            r#"sock_sandboxd_sandboxes{state="paused"} 1"#,
            r#"sock_sandboxd_sandboxes{state="running"} 3"#,
            r#"sock_sandboxd_pool_memory_bytes{kind="total"} 1048576000"#,
            r#"sock_sandboxd_pool_memory_bytes{kind="reserved"} 268435456"#,
            r#"sock_sandboxd_pool_memory_bytes{kind="free"} 780140544"#,
            r#"sock_sandboxd_pool_memory_bytes{kind="used"} 5242880"#,
            "sock_sandboxd_pool_waiting 4",
            r#"sock_sandboxd_starts_total{kind="warm"} 7"#,
            r#"sock_sandboxd_starts_total{kind="cold"} 6"#,
            "sock_sandboxd_zygote_forks_total 5",
            "sock_sandboxd_zygote_start_failures_total 2",
            r#"sock_sandboxd_zygote_hits_total{zygote="root/numpy==2.2.3"} 8"#,
            r#"sock_sandboxd_zygote_misses_total{zygote="root/numpy==2.2.3"} 3"#,
            "sock_sandboxd_evictions_total 1",
            "sock_sandboxd_zygotes 0",
            r#"sock_sandboxd_output_dropped_bytes_total{reason="call_limit"} 3"#,
            r#"sock_sandboxd_output_dropped_bytes_total{reason="rate_limit"} 4"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}

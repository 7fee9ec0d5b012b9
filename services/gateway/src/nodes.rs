//! The sandbox nodes and which one runs a call.
//!
//! Calls of one function go to the same node (rendezvous hashing on the
//! function name), so its warm sandboxes and zygotes are reused. A node is
//! skipped while it is unhealthy (its `grpc.health.v1` check fails, or a
//! call could not reach it) and, while it runs `max_concurrency_per_node`
//! calls, new calls spill to the next node in the function's order. A call
//! that could not be sent at all (connection refused, connect timeout) is
//! retried once on the next node; a call that may have started is never
//! retried.
//!
//! The nodes are `sandboxd_addrs` (URLs, `unix:PATH`, or `dns:HOST:PORT`
//! for every address the name resolves to, resolved again every
//! `dns_refresh_ms`), else `sandboxd_addr`. A function's order: healthy
//! nodes with fewer than `max_concurrency_per_node` calls in flight, then
//! healthy full ones, then unhealthy ones. `grpc.health.v1` checks run
//! every `health_interval_ms`; a node whose call failed at the transport
//! level stays unhealthy until a check passes. Nodes reached over TCP get
//! the `node_token`.
use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_proto::v1::{SandboxInvokeRequest, SandboxInvokeResponse};
use sock_service::AuthedChannel;
use sock_service::limits::{self, Carrying};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tracing::Instrument;

use crate::deadline::Deadline;
use crate::error::{Error, StartError, reason};

/// A peer that does not accept a connection within this is treated as
/// down, rather than holding calls for the kernel's much longer timeout.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Prefix of a node entry that names a DNS name to resolve.
const DNS_PREFIX: &str = "dns:";

pub(crate) struct Node {
    pub addr: String,
    pub client: SandboxdClient<AuthedChannel>,
    health: HealthClient<AuthedChannel>,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

impl Node {
    fn new(addr: String, token: Option<&sock_service::Secret>) -> Result<Arc<Node>, StartError> {
        let channel = authed("sandboxd_addrs", &addr, token)?;
        Ok(Arc::new(Node {
            client: SandboxdClient::new(channel.clone()).carrying(limits::MAX_CALL_BYTES),
            health: HealthClient::new(channel),
            addr,
            // Optimistic until the first check says otherwise, so calls
            // flow as soon as the gateway starts.
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        }))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                tracing::info!(node = %self.addr, "sandbox node is healthy again");
            } else {
                tracing::warn!(node = %self.addr, why, "sandbox node is unhealthy; calls go elsewhere");
            }
        }
    }

    async fn check(&self, timeout: Duration) {
        let mut health = self.health.clone();
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => {
                self.set_healthy(true, "");
            }
            Ok(Ok(_)) => self.set_healthy(false, "not serving"),
            Ok(Err(status)) => self.set_healthy(false, &reason(&status)),
            Err(_) => self.set_healthy(false, "health check timed out"),
        }
    }
}

/// Counts a call in flight on a node until dropped.
struct InFlight(Arc<Node>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Nodes {
    nodes: RwLock<Arc<[Arc<Node>]>>,
    max_in_flight: usize,
    /// Sent to every node: a node over TCP wants it; over a unix socket
    /// its peer credentials are checked instead.
    token: Option<sock_service::Secret>,
}

impl Nodes {
    /// The nodes of `addrs` (URLs, `unix:PATH` or `dns:HOST:PORT`),
    /// health-checked every `health_interval`; DNS names are resolved
    /// every `dns_refresh` until `stop`. Every call carries `token`.
    pub async fn start(
        addrs: Vec<String>,
        token: Option<sock_service::Secret>,
        max_in_flight: usize,
        health_interval: Duration,
        dns_refresh: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<Nodes>, StartError> {
        let (names, urls): (Vec<String>, Vec<String>) =
            addrs.into_iter().partition(|a| a.starts_with(DNS_PREFIX));
        let mut fixed = Vec::new();
        for url in urls {
            fixed.push(Node::new(url, token.as_ref())?);
        }
        let names: Vec<String> = names
            .into_iter()
            .map(|n| n[DNS_PREFIX.len()..].to_string())
            .collect();
        for name in &names {
            if name
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            {
                return Err(StartError::InvalidConfig {
                    field: "sandboxd_addrs",
                    value: format!("{DNS_PREFIX}{name}"),
                    reason: "a DNS entry is dns:HOST:PORT".into(),
                });
            }
        }
        let nodes = Arc::new(Nodes {
            nodes: RwLock::new(fixed.clone().into()),
            max_in_flight: max_in_flight.max(1),
            token,
        });
        if !names.is_empty() {
            nodes.resolve(&fixed, &names).await;
            tokio::spawn(resolver(
                Arc::downgrade(&nodes),
                fixed,
                names,
                dns_refresh,
                stop.clone(),
            ));
        }
        tokio::spawn(health_checker(
            Arc::downgrade(&nodes),
            health_interval,
            stop,
        ));
        Ok(nodes)
    }

    pub fn all(&self) -> Arc<[Arc<Node>]> {
        self.nodes.read().expect("nodes lock").clone()
    }

    /// Asks every node at once (healthy or not: an operator's question
    /// wants every node's answer); the answers come in node order.
    pub async fn ask_all<T, F, Fut>(&self, ask: F) -> Vec<(Arc<Node>, Result<T, tonic::Status>)>
    where
        F: Fn(SandboxdClient<AuthedChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let nodes = self.all();
        let answers = futures::future::join_all(nodes.iter().map(|n| ask(n.client.clone()))).await;
        nodes
            .iter()
            .cloned()
            .zip(
                answers
                    .into_iter()
                    .map(|a| a.map(tonic::Response::into_inner)),
            )
            .collect()
    }

    /// Resolves `names` and keeps the nodes of `fixed` plus every address
    /// found; nodes already known keep their connection and health.
    async fn resolve(&self, fixed: &[Arc<Node>], names: &[String]) {
        let mut addrs: Vec<String> = Vec::new();
        for name in names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(found) => addrs.extend(found.map(|a| format!("http://{a}"))),
                Err(e) => tracing::warn!(name, error = %e, "cannot resolve sandbox nodes"),
            }
        }
        addrs.sort();
        addrs.dedup();
        let current = self.all();
        let mut next: Vec<Arc<Node>> = fixed.to_vec();
        for addr in addrs {
            if next.iter().any(|n| n.addr == addr) {
                continue;
            }
            match current.iter().find(|n| n.addr == addr) {
                Some(node) => next.push(node.clone()),
                None => match Node::new(addr, self.token.as_ref()) {
                    Ok(node) => next.push(node),
                    Err(e) => tracing::warn!(error = %e, "skipping a resolved node"),
                },
            }
        }
        if next.len() != current.len()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| a.addr != b.addr)
        {
            tracing::info!(nodes = ?next.iter().map(|n| n.addr.as_str()).collect::<Vec<_>>(), "sandbox nodes");
        }
        *self.nodes.write().expect("nodes lock") = next.into();
    }

    /// The nodes in the order a call of `function` tries them: its
    /// rendezvous order, healthy nodes with room first, then healthy full
    /// ones, then unhealthy ones (better a try than a certain failure).
    pub fn order(&self, function: &str) -> Vec<Arc<Node>> {
        let mut nodes: Vec<Arc<Node>> = self.all().to_vec();
        nodes.sort_by_cached_key(|n| std::cmp::Reverse(score(&n.addr, function)));
        nodes.sort_by_key(|n| {
            match (
                n.is_healthy(),
                n.in_flight.load(Ordering::Relaxed) < self.max_in_flight,
            ) {
                (true, true) => 0,
                (true, false) => 1,
                (false, _) => 2,
            }
        });
        nodes
    }

    /// Runs a call on the function's node, or the next one if the first
    /// could not be reached before the call was sent. sandboxd gets what
    /// is left of `deadline` as the function's budget, and the call to it
    /// that and the grace as its gRPC deadline.
    pub async fn invoke(
        &self,
        request: &SandboxInvokeRequest,
        deadline: Deadline,
    ) -> Result<(SandboxInvokeResponse, Arc<Node>), Error> {
        let function = request.function.as_ref().map_or("", |f| f.name.as_str());
        let order = self.order(function);
        let mut tries = order.iter().take(2).peekable();
        loop {
            let node = tries.next().ok_or_else(|| {
                Error::SandboxdUnreachable("no sandbox node is configured".into())
            })?;
            node.in_flight.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(node.clone());
            let span =
                tracing::info_span!("sandboxd.invoke", otel.kind = "client", node = %node.addr);
            let mut call = tonic::Request::new(SandboxInvokeRequest {
                timeout_ms: deadline.left_ms(function)?,
                ..request.clone()
            });
            call.set_timeout(deadline.left_at_node());
            let result = node.client.clone().invoke(call).instrument(span).await;
            match result {
                Ok(response) => return Ok((response.into_inner(), node.clone())),
                Err(status) if not_sent(&status) => {
                    node.set_healthy(false, &reason(&status));
                    if tries.peek().is_none() {
                        return Err(Error::from_sandboxd(status));
                    }
                    tracing::info!(node = %node.addr, error = %reason(&status), "node unreachable; trying the next one");
                }
                // The gRPC deadline passed: sandboxd did not answer within
                // the budget and its grace.
                Err(status) if caused_by::<tonic::TimeoutExpired>(&status) => {
                    return Err(deadline.exceeded(function));
                }
                Err(status) => {
                    if status.source().is_some() {
                        // The connection broke mid-call: the function may
                        // have run, so no retry; health checks decide when
                        // the node is back.
                        node.set_healthy(false, &reason(&status));
                    }
                    return Err(Error::from_sandboxd(status));
                }
            }
        }
    }
}

/// Whether a failed call never left the gateway: tonic wraps every error
/// of making the connection (refused, unreachable, a name that no longer
/// resolves, the connect timeout) in [`tonic::ConnectError`], so the node
/// did not see the request.
fn not_sent(status: &tonic::Status) -> bool {
    caused_by::<tonic::ConnectError>(status)
}

/// Whether tonic's error `E` is among the causes of `status`.
fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut cause = status.source();
    while let Some(error) = cause {
        if error.is::<E>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Rendezvous score of `node` for `function`: FNV-1a, then a 64-bit mixer,
/// so the ranking is the same in every gateway replica and release.
fn score(node: &str, function: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0]).chain(function.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

async fn health_checker(nodes: Weak<Nodes>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(nodes) = nodes.upgrade() else { return };
        let all = nodes.all();
        drop(nodes);
        futures::future::join_all(all.iter().map(|n| n.check(interval.max(CONNECT_TIMEOUT)))).await;
    }
}

async fn resolver(
    nodes: Weak<Nodes>,
    fixed: Vec<Arc<Node>>,
    names: Vec<String>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(nodes) = nodes.upgrade() else { return };
        nodes.resolve(&fixed, &names).await;
    }
}

/// A channel to the peer at `addr` (config field `field`) that sends
/// `token`.
fn authed(
    field: &'static str,
    addr: &str,
    token: Option<&sock_service::Secret>,
) -> Result<AuthedChannel, StartError> {
    with_token(endpoint(field, addr)?, token)
}

/// `endpoint`'s lazy channel, sending the node token `token`.
pub(crate) fn with_token(
    endpoint: Endpoint,
    token: Option<&sock_service::Secret>,
) -> Result<AuthedChannel, StartError> {
    sock_service::authed(endpoint.connect_lazy(), token).map_err(|reason| {
        StartError::InvalidConfig {
            field: "node_token",
            value: "<redacted>".into(),
            reason,
        }
    })
}

/// The endpoint of a peer from the config field `field`.
pub(crate) fn endpoint(field: &'static str, addr: &str) -> Result<Endpoint, StartError> {
    let endpoint =
        Endpoint::from_shared(addr.to_string()).map_err(|e| StartError::InvalidConfig {
            field,
            value: addr.to_string(),
            reason: e.to_string(),
        })?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_functions_and_moves_few_when_a_node_goes() {
        let nodes = ["http://a:1", "http://b:1", "http://c:1"];
        fn owner<'a>(nodes: &[&'a str], f: &str) -> &'a str {
            nodes.iter().max_by_key(|n| score(n, f)).expect("some node")
        }
        let functions: Vec<String> = (0..300).map(|i| format!("fn-{i}")).collect();
        let mut per_node = [0; 3];
        for f in &functions {
            let i = nodes
                .iter()
                .position(|n| *n == owner(&nodes, f))
                .expect("a node");
            per_node[i] += 1;
        }
        assert!(per_node.iter().all(|n| *n > 60), "spread: {per_node:?}");
        // Only the functions of the node that left move.
        let without_c = &nodes[..2];
        for f in &functions {
            let before = owner(&nodes, f);
            if before != "http://c:1" {
                assert_eq!(owner(without_c, f), before, "{f} moved");
            }
        }
    }

    #[tokio::test]
    async fn order_prefers_healthy_nodes_with_room() {
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let nodes = Nodes::start(
            vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            None,
            1,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            stop,
        )
        .await
        .expect("nodes");
        let first = nodes.order("f")[0].clone();
        let second = nodes.order("f")[1].clone();
        assert_eq!(nodes.order("f")[0].addr, first.addr, "stable");
        first.in_flight.fetch_add(1, Ordering::Relaxed);
        assert_eq!(nodes.order("f")[0].addr, second.addr, "a full node spills");
        first.in_flight.fetch_sub(1, Ordering::Relaxed);
        first.set_healthy(false, "test");
        assert_eq!(
            nodes.order("f")[0].addr,
            second.addr,
            "an unhealthy node is skipped"
        );
        first.set_healthy(true, "");
        assert_eq!(nodes.order("f")[0].addr, first.addr, "and rejoins");
    }

    /// The status of one call to a node at `addr`.
    async fn call_status(addr: String) -> tonic::Status {
        let node = Node::new(addr, None).expect("a valid address");
        node.client
            .clone()
            .invoke(SandboxInvokeRequest::default())
            .await
            .expect_err("no sandboxd there")
    }

    #[tokio::test]
    async fn a_connection_refused_or_a_socket_gone_is_not_sent() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let refused = call_status(format!("http://127.0.0.1:{port}")).await;
        assert!(not_sent(&refused), "{refused:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = call_status(format!("unix:{}", dir.path().join("gone.sock").display())).await;
        assert!(not_sent(&gone), "{gone:?}");
    }

    #[tokio::test]
    async fn a_connection_that_breaks_after_it_was_made_may_have_been_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        // Accepts, reads what comes, and hangs up without an answer.
        let peer = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        });
        let broken = call_status(addr).await;
        peer.await.expect("peer");
        assert!(!not_sent(&broken), "{broken:?}");
    }

    #[tokio::test]
    async fn dns_entries_must_name_a_port() {
        let result = Nodes::start(
            vec!["dns:sandboxd".into()],
            None,
            1,
            Duration::from_secs(1),
            Duration::from_secs(1),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(result, Err(StartError::InvalidConfig { .. })));
    }

    #[tokio::test]
    async fn dns_names_become_one_node_per_address() {
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let nodes = Nodes::start(
            vec!["dns:localhost:7074".into()],
            None,
            1,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            stop,
        )
        .await
        .expect("nodes");
        let addrs: Vec<String> = nodes.all().iter().map(|n| n.addr.clone()).collect();
        assert!(
            addrs.contains(&"http://127.0.0.1:7074".to_string()),
            "{addrs:?}"
        );
    }
}

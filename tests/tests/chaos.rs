//! Chaos under load: eight clients call a mix of warm and cold functions
//! through `sock up` while gateway, registry, cache and sandboxd are each
//! SIGKILLed in turn and brought back by `sock up`'s supervision. No call
//! may hang (each gets an answer or a typed error within its budget plus a
//! margin), every failure is typed (stamped with an `x-sock-error` kind, or
//! the client's own connection broken while the gateway itself is down),
//! each service is
//! back and serving calls within the recovery bound, and once all are back
//! every call answers. The figures (calls answered, failed, recovery time
//! per service) are printed with the test's output.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::{ErrorKind, InvokeRequest};
use sock_service::limits::{Carrying, MAX_CALL_BYTES};
use sock_testkit::cluster::{Authed, Cluster, have_root, leftover_cgroups};
use tonic::Code;

const CLIENTS: usize = 8;
/// Functions the clients cycle through: the first stays warm, the others
/// start cold often (more than the warm set keeps for one client's turn).
const FUNCTIONS: usize = 12;
const BUDGET_MS: u32 = 10_000;
/// An answer later than its budget and this is a hung call.
const HANG_MARGIN: Duration = Duration::from_secs(10);
/// Bound on each service's recovery (not a figure under test).
const RECOVERY: Duration = Duration::from_secs(60);
const LOAD_BETWEEN_KILLS: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    typed_failures: AtomicUsize,
    untyped: Mutex<Vec<String>>,
    hung: AtomicUsize,
}

/// A client whose channel connects lazily and again after the gateway
/// comes back, as a real client's would.
fn client(cluster: &Cluster) -> GatewayClient<Authed> {
    let channel = tonic::transport::Endpoint::from_shared(cluster.endpoints.gateway.clone())
        .expect("gateway URL")
        .connect_lazy();
    let token = sock_service::Secret::from(cluster.token(sock_cli::tokens::Kind::Invoke));
    GatewayClient::new(sock_service::Bearer::new(channel, Some(&token)).expect("ASCII token"))
        .carrying(MAX_CALL_BYTES)
}

async fn call(client: &mut GatewayClient<Authed>, name: String) -> Result<(), tonic::Status> {
    client
        .invoke(InvokeRequest {
            function: name,
            payload: b"{}".to_vec(),
            timeout_ms: Some(BUDGET_MS),
        })
        .await
        .map(drop)
}

/// Calls until `stop`, counting each outcome in `tally`.
async fn load(
    mut client: GatewayClient<Authed>,
    index: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut turn = index;
    while !stop.load(Ordering::Relaxed) {
        let name = if turn.is_multiple_of(2) {
            "f0".to_string()
        } else {
            format!("f{}", turn % FUNCTIONS)
        };
        turn += 1;
        let limit = Duration::from_millis(u64::from(BUDGET_MS)) + HANG_MARGIN;
        match tokio::time::timeout(limit, call(&mut client, name.clone())).await {
            Err(_) => {
                tally.hung.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(())) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(status)) => {
                // Stamped by the platform, or the client's own hop to the
                // gateway broken (the gateway died mid-call or is not
                // back yet: nothing was there to stamp it).
                let own_hop = std::error::Error::source(&status)
                    .is_some_and(|source| source.is::<tonic::transport::Error>())
                    || (status.code() == Code::Unavailable && status.metadata().is_empty());
                let typed = ErrorKind::stamped(&status).is_some() || own_hop;
                if typed {
                    tally.typed_failures.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally
                        .untyped
                        .lock()
                        .expect("no panic while held")
                        .push(format!("{name}: {status:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until `name` answers, and says how long that took.
async fn until_served(cluster: &Cluster, since: Instant) -> Duration {
    let mut client = client(cluster);
    loop {
        if call(&mut client, "f0".into()).await.is_ok() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < RECOVERY,
            "calls do not work again within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_under_load_survive_each_service_killed_in_turn() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    for index in 0..FUNCTIONS {
        let code = format!("def f(event):\n    return {index}\n");
        cluster
            .push(&format!("f{index}"), &[("f.py", &code)])
            .await
            .expect("push");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| tokio::spawn(load(client(&cluster), index, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(LOAD_BETWEEN_KILLS).await;

    let mut recovered = Vec::new();
    for service in ["gateway", "registry", "cache", "sandboxd"] {
        let old = cluster.pid(service).expect("sock up records each pid");
        let pid = Pid::from_raw(i32::try_from(old).expect("pid fits i32"));
        kill(pid, Signal::SIGKILL).expect("kill -9");
        let killed = Instant::now();
        while cluster.pid(service).is_none_or(|pid| pid == old) {
            assert!(killed.elapsed() < RECOVERY, "sock-{service} not back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        recovered.push((service, until_served(&cluster, killed).await));
        tokio::time::sleep(LOAD_BETWEEN_KILLS).await;
    }

    // All back: from now on every call answers.
    let failures_before = tally.typed_failures.load(Ordering::Relaxed);
    tokio::time::sleep(LOAD_BETWEEN_KILLS).await;
    let failures_after = tally.typed_failures.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }

    let answered = tally.answered.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {answered} calls answered, {failures_after} failed with a typed error, {} hung; \
         recovery {recovered:?}",
        tally.hung.load(Ordering::Relaxed)
    );
    assert_eq!(tally.hung.load(Ordering::Relaxed), 0, "calls hung");
    let untyped = tally.untyped.lock().expect("no panic while held");
    assert!(untyped.is_empty(), "failures without a kind: {untyped:?}");
    assert!(answered > CLIENTS * 10, "only {answered} calls answered");
    assert_eq!(
        failures_after, failures_before,
        "calls failed after every service was back"
    );
    let instance = cluster.instance.clone();
    assert!(cluster.stop().success(), "sock up exits cleanly");
    assert_eq!(
        leftover_cgroups(&instance),
        Vec::<std::path::PathBuf>::new()
    );
}

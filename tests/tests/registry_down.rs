//! A registry outage through the real processes: functions already known
//! keep serving, a function the gateway never saw fails with a clear
//! error, and everything works again once the registry is back.
//!
//! `sock up --no-restart` (here `SOCK_UP_NO_RESTART`) leaves the registry
//! down when it dies and keeps the other services running; its pid comes
//! from endpoints.json. The registry is then restarted by the test itself,
//! with the same data dir and addresses, and stopped by a guard.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sock_cli::tokens::Kind;
use sock_proto::v1::invoke_response::Outcome;
use sock_testkit::cluster::{Cluster, bin_dir, have_root};
use tonic::Code;

/// With its watch gone, the gateway asks the registry again after this long
/// (the cache asks each time it is not given a version), so the outage is
/// seen by every call made after it started.
const CACHE_MS: &str = "200";
const RECOVERY: Duration = Duration::from_secs(30);

/// A process the test started, stopped (SIGTERM, then SIGKILL) on drop.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn call(cluster: &Cluster, name: &str) -> Result<Outcome, tonic::Status> {
    let answer = cluster.invoke(name, b"7", None).await?;
    Ok(answer.outcome.expect("an outcome"))
}

fn listen(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test(flavor = "multi_thread")]
async fn known_functions_survive_a_registry_outage_and_new_ones_wait_for_it() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start_with_env(&[
        ("SOCK_UP_NO_RESTART", "true"),
        ("SOCK_GATEWAY_REGISTRY_CACHE_MS", CACHE_MS),
    ]);
    for name in ["known", "unseen"] {
        cluster
            .push(name, &[("f.py", "def f(event):\n    return event\n")])
            .await
            .expect("push");
    }
    let ok = Outcome::Result(b"7".to_vec());
    assert_eq!(call(&cluster, "known").await.expect("call"), ok);

    // Registry down: only its pid, and only once it is gone.
    let pid = cluster
        .pid("registry")
        .expect("sock up records the registry's pid");
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    kill(pid, Signal::SIGKILL).expect("kill the registry");
    let killed = Instant::now();
    // sock up reaps it, then records it as down (and leaves it so).
    while cluster.pid("registry").is_some() {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "sock up does not record the registry as down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stale_after: u64 = CACHE_MS.parse().expect("number");
    tokio::time::sleep(Duration::from_millis(2 * stale_after)).await;

    for _ in 0..3 {
        assert_eq!(
            call(&cluster, "known")
                .await
                .expect("a known function keeps serving"),
            ok
        );
    }
    let refused = call(&cluster, "unseen")
        .await
        .expect_err("the gateway cannot learn about a new function");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().starts_with("registry unavailable"),
        "{refused:?}"
    );
    let kind = refused
        .metadata()
        .get("x-sock-error")
        .and_then(|v| v.to_str().ok());
    assert_eq!(kind, Some("platform"), "{refused:?}");

    // Back with the same data and addresses: new functions work again.
    let endpoints = &cluster.endpoints;
    let _registry = Started(
        Command::new(bin_dir().join("sock-registry"))
            .env("SOCK_REGISTRY_GRPC_LISTEN", listen(&endpoints.registry))
            .env(
                "SOCK_REGISTRY_HTTP_LISTEN",
                listen(&endpoints.registry_http),
            )
            .env(
                "SOCK_REGISTRY_DATA_DIR",
                cluster.data_dir().join("registry"),
            )
            .env("SOCK_REGISTRY_ADMIN_TOKEN", cluster.token(Kind::Admin))
            .env("SOCK_REGISTRY_NODE_TOKEN", cluster.token(Kind::Node))
            .stdin(Stdio::null())
            .spawn()
            .expect("restart the registry"),
    );
    let back = Instant::now();
    let outcome = loop {
        match call(&cluster, "unseen").await {
            Ok(outcome) => break outcome,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    back.elapsed() < RECOVERY,
                    "still failing {RECOVERY:?} after the registry came back: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("unexpected error while the registry restarts: {status:?}"),
        }
    };
    assert_eq!(outcome, ok);
    assert_eq!(call(&cluster, "known").await.expect("call"), ok);
}

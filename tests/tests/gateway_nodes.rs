//! Two sandbox nodes behind one gateway, with real processes: calls spread
//! by function, a node killed mid-load, and its return.
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sock_cli::tokens::Kind;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_proto::v1::{InvokeRequest, PushFunctionRequest, StatusRequest};
use sock_testkit::cluster::{Cluster, have_root, leftover_cgroups};
use sock_testkit::functions::bundle;
use sock_testkit::process::{free_addr, start, wait_for};
use tonic::Code;

/// A node on TCP answers no caller without the node token.
async fn assert_wants_the_node_token(addr: &str) {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect the node");
    let refused = SandboxdClient::new(channel)
        .status(StatusRequest {})
        .await
        .expect_err("a TCP node answers no caller without the node token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("missing or wrong node token"),
        "{refused:?}"
    );
}

/// Calls a node has served; `cluster`'s node token goes along (a TCP node
/// wants it; the unix one admits root by its credentials).
async fn calls_on(cluster: &Cluster, addr: &str) -> u64 {
    SandboxdClient::new(cluster.authed(addr, Kind::Node).await)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .calls_total
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_spread_over_two_nodes_and_survive_one_dying() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let node_token = cluster.token(Kind::Node);
    let instance = format!("{}-second", cluster.instance);
    let second_addr = format!("http://{}", free_addr());
    let second_data = tempfile::tempdir().expect("data dir");
    // A node "on another host": TCP, so it wants the node token.
    let second_env = vec![
        ("SOCK_SANDBOXD_NODE_TOKEN", node_token.clone()),
        (
            "SOCK_SANDBOXD_LISTEN",
            second_addr.trim_start_matches("http://").to_string(),
        ),
        ("SOCK_SANDBOXD_CACHE_ADDR", cluster.endpoints.cache.clone()),
        // The dirs that cache names lie below its data dir.
        (
            "SOCK_SANDBOXD_CACHE_DATA_DIR",
            cluster.data_dir().join("cache").display().to_string(),
        ),
        (
            "SOCK_SANDBOXD_DATA_DIR",
            second_data.path().display().to_string(),
        ),
        ("SOCK_SANDBOXD_INSTANCE", instance.clone()),
    ];
    let mut second = start("sock-sandboxd", &second_env);
    wait_for(&second_addr).await;
    assert_wants_the_node_token(&second_addr).await;

    let gateway_addr = format!("http://{}", free_addr());
    let _gateway = start(
        "sock-gateway",
        &[
            (
                "SOCK_GATEWAY_LISTEN",
                gateway_addr.trim_start_matches("http://").to_string(),
            ),
            ("SOCK_GATEWAY_HTTP_LISTEN", free_addr()),
            (
                "SOCK_GATEWAY_REGISTRY_ADDR",
                cluster.endpoints.registry.clone(),
            ),
            (
                "SOCK_GATEWAY_SANDBOXD_ADDRS",
                format!("[\"{}\",\"{second_addr}\"]", cluster.endpoints.sandboxd),
            ),
            ("SOCK_GATEWAY_HEALTH_INTERVAL_MS", "200".into()),
            ("SOCK_GATEWAY_NODE_TOKEN", node_token.clone()),
        ],
    );
    wait_for(&gateway_addr).await;
    let gateway = GatewayClient::new(cluster.authed(&gateway_addr, Kind::Invoke).await);

    let names: Vec<String> = (0..8).map(|i| format!("spread-{i}")).collect();
    let mut registry = cluster.registry().await;
    for name in &names {
        registry
            .push_function(PushFunctionRequest {
                name: name.clone(),
                bundle: bundle(&[(
                    "f.py",
                    "import time\ndef f(event):\n    time.sleep(event or 0)\n    return 'ok'\n",
                )]),
            })
            .await
            .expect("push");
    }
    let invoke = |name: String, sleep: &'static str| {
        let mut gateway = gateway.clone();
        async move {
            let mut request = tonic::Request::new(InvokeRequest {
                function: name,
                payload: sleep.as_bytes().to_vec(),
                timeout_ms: None,
            });
            request.set_timeout(Duration::from_secs(20));
            gateway.invoke(request).await
        }
    };
    for name in &names {
        invoke(name.clone(), "0").await.expect("call");
    }
    let first_calls = calls_on(&cluster, &cluster.endpoints.sandboxd).await;
    let second_calls = calls_on(&cluster, &second_addr).await;
    assert_eq!(first_calls + second_calls, 8);
    assert!(
        first_calls > 0 && second_calls > 0,
        "spread: {first_calls} / {second_calls}"
    );

    // Kill the second node while calls run on it.
    let mut in_flight = tokio::task::JoinSet::new();
    for name in &names {
        in_flight.spawn(invoke(name.clone(), "2"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.stop(Signal::SIGKILL);
    let results = tokio::time::timeout(Duration::from_secs(30), in_flight.join_all())
        .await
        .expect("no call hangs");
    let failed: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        !failed.is_empty(),
        "calls in flight on the killed node fail"
    );
    for status in &failed {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert!(
        results.iter().any(Result::is_ok),
        "calls on the other node finish"
    );

    // Calls not yet started move to the live node.
    for name in &names {
        invoke(name.clone(), "0")
            .await
            .expect("served by the other node");
    }

    // The node rejoins once it is back and healthy.
    let mut second = start("sock-sandboxd", &second_env);
    wait_for(&second_addr).await;
    assert_wants_the_node_token(&second_addr).await;
    let back = Instant::now();
    loop {
        for name in &names {
            invoke(name.clone(), "0").await.expect("call");
        }
        if calls_on(&cluster, &second_addr).await > 0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the node never rejoined"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.stop(Signal::SIGTERM);
    assert_eq!(
        leftover_cgroups(&instance),
        Vec::<std::path::PathBuf>::new()
    );
}

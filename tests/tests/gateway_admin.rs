//! Logs, auth and metrics through the real processes.
use std::time::{Duration, Instant};

use sock_e2e::cluster::{Cluster, have_root};
use sock_e2e::functions::bundle;
use sock_proto::v1::{InvokeRequest, LogsRequest, PushFunctionRequest};
use tonic::Code;

const INVOKE: &str = "call-secret";
const ADMIN: &str = "admin-secret";

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_logs_and_metrics() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start_with_env(&[
        ("SOCK_GATEWAY_INVOKE_TOKEN", INVOKE),
        ("SOCK_GATEWAY_ADMIN_TOKEN", ADMIN),
        ("SOCK_REGISTRY_ADMIN_TOKEN", ADMIN),
    ]);
    let push = PushFunctionRequest {
        name: "chatty".into(),
        bundle: bundle(&[(
            "f.py",
            "import sys\ndef f(event):\n    print('hello from', event)\n    print('oops', file=sys.stderr)\n    return event\n",
        )]),
    };
    let mut registry = cluster.registry().await;
    let refused = registry
        .push_function(push.clone())
        .await
        .expect_err("push needs the admin token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    registry
        .push_function(with_token(push, ADMIN))
        .await
        .expect("push with the admin token");

    let mut gateway = cluster.gateway().await;
    let call = |payload: &str| InvokeRequest {
        function: "chatty".into(),
        payload: payload.as_bytes().to_vec(),
        timeout_ms: None,
    };
    let refused = gateway.invoke(call("1")).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = gateway
        .invoke(with_token(call("1"), ADMIN))
        .await
        .expect_err("the admin token is not for calls");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let answer = gateway
        .invoke(with_token(call("42"), INVOKE))
        .await
        .expect("call")
        .into_inner();

    // The call's output, tagged with its id, from both streams.
    let started = Instant::now();
    loop {
        let mut lines = gateway
            .logs(with_token(
                LogsRequest {
                    function: "chatty".into(),
                    follow: false,
                },
                ADMIN,
            ))
            .await
            .expect("logs")
            .into_inner();
        let mut got = Vec::new();
        while let Some(line) = lines.message().await.expect("line") {
            got.push((line.call_id, line.stream, line.line));
        }
        let want = [
            (
                answer.call_id.clone(),
                "stdout".to_string(),
                "hello from 42".to_string(),
            ),
            (
                answer.call_id.clone(),
                "stderr".to_string(),
                "oops".to_string(),
            ),
        ];
        if want.iter().all(|w| got.contains(w)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "logs never showed the call's output: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = gateway
        .logs(LogsRequest {
            function: "chatty".into(),
            follow: false,
        })
        .await
        .expect_err("logs need the admin token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Metrics count the calls by outcome.
    let metrics = format!("{}/metrics", cluster.endpoints.gateway_http);
    let http = reqwest::Client::new();
    assert_eq!(http.get(&metrics).send().await.expect("GET").status(), 401);
    let text = http
        .get(&metrics)
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"sock_gateway_calls_total{function="chatty",outcome="ok"} 1"#),
        "{text}"
    );
}

//! Logs, auth and metrics through the real processes.
use std::time::{Duration, Instant};

use sock_cli::tokens::Kind;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{InvokeRequest, LogsRequest, PushFunctionRequest};
use sock_testkit::cluster::{Cluster, channel, have_root};
use sock_testkit::functions::bundle;
use tonic::Code;

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
    // `sock up` made the tokens; these clients send them only when told.
    let cluster = Cluster::start();
    let (invoke, admin) = (cluster.token(Kind::Invoke), cluster.token(Kind::Admin));
    let (invoke, admin) = (invoke.as_str(), admin.as_str());
    let push = PushFunctionRequest {
        name: "chatty".into(),
        bundle: bundle(&[(
            "f.py",
            "import sys\ndef f(event):\n    print('hello from', event)\n    print('oops', file=sys.stderr)\n    return event\n",
        )]),
    };
    let mut registry = RegistryClient::new(channel(&cluster.endpoints.registry).await);
    let refused = registry
        .push_function(push.clone())
        .await
        .expect_err("push needs the admin token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    registry
        .push_function(with_token(push, admin))
        .await
        .expect("push with the admin token");

    let mut gateway = GatewayClient::new(channel(&cluster.endpoints.gateway).await);
    let call = |payload: &str| InvokeRequest {
        function: "chatty".into(),
        payload: payload.as_bytes().to_vec(),
        timeout_ms: None,
    };
    let refused = gateway.invoke(call("1")).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = gateway
        .invoke(with_token(call("1"), admin))
        .await
        .expect_err("the admin token is not for calls");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let answer = gateway
        .invoke(with_token(call("42"), invoke))
        .await
        .expect("call")
        .into_inner();

    // The call's output, tagged with its id, from both streams.
    let started = Instant::now();
    loop {
        let lines = gateway
            .logs(with_token(
                LogsRequest {
                    function: "chatty".into(),
                    follow: false,
                },
                admin,
            ))
            .await
            .expect("logs")
            .into_inner();
        let got: Vec<_> = sock_testkit::collect(lines)
            .await
            .into_iter()
            .map(|line| (line.call_id, line.stream, line.line))
            .collect();
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
        .bearer_auth(admin)
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

//! The gateway against a real registry (in-process, on a temp dir) and a
//! fake sandboxd that records what it is asked and answers by payload.
//! sandboxd itself needs root and a real cache; the end-to-end tests cover
//! it.
use std::time::{Duration, Instant};

use sock_bundle::testing::TarBuilder;
use sock_gateway::{CALL_ID_HEADER, Config};
use sock_proto::v1::{
    ErrorKind, InvokeRequest, InvokeResponse, LogsRequest, PushFunctionRequest, TreeRequest,
    invoke_response,
};
use sock_testkit::fake_sandboxd::{FULL, FakeSandboxd, HANG, RAISE, SLOW};
use sock_testkit::gateway::Gateway;
use sock_testkit::registry::Registry;
use sock_testkit::serve::closed_endpoint;
use tonic::{Code, Request, Response, Status};

/// Pushes function `name` with `ol_yaml` (if any) and returns its version.
async fn push(registry: &Registry, name: &str, ol_yaml: Option<&str>) -> u64 {
    let mut bundle = TarBuilder::with_entry_file().file("app.py", b"app = None\n");
    if let Some(yaml) = ol_yaml {
        bundle = bundle.file("ol.yaml", yaml.as_bytes());
    }
    registry
        .client()
        .push_function(PushFunctionRequest {
            name: name.to_string(),
            bundle: bundle.bundle(),
        })
        .await
        .expect("push")
        .into_inner()
        .version
}

async fn invoke(
    gateway: &Gateway,
    function: &str,
    payload: &[u8],
) -> Result<Response<InvokeResponse>, Status> {
    send(
        gateway,
        InvokeRequest {
            function: function.to_string(),
            payload: payload.to_vec(),
            timeout_ms: None,
        },
    )
    .await
}

async fn send(
    gateway: &Gateway,
    request: impl tonic::IntoRequest<InvokeRequest>,
) -> Result<Response<InvokeResponse>, Status> {
    gateway.client().invoke(request).await
}

async fn version_of(gateway: &Gateway, function: &str) -> u64 {
    invoke(gateway, function, b"{}")
        .await
        .expect("invoke")
        .into_inner()
        .version
}

fn config(registry: &str, sandboxd: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        registry_addr: registry.to_string(),
        sandboxd_addr: sandboxd.to_string(),
        ..Config::default()
    }
}

fn result_of(response: &InvokeResponse) -> &[u8] {
    match &response.outcome {
        Some(invoke_response::Outcome::Result(result)) => result,
        other => panic!("expected a result, got {other:?}"),
    }
}

fn assert_status(
    result: Result<Response<InvokeResponse>, Status>,
    code: Code,
    message: &str,
) -> Status {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(message), "{status:?}");
    status
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn unknown_function_is_not_found_with_a_hint() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;

    let status = invoke(&gateway, "nope", b"{}")
        .await
        .expect_err("unknown function");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "function 'nope' does not exist; push it with `sock push`"
    );
    assert!(
        status.metadata().get(CALL_ID_HEADER).is_some(),
        "failed calls have an id too"
    );
    assert!(sandboxd.calls().is_empty());
}

#[tokio::test]
async fn invalid_names_and_zero_timeouts_are_invalid_arguments() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(&registry, "echo", None).await;

    assert_status(
        invoke(&gateway, "Not/A/Name", b"{}").await,
        Code::InvalidArgument,
        "invalid function name",
    );
    let zero = InvokeRequest {
        function: "echo".into(),
        payload: b"{}".to_vec(),
        timeout_ms: Some(0),
    };
    assert_status(
        send(&gateway, zero).await,
        Code::InvalidArgument,
        "timeout_ms must be greater than 0",
    );
    assert!(sandboxd.calls().is_empty());
}

#[tokio::test]
async fn invoke_passes_function_config_and_payload_through() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    let yaml = "environment:\n  GREETING: hi\nlimits:\n  memory_mb: 64\n  timeout_ms: 1500\n";
    let version = push(&registry, "hello", Some(yaml)).await;

    let response = invoke(&gateway, "hello", br#"{"name": "sock"}"#)
        .await
        .expect("invoke");
    let header = response
        .metadata()
        .get(CALL_ID_HEADER)
        .expect("call id metadata")
        .to_str()
        .expect("ascii")
        .to_string();
    let answer = response.into_inner();
    assert_eq!(result_of(&answer), br#"{"name": "sock"}"#);
    assert_eq!(answer.version, version);
    assert_eq!(answer.call_id, header);
    uuid::Uuid::parse_str(&answer.call_id).expect("the call id is a uuid");

    let call = sandboxd.last_call();
    let function = call.function.expect("function ref");
    assert_eq!(
        (function.name.as_str(), function.version),
        ("hello", version)
    );
    assert_eq!(call.payload, br#"{"name": "sock"}"#);
    assert_eq!(call.call_id, answer.call_id);
    let config = call.config.expect("function config");
    assert_eq!(
        config.environment.get("GREETING").map(String::as_str),
        Some("hi")
    );
    let limits = config.limits.expect("limits");
    assert_eq!(limits.memory_mb, 64);
    assert_eq!(call.timeout_ms, 1500, "the function's own timeout");

    let second = invoke(&gateway, "hello", b"{}")
        .await
        .expect("invoke")
        .into_inner();
    assert_ne!(second.call_id, answer.call_id, "every call has its own id");
}

#[tokio::test]
async fn the_budget_is_the_shortest_of_request_deadline_and_function_limit() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(Config {
        default_timeout_ms: 4321,
        ..config(&registry.endpoint(), served.endpoint())
    })
    .await;
    push(&registry, "plain", None).await;

    // sandboxd gets what is left of the budget when the call reaches it:
    // at most the budget, less what the call took on its way (well under
    // `WAY` here, even on a loaded machine).
    const WAY: u32 = 200;
    let sent = || sandboxd.last_call().timeout_ms;
    invoke(&gateway, "plain", b"{}").await.expect("invoke");
    let budget = sent();
    assert!(
        (4321 - WAY..=4321).contains(&budget),
        "the gateway's default: {budget}"
    );

    let asked = InvokeRequest {
        function: "plain".into(),
        payload: b"{}".to_vec(),
        timeout_ms: Some(250),
    };
    send(&gateway, asked).await.expect("invoke");
    let budget = sent();
    assert!(
        (250 - WAY..=250).contains(&budget),
        "what the caller asked: {budget}"
    );

    let mut with_deadline = Request::new(InvokeRequest {
        function: "plain".into(),
        payload: b"{}".to_vec(),
        timeout_ms: None,
    });
    with_deadline.set_timeout(Duration::from_secs(2));
    send(&gateway, with_deadline).await.expect("invoke");
    let budget = sent();
    assert!(
        (2000 - WAY..=2000).contains(&budget),
        "bounded by the gRPC deadline: {budget}"
    );

    push(&registry, "limited", Some("limits:\n  timeout_ms: 300\n")).await;
    let asked = InvokeRequest {
        function: "limited".into(),
        payload: b"{}".to_vec(),
        timeout_ms: Some(5000),
    };
    send(&gateway, asked).await.expect("invoke");
    let budget = sent();
    assert!(
        (300 - WAY..=300).contains(&budget),
        "bounded by the function's limit: {budget}"
    );
}

#[tokio::test]
async fn a_function_that_raised_is_an_answer_not_a_failed_call() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(&registry, "divide", None).await;

    let answer = invoke(&gateway, "divide", RAISE)
        .await
        .expect("an answer")
        .into_inner();
    match answer.outcome {
        Some(invoke_response::Outcome::Error(error)) => {
            assert_eq!(error.kind(), ErrorKind::Function);
            assert_eq!(error.message, "ZeroDivisionError: division by zero");
            assert!(error.traceback.starts_with("Traceback"));
        }
        other => panic!("expected the function's error, got {other:?}"),
    }
}

#[tokio::test]
async fn sandboxd_statuses_pass_through() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(&registry, "big", None).await;

    let status = invoke(&gateway, "big", FULL)
        .await
        .expect_err("sandboxd refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "node is full: 0 MiB of memory free");
}

#[tokio::test]
async fn every_kind_sandboxd_stamps_reaches_grpc_and_http_callers_as_the_table_says() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(&registry, "stamped", None).await;

    for kind in ErrorKind::every() {
        let payload = format!("\"stamp:{}\"", kind.name());
        let status = invoke(&gateway, "stamped", payload.as_bytes())
            .await
            .expect_err(kind.name());
        assert_eq!(status.code(), kind.grpc_code(), "{kind:?}");
        assert_eq!(ErrorKind::stamped(&status), Some(kind), "{status:?}");
        assert_eq!(status.message(), format!("stamped {}", kind.name()));

        let response = reqwest::Client::new()
            .post(url(&gateway, "/run/stamped"))
            .body(payload)
            .send()
            .await
            .expect("POST");
        assert_eq!(
            response.status().as_u16(),
            kind.http_status().as_u16(),
            "{kind:?}"
        );
        assert_eq!(response.headers()[sock_gateway::ERROR_HEADER], kind.name());
        assert_eq!(json_body(response).await["error"], kind.name());
    }
}

#[tokio::test]
async fn a_sandboxd_that_does_not_answer_in_time_is_deadline_exceeded() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(&registry, "stuck", None).await;

    let request = InvokeRequest {
        function: "stuck".into(),
        payload: HANG.to_vec(),
        timeout_ms: Some(100),
    };
    let status = send(&gateway, request).await.expect_err("no answer");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.message(),
        "function 'stuck' did not answer within its budget of 100 ms"
    );
}

#[tokio::test]
async fn sandboxd_down_is_unavailable_with_the_reason() {
    let registry = Registry::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), &closed_endpoint().await)).await;
    push(&registry, "lonely", None).await;

    let status = assert_status(
        invoke(&gateway, "lonely", b"{}").await,
        Code::Unavailable,
        "",
    );
    assert!(
        status.message().starts_with("no sandbox node reachable: "),
        "{status:?}"
    );
    assert!(status.message().contains("refused"), "{status:?}");
}

#[tokio::test]
async fn the_gateway_starts_without_its_peers_and_reports_serving() {
    let gateway = Gateway::start(config(&closed_endpoint().await, &closed_endpoint().await)).await;
    let channel = tonic::transport::Endpoint::from_shared(gateway.endpoint())
        .expect("endpoint")
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sock.v1.Gateway".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    assert_status(
        invoke(&gateway, "anything", b"{}").await,
        Code::Unavailable,
        "registry unavailable: ",
    );
}

#[tokio::test]
async fn a_push_made_at_the_registry_is_served_at_once_and_an_outage_keeps_the_last_version() {
    let mut registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    // Cached for an hour: only the registry's announcement can bring the
    // new version in time.
    let gateway = Gateway::start(Config {
        registry_cache_ms: 3_600_000,
        ..config(&registry.endpoint(), served.endpoint())
    })
    .await;

    assert_eq!(push(&registry, "counter", None).await, 1);
    assert_eq!(version_of(&gateway, "counter").await, 1);
    // Pushed past this gateway, as another gateway or `sock push` to the
    // registry would.
    assert_eq!(push(&registry, "counter", None).await, 2);
    let announced = Instant::now();
    while version_of(&gateway, "counter").await != 2 {
        assert!(
            announced.elapsed() < Duration::from_secs(10),
            "version 2 was not served within 10 s of its push"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    registry.stop().await;
    assert_eq!(
        version_of(&gateway, "counter").await,
        2,
        "the last known version while the registry is down"
    );
    assert_status(
        invoke(&gateway, "never-seen", b"{}").await,
        Code::Unavailable,
        "registry unavailable: ",
    );
}

#[tokio::test]
async fn a_version_gone_from_the_node_is_resolved_again_once_and_the_call_runs() {
    let registry = std::sync::Arc::new(Registry::start().await);
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(Config {
        registry_cache_ms: 3_600_000,
        ..config(&registry.endpoint(), served.endpoint())
    })
    .await;
    assert_eq!(push(&registry, "moving", None).await, 1);
    assert_eq!(version_of(&gateway, "moving").await, 1);

    // Two pushes land while the next call of version 1 is on its way:
    // version 1 is gone from the node, which answers not found without
    // running anything.
    let (pushes, node) = (registry.clone(), sandboxd.clone());
    *sandboxd.meanwhile.lock().await = Some(Box::pin(async move {
        push(&pushes, "moving", None).await;
        assert_eq!(push(&pushes, "moving", None).await, 3);
        node.oldest_kept
            .store(2, std::sync::atomic::Ordering::SeqCst);
    }));
    let answer = invoke(&gateway, "moving", b"{\"n\": 1}")
        .await
        .expect("served after a second look-up")
        .into_inner();
    assert_eq!(answer.version, 3);
    let versions: Vec<u64> = sandboxd
        .calls()
        .iter()
        .map(|c| c.function.as_ref().map_or(0, |f| f.version))
        .collect();
    assert_eq!(
        versions,
        [1, 1, 3],
        "one try of the stale version, then the current one"
    );
    assert_eq!(sandboxd.last_call().payload, b"{\"n\": 1}");

    // Not found again after looking up again (the node lags the registry):
    // the caller gets the node's answer, with no third try.
    sandboxd
        .oldest_kept
        .store(10, std::sync::atomic::Ordering::SeqCst);
    assert_status(
        invoke(&gateway, "moving", b"{}").await,
        Code::NotFound,
        "function version 3 is not available",
    );
    assert_eq!(sandboxd.calls().len(), 5);
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let mut gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(&registry, "slow", None).await;

    let arrived = sandboxd.arrived.notified();
    let call = tokio::spawn({
        let mut client = gateway.client();
        async move {
            client
                .invoke(InvokeRequest {
                    function: "slow".into(),
                    payload: SLOW.to_vec(),
                    timeout_ms: None,
                })
                .await
        }
    });
    arrived.await;

    // `stop` shuts the gateway down and fails unless `run` ends cleanly.
    let stopped = tokio::time::timeout(Duration::from_secs(30), gateway.stop());
    let (answer, stopped) = tokio::join!(call, stopped);
    let answer = answer
        .expect("call task")
        .expect("the call in flight completes");
    assert_eq!(result_of(answer.get_ref()), SLOW);
    stopped.expect("run returns after shutdown");
}

// -------------------------------------------------------------------- HTTP

fn url(gateway: &Gateway, path: &str) -> String {
    format!("{}{path}", gateway.http_url())
}

async fn json_body(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body")
}

#[tokio::test]
async fn http_runs_f_event_with_the_body_as_event_and_json_as_answer() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(&registry, "plain", None).await;

    let response = reqwest::Client::new()
        .post(url(&gateway, "/run/plain"))
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let call_id = response.headers()[CALL_ID_HEADER]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(response.bytes().await.expect("body"), &br#"{"n": 1}"#[..]);
    let call = sandboxd.last_call();
    assert_eq!(call.call_id, call_id);
    assert!(
        call.http.is_some(),
        "an HTTP call goes as one: only the runtime knows whether f or an app answers"
    );

    let raised = reqwest::Client::new()
        .post(url(&gateway, "/run/plain"))
        .body(RAISE)
        .send()
        .await
        .expect("POST");
    assert_eq!(raised.status(), 500);
    assert_eq!(raised.headers()[sock_gateway::ERROR_HEADER], "function");
    let body = json_body(raised).await;
    assert_eq!(body["error"], "function");
    assert_eq!(body["message"], "ZeroDivisionError: division by zero");
    assert!(
        body["traceback"]
            .as_str()
            .expect("traceback")
            .starts_with("Traceback")
    );
    assert!(body["call_id"].is_string());

    let missing = reqwest::get(url(&gateway, "/run/nope")).await.expect("GET");
    assert_eq!(missing.status(), 404);
    assert_eq!(json_body(missing).await["error"], "not_found");
}

#[tokio::test]
async fn http_passes_a_web_app_request_and_its_answer_through() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(
        &registry,
        "web",
        Some("environment:\n  OL_WSGI_ENTRY: app:app\n"),
    )
    .await;

    let response = reqwest::Client::new()
        .put(url(&gateway, "/run/web/a/b?x=1&y=2"))
        .header("x-custom", "kept")
        .body("teapot")
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 418, "the app's status stays");
    let headers = response.headers();
    assert_eq!(headers["x-method"], "PUT");
    assert_eq!(headers["x-path"], "/a/b");
    assert_eq!(headers["x-query"], "x=1&y=2");
    assert_eq!(headers["x-root"], "/run/web");
    assert_eq!(headers["x-custom"], "kept");
    assert!(headers.contains_key(CALL_ID_HEADER));
    assert_eq!(response.bytes().await.expect("body"), &b"teapot"[..]);

    let root = reqwest::get(url(&gateway, "/run/web")).await.expect("GET");
    assert_eq!(root.headers()["x-path"], "/");

    let status = assert_status(
        invoke(&gateway, "web", b"{}").await,
        Code::InvalidArgument,
        "call it over HTTP",
    );
    assert_eq!(
        status
            .metadata()
            .get(sock_gateway::ERROR_HEADER)
            .map(|v| v.as_bytes()),
        Some(&b"invalid_request"[..])
    );
}

#[tokio::test]
async fn methods_outside_triggers_get_405_with_allow() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    push(
        &registry,
        "getter",
        Some("triggers:\n  http:\n    - method: GET\n    - method: POST\n"),
    )
    .await;

    let response = reqwest::Client::new()
        .delete(url(&gateway, "/run/getter"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    assert_eq!(
        response.headers()[sock_gateway::ERROR_HEADER],
        "method_not_allowed"
    );
    assert!(sandboxd.calls().is_empty(), "refused before any node");
    let ok = reqwest::get(url(&gateway, "/run/getter"))
        .await
        .expect("GET");
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn payloads_over_the_limit_are_413_and_resource_exhausted() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(Config {
        max_payload_bytes: 1024,
        ..config(&registry.endpoint(), served.endpoint())
    })
    .await;
    push(&registry, "plain", None).await;
    let big = format!("\"{}\"", "x".repeat(2000));

    let response = reqwest::Client::new()
        .post(url(&gateway, "/run/plain"))
        .body(big.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    let body = json_body(response).await;
    assert_eq!(body["error"], "payload_too_large");
    assert_eq!(
        body["message"],
        "payload of 2002 bytes is over the limit of 1024 bytes"
    );

    let status = assert_status(
        invoke(&gateway, "plain", big.as_bytes()).await,
        Code::ResourceExhausted,
        "over the limit of 1024 bytes",
    );
    assert_eq!(
        status
            .metadata()
            .get(sock_gateway::ERROR_HEADER)
            .map(|v| v.as_bytes()),
        Some(&b"payload_too_large"[..])
    );
    // Far over (past the envelope of sock_service::limits): tonic refuses
    // it before it is buffered, with the same kind.
    let huge = vec![b'x'; 2 << 20];
    let status = assert_status(
        invoke(&gateway, "plain", &huge).await,
        Code::ResourceExhausted,
        "over the limit",
    );
    assert_eq!(
        status
            .metadata()
            .get(sock_gateway::ERROR_HEADER)
            .map(|v| v.as_bytes()),
        Some(&b"payload_too_large"[..])
    );
    assert!(sandboxd.calls().is_empty());
}

#[tokio::test]
async fn calls_over_the_limits_are_refused_with_retry_after() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(Config {
        max_concurrency: 2,
        max_concurrency_per_function: 1,
        max_queue: 1,
        ..config(&registry.endpoint(), served.endpoint())
    })
    .await;
    push(&registry, "slow", None).await;
    // One runs, one waits, the rest are refused at once.
    let calls = (0..6).map(|_| invoke(&gateway, "slow", SLOW));
    let results = futures::future::join_all(calls).await;
    let answered = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(answered, 2, "{results:?}");
    assert_eq!(refused.len(), 4);
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get(sock_gateway::ERROR_HEADER)
                .map(|v| v.as_bytes()),
            Some(&b"overloaded"[..])
        );
        assert_eq!(
            status.metadata().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
    // Over HTTP the same is a 429 with Retry-After.
    let client = reqwest::Client::new();
    let calls = (0..4).map(|_| client.post(url(&gateway, "/run/slow")).body(SLOW).send());
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| {
            let r = r.expect("POST");
            if r.status() == 429 {
                assert_eq!(r.headers()["retry-after"], "1");
            }
            r.status().as_u16()
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn logs_are_gathered_from_the_nodes_in_time_order() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(config(&registry.endpoint(), served.endpoint())).await;
    let lines = gateway
        .client()
        .logs(LogsRequest {
            function: "plain".into(),
            follow: false,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut got = Vec::new();
    for line in sock_testkit::collect(lines).await {
        assert_eq!(line.node, served.endpoint(), "each line names its node");
        got.push(line.call_id);
    }
    assert_eq!(got, ["c1", "c2"]);
}

#[tokio::test]
async fn tree_gathers_every_node_that_answers_in_node_order() {
    let registry = Registry::start().await;
    let (_, first_served) = FakeSandboxd::start().await;
    let (_, second_served) = FakeSandboxd::start().await;
    let (first, second) = (first_served.endpoint(), second_served.endpoint());
    let dead = closed_endpoint().await;
    let gateway = Gateway::start(Config {
        sandboxd_addrs: vec![first.into(), dead.clone(), second.into()],
        health_interval_ms: 3_600_000,
        ..config(&registry.endpoint(), "http://unused")
    })
    .await;
    let trees = gateway
        .client()
        .tree(TreeRequest { rebuild: true })
        .await
        .expect("tree")
        .into_inner()
        .nodes;
    let got: Vec<_> = trees
        .iter()
        .map(|t| (t.node.as_str(), t.source.as_str(), t.nodes.len()))
        .collect();
    assert_eq!(
        got,
        [(first, "rebuilt", 2), (second, "rebuilt", 2)],
        "the dead node is left out, and rebuild reached the others"
    );

    let nobody = Gateway::start(Config {
        sandboxd_addrs: vec![dead],
        health_interval_ms: 3_600_000,
        ..config(&registry.endpoint(), "http://unused")
    })
    .await;
    let status = nobody
        .client()
        .tree(TreeRequest { rebuild: false })
        .await
        .expect_err("no node answers");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no sandbox node reachable"),
        "{status:?}"
    );
}

#[tokio::test]
async fn tree_needs_the_admin_token() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(Config {
        invoke_token: Some("call-token".into()),
        admin_token: Some("admin-token".into()),
        ..config(&registry.endpoint(), served.endpoint())
    })
    .await;
    let with = |token: Option<&str>| {
        let mut request = Request::new(TreeRequest { rebuild: false });
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        let mut client = gateway.client();
        async move { client.tree(request).await }
    };
    for token in [None, Some("call-token")] {
        let status = with(token).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
    }
    let trees = with(Some("admin-token"))
        .await
        .expect("the admin token passes");
    assert_eq!(trees.into_inner().nodes.len(), 1);
}

#[tokio::test]
async fn tokens_guard_calls_and_the_admin_surface() {
    let registry = Registry::start().await;
    let (_, served) = FakeSandboxd::start().await;
    let gateway = Gateway::start(Config {
        invoke_token: Some("call-token".into()),
        admin_token: Some("admin-token".into()),
        ..config(&registry.endpoint(), served.endpoint())
    })
    .await;
    push(&registry, "plain", None).await;

    let status = assert_status(
        invoke(&gateway, "plain", b"{}").await,
        Code::Unauthenticated,
        "missing or wrong invoke token",
    );
    assert_eq!(
        status
            .metadata()
            .get(sock_gateway::ERROR_HEADER)
            .map(|v| v.as_bytes()),
        Some(&b"unauthenticated"[..])
    );
    let mut request = Request::new(InvokeRequest {
        function: "plain".into(),
        payload: b"{}".to_vec(),
        timeout_ms: None,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer call-token".parse().expect("ascii"));
    send(&gateway, request)
        .await
        .expect("the right token passes");

    let http = reqwest::Client::new();
    let refused = http
        .post(url(&gateway, "/run/plain"))
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 401);
    assert_eq!(json_body(refused).await["error"], "unauthenticated");
    let wrong = http
        .post(url(&gateway, "/run/plain"))
        .bearer_auth("admin-token")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(
        wrong.status(),
        401,
        "the admin token is not the invoke token"
    );
    let ok = http
        .post(url(&gateway, "/run/plain"))
        .bearer_auth("call-token")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(ok.status(), 200);

    let metrics = http
        .get(url(&gateway, "/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(metrics.status(), 401);
    let metrics = http
        .get(url(&gateway, "/metrics"))
        .bearer_auth("admin-token")
        .send()
        .await
        .expect("GET");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains(r#"sock_gateway_calls_total{function="plain",outcome="ok"} 2"#),
        "{text}"
    );
    assert!(text.contains("sock_gateway_queue_depth 0"), "{text}");
}

#[tokio::test]
async fn calls_that_cannot_reach_a_node_move_to_the_next_one() {
    let registry = Registry::start().await;
    let (sandboxd, served) = FakeSandboxd::start().await;
    let dead = closed_endpoint().await;
    let gateway = Gateway::start(Config {
        sandboxd_addrs: vec![dead, served.endpoint().into()],
        // No health check during the test: the failed calls alone steer.
        health_interval_ms: 3_600_000,
        ..config(&registry.endpoint(), "http://unused")
    })
    .await;
    // Enough functions that some hash to the dead node first.
    for i in 0..8 {
        let name = format!("fn-{i}");
        push(&registry, &name, None).await;
        let answer = invoke(&gateway, &name, b"{}")
            .await
            .expect("served by the live node");
        assert_eq!(result_of(answer.get_ref()), b"{}");
    }
    assert_eq!(
        sandboxd.calls().len(),
        8,
        "every call ran once, on the live node"
    );
}

//! The gateway's HTTP API against real processes: f(event) functions, WSGI
//! and ASGI apps, triggers, environment, code updates, overload.
use std::time::{Duration, Instant};

use sock_cli::tokens::Kind;
use sock_proto::v1::InvokeRequest;
use sock_testkit::cluster::{Cluster, have_root};
use tonic::Code;

const CACHE_MS: u64 = 1000;

async fn push(cluster: &Cluster, name: &str, files: &[(&str, &str)]) -> u64 {
    cluster.push(name, files).await.expect("push")
}

/// An HTTP client that sends the cluster's invoke token.
fn http(cluster: &Cluster) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let token = format!("Bearer {}", cluster.token(Kind::Invoke));
    headers.insert(
        reqwest::header::AUTHORIZATION,
        token.parse().expect("tokens are ASCII"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("http client")
}

fn url(cluster: &Cluster, path: &str) -> String {
    format!("{}{path}", cluster.endpoints.gateway_http)
}

const WSGI_APP: &str = r#"
import os

def app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("418 I'm a teapot", [
        ("X-Tea", os.environ.get("TEA", "none")),
        ("X-Path", environ["PATH_INFO"]),
        ("X-Query", environ["QUERY_STRING"]),
        ("X-Header", environ.get("HTTP_X_CUSTOM", "")),
        ("Content-Type", "text/plain"),
    ])
    return [b"short and ", body]
"#;

const ASGI_APP: &str = r#"
async def app(scope, receive, send):
    message = await receive()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"x-method", scope["method"].encode())]})
    await send({"type": "http.response.body", "body": b"asgi got " + message["body"]})
"#;

#[tokio::test(flavor = "multi_thread")]
async fn http_serves_functions_and_web_apps() {
    if !have_root() {
        return;
    }
    let cluster =
        Cluster::start_with_env(&[("SOCK_GATEWAY_REGISTRY_CACHE_MS", &CACHE_MS.to_string())]);
    let http = http(&cluster);

    // f(event): JSON in, JSON out, environment from ol.yaml.
    push(
        &cluster,
        "greet",
        &[
            (
                "f.py",
                "import os\ndef f(event):\n    return {'greeting': os.environ['GREETING'], 'event': event}\n",
            ),
            (
                "ol.yaml",
                "environment:\n  GREETING: hello\ntriggers:\n  http:\n    - method: POST\n",
            ),
        ],
    )
    .await;
    let response = http
        .post(url(&cluster, "/run/greet"))
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("x-sock-call-id"));
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({"greeting": "hello", "event": {"n": 1}})
    );

    // Methods not in triggers.http: 405 with Allow.
    let response = http
        .get(url(&cluster, "/run/greet"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(response.headers()["x-sock-error"], "method_not_allowed");
    // OpenLambda's text, which its test scripts compare whole.
    assert_eq!(
        response.text().await.expect("405 body"),
        "HTTP method not allowed. Sent: GET, Allowed: [POST]\n"
    );

    // A payload that is not JSON is the caller's mistake.
    let response = http
        .post(url(&cluster, "/run/greet"))
        .body("{nope")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-sock-error"], "invalid_request");

    // A WSGI app: status, headers and body pass through unchanged.
    push(
        &cluster,
        "teapot",
        &[
            ("web.py", WSGI_APP),
            (
                "ol.yaml",
                "environment:\n  OL_WSGI_ENTRY: web:app\n  TEA: earl grey\n",
            ),
        ],
    )
    .await;
    let response = http
        .put(url(&cluster, "/run/teapot/pot/1?milk=no"))
        .header("x-custom", "yes")
        .body("stout")
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), 418);
    let headers = response.headers();
    assert_eq!(headers["x-tea"], "earl grey");
    assert_eq!(headers["x-path"], "/pot/1");
    assert_eq!(headers["x-query"], "milk=no");
    assert_eq!(headers["x-header"], "yes");
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(response.text().await.expect("body"), "short and stout");

    // An ASGI app runs under asyncio.
    push(
        &cluster,
        "fast",
        &[
            ("api.py", ASGI_APP),
            ("ol.yaml", "environment:\n  OL_WSGI_ENTRY: api:app\n"),
        ],
    )
    .await;
    let response = http
        .post(url(&cluster, "/run/fast/items"))
        .body("tea")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-method"], "POST");
    assert_eq!(response.text().await.expect("body"), "asgi got tea");

    // A function that raises: 500, kind "function", traceback in the body.
    push(
        &cluster,
        "broken",
        &[("f.py", "def f(event):\n    return 1 / 0\n")],
    )
    .await;
    let response = http
        .post(url(&cluster, "/run/broken"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-sock-error"], "function");
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
    assert_eq!(body["message"], "ZeroDivisionError: division by zero");
    assert!(
        body["traceback"]
            .as_str()
            .expect("traceback")
            .contains("f.py")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_update_is_served_within_the_cache_time_plus_a_second() {
    if !have_root() {
        return;
    }
    let cluster =
        Cluster::start_with_env(&[("SOCK_GATEWAY_REGISTRY_CACHE_MS", &CACHE_MS.to_string())]);
    let http = http(&cluster);
    let version = |v: &str| format!("def f(event):\n    return '{v}'\n");
    push(&cluster, "counter", &[("f.py", &version("one"))]).await;
    let call = || async {
        http.post(url(&cluster, "/run/counter"))
            .send()
            .await
            .expect("POST")
            .text()
            .await
            .expect("body")
    };
    for _ in 0..3 {
        assert_eq!(
            call().await,
            "\"one\"",
            "the pushed version, until it changes"
        );
    }
    push(&cluster, "counter", &[("f.py", &version("two"))]).await;
    let pushed = Instant::now();
    loop {
        if call().await == "\"two\"" {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_millis(CACHE_MS + 1000),
            "the update was not served within registry_cache_ms + 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From then on only the new version answers.
    for _ in 0..3 {
        assert_eq!(call().await, "\"two\"");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_the_limits_is_refused_in_part_and_answered_for_the_rest() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start_with_env(&[
        ("SOCK_GATEWAY_MAX_CONCURRENCY", "4"),
        ("SOCK_GATEWAY_MAX_CONCURRENCY_PER_FUNCTION", "2"),
        ("SOCK_GATEWAY_MAX_QUEUE", "4"),
    ]);
    push(
        &cluster,
        "nap",
        &[(
            "f.py",
            "import time\ndef f(event):\n    time.sleep(0.3)\n    return event\n",
        )],
    )
    .await;
    let gateway = cluster.gateway().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let mut gateway = gateway.clone();
        calls.spawn(async move {
            let mut request = tonic::Request::new(InvokeRequest {
                function: "nap".into(),
                payload: i.to_string().into_bytes(),
                timeout_ms: None,
            });
            request.set_timeout(Duration::from_secs(20));
            (i, gateway.invoke(request).await)
        });
    }
    let results = tokio::time::timeout(Duration::from_secs(60), calls.join_all())
        .await
        .expect("no call hangs past its deadline");
    let mut answered = 0;
    let mut refused = 0;
    for (i, result) in results {
        match result {
            Ok(response) => {
                let response = response.into_inner();
                match response.outcome {
                    Some(sock_proto::v1::invoke_response::Outcome::Result(body)) => {
                        assert_eq!(
                            body,
                            i.to_string().into_bytes(),
                            "each call gets its own answer"
                        );
                    }
                    other => panic!("call {i}: {other:?}"),
                }
                answered += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(
                    status.metadata().get("x-sock-error").map(|v| v.as_bytes()),
                    Some(&b"overloaded"[..])
                );
                refused += 1;
            }
        }
    }
    assert_eq!(answered + refused, 40, "every call is accounted for");
    assert!(answered >= 6, "2 running and 4 queued at least: {answered}");
    assert!(refused > 0, "the excess is refused");
}

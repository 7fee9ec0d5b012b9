//! OpenLambda's HTTP API on the gateway's HTTP port, used as OpenLambda's
//! own clients and scripts use it: a tar.gz made by `tar` uploaded to
//! `POST /registry/<name>`, listed, its config read, run at `/run/<name>`,
//! deleted; `/status`; refusals. And gRPC reflection v1alpha, which
//! grpcio's reflection client and older grpcurl ask.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sock_cli::tokens::Kind;
use sock_testkit::cluster::{Cluster, channel, have_root};
use sock_testkit::functions::function_dir;

/// What an OpenLambda client does with a function dir: `tar czf`.
fn tar_gz(dir: &Path) -> Vec<u8> {
    let output = Command::new("tar")
        .arg("-czf")
        .arg("-")
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(output.status.success(), "tar failed: {output:?}");
    output.stdout
}

/// `bytes` compressed by `gzip`.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    child
        .stdin
        .take()
        .expect("gzip's stdin")
        .write_all(bytes)
        .expect("feed gzip");
    let output = child.wait_with_output().expect("gzip");
    assert!(output.status.success(), "gzip failed");
    output.stdout
}

/// An OpenLambda function: f(event), POST only (as OpenLambda's boss test
/// writes it), answering with `tag`.
fn function(tag: &str) -> Vec<u8> {
    let dir = function_dir(&[
        (
            "f.py",
            &format!("def f(event):\n    return {{'tag': '{tag}', 'event': event}}\n"),
        ),
        ("ol.yaml", "triggers:\n  http:\n    - method: \"POST\"\n"),
    ]);
    tar_gz(dir.path())
}

/// A function whose bundle is about `size` bytes: a file gzip cannot
/// shrink.
fn big_function(size: usize) -> Vec<u8> {
    let dir = function_dir(&[("f.py", "def f(event):\n    return event\n")]);
    // xorshift: bytes without a pattern gzip could use.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(dir.path().join("data.bin"), noise).expect("write data.bin");
    tar_gz(dir.path())
}

struct Http<'a> {
    cluster: &'a Cluster,
    client: reqwest::Client,
}

impl Http<'_> {
    fn new(cluster: &Cluster) -> Http<'_> {
        Http {
            cluster,
            client: reqwest::Client::new(),
        }
    }

    /// A request to the gateway's HTTP port with the cluster's `token`.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<Kind>,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.cluster.endpoints.gateway_http);
        let request = self.client.request(method, url);
        match token {
            Some(kind) => request.bearer_auth(self.cluster.token(kind)),
            None => request,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<Kind>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, String) {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/gzip")
                .body(body);
        }
        let response = request.send().await.expect("gateway answers");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    async fn upload(&self, name: &str, bundle: Vec<u8>) -> reqwest::Response {
        self.request(
            reqwest::Method::POST,
            &format!("/registry/{name}"),
            Some(Kind::Admin),
        )
        .header("content-type", "application/gzip")
        .body(bundle)
        .send()
        .await
        .expect("gateway answers")
    }

    async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        self.send(reqwest::Method::GET, path, Some(Kind::Admin), None)
            .await
    }

    async fn run(&self, name: &str, event: &Value) -> (StatusCode, String) {
        let body = serde_json::to_vec(event).expect("JSON");
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/run/{name}"),
                Some(Kind::Invoke),
            )
            .body(body)
            .send()
            .await
            .expect("gateway answers");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }
}

/// An error body of the gateway: its kind and message.
fn error_of(body: &str) -> (String, String) {
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON error: {body}"));
    (
        body["error"].as_str().unwrap_or_default().to_string(),
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn names(body: &str) -> Vec<String> {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("a JSON list of names: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openlambda_client_uploads_lists_reads_runs_and_deletes_a_function() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let http = Http::new(&cluster);

    let response = http.upload("echo", function("one")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()[sock_gateway::VERSION_HEADER], "1");
    assert_eq!(
        response.text().await.expect("body"),
        "Lambda echo uploaded successfully"
    );

    // A bundle of a few MiB passes every layer on the way (HTTP body,
    // gRPC message) under the default limit of 32 MiB.
    let response = http.upload("big", big_function(3 << 20)).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{response:?}");
    let response = http
        .send(
            reqwest::Method::DELETE,
            "/registry/big",
            Some(Kind::Admin),
            None,
        )
        .await;
    assert_eq!(response.0, StatusCode::OK, "{response:?}");

    let (status, body) = http.admin_get("/registry").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&body), ["echo"]);
    // Go's ServeMux answers OpenLambda's clients at both spellings.
    let (_, body) = http.admin_get("/registry/").await;
    assert_eq!(names(&body), ["echo"]);

    // What OpenLambda's own boss test expects of this ol.yaml.
    let (status, body) = http.admin_get("/registry/echo/config").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON config"),
        json!({
            "Triggers": {"HTTP": [{"Method": "POST"}], "Cron": null, "Kafka": null},
            "Environment": {},
            "ReuseSandbox": true,
        })
    );

    let (status, body) = http.run("echo", &json!({"hi": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON answer"),
        json!({"tag": "one", "event": {"hi": 1}})
    );
    let (status, _) = http
        .send(reqwest::Method::GET, "/run/echo", Some(Kind::Invoke), None)
        .await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "POST is its only trigger"
    );

    // An upload is a new version, run from the next call on (the
    // gateway's cached version is dropped, not waited out).
    let response = http.upload("echo", function("two")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()[sock_gateway::VERSION_HEADER], "2");
    let (status, body) = http.run("echo", &json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON answer")["tag"],
        "two"
    );

    let (status, body) = http
        .send(
            reqwest::Method::DELETE,
            "/registry/echo",
            Some(Kind::Admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Lambda echo deleted successfully");
    let (status, body) = http.run("echo", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_of(&body).0, "not_found");
    let (_, body) = http.admin_get("/registry").await;
    assert!(names(&body).is_empty(), "{body}");
    let (status, body) = http.admin_get("/registry/echo/config").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = http
        .send(
            reqwest::Method::DELETE,
            "/registry/echo",
            Some(Kind::Admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        error_of(&body).1.contains("function 'echo' does not exist"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_routes_want_the_admin_token_and_refuse_bad_input_clearly() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start_with_env(&[("SOCK_GATEWAY_MAX_BUNDLE_MB", "1")]);
    let http = Http::new(&cluster);
    use reqwest::Method;

    // /status is a probe, as OpenLambda's worker's: no token. Its clients
    // poll it until the worker is ready (sandboxd's first health check may
    // come before sandboxd serves).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http.send(Method::GET, "/status", None, None).await;
        if status == StatusCode::OK {
            assert_eq!(body, "ready\n");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "not ready after 30 s: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let routes = [
        (Method::GET, "/registry"),
        (Method::GET, "/registry/"),
        (Method::POST, "/registry/echo"),
        (Method::DELETE, "/registry/echo"),
        (Method::GET, "/registry/echo/config"),
    ];
    for (method, path) in routes {
        for token in [None, Some(Kind::Invoke)] {
            let body = (method == Method::POST).then(|| function("one"));
            let (status, answer) = http.send(method.clone(), path, token, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}: {answer}"
            );
            assert_eq!(error_of(&answer).0, "unauthenticated");
        }
    }

    let bad_bundles: [(&str, Vec<u8>, &str); 3] = [
        (
            "not gzip",
            b"def f(event): return event\n".to_vec(),
            "bundle is not a gzip-compressed tar archive",
        ),
        (
            "gzip of no tar",
            gzip(b"def f(event): return event\n"),
            "bundle is gzip-compressed but does not hold a tar archive",
        ),
        (
            "no entry file",
            tar_gz(function_dir(&[("main.py", "x = 1\n")]).path()),
            "bundle has no entry file 'f.py'",
        ),
    ];
    for (what, bundle, message) in bad_bundles {
        let response = http.upload("echo", bundle).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        let (kind, answer) = error_of(&response.text().await.expect("body"));
        assert_eq!(kind, "invalid_request", "{what}");
        assert!(answer.starts_with(message), "{what}: {answer}");
    }

    let response = http.upload("bad.name", function("one")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (_, answer) = error_of(&response.text().await.expect("body"));
    assert!(
        answer.starts_with("invalid function name 'bad.name'"),
        "{answer}"
    );

    let response = http.upload("echo", vec![0; (1 << 20) + 1]).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (kind, answer) = error_of(&response.text().await.expect("body"));
    assert_eq!(kind, "payload_too_large");
    assert!(
        answer.contains("over the limit of 1048576 bytes"),
        "{answer}"
    );

    for (method, path) in [
        (Method::GET, "/registry/nope/config"),
        (Method::DELETE, "/registry/nope"),
    ] {
        let (status, answer) = http.send(method, path, Some(Kind::Admin), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {answer}");
        assert_eq!(error_of(&answer).0, "not_found");
    }
    let (status, _) = http
        .send(Method::PUT, "/registry/echo", Some(Kind::Admin), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing refused was stored.
    let (_, body) = http.admin_get("/registry").await;
    assert!(names(&body).is_empty(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1alpha_lists_the_gateways_services() {
    if !have_root() {
        return;
    }
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};

    let cluster = Cluster::start();
    // No token: reflection is open, as health is.
    let mut client = ServerReflectionClient::new(channel(&cluster.endpoints.gateway).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let answer: ServerReflectionResponse = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("v1alpha reflection is served")
        .into_inner()
        .message()
        .await
        .expect("an answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "sock.v1.Gateway",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == service),
            "{service} in {services:?}"
        );
    }
}

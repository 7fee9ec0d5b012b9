//! OpenLambda's function directories run unchanged: entry discovery as its
//! Python runtime does it (f, else an `app`, WSGI or ASGI; OL_ENTRY_FILE,
//! OL_WSGI_ENTRY naming an attribute), the WSGI environ it builds for
//! `/run/<name>/<path>`, names of both cases, and `reuse-sandbox: false`.
//! The functions are our own, written to behave like OpenLambda's examples.
use std::time::Duration;

use sock_cli::tokens::Kind;
use sock_proto::v1::invoke_response::Outcome;
use sock_proto::v1::{ErrorKind, StatusRequest, StatusResponse};
use sock_testkit::cluster::{Cluster, have_root};
use sock_testkit::wheels::readable_pypi_wheels;
use tonic::Code;

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

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("JSON")
}

async fn push(cluster: &Cluster, name: &str, files: &[(&str, &str)]) {
    cluster
        .push(name, files)
        .await
        .unwrap_or_else(|e| panic!("push {name}: {e}"));
}

/// A plain WSGI app named `app`, shaped like OpenLambda's flask-test: `/`
/// is a teapot with a custom header, any other path a 404 naming the
/// request's base URL and URL root as Flask computes them; POST echoes.
const WSGI_APP: &str = r#"
def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["wsgi.input"].read()]
    if environ["PATH_INFO"] == "/":
        start_response("418 I'm a teapot", [("A", "B")])
        return [b"hi\n"]
    host = environ["wsgi.url_scheme"] + "://" + environ["HTTP_HOST"]
    base_url = host + environ["SCRIPT_NAME"] + environ["PATH_INFO"]
    url_root = host + environ["SCRIPT_NAME"] + "/"
    start_response("404 Not Found", [])
    return [f"{base_url}, {url_root}\n".encode()]
"#;

const ASGI_APP: &str = r#"
class App:
    async def __call__(self, scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"x-root", scope["root_path"].encode()),
                                (b"x-path", scope["path"].encode())]})
        await send({"type": "http.response.body", "body": b"asgi got " + message["body"]})

app = App()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn openlambda_function_dirs_are_discovered_and_served_as_openlambda_serves_them() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let http = http(&cluster);

    // A WSGI `app` with no ol.yaml.
    push(&cluster, "wsgi-app", &[("f.py", WSGI_APP)]).await;
    let teapot = http
        .get(url(&cluster, "/run/wsgi-app"))
        .send()
        .await
        .expect("GET");
    assert_eq!(teapot.status(), 418);
    assert_eq!(teapot.headers()["a"], "B");
    assert_eq!(teapot.text().await.expect("body"), "hi\n");
    let missing = http
        .get(url(&cluster, "/run/wsgi-app/missing"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.text().await.expect("body"),
        "http://root/run/wsgi-app/missing, http://root/run/wsgi-app/\n",
        "OpenLambda's worker sends each request to http://root/run/<name>/…"
    );
    // A text body is the app's, not a JSON event.
    let echoed = http
        .post(url(&cluster, "/run/wsgi-app/echo"))
        .body("just text, not JSON")
        .send()
        .await
        .expect("POST");
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.text().await.expect("body"), "just text, not JSON");

    // An ASGI `app` (its __call__ is a coroutine function), no ol.yaml.
    push(&cluster, "asgi-app", &[("f.py", ASGI_APP)]).await;
    let response = http
        .post(url(&cluster, "/run/asgi-app/items?x=1"))
        .body("tea")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-root"], "/run/asgi-app");
    assert_eq!(response.headers()["x-path"], "/items");
    assert_eq!(response.text().await.expect("body"), "asgi got tea");

    // OL_ENTRY_FILE + OL_WSGI_ENTRY naming an attribute that is not `app`.
    push(
        &cluster,
        "wsgi-entry",
        &[
            ("web.py", &WSGI_APP.replace("def app(", "def my_wsgi_app(")),
            (
                "ol.yaml",
                "environment:\n  OL_ENTRY_FILE: web.py\n  OL_WSGI_ENTRY: my_wsgi_app\n",
            ),
        ],
    )
    .await;
    let response = http
        .get(url(&cluster, "/run/wsgi-entry/"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 418);
    // An app answers HTTP only.
    let answer = cluster.invoke("wsgi-entry", b"{}", None).await;
    let status = answer.expect_err("an app over gRPC is refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("call it over HTTP"), "{status:?}");

    // f(event) wins over app, as in OpenLambda.
    let both = format!("{WSGI_APP}\ndef f(event):\n    return {{'event': event}}\n");
    push(&cluster, "both", &[("f.py", &both)]).await;
    let response = http
        .post(url(&cluster, "/run/both"))
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.text().await.expect("body"),
        r#"{"event": {"n": 1}}"#
    );

    // Neither f nor app: a clear error at the first call, both doors.
    push(
        &cluster,
        "neither",
        &[("f.py", "def handler(event):\n    return 1\n")],
    )
    .await;
    let response = http
        .post(url(&cluster, "/run/neither"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-sock-error"], "cannot_start");
    let body = json(&response.bytes().await.expect("body"));
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .starts_with("f.py defines neither a function f(event) nor a WSGI/ASGI app named app"),
        "{body}"
    );
    match cluster
        .invoke("neither", b"{}", None)
        .await
        .expect("answer")
        .outcome
    {
        Some(Outcome::Error(e)) => {
            assert!(e.message.contains("defines neither"), "{e:?}");
            assert_eq!(e.kind(), ErrorKind::CannotStart, "{e:?}");
        }
        other => panic!("expected the function's error, got {other:?}"),
    }

    // Entry files that cannot be imported are refused at push.
    for (ol_yaml, message) in [
        (
            "environment:\n  OL_ENTRY_FILE: main.txt\n",
            "OL_ENTRY_FILE 'main.txt' must name a Python file ending in .py",
        ),
        (
            "environment:\n  OL_ENTRY_FILE: main.py\n",
            "bundle has no entry file 'main.py'",
        ),
        (
            "environment:\n  OL_WSGI_ENTRY: my-app\n",
            "OL_WSGI_ENTRY 'my-app' must be a Python name",
        ),
    ] {
        let refused = cluster
            .push("bad-entry", &[("f.py", WSGI_APP), ("ol.yaml", ol_yaml)])
            .await
            .expect_err(ol_yaml);
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(message), "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn names_are_case_sensitive_like_openlambdas() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let http = http(&cluster);
    for name in ["L0", "l0"] {
        let f = format!("def f(event):\n    return '{name}'\n");
        push(&cluster, name, &[("f.py", &f)]).await;
    }
    for name in ["L0", "l0"] {
        let answer = cluster.invoke(name, b"{}", None).await.expect("invoke");
        assert_eq!(
            answer.outcome,
            Some(Outcome::Result(format!("\"{name}\"").into_bytes()))
        );
        let response = http
            .post(url(&cluster, &format!("/run/{name}")))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.text().await.expect("body"), format!("\"{name}\""));
    }
    let listed: Vec<String> = cluster
        .registry()
        .await
        .list_functions(sock_proto::v1::ListFunctionsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .functions
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(
        listed.contains(&"L0".into()) && listed.contains(&"l0".into()),
        "{listed:?}"
    );
    // What could be a path or a header is still refused.
    for name in ["a.b", "a/b", "-x"] {
        let refused = cluster
            .push(name, &[("f.py", "def f(e):\n    return 1\n")])
            .await;
        assert_eq!(refused.expect_err(name).code(), Code::InvalidArgument);
    }
}

/// Counts its calls and names the module instance that served them.
const COUNTER: &str = "import os\n\
INSTANCE = os.urandom(8).hex()\n\
CALLS = 0\n\
def f(event):\n    global CALLS\n    CALLS += 1\n    return [INSTANCE, CALLS]\n";

#[tokio::test(flavor = "multi_thread")]
async fn reuse_sandbox_false_gives_every_call_a_fresh_sandbox_and_keeps_none() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    push(
        &cluster,
        "fresh",
        &[("f.py", COUNTER), ("ol.yaml", "reuse-sandbox: false\n")],
    )
    .await;
    push(&cluster, "reused", &[("f.py", COUNTER)]).await;
    let mut sandboxd = cluster.sandboxd().await;

    let first = cluster.call_json("fresh", 30_000).await.expect("call");
    let second = cluster.call_json("fresh", 30_000).await.expect("call");
    assert_eq!(first[1], 1, "a fresh sandbox has served no call before");
    assert_eq!(second[1], 1, "a fresh sandbox has served no call before");
    assert_ne!(first[0], second[0], "two calls, two sandboxes");
    // Each is torn down after its answer, off the call's path: soon, and
    // without another call.
    let mut status = StatusResponse::default();
    for _ in 0..500 {
        status = sandboxd
            .status(StatusRequest::default())
            .await
            .expect("status")
            .into_inner();
        if status.sandboxes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status.sandboxes, 0,
        "nothing kept after the calls: {status:?}"
    );

    // Without the key, the sandbox stays for the next call.
    let first = cluster.call_json("reused", 30_000).await.expect("call");
    let second = cluster.call_json("reused", 30_000).await.expect("call");
    assert_eq!((&first[0], &second[1]), (&second[0], &serde_json::json!(2)));
}

/// The Flask the PyPI test installs.
const FLASK: &str = "3.0.3";

/// A Flask app named `app`, shaped like OpenLambda's flask-test.
const FLASK_APP: &str = r#"
from flask import Flask, Response, request

def not_found(e):
    return f"{request.base_url}, {request.url_root}\n", 404

app = Flask(__name__)
app.register_error_handler(404, not_found)

@app.route("/")
def teapot():
    return Response("hi\n", status=418, headers={"A": "B"})
"#;

/// A cluster whose caches install `requirement` from wheels downloaded
/// from PyPI once; the wheel dir lives as long as the cluster needs it.
fn cluster_with_pypi(requirement: &str) -> (Cluster, tempfile::TempDir) {
    let wheels = readable_pypi_wheels(&[&[requirement]]);
    let links = wheels.path().display().to_string();
    // The first call installs the app's packages (fastapi: ten, a pip run
    // each, 3.5 s apiece on a loaded CI machine), over the default 30 s a
    // call may take; the function has no ol.yaml to ask for more.
    let cluster = Cluster::start_with_env(&[
        ("SOCK_CACHE_FIND_LINKS", &links),
        ("SOCK_GATEWAY_DEFAULT_TIMEOUT_MS", "240000"),
        ("SOCK_SANDBOXD_TIMEOUT_MS", "240000"),
    ]);
    (cluster, wheels)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pypi_flask_app_with_no_ol_yaml_answers_as_on_openlambda() {
    if !have_root() {
        return;
    }
    let (cluster, _wheels) = cluster_with_pypi(&format!("flask=={FLASK}"));
    let http = http(&cluster);
    let requirements = format!("flask=={FLASK}\n");
    push(
        &cluster,
        "flask-test",
        &[("f.py", FLASK_APP), ("requirements.txt", &requirements)],
    )
    .await;
    let teapot = http
        .get(url(&cluster, "/run/flask-test"))
        .send()
        .await
        .expect("GET");
    assert_eq!(teapot.status(), 418);
    assert_eq!(teapot.headers()["a"], "B");
    assert_eq!(teapot.text().await.expect("body"), "hi\n");
    let missing = http
        .get(url(&cluster, "/run/flask-test/missing"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.text().await.expect("body"),
        "http://root/run/flask-test/missing, http://root/run/flask-test/\n"
    );
}

/// The FastAPI the PyPI test installs.
const FASTAPI: &str = "0.115.0";

/// A FastAPI app named `app` (ASGI), like OpenLambda's fastapi-test.
const FASTAPI_APP: &str = r#"
from fastapi import FastAPI, Request

app = FastAPI()

@app.get("/items/{item}")
async def item(item: str, q: str = ""):
    return {"item": item, "q": q}

@app.post("/echo")
async def echo(request: Request):
    return {"root_path": request.scope["root_path"], "body": (await request.body()).decode()}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_pypi_fastapi_app_with_no_ol_yaml_is_served_as_asgi() {
    if !have_root() {
        return;
    }
    let (cluster, _wheels) = cluster_with_pypi(&format!("fastapi=={FASTAPI}"));
    let http = http(&cluster);
    let requirements = format!("fastapi=={FASTAPI}\n");
    push(
        &cluster,
        "fastapi-test",
        &[("f.py", FASTAPI_APP), ("requirements.txt", &requirements)],
    )
    .await;
    let item = http
        .get(url(&cluster, "/run/fastapi-test/items/tea?q=green"))
        .send()
        .await
        .expect("GET");
    assert_eq!(item.status(), 200);
    let body = json(&item.bytes().await.expect("body"));
    assert_eq!(body, serde_json::json!({"item": "tea", "q": "green"}));
    let echo = http
        .post(url(&cluster, "/run/fastapi-test/echo"))
        .body("plain text")
        .send()
        .await
        .expect("POST");
    assert_eq!(echo.status(), 200);
    let body = json(&echo.bytes().await.expect("body"));
    assert_eq!(
        body,
        serde_json::json!({"root_path": "/run/fastapi-test", "body": "plain text"})
    );
}

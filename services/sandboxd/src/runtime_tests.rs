//! The Python runtime, run unsandboxed over a socketpair and driven with
//! the real protocol code: what it answers is what sandboxd relies on.
use std::os::fd::OwnedFd;
use std::process::Stdio;

use sock_sandbox::protocol::{Header, RuntimeErrorKind, read_frame, write_frame};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

const RUNTIME_PY: &str = include_str!("../../../runtime/sock_runtime.py");

struct Runtime {
    child: Child,
    conn: UnixStream,
    _dir: tempfile::TempDir,
}

/// Starts the runtime on a code dir holding `f_py` and waits for ready.
async fn start(f_py: &str) -> Runtime {
    start_with(&[("f.py", f_py)], "f.py", &[]).await
}

/// Starts the runtime on a code dir holding `files`, with `entry_file` and
/// the environment `env`, and waits for ready.
async fn start_with(files: &[(&str, &str)], entry_file: &str, env: &[(&str, &str)]) -> Runtime {
    let dir = tempfile::tempdir().expect("tempdir");
    let code = dir.path().join("code");
    std::fs::create_dir(&code).expect("mkdir code");
    for (name, text) in files {
        std::fs::write(code.join(name), text).expect("write code");
    }
    let runtime = dir.path().join("sock_runtime.py");
    std::fs::write(&runtime, RUNTIME_PY).expect("write runtime");

    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    // The shell moves the socket from stdin to fd 3, where the runtime
    // expects it, without any pre_exec code.
    let child = Command::new("/bin/sh")
        .args([
            "-c",
            "exec \"$@\" 3<&0 0</dev/null",
            "sh",
            "/usr/bin/python3",
        ])
        .args(["-I", "-S", "-B"])
        .arg(&runtime)
        .arg(&code)
        .arg(entry_file)
        .envs(env.iter().copied())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3");
    ours.set_nonblocking(true).expect("nonblocking");
    let mut conn = UnixStream::from_std(ours).expect("tokio socket");
    let (header, _) = read_frame(&mut conn).await.expect("ready frame");
    assert_eq!(header, Header::Ready);
    Runtime {
        child,
        conn,
        _dir: dir,
    }
}

impl Runtime {
    async fn call(&mut self, payload: &[u8]) -> (Header, Vec<u8>) {
        write_frame(
            &mut self.conn,
            &Header::Invoke {
                call_id: "c1".into(),
            },
            payload,
        )
        .await
        .expect("send invoke");
        read_frame(&mut self.conn).await.expect("answer")
    }
}

fn error_of(header: Header) -> (RuntimeErrorKind, String, String) {
    match header {
        Header::Error {
            kind,
            message,
            traceback,
        } => (kind, message, traceback),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn echoes_json_and_serves_many_calls() {
    let mut rt = start("def f(event):\n    return {'got': event}\n").await;
    let (header, body) = rt.call(br#"{"n": [1, 2]}"#).await;
    assert_eq!(header, Header::Result);
    let value: serde_json::Value = serde_json::from_slice(&body).expect("json result");
    assert_eq!(value, serde_json::json!({"got": {"n": [1, 2]}}));

    let (_, body) = rt.call(b"").await;
    assert_eq!(body, br#"{"got": null}"#, "empty payload is None");
}

#[tokio::test]
async fn invalid_payload_and_result_are_reported_as_such() {
    let mut rt = start("def f(event):\n    return {1, 2} if event == 'set' else event\n").await;
    let (kind, message, _) = error_of(rt.call(b"{not json").await.0);
    assert_eq!(kind, RuntimeErrorKind::InvalidPayload);
    assert!(
        message.starts_with("payload is not valid JSON"),
        "{message}"
    );

    let (kind, message, _) = error_of(rt.call(br#""set""#).await.0);
    assert_eq!(kind, RuntimeErrorKind::InvalidResult);
    assert!(message.contains("not JSON serializable"), "{message}");
}

#[tokio::test]
async fn exceptions_carry_type_message_and_a_user_traceback() {
    let mut rt =
        start("def helper():\n    return 1 / 0\n\ndef f(event):\n    return helper()\n").await;
    let (kind, message, traceback) = error_of(rt.call(b"1").await.0);
    assert_eq!(kind, RuntimeErrorKind::Function);
    assert_eq!(message, "ZeroDivisionError: division by zero");
    assert!(traceback.contains("in helper"), "{traceback}");
    assert!(!traceback.contains("sock_runtime.py"), "{traceback}");
}

#[tokio::test]
async fn import_errors_are_reported_on_the_call() {
    let mut rt = start("import no_such_module_anywhere\n").await;
    let (kind, message, traceback) = error_of(rt.call(b"").await.0);
    assert_eq!(kind, RuntimeErrorKind::CannotStart);
    assert!(
        message.starts_with("importing f.py failed: ModuleNotFoundError"),
        "{message}"
    );
    assert!(traceback.contains("no_such_module_anywhere"), "{traceback}");
}

#[tokio::test]
async fn runtime_exits_when_sandboxd_closes_the_socket() {
    let mut rt = start("def f(event):\n    return event\n").await;
    drop(rt.conn);
    let status = rt.child.wait().await.expect("wait");
    assert!(status.success(), "{status}");
}

/// Starts the runtime on `app.py` served as `OL_WSGI_ENTRY=app:app`.
async fn start_app(app_py: &str) -> Runtime {
    start_with(
        &[("app.py", app_py)],
        "f.py",
        &[("OL_WSGI_ENTRY", "app:app")],
    )
    .await
}

impl Runtime {
    async fn http(&mut self, method: &str, path: &str, body: &[u8]) -> (Header, Vec<u8>) {
        let request = Header::Http {
            call_id: "c2".into(),
            method: method.into(),
            path: path.into(),
            query: "q=1".into(),
            headers: vec![
                ("host".into(), "127.0.0.1:7075".into()),
                ("content-type".into(), "text/plain".into()),
                ("x-custom".into(), "yes".into()),
            ],
            root_path: "/run/app".into(),
        };
        write_frame(&mut self.conn, &request, body)
            .await
            .expect("send http");
        read_frame(&mut self.conn).await.expect("answer")
    }
}

const WSGI_APP: &str = r#"
def app(environ, start_response):
    body = environ["wsgi.input"].read()
    seen = ",".join([environ["REQUEST_METHOD"], environ["SCRIPT_NAME"], environ["PATH_INFO"],
                     environ["QUERY_STRING"], environ["CONTENT_TYPE"], environ["HTTP_X_CUSTOM"]])
    start_response("418 I'm a teapot", [("X-Tea", "earl grey"), ("X-Seen", seen)])
    return [b"short and ", body]
"#;

#[tokio::test]
async fn a_wsgi_app_gets_the_request_and_its_answer_passes_unchanged() {
    let mut rt = start_app(WSGI_APP).await;
    let (header, body) = rt.http("PUT", "/a/b", b"stout").await;
    assert_eq!(
        header,
        Header::HttpResponse {
            status: 418,
            headers: vec![
                ("X-Tea".into(), "earl grey".into()),
                (
                    "X-Seen".into(),
                    "PUT,/run/app,/a/b,q=1,text/plain,yes".into()
                ),
            ],
        }
    );
    assert_eq!(body, b"short and stout");
    let (header, _) = rt.call(b"{}").await;
    let (kind, message, _) = error_of(header);
    assert_eq!(kind, RuntimeErrorKind::InvalidPayload);
    assert!(message.contains("call it over HTTP"), "{message}");
}

#[tokio::test]
async fn an_asgi_app_runs_under_asyncio() {
    let mut rt = start_app(
        r#"
async def app(scope, receive, send):
    message = await receive()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"x-path", scope["path"].encode()), (b"x-query", scope["query_string"])]})
    await send({"type": "http.response.body", "body": b"got " + message["body"]})
"#,
    )
    .await;
    let (header, body) = rt.http("POST", "/items", b"tea").await;
    assert_eq!(
        header,
        Header::HttpResponse {
            status: 201,
            headers: vec![
                ("x-path".into(), "/items".into()),
                ("x-query".into(), "q=1".into()),
            ],
        }
    );
    assert_eq!(body, b"got tea");
}

#[tokio::test]
async fn a_failing_app_is_a_function_error_with_its_traceback() {
    let mut rt = start_app("def app(environ, start_response):\n    raise KeyError('nope')\n").await;
    let (header, _) = rt.http("GET", "/", b"").await;
    let (kind, message, traceback) = error_of(header);
    assert_eq!(kind, RuntimeErrorKind::Function);
    assert_eq!(message, "KeyError: 'nope'");
    assert!(traceback.contains("app.py"), "{traceback}");
}

/// Echoes what OpenLambda's runtime puts in a WSGI environ.
const WSGI_ECHO: &str = r#"
def {name}(environ, start_response):
    seen = ",".join([environ["SCRIPT_NAME"], environ["PATH_INFO"], environ["SERVER_NAME"],
                     environ["HTTP_HOST"]])
    start_response("200 OK", [("X-Seen", seen)])
    return [environ["wsgi.input"].read()]
"#;

fn wsgi_echo(name: &str) -> String {
    WSGI_ECHO.replace("{name}", name)
}

fn seen(header: &Header) -> &str {
    match header {
        Header::HttpResponse { headers, .. } => &headers[0].1,
        other => panic!("expected an http_response, got {other:?}"),
    }
}

#[tokio::test]
async fn an_app_named_app_is_found_without_config_and_sees_openlambdas_host() {
    let mut rt = start_with(&[("f.py", &wsgi_echo("app"))], "f.py", &[]).await;
    let (header, body) = rt.http("POST", "/x", b"plain text").await;
    assert_eq!(seen(&header), "/run/app,/x,root,root");
    assert_eq!(body, b"plain text");
}

#[tokio::test]
async fn an_async_app_is_served_as_asgi() {
    let app = r#"
class App:
    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-root", scope["root_path"].encode())]})
        await send({"type": "http.response.body", "body": b"asgi"})
app = App()
"#;
    let mut rt = start_with(&[("f.py", app)], "f.py", &[]).await;
    let (header, body) = rt.http("GET", "/", b"").await;
    assert_eq!(seen(&header), "/run/app");
    assert_eq!(body, b"asgi");
}

#[tokio::test]
async fn ol_wsgi_entry_names_an_attribute_of_ol_entry_file() {
    let files = [
        ("web.py", wsgi_echo("my_wsgi_app")),
        ("f.py", "x = 1/0".into()),
    ];
    let files: Vec<_> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let mut rt = start_with(&files, "web.py", &[("OL_WSGI_ENTRY", "my_wsgi_app")]).await;
    let (header, body) = rt.http("GET", "/", b"hi").await;
    assert_eq!(seen(&header), "/run/app,/,root,root");
    assert_eq!(body, b"hi");
}

#[tokio::test]
async fn f_wins_over_app_and_answers_http_with_its_json() {
    let f_py = format!(
        "{}\ndef f(event):\n    return {{'got': event}}\n",
        wsgi_echo("app")
    );
    let mut rt = start_with(&[("f.py", &f_py)], "f.py", &[]).await;
    let (header, body) = rt.http("POST", "/", br#"{"n": 1}"#).await;
    assert_eq!(
        header,
        Header::HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
        }
    );
    assert_eq!(body, br#"{"got": {"n": 1}}"#);
    let (header, body) = rt.call(b"2").await;
    assert_eq!((header, body), (Header::Result, br#"{"got": 2}"#.to_vec()));
}

#[tokio::test]
async fn a_module_with_neither_f_nor_app_fails_every_call_saying_so() {
    let mut rt = start("def g(event):\n    return 1\n").await;
    for _ in 0..2 {
        let (header, _) = rt.call(b"{}").await;
        let (kind, message, _) = error_of(header);
        assert_eq!(kind, RuntimeErrorKind::CannotStart);
        assert!(
            message.starts_with("f.py defines neither a function f(event) nor a WSGI/ASGI app"),
            "{message}"
        );
    }
    let (header, _) = rt.http("GET", "/", b"").await;
    assert!(error_of(header).1.contains("defines neither"));
}

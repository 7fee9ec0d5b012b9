//! One function call end to end: client → gateway → sandboxd → cache →
//! registry, with real processes started the way `sock up` starts them.
use sock_proto::v1::invoke_response::Outcome;
use sock_proto::v1::{ErrorKind, GetFunctionRequest};
use sock_testkit::cluster::{Cluster, have_root, leftover_cgroups};
use sock_testkit::functions::{bundle, example};
use tonic::Code;

async fn invoke(cluster: &Cluster, name: &str, payload: &str) -> Result<Outcome, tonic::Status> {
    let response = cluster.invoke(name, payload.as_bytes(), None).await?;
    assert!(!response.call_id.is_empty(), "every call has an id");
    Ok(response.outcome.expect("an outcome"))
}

/// A cluster with the example function `name` pushed under its own name.
async fn with_example(name: &str) -> Cluster {
    let cluster = Cluster::start();
    let bundle = sock_bundle::pack(&example(name)).expect("pack example");
    cluster
        .push_bundle(name, bundle)
        .await
        .unwrap_or_else(|e| panic!("push {name}: {e}"));
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_returns_its_payload() {
    if !have_root() {
        return;
    }
    let cluster = with_example("echo").await;
    let payload = r#"{"hello":"sock","n":[1,2,3]}"#;
    match invoke(&cluster, "echo", payload)
        .await
        .expect("invoke echo")
    {
        Outcome::Result(result) => {
            let got: serde_json::Value = serde_json::from_slice(&result).expect("JSON result");
            let want: serde_json::Value = serde_json::from_str(payload).expect("JSON payload");
            assert_eq!(got, want);
        }
        Outcome::Error(e) => panic!("echo failed: {e:?}"),
    }
    let instance = cluster.instance.clone();
    assert!(cluster.stop().success(), "sock up exits cleanly on SIGTERM");
    assert_eq!(
        leftover_cgroups(&instance),
        Vec::<std::path::PathBuf>::new()
    );
}

/// Payloads and results may be up to 6 MiB (the gateway's
/// `max_payload_bytes`, sandboxd's `max_result_bytes`), past gRPC's usual
/// 4 MiB: a 5 MiB one crosses every hop whole, there and back, through
/// both of the gateway's doors.
#[tokio::test(flavor = "multi_thread")]
async fn a_five_mib_payload_comes_back_whole() {
    if !have_root() {
        return;
    }
    let cluster = with_example("echo").await;
    let want = serde_json::json!({ "data": "x".repeat(5 << 20) });
    let payload = want.to_string();
    let same = |result: &[u8]| {
        let got: serde_json::Value = serde_json::from_slice(result).expect("JSON result");
        assert!(
            got == want,
            "a result of {} bytes differs from the payload",
            result.len()
        );
    };

    match invoke(&cluster, "echo", &payload)
        .await
        .expect("invoke echo over gRPC")
    {
        Outcome::Result(result) => same(&result),
        Outcome::Error(e) => panic!("echo failed: {e:?}"),
    }

    let response = reqwest::Client::new()
        .post(format!("{}/run/echo", cluster.endpoints.gateway_http))
        .bearer_auth(cluster.token(sock_cli::tokens::Kind::Invoke))
        .body(payload)
        .send()
        .await
        .expect("POST /run/echo");
    let status = response.status();
    let body = response.bytes().await.expect("the answer's body");
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    same(&body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raising_function_returns_its_traceback() {
    if !have_root() {
        return;
    }
    let cluster = with_example("error").await;
    match invoke(&cluster, "error", "{}")
        .await
        .expect("the call itself succeeds")
    {
        Outcome::Error(e) => {
            assert_eq!(e.kind(), ErrorKind::Function);
            assert_eq!(e.message, "ZeroDivisionError: division by zero");
            assert!(
                e.traceback.contains("in divide"),
                "traceback: {}",
                e.traceback
            );
            assert!(e.traceback.contains("f.py"), "traceback: {}", e.traceback);
        }
        Outcome::Result(r) => panic!("expected an error, got {}", String::from_utf8_lossy(&r)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_function_is_not_found() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let status = invoke(&cluster, "nosuch", "{}")
        .await
        .expect_err("must fail");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status
            .message()
            .contains("function 'nosuch' does not exist"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_bundle_is_refused_and_the_previous_version_keeps_serving() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let v1 = cluster
        .push("svc", &[("f.py", "def f(e):\n    return 'v1'\n")])
        .await
        .expect("push v1");

    let not_gzip = cluster
        .push_bundle("svc", b"this is not a tarball".to_vec())
        .await
        .expect_err("garbage must be refused");
    assert_eq!(not_gzip.code(), Code::InvalidArgument);
    assert!(
        not_gzip.message().contains("gzip"),
        "{}",
        not_gzip.message()
    );

    let no_entry = cluster
        .push_bundle("svc", bundle(&[("main.py", "x = 1\n")]))
        .await
        .expect_err("a bundle without f.py must be refused");
    assert_eq!(no_entry.code(), Code::InvalidArgument);
    assert!(
        no_entry.message().contains("f.py"),
        "{}",
        no_entry.message()
    );

    let info = cluster
        .registry()
        .await
        .get_function(GetFunctionRequest { name: "svc".into() })
        .await
        .expect("still there")
        .into_inner();
    assert_eq!(info.version, v1, "refused pushes make no version");
    match invoke(&cluster, "svc", "null").await.expect("invoke") {
        Outcome::Result(r) => assert_eq!(r, b"\"v1\""),
        Outcome::Error(e) => panic!("previous version failed: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sock_command_pushes_and_invokes() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let sock = |args: &[&str]| {
        std::process::Command::new(sock_testkit::cluster::bin_dir().join("sock"))
            .arg("--data-dir")
            .arg(cluster.data_dir())
            .args(args)
            .output()
            .expect("run sock")
    };
    let hello = example("hello");
    let out = sock(&["push", hello.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pushed hello version 1"));

    let out = sock(&["invoke", "hello", r#"{"name":"tester"}"#]);
    assert!(
        out.status.success(),
        "invoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(result["greeting"], "hello, tester");

    let out = sock(&["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));

    let out = sock(&["rm", "hello"]);
    assert!(
        out.status.success(),
        "rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sock(&["ls"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("hello"),
        "rm removed it"
    );

    // A deleted function is gone at once (the gateway forgets it, and
    // every other gateway hears of it from the registry's watch), as a
    // name never pushed is.
    let out = sock(&["invoke", "hello"]);
    assert_eq!(out.status.code(), Some(2), "a deleted function is gone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("function 'hello' does not exist"));
    let out = sock(&["invoke", "nosuch"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown function is a wrong request"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("function 'nosuch' does not exist"));
}

//! The trust boundary of a `sock up` cluster, tried as an outsider would:
//! every listening socket turns away a caller without the right token (or,
//! for sandboxd's unix socket, the right uid), and only sandboxd runs as
//! root.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use sock_cli::tokens::Kind;
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{
    ClaimFiringRequest, DeleteFunctionRequest, FunctionRef, GetFunctionRequest, InvokeRequest,
    ListFunctionsRequest, PrepareRequest, PushFunctionRequest,
};
use sock_testkit::cluster::{Cluster, bin_dir, channel, have_root};
use tonic::Code;

/// A uid no account here has, standing for any other local user.
const STRANGER: u32 = 4242;

/// The real and effective uid of process `pid`.
fn uids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("a Uid line");
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(|id| id.parse().expect("uid"))
        .collect();
    (ids[0], ids[1])
}

fn assert_refused(status: &tonic::Status, what: &str, token_file: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert!(
        status.message().contains(token_file),
        "{what} should say where the token lives: {status:?}"
    );
}

/// `sock-probe` as `uid`: what sandboxd answered it.
fn probe_as(uid: u32, addr: &str) -> String {
    let output = Command::new(bin_dir().join("sock-probe"))
        .arg(addr)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run sock-probe");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn outsiders_are_turned_away_everywhere_and_only_sandboxd_is_root() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let endpoints = cluster.endpoints.clone();

    // Only sandboxd runs as root.
    for (name, pid) in &endpoints.pids {
        let (real, effective) = uids(*pid);
        if name == "sandboxd" {
            assert_eq!((real, effective), (0, 0), "sandboxd");
        } else {
            assert!(real != 0 && effective != 0, "{name} runs as root");
        }
    }
    assert_eq!(endpoints.pids.len(), 4, "{:?}", endpoints.pids);

    // The tokens are the operator's alone.
    for kind in [Kind::Admin, Kind::Invoke, Kind::Node] {
        let path = sock_cli::tokens::path(cluster.data_dir(), kind);
        let mode = std::fs::metadata(&path).expect("token file").mode();
        assert_eq!(mode & 0o077, 0, "{} is open to others", path.display());
    }

    // The registry: every admin call, the reads and the bundle store.
    cluster
        .push("secretive", &[("f.py", "def f(event):\n    return 1\n")])
        .await
        .expect("push with the admin token");
    let mut registry = RegistryClient::new(channel(&endpoints.registry).await);
    let push = registry
        .push_function(PushFunctionRequest {
            name: "evil".into(),
            bundle: Vec::new(),
        })
        .await
        .expect_err("anonymous push");
    assert_refused(&push, "push", "tokens/admin");
    let delete = registry
        .delete_function(DeleteFunctionRequest {
            name: "secretive".into(),
        })
        .await
        .expect_err("anonymous delete");
    assert_refused(&delete, "delete", "tokens/admin");
    // Listing is also the gateways' (their cron schedulers), with the
    // node token.
    let list = registry
        .list_functions(ListFunctionsRequest {})
        .await
        .expect_err("anonymous list");
    assert_refused(&list, "list", "tokens/node");
    let claim = registry
        .claim_firing(ClaimFiringRequest {
            name: "secretive".into(),
            schedule: "* * * * *".into(),
            fire_at_unix_ms: 0,
            holder: "evil".into(),
        })
        .await
        .expect_err("anonymous claim");
    assert_refused(&claim, "claim", "tokens/node");
    let get = registry
        .get_function(GetFunctionRequest {
            name: "secretive".into(),
        })
        .await
        .expect_err("anonymous get");
    assert_refused(&get, "get", "tokens/node");
    let bundle_url = format!("{}/functions/secretive", endpoints.registry_http);
    let http = reqwest::Client::new();
    let anonymous = http.get(&bundle_url).send().await.expect("GET");
    assert_eq!(anonymous.status(), 401);
    let with_invoke = http
        .get(&bundle_url)
        .bearer_auth(cluster.token(Kind::Invoke))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        with_invoke.status(),
        401,
        "the invoke token reads no bundle"
    );
    let with_node = http
        .get(&bundle_url)
        .bearer_auth(cluster.token(Kind::Node))
        .send()
        .await
        .expect("GET");
    assert_eq!(with_node.status(), 200);

    // The cache's Prepare is sandboxd's.
    let prepare = CacheClient::new(channel(&endpoints.cache).await)
        .prepare(PrepareRequest {
            function: Some(FunctionRef {
                name: "secretive".into(),
                version: 0,
            }),
            ..PrepareRequest::default()
        })
        .await
        .expect_err("anonymous prepare");
    assert_refused(&prepare, "prepare", "tokens/node");

    // The gateway: calls over gRPC and HTTP.
    let invoke = GatewayClient::new(channel(&endpoints.gateway).await)
        .invoke(InvokeRequest {
            function: "secretive".into(),
            payload: b"{}".to_vec(),
            timeout_ms: None,
        })
        .await
        .expect_err("anonymous call");
    assert_refused(&invoke, "invoke", "tokens/invoke");
    let run = http
        .post(format!("{}/run/secretive", endpoints.gateway_http))
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(run.status(), 401);
    assert_eq!(run.headers()["x-sock-error"], "unauthenticated");

    // sandboxd: a unix socket only root and the services' user may use.
    let socket = endpoints
        .sandboxd
        .strip_prefix("unix:")
        .expect("sandboxd listens on a unix socket");
    let meta = std::fs::metadata(socket).expect("socket file");
    assert_eq!(meta.mode() & 0o777, 0o600);
    let service_uid = uids(endpoints.pids["gateway"]).0;
    assert_eq!(meta.uid(), service_uid, "handed to the gateway's user");
    assert_eq!(probe_as(0, &endpoints.sandboxd).trim(), "ok");
    let stranger = probe_as(STRANGER, &endpoints.sandboxd);
    assert!(
        stranger.starts_with("unreachable"),
        "another uid got through the socket file: {stranger}"
    );
    // Even when the file's mode is loosened, the peer-credential check
    // keeps the stranger out.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let stranger = probe_as(STRANGER, &endpoints.sandboxd);
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        stranger.starts_with("status Unauthenticated: this socket answers only uid 0"),
        "{stranger}"
    );
    assert!(
        stranger.contains(&format!("the caller is uid {STRANGER}")),
        "{stranger}"
    );

    // What it all guarded still works for those who hold the tokens.
    assert!(Path::new(socket).exists());
    let answer = cluster
        .invoke("secretive", b"{}", None)
        .await
        .expect("a call with the invoke token");
    assert!(answer.outcome.is_some());
}

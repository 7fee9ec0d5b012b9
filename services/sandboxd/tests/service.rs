//! The gRPC service end to end on one node: a fake cache in the test (the
//! real one is tested in its own crate and end to end), the real sandboxd
//! `run` with real sandboxes. Needs root.
mod common;
#[path = "common/node.rs"]
mod node;

use std::time::Duration;

use node::{Node, assert_nothing_left, request};
use sock_proto::v1::sandbox_invoke_response::Outcome;
use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_proto::v1::{
    ErrorKind, FunctionConfig, SandboxInvokeResponse, StatusRequest, TreeRequest,
};
use sock_sandboxd::Config;
use sock_testkit::fake_cache::Function;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

const MAIN_PY: &str = r#"
import os, time

def f(event):
    time.sleep(event.get('sleep', 0))
    return event['say'] + os.environ['SUFFIX']
"#;

/// Publishes "echo" (version 3), and "escape", whose code dir a
/// compromised cache points at the host's `/etc`; the cache knows no other
/// function.
fn publish_functions(node: &Node) {
    node.publish(
        "echo",
        3,
        MAIN_PY,
        Function {
            config: FunctionConfig {
                entry_file: "main.py".into(),
                environment: [("SUFFIX".to_string(), "!".to_string())].into(),
                ..FunctionConfig::default()
            },
            ..Function::default()
        },
    );
    node.publish(
        "escape",
        1,
        "",
        Function {
            code_dir: Some("/etc".into()),
            package_dirs: vec!["/root".into()],
            ..Function::default()
        },
    );
}

async fn start(test: &str, grace_ms: u64, cache_up: bool) -> Option<Node> {
    start_with(test, grace_ms, cache_up, |_| {}).await
}

/// A node whose config `adjust` changed first; when `cache_up` is false,
/// its cache address is one nothing listens on.
async fn start_with(
    test: &str,
    grace_ms: u64,
    cache_up: bool,
    adjust: impl FnOnce(&mut Config),
) -> Option<Node> {
    let node = node::start(test, |config| {
        config.shutdown_grace_ms = grace_ms;
        if !cache_up {
            // A port nothing else took a moment ago.
            config.cache_addr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|addr| format!("http://{addr}"))
                .expect("free port");
        }
        adjust(config);
    })
    .await?;
    publish_functions(&node);
    Some(node)
}

impl Node {
    async fn invoke(&self, name: &str, payload: &str) -> Result<SandboxInvokeResponse, Status> {
        invoke(self.client.clone(), name, payload).await
    }
}

async fn invoke(
    mut client: SandboxdClient<Channel>,
    name: &str,
    payload: &str,
) -> Result<SandboxInvokeResponse, Status> {
    client
        .invoke(request(name, 0, "call-1", payload, 20_000))
        .await
        .map(Response::into_inner)
}

/// Waits (bounded) until sandboxd answers Status with `n` live sandboxes.
async fn wait_for_sandboxes(client: &SandboxdClient<Channel>, n: u32) {
    for _ in 0..500 {
        let status = client.clone().status(StatusRequest {}).await;
        if status.is_ok_and(|s| s.into_inner().sandboxes == n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("sandboxd never reported {n} sandboxes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_the_prepared_version_with_its_config() {
    let Some(node) = start("invoke", 10_000, true).await else {
        return;
    };
    let response = node
        .invoke("echo", r#"{"say": "hi"}"#)
        .await
        .expect("invoke");
    assert_eq!(response.version, 3, "the version the cache prepared");
    assert_eq!(
        response.outcome,
        Some(Outcome::Result(br#""hi!""#.to_vec()))
    );

    let response = node.invoke("echo", "{}").await.expect("invoke");
    let Some(Outcome::Error(error)) = response.outcome else {
        panic!("expected a function error, got {response:?}");
    };
    assert_eq!(error.kind(), ErrorKind::Function);
    assert_eq!(error.message, "KeyError: 'say'");

    let status = node.status().await;
    assert_eq!(status.calls_total, 2);
    assert_eq!(
        status.sandboxes, 1,
        "the second call reused the first's sandbox"
    );
    assert_eq!((status.cold_starts_total, status.warm_starts_total), (1, 1));
    // The cache named no zygote chain and import_cache is "tree": the
    // sandbox was forked from the root zygote, which lives on with it.
    assert_eq!(status.zygote_forks_total, 1, "{status:?}");
    let zygotes: Vec<(&str, u32)> = status
        .zygotes
        .iter()
        .map(|z| (z.id.as_str(), z.children))
        .collect();
    assert_eq!(zygotes, [("root", 1)], "{status:?}");
    assert!(status.zygotes[0].memory_used_mb > 0, "{status:?}");
    assert_eq!(
        status.pool_reserved_mb,
        128 + status.zygotes[0].memory_reserved_mb,
        "the warm sandbox and the zygote hold their memory"
    );
    assert!(matches!(status.cgroup_version, 1 | 2));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_over_the_ceiling_gets_the_ceiling() {
    let Some(node) = start_with("timeout-ceiling", 10_000, true, |config| {
        config.ceilings.max_timeout_ms = 500;
    })
    .await
    else {
        return;
    };
    // The caller asks 20 s; the operator allows half a second.
    let response = node
        .invoke("echo", r#"{"say": "hi", "sleep": 5}"#)
        .await
        .expect("invoke");
    let Some(Outcome::Error(error)) = response.outcome else {
        panic!("expected a timeout, got {response:?}");
    };
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error:?}");
    assert_eq!(error.message, "function exceeded its timeout of 500 ms");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_version_asked_runs() {
    let Some(node) = start("exact", 10_000, true).await else {
        return;
    };
    let ask = |version| {
        let mut client = node.client.clone();
        async move {
            client
                .invoke(request(
                    "echo",
                    version,
                    "call-1",
                    r#"{"say": "hi"}"#,
                    20_000,
                ))
                .await
        }
    };
    let response = ask(3)
        .await
        .expect("the version the cache has")
        .into_inner();
    assert_eq!(response.version, 3);

    // A version the registry no longer keeps: not found, in the cache's
    // words, and nothing else runs in its place.
    let status = ask(2).await.expect_err("a version the cache does not have");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::NotFound));
    assert_eq!(
        status.message(),
        "function 'echo' version 2 is not available: the registry keeps 3"
    );

    // A cache older than sandboxd, which prepares what it has whatever
    // was asked: refused, and the caller told why.
    node.publish(
        "echo",
        3,
        MAIN_PY,
        Function {
            any_version: true,
            ..Function::default()
        },
    );
    let status = ask(2).await.expect_err("another version prepared");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::Platform));
    assert_eq!(
        status.message(),
        "the cache prepared version 3 of 'echo', not version 2 as asked; is the cache older \
         than sandboxd?"
    );
    assert_eq!(node.status().await.calls_total, 3);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_answers_and_outages_reach_the_caller_clearly() {
    let Some(node) = start("cache", 10_000, true).await else {
        return;
    };
    let status = node
        .invoke("nope", "{}")
        .await
        .expect_err("unknown function");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::NotFound));
    assert_eq!(
        status.message(),
        "function 'nope' does not exist; push it with `sock push`"
    );
    // A cache that names a host dir gets nothing mounted, and no sandbox.
    let status = node
        .invoke("escape", "{}")
        .await
        .expect_err("a code dir outside the cache's");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::Platform));
    assert!(
        status.message().contains("unsafe to mount"),
        "{}",
        status.message()
    );
    let alive = node.status().await.sandboxes;
    assert_eq!(alive, 0);
    node.stop().await;

    let Some(node) = start("cachedown", 10_000, false).await else {
        return;
    };
    let status = node.invoke("echo", "{}").await.expect_err("cache down");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::Platform));
    assert!(
        status.message().starts_with("code cache unavailable:"),
        "{}",
        status.message()
    );
    let status = node
        .client
        .clone()
        .tree(TreeRequest { rebuild: false })
        .await
        .expect_err("no tree without the cache");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with("code cache unavailable:"),
        "{}",
        status.message()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish() {
    let Some(node) = start("drain", 30_000, true).await else {
        return;
    };
    let call = tokio::spawn(invoke(
        node.client.clone(),
        "echo",
        r#"{"say": "done", "sleep": 1}"#,
    ));
    wait_for_sandboxes(&node.client, 1).await;
    node.shutdown.cancel();
    let response = call.await.expect("call task").expect("call answered");
    assert_eq!(
        response.outcome,
        Some(Outcome::Result(br#""done!""#.to_vec()))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_destroys_sandboxes_that_outlive_the_grace_period() {
    let Some(node) = start("kill", 200, true).await else {
        return;
    };
    let call = tokio::spawn(invoke(
        node.client.clone(),
        "echo",
        r#"{"say": "never", "sleep": 600}"#,
    ));
    wait_for_sandboxes(&node.client, 1).await;
    node.shutdown.cancel();
    let response = call.await.expect("call task").expect("call answered");
    let Some(Outcome::Error(error)) = response.outcome else {
        panic!("expected the call to be killed, got {response:?}");
    };
    assert_eq!(error.kind(), ErrorKind::Killed, "{error:?}");
    node.stop().await;
}

/// Kills the daemon if a test fails before it stopped it.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary: config from the environment, its own executable as
/// the sandbox init, and SIGTERM for a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_stops_cleanly_on_sigterm() {
    let Some(node) = node::set_up("binary", |_| {}).await else {
        return;
    };
    publish_functions(&node);
    let config = &node.config;
    let mut daemon = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_sock-sandboxd"))
            .env("SOCK_SANDBOXD_LISTEN", &config.listen)
            .env("SOCK_SANDBOXD_CACHE_ADDR", &config.cache_addr)
            .env("SOCK_SANDBOXD_DATA_DIR", &config.data_dir)
            .env("SOCK_SANDBOXD_CACHE_DATA_DIR", &config.cache_data_dir)
            .env("SOCK_SANDBOXD_INSTANCE", &config.instance)
            .spawn()
            .expect("start sock-sandboxd"),
    );
    wait_for_sandboxes(&node.client, 0).await;

    let response = node
        .invoke("echo", r#"{"say": "from the binary"}"#)
        .await
        .expect("invoke");
    assert_eq!(
        response.outcome,
        Some(Outcome::Result(br#""from the binary!""#.to_vec()))
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::task::spawn_blocking(move || daemon.0.wait())
        .await
        .expect("wait task")
        .expect("wait");
    assert!(status.success(), "sock-sandboxd exited with {status}");
    assert_nothing_left(&config.instance, &config.data_dir);
}

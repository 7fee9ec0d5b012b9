//! sandboxd as a node: warm reuse, pausing, the memory pool, eviction,
//! abuse and crash cleanup, through its gRPC API with real sandboxes and a
//! fake cache whose functions each test writes. Needs root.
mod common;
#[path = "common/node.rs"]
mod node;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{cgroup_dir, pids_below};
use node::{Node, assert_nothing_left, request, start};
use sock_proto::v1::sandbox_invoke_response::Outcome;
use sock_proto::v1::{
    ErrorKind, FunctionConfig, FunctionError, Limits, SandboxInvokeResponse, StatusRequest,
    StatusResponse, TreeNode, TreeRequest, ZygoteNode,
};
use sock_sandboxd::Config;
use sock_testkit::fake_cache::Function;
use tonic::{Code, Response, Status};

impl Node {
    async fn invoke(
        &self,
        name: &str,
        version: u64,
        payload: &str,
        timeout_ms: u32,
    ) -> Result<SandboxInvokeResponse, Status> {
        self.client
            .clone()
            .invoke(request(
                name,
                version,
                &format!("{name}-call"),
                payload,
                timeout_ms,
            ))
            .await
            .map(Response::into_inner)
    }

    /// Polls Status (bounded) until `ready` holds; returns that Status.
    async fn wait_for(
        &self,
        what: &str,
        ready: impl Fn(&StatusResponse) -> bool,
    ) -> StatusResponse {
        for _ in 0..1000 {
            // The daemon may still be starting.
            if let Ok(status) = self.client.clone().status(StatusRequest {}).await
                && ready(status.get_ref())
            {
                return status.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "sandboxd never reached: {what}; last status {:?}",
            self.status().await
        );
    }

    fn cgroup_root(&self, controller: &str) -> PathBuf {
        cgroup_dir(controller, &self.config.instance)
    }

    /// The freezer cgroups of this instance that hold processes and are
    /// frozen: cgroup2's freezer where the machine mounts cgroup2 (a killed
    /// daemon cannot leave unkillable tasks), else v1's.
    fn frozen_cgroups(&self) -> Vec<PathBuf> {
        let (freezer, state_file, frozen_state) = if Path::new("/sys/fs/cgroup/unified").is_dir() {
            ("unified", "cgroup.events", "frozen 1")
        } else {
            ("freezer", "freezer.state", "FROZEN")
        };
        std::fs::read_dir(self.cgroup_root(freezer))
            .expect("freezer dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                std::fs::read_to_string(p.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
            })
            .filter(|p| {
                std::fs::read_to_string(p.join(state_file))
                    .is_ok_and(|state| state.lines().any(|l| l == frozen_state))
            })
            .collect()
    }

    /// The pids in every cgroup of this instance.
    fn sandbox_pids(&self) -> Vec<i32> {
        pids_below(&self.cgroup_root("pids"))
    }
}

/// Memory the live zygotes hold from the pool.
fn zygotes_mb(status: &StatusResponse) -> u64 {
    status.zygotes.iter().map(|z| z.memory_reserved_mb).sum()
}

/// The pool holds what the live sandboxes and zygotes do, nothing lost:
/// 128 MB for each idle or running sandbox, its use for each paused one
/// (a few MB; tens when it was the first to read Python's files, whose
/// page cache its cgroup then charges).
fn assert_pool_matches(status: &StatusResponse) {
    let full = 128 * u64::from(status.idle + status.running) + zygotes_mb(status);
    let paused_mb = status
        .pool_reserved_mb
        .checked_sub(full)
        .unwrap_or_else(|| panic!("less reserved than the live sandboxes hold: {status:?}"));
    let paused = u64::from(status.paused);
    assert!(
        (paused..=64 * paused).contains(&paused_mb),
        "{paused_mb} MB reserved for {paused} paused sandboxes: {status:?}"
    );
}

fn result(response: &SandboxInvokeResponse) -> serde_json::Value {
    match &response.outcome {
        Some(Outcome::Result(body)) => serde_json::from_slice(body).expect("result is JSON"),
        other => panic!("expected a result, got {other:?}"),
    }
}

fn failure(response: &SandboxInvokeResponse) -> FunctionError {
    match &response.outcome {
        Some(Outcome::Error(error)) => error.clone(),
        other => panic!("expected a function error, got {other:?}"),
    }
}

const COUNTER: &str = "n = 0\n\ndef f(event):\n    global n\n    n += 1\n    return n\n";
const SLEEPER: &str =
    "import time\n\ndef f(event):\n    time.sleep(event['sleep'])\n    return event['sleep']\n";

/// CPU time (user + system ticks) of the processes `pids`.
fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the ")" of the command name; utime and stime
            // are the 14th and 15th fields of the whole line.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let parse = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            parse(11) + parse(12)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_calls_reuse_the_sandbox_and_a_new_version_does_not() {
    let Some(node) = start("warm", |_| {}).await else {
        return;
    };
    node.publish("counter", 1, COUNTER, Function::default());
    assert_eq!(
        result(&node.invoke("counter", 1, "", 20_000).await.expect("first")),
        1
    );
    assert_eq!(
        result(&node.invoke("counter", 1, "", 20_000).await.expect("second")),
        2
    );
    assert_eq!(
        node.catalog.prepares.load(Ordering::Relaxed),
        1,
        "a warm call never asks the cache"
    );

    node.publish("counter", 2, COUNTER, Function::default());
    let response = node
        .invoke("counter", 2, "", 20_000)
        .await
        .expect("new version");
    assert_eq!(response.version, 2);
    assert_eq!(result(&response), 1, "a new version starts fresh");
    // The retired sandbox leaves the warm set at once and gives its memory
    // back when its teardown ends, so wait for both.
    let status = node
        .wait_for("the old version retired and its memory freed", |s| {
            s.sandboxes == 1 && s.pool_reserved_mb == 128 + zygotes_mb(s)
        })
        .await;
    let versions: Vec<u64> = status
        .functions
        .iter()
        .map(|f| f.function.as_ref().expect("ref").version)
        .collect();
    assert_eq!(versions, [2], "{status:?}");
    assert_eq!((status.cold_starts_total, status.warm_starts_total), (2, 1));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_sandbox_false_starts_a_sandbox_per_call_and_keeps_none() {
    let Some(node) = start("one-call", |_| {}).await else {
        return;
    };
    node.publish("once", 1, COUNTER, Function::default());
    for call in 0..2 {
        let mut request = request("once", 1, &format!("once-{call}"), "", 20_000);
        request.config = Some(FunctionConfig {
            fresh_sandbox_per_call: true,
            ..FunctionConfig::default()
        });
        let response = node
            .client
            .clone()
            .invoke(request)
            .await
            .expect("call")
            .into_inner();
        assert_eq!(result(&response), 1, "every call has a fresh sandbox");
        // Torn down after the answer, off the call's path, but promptly and
        // without another call.
        node.wait_for("the one-call sandbox torn down", |s| s.sandboxes == 0)
            .await;
    }
    let status = node.status().await;
    assert_eq!((status.cold_starts_total, status.warm_starts_total), (2, 0));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sandboxes_are_frozen_and_a_call_wakes_them() {
    let Some(node) = start("pause", |c| c.pause_after_ms = 100).await else {
        return;
    };
    let spinner = r#"
import threading

n = 0
spins = 0

def spin():
    global spins
    while True:
        spins += 1

def f(event):
    global n
    n += 1
    if n == 1:
        threading.Thread(target=spin, daemon=True).start()
    return n
"#;
    node.publish("spinner", 1, spinner, Function::default());
    assert_eq!(
        result(&node.invoke("spinner", 1, "", 20_000).await.expect("first")),
        1
    );
    let status = node.wait_for("the sandbox paused", |s| s.paused == 1).await;
    assert_eq!(status.idle + status.running, 0);

    let pids = node.sandbox_pids();
    assert!(!pids.is_empty());
    // The sandbox's cgroup is frozen; the zygote it was forked from is
    // not (it has processes too, and serves forks).
    let frozen = node.frozen_cgroups();
    assert_eq!(frozen.len(), 1, "{frozen:?}");
    let limit: u64 = std::fs::read_to_string(
        node.cgroup_root("memory")
            .join(frozen[0].file_name().expect("name"))
            .join("memory.limit_in_bytes"),
    )
    .expect("limit")
    .trim()
    .parse()
    .expect("number");
    assert!(
        limit < 128 << 20,
        "the paused limit shrank to its use: {limit}"
    );

    // The spinning thread gets no CPU while frozen.
    let before = cpu_ticks(&pids);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cpu_ticks(&pids), before, "a paused sandbox used CPU");

    assert_eq!(
        result(&node.invoke("spinner", 1, "", 20_000).await.expect("wakes")),
        2,
        "the same sandbox answered"
    );
    let status = node.status().await;
    assert_eq!(status.cold_starts_total, 1, "{status:?}");
    node.stop().await;
}

/// Starts `name` sleeping `secs` on its own task.
fn sleep_in_background(
    node: &Node,
    name: &str,
    secs: f64,
) -> tokio::task::JoinHandle<Result<SandboxInvokeResponse, Status>> {
    let mut client = node.client.clone();
    let request = request(
        name,
        1,
        "",
        format!(r#"{{"sleep": {secs}}}"#).as_bytes(),
        30_000,
    );
    tokio::spawn(async move { client.invoke(request).await.map(Response::into_inner) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_caller_gives_up_has_its_sandbox_destroyed_and_memory_freed() {
    let Some(node) = start("cancelled", |_| {}).await else {
        return;
    };
    node.publish("sleeper", 1, COUNTING_SLEEPER, Function::default());
    let mut client = node.client.clone();
    let call = tokio::spawn(async move {
        client
            .invoke(request("sleeper", 1, "", br#"{"sleep": 600}"#, 600_000))
            .await
    });
    node.wait_for("the call running", |s| s.running == 1).await;
    // The caller goes away mid-call: its request is cancelled.
    call.abort();
    node.wait_for("the sandbox destroyed", |s| s.sandboxes == 0)
        .await;
    // Its memory goes back only once its teardown is over (its processes
    // gone, its cgroup empty).
    let status = node
        .wait_for("its memory back", |s| s.pool_reserved_mb == zygotes_mb(s))
        .await;
    assert_eq!(status.running, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sandbox_whose_runtime_is_killed_is_forgotten_and_its_memory_freed() {
    let Some(node) = start("diedpaused", |c| c.pause_after_ms = 100).await else {
        return;
    };
    node.publish("counter", 1, COUNTER, Function::default());
    assert_eq!(
        result(&node.invoke("counter", 1, "", 20_000).await.expect("first")),
        1
    );
    node.wait_for("the sandbox paused", |s| s.paused == 1).await;
    let frozen = node.frozen_cgroups();
    assert_eq!(frozen.len(), 1, "{frozen:?}");
    // Killed from outside while frozen (cgroup2's freezer lets SIGKILL
    // through), as an OOM kill of its zygote would take it.
    let procs = std::fs::read_to_string(frozen[0].join("cgroup.procs")).expect("procs");
    for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Forgotten, and its memory back in the pool once torn down, with no
    // call to find it.
    node.wait_for("the dead sandbox forgotten and its memory freed", |s| {
        s.sandboxes == 0 && s.pool_reserved_mb == zygotes_mb(s)
    })
    .await;
    assert_eq!(
        result(&node.invoke("counter", 1, "", 20_000).await.expect("again")),
        1,
        "the next call starts a new sandbox"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_makes_a_call_wait_until_memory_frees() {
    let Some(node) = start("poolwait", |c| c.mem_pool_mb = 256).await else {
        return;
    };
    node.publish("slow", 1, SLEEPER, Function::default());
    let calls: Vec<_> = (0..3)
        .map(|_| sleep_in_background(&node, "slow", 1.5))
        .collect();
    let status = node
        .wait_for("two running, one waiting", |s| {
            s.running == 2 && s.pool_waiting == 1
        })
        .await;
    assert_eq!(status.pool_reserved_mb, 256);
    assert_eq!(status.pool_free_mb, 0);
    for call in calls {
        let response = call.await.expect("task").expect("every call runs");
        assert_eq!(result(&response), 1.5);
    }
    let status = node.status().await;
    assert_eq!(status.pool_waiting, 0);
    assert_eq!(
        (
            status.cold_starts_total,
            status.warm_starts_total,
            status.evictions_total
        ),
        (2, 1, 0),
        "the waiting call took the first sandbox to go idle"
    );
    assert_pool_matches(&status);
    node.stop().await;
}

/// A sleeper that also counts its calls, to tell a thawed sandbox from a
/// new one.
const COUNTING_SLEEPER: &str = "import time\n\nn = 0\n\ndef f(event):\n    global n\n    n += 1\n    time.sleep((event or {}).get('sleep', 0))\n    return n\n";

/// A node with a 320 MB pool and functions a, b and c (counting
/// sleepers), once a's first call is over and its sandbox paused: a paused
/// sandbox and two running 128 MB ones fit only if the paused one holds
/// what it uses (see assert_pool_matches), not its limit.
async fn a_paused_and_room_for_b_and_c(test: &str) -> Option<(Node, StatusResponse)> {
    let node = start(test, |c| {
        c.mem_pool_mb = 320;
        c.pause_after_ms = 100;
    })
    .await?;
    for name in ["a", "b", "c"] {
        node.publish(name, 1, COUNTING_SLEEPER, Function::default());
    }
    assert_eq!(
        result(&node.invoke("a", 1, "", 20_000).await.expect("a")),
        1
    );
    let status = node.wait_for("a paused", |s| s.paused == 1).await;
    Some((node, status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sandbox_holds_only_what_it_uses_and_thaws_once_its_limit_is_back() {
    let Some((node, status)) = a_paused_and_room_for_b_and_c("pausedpool").await else {
        return;
    };
    let paused_mb = status.pool_reserved_mb - zygotes_mb(&status);
    assert!(
        (1..=64).contains(&paused_mb),
        "a paused sandbox reserves its use, not 128 MB: {status:?}"
    );

    let b = sleep_in_background(&node, "b", 2.0);
    let c = sleep_in_background(&node, "c", 2.0);
    let status = node
        .wait_for("b and c running beside paused a", |s| s.running == 2)
        .await;
    assert_eq!(
        (status.paused, status.evictions_total),
        (1, 0),
        "{status:?}"
    );
    assert_eq!(
        status.pool_reserved_mb,
        256 + paused_mb + zygotes_mb(&status),
        "{status:?}"
    );

    // a's thaw needs 128 MB again: it waits in line, and b's idle sandbox
    // is evicted for it once b's call ends; a's own sandbox answers.
    let a = node.invoke("a", 1, "", 20_000).await.expect("a thawed");
    assert_eq!(result(&a), 2, "the paused sandbox answered, not a new one");
    for call in [b, c] {
        let response = call.await.expect("task").expect("the running calls finish");
        assert_eq!(result(&response), 1, "no running call was disturbed");
    }
    let status = node.status().await;
    assert_eq!(status.cold_starts_total, 3, "{status:?}");
    assert!(status.evictions_total >= 1, "{status:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sandbox_that_cannot_get_its_limit_back_in_time_is_destroyed_and_the_call_refused()
{
    let Some((node, _)) = a_paused_and_room_for_b_and_c("nothaw").await else {
        return;
    };
    let busy = [
        sleep_in_background(&node, "b", 3.0),
        sleep_in_background(&node, "c", 3.0),
    ];
    node.wait_for("b and c running", |s| s.running == 2).await;

    let refused = node
        .invoke("a", 1, "", 400)
        .await
        .expect_err("no memory to thaw within 400 ms");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("memory pool full"),
        "{}",
        refused.message()
    );
    let status = node
        .wait_for("a's paused sandbox destroyed", |s| s.paused == 0)
        .await;
    assert_eq!((status.running, status.pool_waiting), (2, 0), "{status:?}");
    for call in busy {
        let response = call.await.expect("task").expect("the running calls finish");
        assert_eq!(result(&response), 1);
    }
    // a starts cold next time.
    assert_eq!(
        result(&node.invoke("a", 1, "", 20_000).await.expect("a")),
        1
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_wait_long_enough_is_refused_clearly() {
    let Some(node) = start("poolfull", |c| c.mem_pool_mb = 256).await else {
        return;
    };
    node.publish("slow", 1, SLEEPER, Function::default());
    let busy: Vec<_> = (0..2)
        .map(|_| sleep_in_background(&node, "slow", 3.0))
        .collect();
    node.wait_for("two running", |s| s.running == 2).await;
    let refused = node
        .invoke("slow", 1, r#"{"sleep": 0}"#, 300)
        .await
        .expect_err("no memory within 300 ms");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .starts_with("memory pool full: 256 MB reserved of 256 MB"),
        "{}",
        refused.message()
    );
    for call in busy {
        call.await.expect("task").expect("the running calls finish");
    }
    assert_eq!(node.status().await.pool_waiting, 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_makes_room_and_the_pool_returns_to_zero() {
    let Some(node) = start("evict", |c| c.mem_pool_mb = 256).await else {
        return;
    };
    for name in ["a", "b", "c"] {
        node.publish(name, 1, COUNTER, Function::default());
    }
    node.invoke("a", 1, "", 20_000).await.expect("a");
    node.invoke("b", 1, "", 20_000).await.expect("b");
    assert_eq!(node.status().await.pool_reserved_mb, 256);
    // No room for c: the least recently used idle sandbox (a's) goes.
    node.invoke("c", 1, "", 20_000).await.expect("c");
    let status = node.status().await;
    assert_eq!(status.evictions_total, 1);
    let names: Vec<String> = status
        .functions
        .iter()
        .map(|f| f.function.as_ref().expect("ref").name.clone())
        .collect();
    assert_eq!(names, ["b", "c"], "{status:?}");
    assert_eq!(status.pool_reserved_mb, 256);

    // New versions that crash: the old ones retire, the new ones die.
    for name in ["b", "c"] {
        node.publish(
            name,
            2,
            "import os\n\ndef f(event):\n    os._exit(3)\n",
            Function::default(),
        );
        let error = failure(&node.invoke(name, 2, "", 20_000).await.expect(name));
        assert_eq!(error.kind(), ErrorKind::Killed);
    }
    let status = node
        .wait_for("every sandbox destroyed", |s| s.sandboxes == 0)
        .await;
    assert_eq!(status.pool_reserved_mb, 0, "no reservation is lost");
    assert_eq!(status.pool_free_mb, 256);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_functions_are_stopped_and_the_daemon_keeps_serving() {
    let Some(node) = start("abuse", |_| {}).await else {
        return;
    };
    node.publish(
        "echo",
        1,
        "def f(event):\n    return event\n",
        Function::default(),
    );
    let fork_bomb = r#"
import os, time

def f(event):
    forked = 0
    while True:
        try:
            if os.fork() == 0:
                while True:
                    try:
                        os.fork()
                    except OSError:
                        time.sleep(0.05)
            forked += 1
        except OSError as e:
            return {'forked': forked, 'error': type(e).__name__}
"#;
    node.publish(
        "bomb",
        1,
        fork_bomb,
        Function {
            config: FunctionConfig {
                limits: Some(Limits {
                    pids: 32,
                    ..Limits::default()
                }),
                ..FunctionConfig::default()
            },
            ..Function::default()
        },
    );
    node.publish(
        "hog",
        1,
        "def f(event):\n    hog = b'x' * (512 << 20)\n    return len(hog)\n",
        Function::default(),
    );
    node.publish(
        "loop",
        1,
        "def f(event):\n    while True:\n        pass\n",
        Function::default(),
    );

    let out = result(&node.invoke("bomb", 1, "", 20_000).await.expect("bomb"));
    assert_eq!(out["error"], "BlockingIOError", "{out}");
    assert!(out["forked"].as_u64().expect("count") < 32, "{out}");
    assert_eq!(
        result(&node.invoke("echo", 1, "1", 20_000).await.expect("echo")),
        1
    );

    let error = failure(&node.invoke("hog", 1, "", 20_000).await.expect("hog"));
    assert_eq!(error.kind(), ErrorKind::OutOfMemory, "{error:?}");
    assert_eq!(error.message, "function ran out of memory (limit 128 MB)");
    assert_eq!(
        result(&node.invoke("echo", 1, "2", 20_000).await.expect("echo")),
        2
    );

    let error = failure(&node.invoke("loop", 1, "", 700).await.expect("loop"));
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error:?}");
    assert_eq!(error.message, "function exceeded its timeout of 700 ms");
    assert_eq!(
        result(&node.invoke("echo", 1, "3", 20_000).await.expect("echo")),
        3
    );

    let status = node.status().await;
    let names: Vec<String> = status
        .functions
        .iter()
        .map(|f| f.function.as_ref().expect("ref").name.clone())
        .collect();
    assert_eq!(
        names,
        ["bomb", "echo"],
        "the OOM and timeout sandboxes are gone"
    );
    assert_pool_matches(&status);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_on_a_small_pool_are_all_answered_and_nothing_leaks() {
    let Some(node) = start("busy", |c| {
        c.mem_pool_mb = 3 * 128;
        c.pause_after_ms = 50;
    })
    .await
    else {
        return;
    };
    let names: Vec<String> = (0..10).map(|i| format!("fn{i}")).collect();
    for name in &names {
        node.publish(name, 1, SLEEPER, Function::default());
    }
    let node = Arc::new(node);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let node = node.clone();
            let next = next.clone();
            let names = names.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= 200 {
                        return answers;
                    }
                    let name = &names[(i * 7) % names.len()];
                    let sleep = (i % 5) as f64 / 100.0;
                    let answer = node
                        .invoke(name, 1, &format!(r#"{{"sleep": {sleep}}}"#), 5_000)
                        .await;
                    answers.push(answer);
                }
            })
        })
        .collect();
    let mut answered = 0;
    let mut refused = 0;
    for worker in workers {
        for answer in worker.await.expect("worker") {
            match answer {
                Ok(response) => {
                    result(&response);
                    answered += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(
                        status.message().starts_with("memory pool full"),
                        "{status:?}"
                    );
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(answered + refused, 200, "no call lost");
    assert!(answered > 0);
    let status = node.status().await;
    assert_eq!(status.running, 0);
    assert_eq!(status.pool_waiting, 0);
    assert!(status.sandboxes <= 3, "{status:?}");
    assert_pool_matches(&status);
    assert!(status.evictions_total > 0, "{status:?}");
    // Cgroups were reused, not made per sandbox: far fewer exist than
    // sandboxes were started.
    let cgroups = std::fs::read_dir(node.cgroup_root("memory"))
        .expect("instance cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert!(
        cgroups < 16 && u64::try_from(cgroups).expect("count") < status.cold_starts_total,
        "{cgroups} cgroups for {} cold starts",
        status.cold_starts_total
    );
    assert!(status.spare_netns > 0, "{status:?}");
    eprintln!(
        "200 calls: {answered} answered, {refused} refused; {} cold, {} warm, {} evictions",
        status.cold_starts_total, status.warm_starts_total, status.evictions_total
    );
    Arc::try_unwrap(node)
        .unwrap_or_else(|_| panic!("workers are done"))
        .stop()
        .await;
}

/// Kills the daemon if a test fails before it stopped it.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon(config: &Config) -> Daemon {
    daemon_via(
        std::process::Command::new(env!("CARGO_BIN_EXE_sock-sandboxd")),
        config,
    )
}

/// Runs sock-sandboxd through `command` (the binary itself, or a wrapper
/// whose last argument it is) with `config` in its environment.
fn daemon_via(mut command: std::process::Command, config: &Config) -> Daemon {
    Daemon(
        command
            .env("SOCK_SANDBOXD_LISTEN", &config.listen)
            .env("SOCK_SANDBOXD_CACHE_ADDR", &config.cache_addr)
            .env("SOCK_SANDBOXD_DATA_DIR", &config.data_dir)
            .env("SOCK_SANDBOXD_CACHE_DATA_DIR", &config.cache_data_dir)
            .env("SOCK_SANDBOXD_INSTANCE", &config.instance)
            .env(
                "SOCK_SANDBOXD_CGROUP_POOL_SIZE",
                config.cgroup_pool_size.to_string(),
            )
            .env(
                "SOCK_SANDBOXD_NETNS_POOL_SIZE",
                config.netns_pool_size.to_string(),
            )
            .spawn()
            .expect("start sock-sandboxd"),
    )
}

/// A node for a sandboxd run as a process of its own (which a test may
/// kill); the node removes what a failed test leaves.
async fn daemon_node(test: &str) -> Option<Node> {
    node::set_up(test, |config| config.cgroup_pool_size = 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_9_removes_everything_of_the_old_run() {
    let Some(node) = daemon_node("crash").await else {
        return;
    };
    node.publish("counter", 1, COUNTER, Function::default());
    node.publish("slow", 1, SLEEPER, Function::default());
    let mut first = daemon(&node.config);
    node.wait_for("the first run serves", |_| true).await;
    node.invoke("counter", 1, "", 20_000)
        .await
        .expect("idle sandbox");
    let running = tokio::spawn({
        let mut client = node.client.clone();
        async move {
            client
                .invoke(request("slow", 1, "", br#"{"sleep": 600}"#, 600_000))
                .await
        }
    });
    node.wait_for("one idle, one running", |s| {
        s.sandboxes == 2 && s.running == 1
    })
    .await;
    // Two inits and two runtimes (the second forks a moment after its
    // sandbox counts as running).
    let mut old_pids = node.sandbox_pids();
    for _ in 0..500 {
        if old_pids.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        old_pids = node.sandbox_pids();
    }
    assert!(old_pids.len() >= 4, "{old_pids:?}");

    first.0.kill().expect("kill -9");
    first.0.wait().expect("reap the daemon");
    assert!(
        running.await.expect("task").is_err(),
        "the call died with the daemon"
    );

    let second = daemon(&node.config);
    let status = node.wait_for("the second run serves", |_| true).await;
    assert_eq!(status.sandboxes, 0);
    for pid in &old_pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "process {pid} of the old run survived: {stat}"
        );
    }
    assert!(node.sandbox_pids().is_empty(), "no process in our cgroups");
    assert_eq!(
        result(&node.invoke("counter", 1, "", 20_000).await.expect("serves")),
        1
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(second.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut second = second;
    let status = tokio::task::spawn_blocking(move || second.0.wait())
        .await
        .expect("wait task")
        .expect("wait");
    assert!(status.success(), "sock-sandboxd exited with {status}");
    assert_nothing_left(&node.config.instance, &node.config.data_dir);
}

/// sandboxd as pid 1 of its own pid namespace, as in a container, killed
/// with SIGKILL while a sandbox is paused: the kernel kills everything in
/// the namespace, and must be able to. (v1's freezer held frozen tasks
/// against SIGKILL, so the daemon stayed a zombie and Docker could not
/// restart its container.) Nothing waits for a successor to clean up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_as_a_containers_pid_1_takes_its_paused_sandboxes_with_it() {
    let Some(node) = daemon_node("pid1").await else {
        return;
    };
    node.publish("counter", 1, COUNTER, Function::default());
    let mut unshare = std::process::Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--"])
        .arg(env!("CARGO_BIN_EXE_sock-sandboxd"))
        .env("SOCK_SANDBOXD_PAUSE_AFTER_MS", "10");
    let mut container = daemon_via(unshare, &node.config);
    node.wait_for("the daemon serves", |_| true).await;
    node.invoke("counter", 1, "", 20_000)
        .await
        .expect("a sandbox");
    node.wait_for("the sandbox paused", |s| s.paused == 1).await;
    let pids = node.sandbox_pids();
    assert!(pids.len() >= 2, "a sandbox and a zygote: {pids:?}");

    let children = format!("/proc/{0}/task/{0}/children", container.0.id());
    let pid1: i32 = std::fs::read_to_string(&children)
        .expect("unshare's child")
        .trim()
        .parse()
        .expect("one child: sandboxd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 pid 1");
    // unshare returns once its child is reaped, which the kernel allows only
    // after every process of the namespace has died.
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Some(status) = container.0.try_wait().expect("wait for unshare") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .await
    .expect("wait task");
    assert!(
        exited.is_some(),
        "the namespace's pid 1 could not die: its sandboxes stayed frozen"
    );
    for pid in &pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived its daemon"
        );
    }
    assert!(node.sandbox_pids().is_empty(), "no process in our cgroups");
}

/// The cache's tree answers these nodes (depth by id).
fn set_cache_tree(node: &Node, ids: &[&str]) {
    *node.catalog.tree.lock().expect("catalog lock") = ids
        .iter()
        .map(|id| TreeNode {
            id: id.to_string(),
            depth: u32::try_from(id.matches('/').count()).expect("shallow"),
            ..TreeNode::default()
        })
        .collect();
}

/// The tree sandboxd answers: per node (id, depth, live, hits, misses).
async fn tree(node: &Node, rebuild: bool) -> Vec<TreeNode> {
    node.client
        .clone()
        .tree(TreeRequest { rebuild })
        .await
        .expect("tree")
        .into_inner()
        .nodes
}

fn tree_rows(nodes: &[TreeNode]) -> Vec<(&str, u32, bool, u64, u64)> {
    nodes
        .iter()
        .map(|n| (n.id.as_str(), n.depth, n.live, n.hits, n.misses))
        .collect()
}

fn zygotes(status: &StatusResponse) -> Vec<(String, u32)> {
    status
        .zygotes
        .iter()
        .map(|z| (z.id.clone(), z.children))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zygote_with_children_is_kept_and_its_idle_children_go_first() {
    // Room for the root zygote (256 MB) and one sandbox (128 MB).
    let Some(node) = start("zygevict", |c| c.mem_pool_mb = 384).await else {
        return;
    };
    for name in ["a", "b"] {
        node.publish(name, 1, COUNTER, Function::default());
    }
    node.invoke("a", 1, "", 20_000).await.expect("a");
    let status = node.status().await;
    assert_eq!(zygotes(&status), [("root".to_string(), 1)], "{status:?}");
    // No room for b: a's idle sandbox goes, never the zygote it came from.
    node.invoke("b", 1, "", 20_000).await.expect("b");
    let status = node.status().await;
    assert_eq!(status.evictions_total, 1, "{status:?}");
    assert_eq!(zygotes(&status), [("root".to_string(), 1)], "{status:?}");
    assert_eq!(status.zygote_forks_total, 2, "{status:?}");

    // A function whose node cannot be made (no memory left for another
    // zygote: not a failed start) forks from the root instead; b's idle
    // sandbox makes room for it.
    let missing = node
        .dir
        .path()
        .join("packages/missing")
        .display()
        .to_string();
    let zygote = ZygoteNode {
        id: "root/missing==1".into(),
        package_dirs: vec![missing],
        imports: vec!["missing".into()],
    };
    node.publish(
        "deep",
        1,
        COUNTER,
        Function {
            zygote: Some(zygote),
            ..Function::default()
        },
    );
    assert_eq!(
        result(&node.invoke("deep", 1, "", 20_000).await.expect("deep")),
        1
    );
    let status = node.status().await;
    assert_eq!(status.zygote_forks_total, 3, "{status:?}");
    assert_eq!(status.evictions_total, 2, "{status:?}");
    assert_eq!(status.zygote_start_failures_total, 0, "{status:?}");
    assert_eq!(zygotes(&status), [("root".to_string(), 1)], "{status:?}");
    // c's room comes from deep's idle sandbox; the root, with a child
    // until then, stays.
    node.publish("c", 1, COUNTER, Function::default());
    node.invoke("c", 1, "", 20_000).await.expect("c");
    let status = node.status().await;
    let names: Vec<String> = status
        .functions
        .iter()
        .map(|f| f.function.as_ref().expect("ref").name.clone())
        .collect();
    assert_eq!(names, ["c"], "{status:?}");
    assert_eq!(status.evictions_total, 3, "{status:?}");
    assert_eq!(zygotes(&status), [("root".to_string(), 1)], "{status:?}");
    node.stop().await;
}

/// The host pids of this node's root zygote processes: they run as the
/// zygote uid (function children do not) and are pid 1 of the sandbox's
/// pid namespace, one level down (a parked child, still the zygote uid,
/// is two levels down).
fn zygote_pids(node: &Node) -> Vec<i32> {
    let zygote_uid = format!("Uid:\t{}\t", Config::default().zygote_uid);
    node.sandbox_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.contains(&zygote_uid)
                    && s.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .is_some_and(|ids| ids.split_whitespace().count() == 2)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_zygote_is_made_anew_and_its_dead_children_are_not_reused() {
    let Some(node) = start("zygdead", |_| {}).await else {
        return;
    };
    for name in ["a", "b"] {
        node.publish(name, 1, COUNTER, Function::default());
    }
    node.invoke("a", 1, "", 20_000).await.expect("a");
    let pids = zygote_pids(&node);
    assert_eq!(pids.len(), 1, "one zygote process: {pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the zygote");
    for _ in 0..500 {
        if zygote_pids(&node).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next cold start finds it dead and makes a new one.
    assert_eq!(
        result(&node.invoke("b", 1, "", 20_000).await.expect("b")),
        1
    );
    let status = node.status().await;
    assert_eq!(status.zygote_forks_total, 2, "{status:?}");
    let new = zygote_pids(&node);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, pids);
    // a's sandbox died with its zygote; its next call gets a new one.
    assert_eq!(
        result(&node.invoke("a", 1, "", 20_000).await.expect("a again")),
        1,
        "a new sandbox (its count starts again), not an error"
    );
    let status = node.status().await;
    assert_eq!(status.cold_starts_total, 3, "{status:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_import_cache_off_every_cold_start_is_fresh() {
    let Some(node) = start("zygoff", |c| {
        c.import_cache = sock_service::ImportCache::Off
    })
    .await
    else {
        return;
    };
    node.publish("a", 1, COUNTER, Function::default());
    assert_eq!(
        result(&node.invoke("a", 1, "", 20_000).await.expect("a")),
        1
    );
    let status = node.status().await;
    assert_eq!(
        (status.cold_starts_total, status.zygote_forks_total),
        (1, 0)
    );
    assert!(status.zygotes.is_empty(), "{status:?}");
    assert!(zygote_pids(&node).is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_does_not_wait_for_a_slow_zygote_and_later_calls_fork_from_it() {
    let Some(node) = start("zygslow", |_| {}).await else {
        return;
    };
    let (_, zygote) = package_node(&node, "slowpkg", "import time\ntime.sleep(6)\n");
    let seen = "import sys\nSEEN = 'slowpkg' in sys.modules\n\ndef f(event):\n    return SEEN\n";
    for name in ["first", "second"] {
        node.publish(
            name,
            1,
            seen,
            Function {
                zygote: Some(zygote.clone()),
                ..Function::default()
            },
        );
    }
    let first = node.invoke("first", 1, "", 4_000).await.expect("first");
    assert_eq!(
        result(&first),
        false,
        "forked from the root zygote, within the call's time"
    );
    let status = node
        .wait_for("the slow zygote started", |s| {
            s.zygotes.iter().any(|z| z.id == "root/slowpkg==1")
        })
        .await;
    assert_eq!(status.zygote_forks_total, 1, "{status:?}");
    let second = node.invoke("second", 1, "", 4_000).await.expect("second");
    assert_eq!(
        result(&second),
        true,
        "forked from the zygote that imported it"
    );
    let status = node.status().await;
    assert_eq!(status.zygote_forks_total, 2, "{status:?}");
    assert_eq!(
        zygotes(&status),
        [("root".to_string(), 2), ("root/slowpkg==1".to_string(), 1)],
        "first's sandbox and the child zygote are the root's children: {status:?}"
    );
    assert_eq!(status.zygote_start_failures_total, 0, "{status:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zygote_that_fails_to_start_is_not_retried_per_call_and_its_parent_serves() {
    // A back-off far longer than the test: every call below falls in it.
    let Some(node) = start("zygfail", |c| c.zygote_retry_ms = 600_000).await else {
        return;
    };
    let (_, zygote) = package_node(
        &node,
        "brokenpkg",
        "raise ImportError('brokenpkg cannot be imported here')\n",
    );
    const CALLS: u64 = 4;
    for i in 0..CALLS {
        publish_under(&node, &format!("f{i}"), &zygote);
    }
    for i in 0..CALLS {
        let answer = node
            .invoke(&format!("f{i}"), 1, "", 20_000)
            .await
            .unwrap_or_else(|e| panic!("f{i}: {e}"));
        assert_eq!(result(&answer), 1, "f{i} answered");
    }
    let status = node.status().await;
    assert_eq!(
        status.zygote_start_failures_total, 1,
        "one start, then the back-off: {status:?}"
    );
    assert_eq!(
        (status.cold_starts_total, status.zygote_forks_total),
        (CALLS, CALLS),
        "every cold start forked from the root zygote, none fresh: {status:?}"
    );
    assert_eq!(
        zygotes(&status),
        [("root".to_string(), u32::try_from(CALLS).expect("small"))],
        "{status:?}"
    );
    set_cache_tree(&node, &["root", "root/brokenpkg==1"]);
    let nodes = tree(&node, false).await;
    assert_eq!(
        tree_rows(&nodes),
        [
            ("root", 0, true, CALLS, 0),
            ("root/brokenpkg==1", 1, false, 0, CALLS)
        ],
        "each call wanted the broken zygote and its parent served: {nodes:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_fills_the_cache_tree_in_with_the_live_zygotes() {
    let Some(node) = start("zygtree", |_| {}).await else {
        return;
    };
    let (_, zygote) = package_node(&node, "goodpkg", "VALUE = 1\n");
    for name in ["a", "b"] {
        publish_under(&node, name, &zygote);
        let answer = node.invoke(name, 1, "", 20_000).await.expect(name);
        assert_eq!(result(&answer), 1, "{name} answered");
    }
    // The cache's tree no longer lists goodpkg's node (say, rebuilt since),
    // and lists one no zygote serves yet.
    set_cache_tree(&node, &["root", "root/absent==1"]);
    let nodes = tree(&node, true).await;
    assert_eq!(
        node.catalog.tree_rebuilds.load(Ordering::Relaxed),
        1,
        "rebuild reaches the cache"
    );
    assert_eq!(
        tree_rows(&nodes),
        [
            ("root", 0, true, 0, 0),
            ("root/absent==1", 1, false, 0, 0),
            ("root/goodpkg==1", 1, true, 2, 0),
        ],
        "goodpkg's zygote served both cold starts, and lives on: {nodes:?}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    for live in nodes.iter().filter(|n| n.live) {
        assert!(live.pss_kb > 0, "{live:?}");
        let ago_ms = now_ms.saturating_sub(u128::from(live.last_fork_unix_ms));
        assert!(ago_ms < 60_000, "forked during the test: {live:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_cold_starts_on_one_zygote_leaves_more_children_parked() {
    let Some(node) = start("zygburst", |_| {}).await else {
        return;
    };
    const CALLS: usize = 8;
    for i in 0..CALLS {
        node.publish(&format!("f{i}"), 1, COUNTER, Function::default());
    }
    let node = Arc::new(node);
    let calls = (0..CALLS).map(|i| {
        let node = node.clone();
        tokio::spawn(async move { node.invoke(&format!("f{i}"), 1, "", 20_000).await })
    });
    for (i, answer) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let answer = answer
            .expect("joins")
            .unwrap_or_else(|e| panic!("f{i}: {e}"));
        assert_eq!(result(&answer), 1, "f{i} answered");
    }
    // The refill runs after the burst, in the background.
    let started = std::time::Instant::now();
    let parked = loop {
        let status = node.status().await;
        let root = status.zygotes.iter().find(|z| z.id == "root").cloned();
        let parked = root.map_or(0, |z| z.parked);
        if parked > 1 || started.elapsed() > Duration::from_secs(10) {
            assert_eq!(status.zygote_forks_total, CALLS as u64, "{status:?}");
            break parked;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        (2..=4).contains(&parked),
        "{CALLS} concurrent cold starts: 2 to 4 children parked, not {parked}"
    );
    Arc::into_inner(node)
        .expect("the calls are done")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_that_fails_on_a_node_falls_back_to_its_ancestor_not_a_fresh_sandbox() {
    let Some(node) = start("forkfall", |_| {}).await else {
        return;
    };
    let (package, zygote) = package_node(&node, "leaving", "X = 1\n");
    for name in ["f0", "f1"] {
        publish_under(&node, name, &zygote);
    }
    let first = node.invoke("f0", 1, "", 20_000).await.expect("f0");
    assert_eq!(result(&first), 1);
    // The node's zygote lives, but its children can no longer get its
    // package dir: forking from it fails from now on.
    std::fs::rename(&package, node.dir.path().join("packages/gone")).expect("move the dir away");
    let second = node.invoke("f1", 1, "", 20_000).await.expect("f1");
    assert_eq!(result(&second), 1, "f1 answered");
    let status = node.status().await;
    assert_eq!(
        (status.cold_starts_total, status.zygote_forks_total),
        (2, 2),
        "the second cold start forked from the root zygote, not a fresh sandbox: {status:?}"
    );
    node.stop().await;
}

/// A package dir `packages/<module>` holding `<module>.py` = `code`, and
/// the tree node `root/<module>==1` whose zygote imports it.
fn package_node(node: &Node, module: &str, code: &str) -> (PathBuf, ZygoteNode) {
    let package = node.dir.path().join("packages").join(module);
    std::fs::create_dir_all(&package).expect("mkdir package");
    std::fs::write(package.join(format!("{module}.py")), code).expect("write module");
    let zygote = ZygoteNode {
        id: format!("root/{module}==1"),
        package_dirs: vec![package.display().to_string()],
        imports: vec![module.into()],
    };
    (package, zygote)
}

/// Publishes `name` (version 1, COUNTER) as one `zygote`'s children serve.
fn publish_under(node: &Node, name: &str, zygote: &ZygoteNode) {
    node.publish(
        name,
        1,
        COUNTER,
        Function {
            zygote: Some(zygote.clone()),
            ..Function::default()
        },
    );
}

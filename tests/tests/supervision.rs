//! `sock up` keeps the suite running: each service SIGKILLed in turn comes
//! back (a new pid in endpoints.json once it answers health), calls work
//! again and nothing pushed is lost; sandboxd's successor leaves nothing
//! of the dead one's sandboxes. A service that cannot run at all stops the
//! suite after its allowed tries, with a message naming it and no process
//! left.
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sock_proto::v1::GetFunctionRequest;
use sock_testkit::cluster::{Cluster, have_root, leftover_cgroups, sandbox_pids};
use tonic::Code;

/// Bound on each wait for the suite to recover (not a figure under test).
const RECOVERY: Duration = Duration::from_secs(60);
const ECHO: &str = "def f(event):\n    return event\n";

fn pid(raw: u32) -> Pid {
    Pid::from_raw(i32::try_from(raw).expect("pid fits i32"))
}

/// Gone, or a zombie no one reaped yet: either way it runs no more.
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| stat.contains(") Z "))
}

/// The effective uid `pid` runs as.
fn uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .expect("a Uid line");
    let effective = line.split_whitespace().nth(1).expect("effective uid");
    effective.parse().expect("a number")
}

/// Waits until `sock up` records a pid for `service` other than `old`.
async fn new_pid(cluster: &Cluster, service: &str, old: u32) -> u32 {
    let killed = Instant::now();
    loop {
        match cluster.pid(service) {
            Some(pid) if pid != old => return pid,
            _ => {
                assert!(
                    killed.elapsed() < RECOVERY,
                    "sock-{service} not back after {RECOVERY:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Calls `name` until it answers, allowing only the errors of a service
/// still reconnecting.
async fn call_until_it_answers(cluster: &Cluster, name: &str, payload: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        match cluster.call_json(name, 20_000).await {
            Ok(value) => return value,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    started.elapsed() < RECOVERY,
                    "{name} still failing after {RECOVERY:?}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{name} ({payload}) failed: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_killed_comes_back_and_nothing_is_lost() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let pushed = cluster.push("kept", &[("f.py", ECHO)]).await.expect("push");
    assert_eq!(
        cluster.call_json("kept", 20_000).await.expect("call"),
        serde_json::json!({})
    );

    for service in ["gateway", "registry", "cache", "sandboxd"] {
        let old = cluster.pid(service).expect("sock up records each pid");
        let user = uid(old);
        let sandboxes = sandbox_pids(&cluster.instance);
        if service == "sandboxd" {
            assert!(!sandboxes.is_empty(), "the calls left a sandbox");
        }
        kill(pid(old), Signal::SIGKILL).expect("kill -9");
        let back = new_pid(&cluster, service, old).await;
        let said = format!("sock-{service} exited (signal: 9 (SIGKILL)); restarting it in 500ms");
        assert!(
            cluster.up_stderr().contains(&said),
            "sock up did not say `{said}`"
        );
        assert_eq!(
            uid(back),
            user,
            "sock-{service} runs as the same user again"
        );
        if service == "sandboxd" {
            for pid in sandboxes {
                assert!(
                    gone(pid),
                    "process {pid} of the dead sandboxd's sandboxes survived"
                );
            }
        }

        // Calls work again, and the function pushed before is still
        // there, at the same version.
        assert_eq!(
            call_until_it_answers(&cluster, "kept", service).await,
            serde_json::json!({}),
            "after sock-{service} came back"
        );
        let function = cluster
            .registry()
            .await
            .get_function(GetFunctionRequest {
                name: "kept".into(),
            })
            .await
            .expect("still registered")
            .into_inner();
        assert_eq!(function.version, pushed, "after sock-{service} came back");
    }

    // New pushes work too.
    cluster
        .push("after", &[("f.py", ECHO)])
        .await
        .expect("push after the restarts");
    assert_eq!(
        call_until_it_answers(&cluster, "after", "new").await,
        serde_json::json!({})
    );
    let instance = cluster.instance.clone();
    assert!(cluster.stop().success(), "sock up exits cleanly on SIGTERM");
    assert_eq!(
        leftover_cgroups(&instance),
        Vec::<std::path::PathBuf>::new()
    );
}

/// Closes the registry's store to its user, so that every new run exits
/// at once (as one would on a broken disk, or with a config it refuses),
/// and kills the running one; answers the store, to open again at the end.
fn break_the_registry(cluster: &Cluster) -> std::path::PathBuf {
    let store = cluster.data_dir().join("registry");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let registry = cluster.pid("registry").expect("recorded");
    kill(pid(registry), Signal::SIGKILL).expect("kill -9");
    store
}

fn assert_nothing_left(cluster: &Cluster) {
    assert_eq!(
        cluster.processes(),
        Vec::<i32>::new(),
        "processes outlived sock up"
    );
    assert_eq!(sandbox_pids(&cluster.instance), Vec::<i32>::new());
    assert_eq!(
        leftover_cgroups(&cluster.instance),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_fails_fast_every_time_stops_the_suite() {
    if !have_root() {
        return;
    }
    let mut cluster = Cluster::start();
    assert_eq!(cluster.processes().len(), 4, "the four services");
    let store = break_the_registry(&cluster);

    let status = cluster.wait_exit(RECOVERY);
    assert!(!status.success(), "sock up gave up: {status}");
    let stderr = cluster.up_stderr();
    let gave_up = stderr
        .iter()
        .find(|line| line.starts_with("error: sock-registry ended 5 times in a row"))
        .unwrap_or_else(|| panic!("no message naming the registry: {stderr:#?}"));
    assert!(gave_up.contains("exited (exit status:"), "{gave_up}");
    // The kill and the three fast exits after it are restarted, each
    // after twice the delay before; the fifth fast exit gives up.
    let delays: Vec<&str> = stderr
        .iter()
        .filter(|line| line.starts_with("sock-registry exited ("))
        .filter_map(|line| line.split("; restarting it in ").nth(1))
        .collect();
    assert_eq!(delays, ["500ms", "1s", "2s", "4s"], "{stderr:#?}");
    assert_nothing_left(&cluster);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
}

/// SIGTERM while a service waits out its back-off (or, a moment later,
/// is starting again) stops everything as at any other time.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_service_is_backing_off_leaves_nothing_behind() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let store = break_the_registry(&cluster);
    let killed = Instant::now();
    while !cluster
        .up_stderr()
        .iter()
        .any(|line| line.starts_with("sock-registry exited (") && line.contains("restarting it in"))
    {
        assert!(
            killed.elapsed() < RECOVERY,
            "sock up did not report the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut cluster = cluster;
    let status = cluster.stop_in_place();
    assert!(
        status.success(),
        "sock up exits cleanly on SIGTERM: {status}"
    );
    assert_nothing_left(&cluster);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
}

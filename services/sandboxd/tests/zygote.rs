//! Zygotes and the sandboxes forked from them, driven through the library
//! API with package dirs the tests make. Needs root.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use sock_proto::v1::ErrorKind;
use sock_sandboxd::{Config, Limits, Outcome, SandboxSpec, Sandboxes, Zygote, ZygoteSpec};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A temp dir, a sandboxd instance of its own; dropping it kills every
/// sandbox and zygote and checks that sandboxd removed the cgroups (then
/// `instance` removes whatever a failed test left).
struct Fixture {
    dir: tempfile::TempDir,
    sandboxes: Option<Sandboxes>,
    instance: common::Instance,
}

fn fixture(test: &str) -> Option<Fixture> {
    if !common::have_root() {
        return None;
    }
    // What the sandboxes print (the zygote's and its children's setup
    // errors among it) shows with a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let instance = common::Instance::new(test);
    let config = Config {
        data_dir: dir.path().join("data"),
        instance: instance.name().to_string(),
        init_program: Some(env!("CARGO_BIN_EXE_sock-sandboxd").into()),
        ..Config::default()
    };
    let sandboxes = Sandboxes::new(config).expect("start sandboxes");
    Some(Fixture {
        dir,
        sandboxes: Some(sandboxes),
        instance,
    })
}

impl Fixture {
    fn sandboxes(&self) -> &Sandboxes {
        self.sandboxes.as_ref().expect("live until dropped")
    }

    /// A code dir `name` holding `f.py`.
    fn code(&self, name: &str, f_py: &str) -> PathBuf {
        let dir = self.dir.path().join("code").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir code");
        std::fs::write(dir.join("f.py"), f_py).expect("write f.py");
        dir
    }

    /// A package dir `name` with one module `module.py` of `source`.
    fn package(&self, name: &str, module: &str, source: &str) -> PathBuf {
        let dir = self.dir.path().join("packages").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir package");
        std::fs::write(dir.join(format!("{module}.py")), source).expect("write module");
        dir
    }

    fn spec(&self, code_dir: PathBuf) -> SandboxSpec {
        SandboxSpec {
            function: "test".into(),
            code_dir,
            ..SandboxSpec::default()
        }
    }

    async fn root(&self) -> Zygote {
        self.sandboxes()
            .create_zygote(
                &ZygoteSpec {
                    id: "root".into(),
                    ..ZygoteSpec::default()
                },
                TIMEOUT,
            )
            .await
            .expect("root zygote")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(sandboxes) = self.sandboxes.take() {
            sandboxes.close();
        }
        if !std::thread::panicking() {
            common::assert_no_cgroups(self.instance.name());
        }
    }
}

fn json(outcome: Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Result(body) => serde_json::from_slice(&body).expect("result is JSON"),
        other => panic!("function failed: {other:?}"),
    }
}

async fn call(sandbox: &mut sock_sandboxd::Sandbox, payload: &str) -> Outcome {
    sandbox
        .invoke("call", payload.as_bytes(), TIMEOUT)
        .await
        .expect("invoke")
}

const WHO_AM_I: &str = r#"
import os, sys

def f(event):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "root": sorted(os.listdir("/")),
        "ctypes_loaded": "ctypes" in sys.modules,
        "env": os.environ.get("GREETING"),
        "hostname": os.uname().nodename,
    }
"#;

#[tokio::test]
async fn a_child_of_the_root_zygote_runs_the_function_as_a_fresh_sandbox_would() {
    let Some(fx) = fixture("root-fork") else {
        return;
    };
    let zygote = fx.root().await;
    let mut spec = fx.spec(fx.code("who", WHO_AM_I));
    spec.environment = vec![("GREETING".into(), "hi".into())];
    let mut child = zygote.fork(spec.clone()).await.expect("fork");
    let mut sibling = zygote.fork(spec).await.expect("fork a sibling");
    assert_eq!(zygote.children(), 2);
    let got = json(call(&mut child, "{}").await);
    assert_eq!(got["pid"], 1, "{got}");
    assert_eq!(got["ppid"], 0, "{got}");
    // Each child a uid of its own from the function range: siblings share
    // no per-user quota and cannot signal each other.
    let first = u64::from(Config::default().function_uid_base);
    let uid = got["uid"].as_u64().expect("uid");
    assert!((first..first + 65_536).contains(&uid), "{got}");
    let sibling_uid = json(call(&mut sibling, "{}").await)["uid"].clone();
    assert_ne!(sibling_uid, got["uid"], "siblings share a uid: {got}");
    drop(sibling);
    assert_eq!(got["cwd"], "/code", "{got}");
    assert_eq!(got["env"], "hi", "{got}");
    assert_eq!(got["hostname"], "sandbox", "{got}");
    // Inherited from the zygote, never imported by the function.
    assert_eq!(got["ctypes_loaded"], true, "{got}");
    let root: Vec<&str> = got["root"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(root.contains(&"code") && root.contains(&"usr"), "{root:?}");
    assert!(
        !root.contains(&"root") && !root.contains(&"home"),
        "{root:?}"
    );
    // Warm: a second call in the same child.
    json(call(&mut child, "{}").await);
    child.destroy().await;
    assert_eq!(zygote.children(), 0);
    zygote.destroy().await;
}

/// A package whose import is seen: it records the moment in a global.
const MARKED: &str = r#"
import time
IMPORTED_AT = time.monotonic()
"#;

#[tokio::test]
async fn a_child_of_a_package_zygote_has_the_package_imported_before_its_entry_file() {
    let Some(fx) = fixture("chain") else {
        return;
    };
    let root = fx.root().await;
    let marked = fx.package("marked", "marked", MARKED);
    let other = fx.package("other", "other_mod", "VALUE = 7\n");
    let node = ZygoteSpec {
        id: "root/marked==1".into(),
        package_dirs: vec![marked.clone()],
        imports: vec!["marked".into()],
    };
    let zygote = root
        .fork_zygote(&node, TIMEOUT)
        .await
        .expect("child zygote");
    assert_eq!(root.children(), 1, "the child zygote counts as a child");
    // Checked at import time of f.py: the zygote imported it before.
    let f_py = r#"
import sys
SEEN_BEFORE_IMPORT = "marked" in sys.modules
import marked, other_mod

def f(event):
    return {"seen": SEEN_BEFORE_IMPORT, "other": other_mod.VALUE,
            "path": [p for p in sys.path if p.startswith("/packages")]}
"#;
    let mut spec = fx.spec(fx.code("uses-marked", f_py));
    // The function's closure: the node's package and one more of its own.
    spec.package_dirs = vec![marked, other];
    let mut child = zygote.fork(spec).await.expect("fork");
    let got = json(call(&mut child, "{}").await);
    assert_eq!(got["seen"], true, "{got}");
    assert_eq!(got["other"], 7, "{got}");
    assert_eq!(
        got["path"],
        serde_json::json!(["/packages/1", "/packages/0"]),
        "{got}"
    );
    // A function forked from the root zygote does not have it.
    let mut plain = root
        .fork(fx.spec(fx.code(
            "plain",
            "import sys\n\ndef f(event):\n    return 'marked' in sys.modules\n",
        )))
        .await
        .expect("fork from root");
    assert_eq!(json(call(&mut plain, "{}").await), false);
    child.destroy().await;
    plain.destroy().await;
    assert_eq!(zygote.children(), 0);
    zygote.destroy().await;
    assert_eq!(root.children(), 0);
}

/// The pids of processes in a cgroup dir.
fn pids(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

const PROBE: &str = r#"
import os, signal

def f(event):
    if event.get("hog"):
        hog = bytearray(event["hog"] << 20)
        return len(hog)
    if event.get("crash"):
        os._exit(7)
    errors = {}
    for pid in event["pids"]:
        try:
            os.kill(pid, signal.SIGKILL)
            errors[str(pid)] = "killed"
        except OSError as e:
            errors[str(pid)] = e.errno
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    # /proc/interrupts and /proc/keys exist on every kernel here (kcore
    # and sched_debug do not); masked, they read as /dev/null.
    masked_bytes = 0
    for path in ("/proc/interrupts", "/proc/keys"):
        with open(path, "rb") as masked:
            masked_bytes += len(masked.read(16))
    try:
        with open("/proc/sys/kernel/hostname", "w") as knob:
            knob.write("escaped")
        sys_write = "written"
    except OSError as e:
        sys_write = e.errno
    return {"errors": errors, "proc_pids": pids, "masked_bytes": masked_bytes, "sys_write": sys_write, "pid": os.getpid()}
"#;

#[tokio::test]
async fn children_cannot_see_or_signal_the_zygote_or_each_other_and_have_their_own_limits() {
    let Some(fx) = fixture("isolation") else {
        return;
    };
    let zygote = fx.root().await;
    let code = fx.code("probe", PROBE);
    let mut spec = fx.spec(code);
    spec.limits = Limits {
        memory_mb: 64,
        ..Limits::default()
    };
    let mut a = zygote.fork(spec.clone()).await.expect("fork a");
    let mut b = zygote.fork(spec.clone()).await.expect("fork b");
    let zygote_pids = pids(&zygote.cgroup_dirs());
    let b_pids = pids(b.cgroup_dirs());
    assert!(!zygote_pids.is_empty() && !b_pids.is_empty());
    // Each child lives in its own cgroup, not the zygote's.
    let a_pids = pids(a.cgroup_dirs());
    assert_eq!(a_pids.len(), 1, "{a_pids:?}");
    assert!(!zygote_pids.contains(&a_pids[0]));
    assert_eq!(
        std::fs::read_to_string(
            a.cgroup_dirs()
                .iter()
                .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
                .expect("memory cgroup")
                .join("memory.limit_in_bytes")
        )
        .expect("limit")
        .trim(),
        (64u64 << 20).to_string()
    );

    let targets: Vec<i32> = zygote_pids.iter().chain(&b_pids).copied().collect();
    let payload = serde_json::json!({ "pids": targets }).to_string();
    let got = json(call(&mut a, &payload).await);
    for pid in &targets {
        // ESRCH: no such process in the child's pid namespace.
        assert_eq!(got["errors"][pid.to_string()], 3, "pid {pid}: {got}");
    }
    assert_eq!(got["pid"], 1, "{got}");
    // Its own /proc: only its pid namespace, nothing of the host or the
    // zygote; the host's secrets masked and the knobs read-only.
    assert_eq!(got["proc_pids"], serde_json::json!([1]), "{got}");
    assert_eq!(
        got["masked_bytes"], 0,
        "/proc's host files are masked: {got}"
    );
    assert_eq!(
        got["sys_write"],
        libc::EROFS,
        "/proc/sys is read-only: {got}"
    );
    // b and the zygote are still there.
    json(call(&mut b, r#"{"pids": []}"#).await);

    // Over its own memory limit: OOM for a, nobody else is touched.
    let outcome = call(&mut a, r#"{"hog": 200}"#).await;
    let Outcome::Error(error) = outcome else {
        panic!("expected OOM, got {outcome:?}");
    };
    assert_eq!(error.kind(), ErrorKind::OutOfMemory, "{error:?}");
    // A crash: the zygote keeps serving.
    let outcome = call(&mut b, r#"{"crash": true}"#).await;
    let Outcome::Error(error) = outcome else {
        panic!("expected a crash, got {outcome:?}");
    };
    assert_eq!(error.kind(), ErrorKind::Killed, "{error:?}");
    assert!(zygote.is_alive());
    let mut c = zygote.fork(spec).await.expect("fork after the crash");
    json(call(&mut c, r#"{"pids": []}"#).await);
    c.destroy().await;
    assert_eq!(zygote.children(), 0, "a and b are gone");
    zygote.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_forks_at_once_from_one_zygote_all_work() {
    let Some(fx) = fixture("concurrent") else {
        return;
    };
    let zygote = fx.root().await;
    let code = fx.code("echo", "def f(event):\n    return event\n");
    let forks = (0..8).map(|i| {
        let spec = fx.spec(code.clone());
        let zygote = &zygote;
        async move {
            let mut child = zygote.fork(spec).await.expect("fork");
            let got = json(call(&mut child, &i.to_string()).await);
            child.destroy().await;
            got
        }
    });
    let got = futures::future::join_all(forks).await;
    assert_eq!(got, (0..8).map(serde_json::Value::from).collect::<Vec<_>>());
    assert_eq!(zygote.children(), 0);
    zygote.destroy().await;
}

#[tokio::test]
async fn a_dead_zygote_refuses_to_fork_and_says_so() {
    let Some(fx) = fixture("dead") else {
        return;
    };
    let zygote = fx.root().await;
    for pid in pids(&zygote.cgroup_dirs()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for _ in 0..500 {
        if !zygote.is_alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!zygote.is_alive());
    let err = zygote
        .fork(fx.spec(fx.code("echo", "def f(event):\n    return event\n")))
        .await
        .err()
        .expect("a dead zygote cannot fork");
    assert!(
        err.to_string().starts_with("zygote root could not fork"),
        "{err}"
    );
    assert_eq!(zygote.children(), 0);
}

#[tokio::test]
async fn a_parked_child_becomes_the_next_function_with_its_limits() {
    let Some(fx) = fixture("spare") else {
        return;
    };
    let zygote = fx.root().await;
    zygote.park_spare().await.expect("park a child");
    assert_eq!(
        zygote.children(),
        0,
        "a parked child is nobody's sandbox yet"
    );
    let mut spec = fx.spec(fx.code("who", WHO_AM_I));
    spec.environment = vec![("GREETING".into(), "parked".into())];
    spec.limits = Limits {
        memory_mb: 48,
        ..Limits::default()
    };
    let mut child = zygote.fork(spec.clone()).await.expect("fork");
    assert_eq!(zygote.children(), 1);
    let got = json(call(&mut child, "{}").await);
    assert_eq!(
        (&got["pid"], &got["cwd"], &got["env"]),
        (&1.into(), &"/code".into(), &"parked".into()),
        "{got}"
    );
    let memory = child
        .cgroup_dirs()
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
        .expect("memory cgroup")
        .join("memory.limit_in_bytes");
    assert_eq!(
        std::fs::read_to_string(memory).expect("limit").trim(),
        (48u64 << 20).to_string()
    );
    // The spare was used up: the next fork goes the long way, same result.
    let mut second = zygote.fork(spec).await.expect("second fork");
    assert_eq!(json(call(&mut second, "{}").await)["env"], "parked");
    child.destroy().await;
    second.destroy().await;
    // A parked child dies with its zygote, and its cgroup goes back.
    zygote.park_spare().await.expect("park another");
    zygote.destroy().await;
}

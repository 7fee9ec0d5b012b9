//! Real sandboxes, driven through the library API (no gRPC, no cache).
//! They need root; without it each test fails, unless SOCK_TEST_ALLOW_SKIP=1.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sock_proto::v1::{ErrorKind, FunctionError};
use sock_sandboxd::{Config, Limits, Outcome, SandboxSpec, Sandboxes};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A code dir with an `f.py`, a data dir and a sandboxd instance of its own
/// (so parallel tests never share cgroups). Dropping it removes them all.
struct Fixture {
    dir: tempfile::TempDir,
    sandboxes: Option<Sandboxes>,
    /// Dropped last: removes what a failed test left.
    instance: common::Instance,
}

fn fixture(test: &str, f_py: &str) -> Option<Fixture> {
    fixture_with(test, f_py, |_| {})
}

/// A fixture whose sandboxd config `adjust` changed first.
fn fixture_with(test: &str, f_py: &str, adjust: impl FnOnce(&mut Config)) -> Option<Fixture> {
    if !common::have_root() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let code = dir.path().join("code");
    std::fs::create_dir(&code).expect("mkdir code");
    std::fs::write(code.join("f.py"), f_py).expect("write f.py");
    let instance = common::Instance::new(test);
    let mut config = config(dir.path(), instance.name());
    adjust(&mut config);
    let sandboxes = Sandboxes::new(config).expect("start sandboxes");
    Some(Fixture {
        dir,
        sandboxes: Some(sandboxes),
        instance,
    })
}

fn config(dir: &Path, instance: &str) -> Config {
    Config {
        data_dir: dir.join("data"),
        instance: instance.into(),
        // Test binaries have no sandbox-init dispatch; the real binary does.
        init_program: Some(env!("CARGO_BIN_EXE_sock-sandboxd").into()),
        ..Config::default()
    }
}

impl Fixture {
    fn sandboxes(&self) -> &Sandboxes {
        self.sandboxes
            .as_ref()
            .expect("sandboxes live until finish")
    }

    fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            function: "test".into(),
            code_dir: self.dir.path().join("code"),
            ..SandboxSpec::default()
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One call in a fresh sandbox, destroyed afterwards; asserts its
    /// cgroups were emptied.
    async fn call_with(&self, spec: SandboxSpec, payload: &[u8], timeout: Duration) -> Outcome {
        let mut sandbox = self.sandboxes().create(spec).await.expect("create sandbox");
        let dirs = sandbox.cgroup_dirs().to_vec();
        assert!(!dirs.is_empty());
        assert!(dirs.iter().all(|d| d.is_dir()), "cgroups exist while alive");
        let outcome = sandbox
            .invoke("call-1", payload, timeout)
            .await
            .expect("invoke");
        sandbox.destroy().await;
        assert_empty(&dirs);
        assert_eq!(self.sandboxes().alive(), 0);
        outcome
    }

    async fn call(&self, payload: &[u8]) -> Outcome {
        self.call_with(self.spec(), payload, TIMEOUT).await
    }

    /// Shuts the instance down and checks it left no cgroup behind.
    fn finish(mut self) {
        if let Some(sandboxes) = self.sandboxes.take() {
            sandboxes.close();
        }
        common::assert_no_cgroups(self.instance.name());
    }
}

/// Cgroups are pooled: a destroyed sandbox's cgroup stays for the next
/// one, but holds no process.
fn assert_empty(dirs: &[PathBuf]) {
    for dir in dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        assert!(
            procs.trim().is_empty(),
            "{} still has {procs}",
            dir.display()
        );
    }
}

fn json(outcome: Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Result(body) => serde_json::from_slice(&body).expect("result is JSON"),
        Outcome::Error(e) => panic!("function failed: {e:?}"),
        Outcome::Http(r) => panic!("expected JSON, got an HTTP answer {r:?}"),
    }
}

fn failure(outcome: Outcome) -> FunctionError {
    match outcome {
        Outcome::Error(e) => e,
        Outcome::Result(body) => {
            panic!("expected a failure, got {}", String::from_utf8_lossy(&body))
        }
        Outcome::Http(r) => panic!("expected a failure, got an HTTP answer {r:?}"),
    }
}

#[tokio::test]
async fn echo_round_trip() {
    let Some(fx) = fixture("echo", "def f(event):\n    return event\n") else {
        return;
    };
    let outcome = fx.call(br#"{"hello": ["world", 1]}"#).await;
    assert_eq!(json(outcome), serde_json::json!({"hello": ["world", 1]}));
    fx.finish();
}

#[tokio::test]
async fn raising_function_reports_kind_message_and_traceback() {
    let f_py = "def check(event):\n    raise ValueError('bad input: ' + str(event))\n\ndef f(event):\n    check(event)\n";
    let Some(fx) = fixture("raise", f_py) else {
        return;
    };
    let error = failure(fx.call(b"7").await);
    assert_eq!(error.kind(), ErrorKind::Function);
    assert_eq!(error.message, "ValueError: bad input: 7");
    assert!(
        error.traceback.contains("/code/f.py"),
        "{}",
        error.traceback
    );
    assert!(error.traceback.contains("in check"), "{}", error.traceback);
    fx.finish();
}

#[tokio::test]
async fn host_files_are_invisible() {
    let f_py = r#"
import os

def f(paths):
    seen = {}
    for p in paths:
        try:
            if os.path.isdir(p):
                os.listdir(p)
            else:
                open(p, 'rb').read(1)
            seen[p] = 'readable'
        except OSError as e:
            seen[p] = type(e).__name__
    return seen
"#;
    let Some(fx) = fixture("hidden", f_py) else {
        return;
    };
    let secret = [
        "/root".to_string(),
        "/etc/shadow".to_string(),
        "/etc/ssl/private".to_string(),
        env!("CARGO_MANIFEST_DIR").to_string(),
        fx.data_dir().display().to_string(),
        fx.dir.path().display().to_string(),
    ];
    let mut paths = secret.to_vec();
    paths.push("/code/f.py".into());
    let payload = serde_json::to_vec(&paths).expect("payload");
    let seen = json(fx.call(&payload).await);
    for path in &secret {
        assert_ne!(seen[path], "readable", "{path} is visible: {seen}");
    }
    assert_eq!(seen["/code/f.py"], "readable", "{seen}");
    fx.finish();
}

#[tokio::test]
async fn only_tmp_is_writable() {
    let f_py = r#"
import errno

def f(paths):
    out = {}
    for p in paths:
        try:
            with open(p, 'w') as fh:
                fh.write('hi')
            out[p] = open(p).read()
        except OSError as e:
            out[p] = errno.errorcode[e.errno]
    return out
"#;
    let Some(fx) = fixture("readonly", f_py) else {
        return;
    };
    let paths = [
        "/x",
        "/code/x",
        "/code/f.py",
        "/etc/x",
        "/usr/x",
        "/sock/x",
        "/dev/x",
        "/tmp/x",
    ];
    let out = json(fx.call(&serde_json::to_vec(&paths).expect("payload")).await);
    assert_eq!(out["/tmp/x"], "hi", "{out}");
    for path in &paths[..paths.len() - 1] {
        assert!(
            out[path] == "EROFS" || out[path] == "EACCES",
            "{path} is writable: {out}"
        );
    }
    // Mounted read-only, not merely owned by root.
    assert_eq!(out["/code/f.py"], "EROFS", "{out}");
    fx.finish();
}

#[tokio::test]
async fn proc_shows_only_the_sandbox() {
    let f_py = r#"
import os

def f(event):
    pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
    cmdline = open('/proc/1/cmdline', 'rb').read().split(b'\0')
    return {'pids': pids, 'me': os.getpid(), 'pid1': [c.decode() for c in cmdline if c]}
"#;
    let Some(fx) = fixture("proc", f_py) else {
        return;
    };
    let out = json(fx.call(b"").await);
    assert_eq!(out["pids"], serde_json::json!([1]), "{out}");
    assert_eq!(out["me"], 1, "{out}");
    let pid1: Vec<String> = serde_json::from_value(out["pid1"].clone()).expect("argv");
    assert!(
        pid1.contains(&"/sock/sock_runtime.py".to_string()),
        "{pid1:?}"
    );
    fx.finish();
}

#[tokio::test]
async fn function_runs_unprivileged() {
    let f_py = r#"
import os

def f(event):
    status = dict(
        line.split(':\t', 1) for line in open('/proc/self/status').read().splitlines() if ':\t' in line
    )
    return {
        'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'groups': os.getgroups(),
        'CapEff': status['CapEff'].strip(), 'CapBnd': status['CapBnd'].strip(),
        'NoNewPrivs': status['NoNewPrivs'].strip(),
    }
"#;
    let Some(fx) = fixture("uid", f_py) else {
        return;
    };
    let out = json(fx.call(b"").await);
    // A uid of its own, from the function range, with the same gid.
    let config = Config::default();
    let uid = out["uid"].as_u64().expect("uid");
    let first = u64::from(config.function_uid_base);
    assert!(
        (first..first + u64::from(config.function_uids)).contains(&uid),
        "{out}"
    );
    assert_eq!(out["euid"], uid, "{out}");
    assert_eq!(out["gid"], uid, "{out}");
    assert_eq!(out["groups"], serde_json::json!([]), "{out}");
    assert_eq!(out["CapEff"], "0000000000000000", "{out}");
    assert_eq!(out["CapBnd"], "0000000000000000", "{out}");
    assert_eq!(out["NoNewPrivs"], "1", "{out}");
    fx.finish();
}

#[tokio::test]
async fn no_network_but_loopback() {
    let f_py = r#"
import socket

def f(event):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(('127.0.0.1', event['port']))
        connect = 'connected'
    except OSError as e:
        connect = type(e).__name__
    return {
        'connect': connect,
        # Not socket.if_nameindex(): it asks netlink, which seccomp refuses.
        'interfaces': [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]],
        'hostname': socket.gethostname(),
    }
"#;
    let Some(fx) = fixture("net", f_py) else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let out = json(fx.call(format!(r#"{{"port": {port}}}"#).as_bytes()).await);
    assert_ne!(out["connect"], "connected", "{out}");
    assert_eq!(out["interfaces"], serde_json::json!(["lo"]), "{out}");
    assert_eq!(out["hostname"], "sandbox", "{out}");
    assert!(
        listener.accept().is_err(),
        "the host's listener got a connection from the sandbox"
    );
    fx.finish();
}

#[tokio::test]
async fn timeout_destroys_the_sandbox() {
    let Some(fx) = fixture(
        "timeout",
        "import time\n\ndef f(event):\n    time.sleep(60)\n",
    ) else {
        return;
    };
    let mut sandbox = fx.sandboxes().create(fx.spec()).await.expect("create");
    let dirs = sandbox.cgroup_dirs().to_vec();
    let outcome = sandbox
        .invoke("slow", b"", Duration::from_millis(500))
        .await
        .expect("invoke");
    let error = failure(outcome);
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert_eq!(error.message, "function exceeded its timeout of 500 ms");
    // Gone already, before any explicit destroy.
    assert!(!sandbox.is_alive());
    assert_empty(&dirs);
    assert_eq!(fx.sandboxes().alive(), 0);
    let again = sandbox.invoke("again", b"", TIMEOUT).await;
    assert!(again.is_err(), "a destroyed sandbox must refuse calls");
    drop(sandbox);
    fx.finish();
}

#[tokio::test]
async fn running_out_of_memory_is_reported_with_the_limit() {
    let f_py = "def f(event):\n    hog = b'x' * (256 << 20)\n    return len(hog)\n";
    let Some(fx) = fixture("oom", f_py) else {
        return;
    };
    let spec = SandboxSpec {
        limits: Limits {
            memory_mb: 64,
            ..Limits::default()
        },
        ..fx.spec()
    };
    let error = failure(fx.call_with(spec, b"", TIMEOUT).await);
    assert_eq!(error.kind(), ErrorKind::OutOfMemory, "{error:?}");
    assert_eq!(error.message, "function ran out of memory (limit 64 MB)");
    fx.finish();
}

#[tokio::test]
async fn a_runtime_that_exits_is_reported_as_killed() {
    let Some(fx) = fixture("exit", "import os\n\ndef f(event):\n    os._exit(3)\n") else {
        return;
    };
    let error = failure(fx.call(b"").await);
    assert_eq!(error.kind(), ErrorKind::Killed);
    assert_eq!(error.message, "sandbox exited unexpectedly (exit status 3)");
    fx.finish();
}

#[tokio::test]
async fn environment_is_the_functions_and_not_the_hosts() {
    let f_py = "import os\n\ndef f(event):\n    return dict(os.environ)\n";
    let Some(fx) = fixture("env", f_py) else {
        return;
    };
    let spec = SandboxSpec {
        environment: vec![("GREETING".into(), "hello".into())],
        ..fx.spec()
    };
    let env = json(fx.call_with(spec, b"", TIMEOUT).await);
    assert_eq!(env["GREETING"], "hello", "{env}");
    assert_eq!(env["HOME"], "/tmp", "{env}");
    assert!(
        env.get("CARGO_MANIFEST_DIR").is_none(),
        "host env leaked: {env}"
    );
    fx.finish();
}

#[tokio::test]
async fn a_restart_removes_what_the_previous_run_left() {
    let Some(fx) = fixture("leftover", "def f(event):\n    return 1\n") else {
        return;
    };
    let sandbox = fx.sandboxes().create(fx.spec()).await.expect("create");
    let dirs = sandbox.cgroup_dirs().to_vec();
    // Simulate a crash: the sandbox is never destroyed by this process.
    std::mem::forget(sandbox);
    assert!(dirs.iter().all(|d| d.is_dir()));

    let pids: Vec<i32> = std::fs::read_to_string(dirs[0].join("cgroup.procs"))
        .expect("cgroup.procs")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    assert!(!pids.is_empty());

    let restarted = Sandboxes::new(config(fx.dir.path(), fx.instance.name())).expect("restart");
    assert_empty(&dirs);
    for pid in &pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "process {pid} of the old run is still running: {state}"
        );
    }
    assert_eq!(restarted.alive(), 0);
    // The forgotten init is still this process's child: reap it, as a
    // crashed sandboxd's would be reaped by whoever inherits it.
    for pid in pids {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
    drop(restarted);
    fx.finish();
}

#[tokio::test]
async fn dropping_a_sandbox_mid_call_destroys_it() {
    let Some(fx) = fixture("drop", "import time\n\ndef f(event):\n    time.sleep(60)\n") else {
        return;
    };
    let mut sandbox = fx.sandboxes().create(fx.spec()).await.expect("create");
    let dirs = sandbox.cgroup_dirs().to_vec();
    // The caller gives up (a cancelled gRPC call drops its future).
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        sandbox.invoke("c", b"", TIMEOUT),
    )
    .await;
    assert!(abandoned.is_err(), "the call cannot have finished");
    assert!(sandbox.is_alive());
    drop(sandbox);
    assert_empty(&dirs);
    assert_eq!(fx.sandboxes().alive(), 0);
    fx.finish();
}

/// Forks up to 100 sleepers and says how many it got before the pids
/// limit said no.
const FORK_BOMB: &str = r#"
import os, time

def f(event):
    forked = 0
    try:
        for _ in range(100):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            forked += 1
    except OSError as e:
        return {'forked': forked, 'error': type(e).__name__}
    return {'forked': forked, 'error': None}
"#;

#[tokio::test]
async fn fork_bombs_hit_the_pids_limit_and_die_with_the_sandbox() {
    let Some(fx) = fixture("pids", FORK_BOMB) else {
        return;
    };
    let spec = SandboxSpec {
        limits: Limits {
            pids: 16,
            ..Limits::default()
        },
        ..fx.spec()
    };
    // call_with also checks that destroy removed every forked process.
    let out = json(fx.call_with(spec, b"", TIMEOUT).await);
    assert_eq!(out["error"], "BlockingIOError", "{out}");
    assert!(out["forked"].as_u64().expect("count") < 16, "{out}");
    fx.finish();
}

#[tokio::test]
async fn limits_over_the_ceilings_get_the_ceilings() {
    // A spec that never passed the registry asks for far more than the
    // operator allows; the cgroup gets the ceilings and forks stop there.
    let Some(fx) = fixture_with("ceilings", FORK_BOMB, |config| {
        config.ceilings = sock_service::Ceilings {
            max_memory_mb: 96,
            max_pids: 8,
            max_cpu_percent: 50,
            ..sock_service::Ceilings::default()
        };
    }) else {
        return;
    };
    let greedy = SandboxSpec {
        limits: Limits {
            memory_mb: 4096,
            pids: 100_000,
            cpu_percent: 400,
        },
        ..fx.spec()
    };
    let read = |dirs: &[PathBuf], controller: &str, file: &str| -> String {
        let dir = dirs
            .iter()
            .find(|d| d.starts_with(Path::new("/sys/fs/cgroup").join(controller)))
            .expect("controller dir");
        std::fs::read_to_string(dir.join(file))
            .expect("cgroup file")
            .trim()
            .to_string()
    };
    let mut sandbox = fx.sandboxes().create(greedy).await.expect("create");
    let dirs = sandbox.cgroup_dirs().to_vec();
    assert_eq!(read(&dirs, "pids", "pids.max"), "8");
    assert_eq!(
        read(&dirs, "memory", "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(read(&dirs, "cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(sandbox.memory_mb(), 96, "the pool reserved the ceiling");
    let out = json(
        sandbox
            .invoke("call-1", b"", TIMEOUT)
            .await
            .expect("invoke"),
    );
    assert_eq!(out["error"], "BlockingIOError", "{out}");
    assert!(out["forked"].as_u64().expect("count") < 8, "{out}");
    sandbox.destroy().await;
    drop(sandbox);
    fx.finish();
}

#[tokio::test]
async fn denied_syscalls_fail_with_eperm_inside_python() {
    // Raw syscalls through ctypes, with arguments that would succeed or
    // fail differently (EFAULT, EBADF, a new pid) without the filter.
    let f_py = r#"
import ctypes, errno, os, threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == 0 and nr == 56:
        os._exit(0)  # a clone that got through: the child leaves at once
    if r == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return 'allowed'

CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
CALLS = {
    'mount': (165, 0, 0, 0, 0, 0), 'umount2': (166, 0, 0), 'pivot_root': (155, 0, 0),
    'ptrace': (101, 0, 0, 0, 0), 'kexec_load': (246, 0, 0, 0, 0),
    'init_module': (175, 0, 0, 0), 'finit_module': (313, -1, 0, 0),
    'delete_module': (176, 0, 0), 'bpf': (321, 0, 0, 0),
    'perf_event_open': (298, 0, 0, 0, -1, 0), 'keyctl': (250, 0, -3, 0),
    'add_key': (248, 0, 0, 0, 0, 0), 'unshare': (272, CLONE_NEWUSER),
    'setns': (308, -1, 0), 'reboot': (169, 0, 0, 0, 0), 'swapon': (167, 0, 0),
    'settimeofday': (164, 0, 0), 'clock_settime': (227, 0, 0), 'clock_adjtime': (305, 0, 0),
    'clone_newuser': (56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0), 'clone3': (435, 0, 0),
}

def f(event):
    out = {name: call(*args) for name, args in CALLS.items()}
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out['fork'] = os.waitpid(pid, 0)[1] >> 8
    box = []
    t = threading.Thread(target=lambda: box.append('ran'))
    t.start(); t.join()
    out['thread'] = box
    status = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
    out['seccomp'] = status['Seccomp'].strip()
    return out
"#;
    let Some(fx) = fixture("seccomp", f_py) else {
        return;
    };
    let out = json(fx.call(b"").await);
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "ptrace",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "unshare",
        "setns",
        "reboot",
        "swapon",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "clone_newuser",
    ] {
        assert_eq!(out[name], "EPERM", "{name}: {out}");
    }
    assert_eq!(out["clone3"], "ENOSYS", "{out}");
    assert_eq!(out["fork"], 7, "plain fork still works: {out}");
    assert_eq!(
        out["thread"],
        serde_json::json!(["ran"]),
        "threads still work: {out}"
    );
    assert_eq!(out["seccomp"], "2", "a filter is installed: {out}");
    fx.finish();
}

#[tokio::test]
async fn the_allow_list_refuses_the_attacks_and_lets_python_work() {
    // Each attack as a raw syscall with arguments that would get another
    // errno (EFAULT, EBADF, EINVAL) from the kernel without the filter; then
    // ordinary work, in the same sandbox, that the allow-list must cover.
    let f_py = r#"
import ctypes, errno, mmap, multiprocessing, os, select, socket, subprocess, threading, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == 0 and nr == 56:
        os._exit(0)  # a clone that got through: the child leaves at once
    if r == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return 'allowed'

CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
X32 = 0x40000000
ATTACKS = {
    'io_uring_setup': (425, 1, 0), 'pidfd_getfd': (438, -1, 0, 0), 'kcmp': (312, 1, 1, 0, 0, 0),
    'process_madvise': (440, -1, 0, 0, 0, 0), 'userfaultfd': (323, 1),  # UFFD_USER_MODE_ONLY: open to anyone without the filter
    'socket_vsock': (41, 40, 1, 0), 'socket_netlink': (41, 16, 3, 0), 'socket_packet': (41, 17, 3, 0),
    'socketpair_vsock': (53, 40, 1, 0, 0), 'x32_getpid': (39 | X32,), 'x32_mount': (165 | X32, 0, 0, 0, 0, 0),
    'unshare_newuser': (272, CLONE_NEWUSER), 'clone_newuser': (56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
    'clone3': (435, 0, 0),
}

def python_socket(family):
    try:
        socket.socket(family, socket.SOCK_DGRAM).close()
        return 'allowed'
    except OSError as e:
        return errno.errorcode[e.errno]

def child(conn):
    conn.send(os.getpid())
    conn.close()

def f(event):
    out = {name: call(*args) for name, args in ATTACKS.items()}
    out['python_vsock'] = python_socket(socket.AF_VSOCK)
    out['python_netlink'] = python_socket(socket.AF_NETLINK)
    ok = {}
    box = []
    t = threading.Thread(target=lambda: box.append(threading.get_native_id()))
    t.start(); t.join()
    ok['thread'] = len(box) == 1
    run = subprocess.run(['/usr/bin/python3', '-c', 'print(6 * 7)'], capture_output=True, text=True)
    ok['subprocess'] = run.stdout.strip() == '42'
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(('127.0.0.1', 0)); listener.listen()
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    client.sendall(b'ping')
    ok['inet_loopback'] = server.recv(4) == b'ping'
    a, b = socket.socketpair()
    a.sendall(b'x')
    ok['unix_socketpair'] = a.family == socket.AF_UNIX and b.recv(1) == b'x'
    m = mmap.mmap(-1, 1 << 20)
    m[:5] = b'hello'
    ok['mmap'] = m[:5] == b'hello'
    ok['getaddrinfo'] = any(ai[4][0] in ('127.0.0.1', '::1') for ai in socket.getaddrinfo('localhost', 80))
    # AI_ADDRCONFIG asks netlink first, and must cope with its refusal.
    flags = socket.AI_ADDRCONFIG
    ok['getaddrinfo_addrconfig'] = len(socket.getaddrinfo('localhost', 80, flags=flags)) > 0
    ok['time'] = time.time() > 1.6e9 and time.monotonic() > 0 and time.sleep(0.01) is None
    ok['urandom'] = len(os.urandom(32)) == 32
    a.sendall(b'y')
    ok['select'] = select.select([b], [], [], 5)[0] == [b]
    ep = select.epoll(); ep.register(b.fileno(), select.EPOLLIN)
    ok['epoll'] = len(ep.poll(5)) == 1
    parent, end = multiprocessing.Pipe()
    p = multiprocessing.get_context('fork').Process(target=child, args=(end,))
    p.start()
    pid = parent.recv() if parent.poll(10) else None
    p.join(10)
    ok['fork'] = pid not in (None, os.getpid()) and p.exitcode == 0
    out['ok'] = ok
    return out
"#;
    let Some(fx) = fixture("allowlist", f_py) else {
        return;
    };
    let out = json(fx.call(b"").await);
    for (name, errno) in [
        ("io_uring_setup", "EPERM"),
        ("pidfd_getfd", "EPERM"),
        ("kcmp", "EPERM"),
        ("process_madvise", "EPERM"),
        ("userfaultfd", "EPERM"),
        ("socket_vsock", "EAFNOSUPPORT"),
        ("socket_netlink", "EAFNOSUPPORT"),
        ("socket_packet", "EAFNOSUPPORT"),
        ("socketpair_vsock", "EAFNOSUPPORT"),
        ("python_vsock", "EAFNOSUPPORT"),
        ("python_netlink", "EAFNOSUPPORT"),
        ("x32_getpid", "ENOSYS"),
        ("x32_mount", "ENOSYS"),
        ("unshare_newuser", "EPERM"),
        ("clone_newuser", "EPERM"),
        ("clone3", "ENOSYS"),
    ] {
        assert_eq!(out[name], errno, "{name}: {out}");
    }
    for (name, worked) in out["ok"].as_object().expect("ok") {
        assert_eq!(worked, true, "{name} failed under the filter: {out}");
    }
    assert_eq!(out["ok"].as_object().expect("ok").len(), 12, "{out}");
    fx.finish();
}

#[tokio::test]
async fn rlimits_cap_open_files_and_core_dumps() {
    let f_py = r#"
import resource

def f(event):
    out = {
        'nofile': resource.getrlimit(resource.RLIMIT_NOFILE),
        'core': resource.getrlimit(resource.RLIMIT_CORE),
    }
    files = []
    try:
        while True:
            files.append(open('/dev/null'))
    except OSError as e:
        out['error'] = e.strerror
    out['opened'] = len(files)
    return out
"#;
    let Some(fx) = fixture("rlimits", f_py) else {
        return;
    };
    let out = json(fx.call(b"").await);
    assert_eq!(out["nofile"], serde_json::json!([1024, 1024]), "{out}");
    assert_eq!(out["core"], serde_json::json!([0, 0]), "{out}");
    assert_eq!(out["error"], "Too many open files", "{out}");
    assert!(out["opened"].as_u64().expect("count") < 1024, "{out}");
    fx.finish();
}

#[tokio::test]
async fn filling_tmp_gives_enospc_at_its_size() {
    let f_py = r#"
import errno

def f(event):
    written = 0
    chunk = b'x' * (1 << 20)
    try:
        with open('/tmp/fill', 'wb') as fh:
            while written < (1 << 30):
                fh.write(chunk)
                fh.flush()
                written += len(chunk)
    except OSError as e:
        return {'error': errno.errorcode[e.errno], 'written_mb': written >> 20}
    return {'error': None, 'written_mb': written >> 20}
"#;
    let Some(fx) = fixture("tmpfill", f_py) else {
        return;
    };
    let out = json(fx.call(b"").await);
    assert_eq!(out["error"], "ENOSPC", "{out}");
    let written = out["written_mb"].as_u64().expect("MB");
    assert!((60..=64).contains(&written), "{out}");
    fx.finish();
}

#[tokio::test]
async fn dev_holds_only_the_harmless_devices() {
    let f_py = r#"
import os

def f(event):
    out = {'dev': sorted(os.listdir('/dev'))}
    with open('/dev/null', 'w') as fh:
        fh.write('gone')
    out['zero'] = len(open('/dev/zero', 'rb').read(16))
    out['urandom'] = len(open('/dev/urandom', 'rb').read(16))
    try:
        with open('/dev/full', 'w') as fh:
            fh.write('x')
            fh.flush()
        out['full'] = 'written'
    except OSError as e:
        out['full'] = e.strerror
    for name in ('/dev/tty', '/dev/sda', '/dev/mem', '/dev/kmsg'):
        try:
            open(name, 'rb')
            out[name] = 'opened'
        except OSError as e:
            out[name] = type(e).__name__
    return out
"#;
    let Some(fx) = fixture("dev", f_py) else {
        return;
    };
    let out = json(fx.call(b"").await);
    assert_eq!(
        out["dev"],
        serde_json::json!([
            "fd", "full", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"
        ]),
        "{out}"
    );
    assert_eq!(out["zero"], 16, "{out}");
    assert_eq!(out["urandom"], 16, "{out}");
    assert_eq!(out["full"], "No space left on device", "{out}");
    for name in ["/dev/tty", "/dev/sda", "/dev/mem", "/dev/kmsg"] {
        assert_eq!(out[name], "FileNotFoundError", "{name}: {out}");
    }
    fx.finish();
}

#[tokio::test]
async fn a_recycled_cgroup_keeps_nothing_of_the_sandbox_before() {
    let f_py = r#"
import os

def f(event):
    if event == 'hog':
        hog = b'x' * (256 << 20)
    os._exit(3)
"#;
    let Some(fx) = fixture("recycle", f_py) else {
        return;
    };
    let read = |dir: &Path, file: &str| -> String {
        std::fs::read_to_string(dir.join(file))
            .expect("cgroup file")
            .trim()
            .to_string()
    };
    let strict = SandboxSpec {
        limits: Limits {
            memory_mb: 64,
            pids: 16,
            cpu_percent: 20,
        },
        ..fx.spec()
    };
    let mut first = fx.sandboxes().create(strict).await.expect("create");
    let first_dirs = first.cgroup_dirs().to_vec();
    let dir_of = |dirs: &[PathBuf], controller: &str| {
        dirs.iter()
            .find(|d| d.starts_with(Path::new("/sys/fs/cgroup").join(controller)))
            .expect("controller dir")
            .clone()
    };
    assert_eq!(
        read(&dir_of(&first_dirs, "cpu"), "cpu.cfs_quota_us"),
        "20000"
    );
    assert_eq!(read(&dir_of(&first_dirs, "pids"), "pids.max"), "16");
    let error = failure(
        first
            .invoke("hog", br#""hog""#, TIMEOUT)
            .await
            .expect("invoke"),
    );
    assert_eq!(error.kind(), ErrorKind::OutOfMemory, "{error:?}");
    first.destroy().await;

    let mut second = fx.sandboxes().create(fx.spec()).await.expect("create");
    let dirs = second.cgroup_dirs().to_vec();
    assert_eq!(dirs, first_dirs, "the cgroup was reused");
    // The default CPU quota: one CPU.
    assert_eq!(read(&dir_of(&dirs, "cpu"), "cpu.cfs_quota_us"), "100000");
    assert_eq!(read(&dir_of(&dirs, "pids"), "pids.max"), "32");
    assert_eq!(
        read(&dir_of(&dirs, "memory"), "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    // The earlier OOM kill is not this sandbox's.
    let error = failure(second.invoke("exit", b"", TIMEOUT).await.expect("invoke"));
    assert_eq!(error.kind(), ErrorKind::Killed, "{error:?}");
    assert_eq!(error.message, "sandbox exited unexpectedly (exit status 3)");
    second.destroy().await;
    // The sandboxes share the instance's state until dropped.
    drop((first, second));
    fx.finish();
}

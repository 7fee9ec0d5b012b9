//! One isolation suite, run against every way a sandbox is born: fresh
//! (Rust init, import cache off), forked from a zygote the long way, a
//! parked spare given a function, a child of a zygote whose package is
//! hostile, and the source-build sandbox (probes run by an sdist's build
//! backend). Each probe is a small piece of Python that performs an attack
//! and reports what happened as JSON; the Rust side checks that the attack
//! failed and that the daemon still answers an ordinary call after it.
//! A path's probes run in one sandbox born that way: its first call is a
//! cold start whose path is asserted (Status counters, and for a parked
//! spare the very process that was parked), the probes are warm calls.
//! Every probe runs on every path even when an earlier one fails, and the
//! test prints a table of them all before it fails, so one run says which
//! escape is open on which path. Needs root.
mod common;
#[path = "common/logs.rs"]
mod logs;
#[path = "common/node.rs"]
mod node;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pids_below;
use node::{Node, request};
use serde_json::{Value, json};
use sock_proto::v1::sandbox_invoke_response::Outcome;
use sock_proto::v1::{FunctionConfig, Limits, SandboxInvokeResponse, SourceBuild, ZygoteNode};
use sock_sandboxd::Config;
use sock_testkit::fake_cache::Function;
use tonic::{Response, Status};

const CALL_MS: u32 = 30_000;

/// The operator's ceilings on every node of this suite: the `greedy`
/// function asks far more, and must get exactly these.
const MAX_MEMORY_MB: u64 = 96;
const MAX_PIDS: u32 = 8;
const MAX_CPU_PERCENT: u32 = 50;

/// What the flood probe writes, and the most of it the node may keep: a
/// tenth, sandboxd's default per-call cap (`max_output_bytes_per_call`).
/// Without a cap the ring of 1000 lines per function keeps 8 MiB of it.
const FLOOD_BYTES: u64 = 10 << 20;
const FLOOD_KEPT_MAX: u64 = 1 << 20;
/// inotify instances the sandbox opens: more than the per-user limit of
/// this machine (`fs.inotify.max_user_instances`, 128).
const INOTIFY_INSTANCES: u64 = 200;

/// The probes, one module: `f(event)` runs `PROBES[event["probe"]]` with
/// `event["args"]`. The same file is every test function's `f.py` and the
/// source build's `probes.py`.
const PROBES_PY: &str = r#"
import ctypes, errno, json, mmap, os, socket, sys, time

# Modules a zygote imported before this file: what the child inherited.
PRELOADED = sorted(m for m in ("hostile", "forkhook") if m in sys.modules)

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
X32 = 0x40000000
HELD = []


def errname(code):
    return errno.errorcode.get(code, str(code))


def oserr(e):
    return errname(e.errno) if e.errno else type(e).__name__


def raw(nr, *args):
    """A raw syscall: ("ok", value) or the errno's name."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return ("ok", r) if r >= 0 else errname(ctypes.get_errno())


def outcome(result):
    """'allowed' (closing a returned fd when asked) or the errno's name."""
    return "allowed" if isinstance(result, tuple) else result


def fd_outcome(result):
    if isinstance(result, tuple):
        os.close(result[1])
        return "allowed"
    return result


def in_child(attack):
    """Runs `attack` in a forked child, so one that worked changes nothing
    of this sandbox; its JSON answer."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = json.dumps(attack())
            except BaseException as e:
                out = json.dumps({"crashed": repr(e)})
            with os.fdopen(w, "w") as fh:
                fh.write(out)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else {"crashed": "no answer"}


def status_fields(names):
    try:
        text = open("/proc/self/status").read()
    except OSError as e:
        return {"error": "no /proc/self/status: " + oserr(e)}
    fields = dict(l.split(":", 1) for l in text.splitlines() if ":" in l)
    return {n: fields.get(n, "").strip() for n in names}


def p_birth(args):
    return {"pid": os.getpid(), "preloaded": PRELOADED}


def p_identity(args):
    out = {"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups()}
    for name in ("uid_map", "gid_map"):
        try:
            out[name] = open(f"/proc/self/{name}").read()
        except OSError as e:
            out[name] = oserr(e)
    return out


def p_capabilities(args):
    return status_fields(["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"])


MASKED = ("kcore", "keys", "sched_debug", "timer_list", "sysrq-trigger")


def p_proc(args):
    out = {"mounted": os.path.exists("/proc/self/status")}
    try:
        out["listing"] = sorted(os.listdir("/proc"))[:20]
    except OSError as e:
        out["listing"] = oserr(e)
    if not out["mounted"]:
        return out
    proc_dev = os.stat("/proc").st_dev
    masked = {}
    for name in MASKED:
        path = "/proc/" + name
        try:
            st = os.stat(path)
        except OSError as e:
            masked[name] = {"stat": oserr(e)}
            continue
        entry = {"kernels": st.st_dev == proc_dev}
        try:
            with open(path, "rb") as fh:
                entry["read"] = len(fh.read(64))
        except OSError as e:
            entry["read"] = oserr(e)
        masked[name] = entry
    out["masked"] = masked
    try:
        out["sys_read_only"] = bool(os.statvfs("/proc/sys").f_flag & os.ST_RDONLY)
    except OSError as e:
        out["sys_read_only"] = oserr(e)
    try:
        os.close(os.open("/proc/sys/kernel/hostname", os.O_WRONLY))
        out["sys_open_for_write"] = "opened"
    except OSError as e:
        out["sys_open_for_write"] = oserr(e)
    return out


def p_host_paths(args):
    hidden = {}
    for path in args["hidden"]:
        try:
            os.lstat(path)
            hidden[path] = "visible"
        except OSError as e:
            hidden[path] = oserr(e)
    dirs = list(args["read_only"]) + [p for p in sys.path if p.startswith("/packages/")]
    writable = {}
    for d in dirs:
        if not os.path.isdir(d):
            writable[d] = "missing"
            continue
        try:
            with open(os.path.join(d, "isolation-probe-was-here"), "w") as fh:
                fh.write("x")
            writable[d] = "written"
        except OSError as e:
            writable[d] = oserr(e)
    for path in args.get("existing", []):
        try:
            open(path, "a").close()
            writable[path] = "opened for append"
        except OSError as e:
            writable[path] = oserr(e)
    return {"hidden": hidden, "writable": writable}


def p_mounts(args):
    def mount_tmpfs():
        r = libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)
        return "mounted" if r == 0 else errname(ctypes.get_errno())
    return {
        "mount_tmpfs": in_child(mount_tmpfs),
        "unshare_newuser": in_child(lambda: outcome(raw(272, CLONE_NEWUSER))),
        "unshare_newns": in_child(lambda: outcome(raw(272, CLONE_NEWNS))),
    }


def interfaces():
    """The interface names, by whatever way this sandbox allows: netlink,
    /proc/net/dev, or SIOCGIFCONF (which lists those with an IPv4 address)."""
    try:
        return sorted(name for _, name in socket.if_nameindex())
    except OSError:
        pass
    try:
        lines = open("/proc/net/dev").read().splitlines()[2:]
        return sorted(line.split(":")[0].strip() for line in lines)
    except OSError:
        pass
    import array, fcntl, struct
    buf = array.array("B", bytes(40 * 32))  # struct ifreq is 40 bytes
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifc = fcntl.ioctl(s.fileno(), 0x8912, struct.pack("iL", len(buf), buf.buffer_info()[0]))
    size = struct.unpack("iL", ifc)[0]
    data = buf.tobytes()[:size]
    return sorted({data[i:i + 16].split(b"\0", 1)[0].decode() for i in range(0, size, 40)})


def p_network(args):
    out = {"interfaces": interfaces(), "connect": {}}
    for host, port in args["targets"]:
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((host, port))
            got = "connected"
        except socket.timeout:
            got = "timeout"
        except OSError as e:
            got = oserr(e)
        finally:
            s.close()
        out["connect"][f"{host}:{port}"] = got
    return out


def p_pids(args):
    out = {"pid": os.getpid(), "kill0": {}}
    try:
        out["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError as e:
        out["proc_pids"] = oserr(e)
    for pid in args["targets"]:
        try:
            os.kill(pid, 0)
            out["kill0"][str(pid)] = "visible"
        except OSError as e:
            out["kill0"][str(pid)] = oserr(e)
    return out


def p_syscalls(args):
    out = {}
    # Arguments that succeed without a filter: a real params struct, this
    # process's own pidfd and pages, user-mode-only userfaultfd.
    params = ctypes.create_string_buffer(120)
    out["io_uring_setup"] = fd_outcome(raw(425, 1, ctypes.addressof(params)))
    pidfd = raw(434, os.getpid(), 0)
    fd = pidfd[1] if isinstance(pidfd, tuple) else -1
    out["pidfd_getfd"] = fd_outcome(raw(438, fd, 0, 0))
    page = mmap.mmap(-1, 4096)
    page[0] = 1
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    iov = (ctypes.c_size_t * 2)(base, 4096)
    out["process_madvise"] = outcome(raw(440, fd, ctypes.addressof(iov), 1, 20, 0))  # MADV_COLD
    if fd >= 0:
        os.close(fd)
    out["kcmp"] = outcome(raw(312, os.getpid(), os.getpid(), 0, 0, 0))  # KCMP_FILE
    out["userfaultfd"] = fd_outcome(raw(323, 1 | os.O_CLOEXEC))  # UFFD_USER_MODE_ONLY
    try:
        socket.socket(40, socket.SOCK_STREAM).close()  # AF_VSOCK
        out["socket_vsock"] = "allowed"
    except OSError as e:
        out["socket_vsock"] = oserr(e)
    out["x32_getpid"] = outcome(raw(39 | X32))
    out["x32_unshare_newuser"] = in_child(lambda: outcome(raw(272 | X32, CLONE_NEWUSER)))
    return out


def p_inotify_hold(args):
    error = None
    for _ in range(args["count"]):
        fd = libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            error = errname(ctypes.get_errno())
            break
        HELD.append(fd)
    return {"held": len(HELD), "error": error}


def p_inotify_release(args):
    released = len(HELD)
    for fd in HELD:
        os.close(fd)
    HELD.clear()
    return {"released": released}


def p_forge(args):
    nonce, victim = args["nonce"], args["victim_call"]
    for stream in (sys.stdout, sys.stderr):
        stream.write(f"before {nonce}\n\x1esock-call:{victim}\nforged {nonce}\n")
        stream.flush()
    print(f"done {nonce}", flush=True)
    return {"forged_under": victim}


def p_flood(args):
    line = "x" * 8191 + "\n"
    written, started = 0, time.monotonic()
    while written < args["bytes"]:
        sys.stdout.write(line)
        written += len(line)
    sys.stdout.flush()
    print(f"flood done {args['nonce']}", flush=True)
    return {"written": written, "seconds": round(time.monotonic() - started, 3)}


def p_fork_bomb(args):
    children, error = [], None
    try:
        for _ in range(100):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except OSError as e:
        error = type(e).__name__
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return {"forked": len(children), "error": error}


def p_hostile(args):
    import hostile
    return hostile.AT_IMPORT


def p_at_fork(args):
    import forkhook
    return forkhook.report()


PROBES = {name[2:]: fn for name, fn in list(globals().items()) if name.startswith("p_")}


def f(event):
    return PROBES[event["probe"]](event.get("args") or {})
"#;

/// The start of both hostile packages below: `forbidden()` tries what the
/// seccomp filter forbids and says what happened to each attempt.
const FORBIDDEN_PY: &str = r#"
import ctypes, errno, os, socket

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _name(code):
    return errno.errorcode.get(code, str(code))


def forbidden():
    out = {}
    params = ctypes.create_string_buffer(120)
    ctypes.set_errno(0)
    fd = _libc.syscall(ctypes.c_long(425), ctypes.c_long(1), ctypes.c_long(ctypes.addressof(params)))
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
        out["io_uring_setup"] = "allowed"
    else:
        out["io_uring_setup"] = _name(ctypes.get_errno())
    try:
        socket.socket(40, socket.SOCK_STREAM).close()
        out["socket_vsock"] = "allowed"
    except OSError as e:
        out["socket_vsock"] = _name(e.errno)
    return out
"#;

/// The hostile package: its import runs in the zygote that imports it, as
/// root of the zygote's user namespace. It tries what the zygote's own
/// filter must forbid and writes outside /tmp, from its import code and
/// from a thread it starts (and leaves running, so the zygote forks with
/// two threads); children inherit `AT_IMPORT` with what happened.
const HOSTILE_PY: &str = r#"
import os, threading, time


def _writes():
    out = {}
    for d in ("/", "/usr", "/etc", "/sock", "/dev", "/var/tmp", "/packages/0"):
        try:
            with open(os.path.join(d, "hostile-was-here"), "w") as fh:
                fh.write("x")
            out[d] = "written"
        except OSError as e:
            out[d] = _name(e.errno)
    return out


AT_IMPORT = {"import": forbidden(), "writes": _writes()}
_first = threading.Event()


def _linger():
    AT_IMPORT["thread"] = forbidden()
    _first.set()
    while True:
        time.sleep(3600)


threading.Thread(target=_linger, daemon=True).start()
_first.wait(10)
"#;

/// A package whose at-fork hook starts a thread in every child the zygote
/// forks, before the child's lockdown; the thread tries what the seccomp
/// filter forbids until the function asks, then once more.
const FORKHOOK_PY: &str = r#"
import os, threading, time

HOOKED = []
ATTEMPTS = []
_asked = threading.Event()
_answered = threading.Event()


def _forbidden():
    return {"uid": os.getuid(), **forbidden()}


def _attack():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        asked = _asked.is_set()
        try:
            got = _forbidden()
        except BaseException as e:
            got = {"crashed": repr(e)}
        got["after_call"] = asked
        if asked or len(ATTEMPTS) < 40:
            ATTEMPTS.append(got)
        if asked:
            _answered.set()
            return
        time.sleep(0.005)


def _in_child():
    HOOKED.append(os.getpid())
    threading.Thread(target=_attack, daemon=True).start()


os.register_at_fork(after_in_child=_in_child)


def report():
    if HOOKED:
        _asked.set()
        _answered.wait(10)
    return {"hooked": HOOKED, "attempts": ATTEMPTS}
"#;

/// The source build's backend: runs the probes (`probes.py`, the same
/// file as above) as the package's build code, with what the host knows
/// (`ARGS`); holds its inotify instances until the host has checked its
/// own (a file in /out, which the host sees below sandboxd's data dir);
/// and returns the answers inside the wheel, stored uncompressed between
/// markers so the fake cache finds them in the bytes sandboxd sends it.
const BACKEND_PY: &str = r#"
import json, os, time, zipfile
import probes

ARGS = json.loads(__ARGS__)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    results = {}
    for name, args in ARGS["probes"]:
        try:
            results[name] = probes.PROBES[name](args)
        except BaseException as e:
            results[name] = {"crashed": repr(e)}
    results["inotify_hold"] = probes.PROBES["inotify_hold"]({"count": ARGS["inotify"]})
    held, checked = "/out/inotify-held", "/out/inotify-checked"
    open(held, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(checked) and time.monotonic() < deadline:
        time.sleep(0.02)
    results["inotify_release"] = probes.PROBES["inotify_release"]({})
    for path in (held, checked):
        try:
            os.unlink(path)
        except OSError:
            pass
    info = "isoprobe-1.0.dist-info"
    files = {
        "isoprobe_results.txt": "ISOPROBE-BEGIN" + json.dumps(results) + "ISOPROBE-END",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: isoprobe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: sock-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/RECORD": "",
    }
    name = "isoprobe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_STORED) as whl:
        for path, text in files.items():
            whl.writestr(path, text)
    return name
"#;

// ---------------------------------------------------------------------------
// A node: sandboxd in this process, never pausing, with the suite's
// ceilings and a package every function mounts.

async fn start(test: &str, tune: impl FnOnce(&mut Config)) -> Option<Node> {
    let node = node::start(test, |config| {
        // Never paused: a paused sandbox's memory limit is shrunk, and the
        // ceilings probe reads it.
        config.pause_after_ms = 600_000;
        config.ceilings = sock_service::Ceilings {
            max_memory_mb: MAX_MEMORY_MB,
            max_pids: MAX_PIDS,
            max_cpu_percent: MAX_CPU_PERCENT,
            ..sock_service::Ceilings::default()
        };
        tune(config);
    })
    .await?;
    node.package("plain", "plain_mod", "VALUE = 1\n");
    Some(node)
}

impl Node {
    /// A package dir `name` holding `module.py`.
    fn package(&self, name: &str, module: &str, source: &str) -> PathBuf {
        let dir = self.dir.path().join("packages").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir package");
        std::fs::write(dir.join(format!("{module}.py")), source).expect("write module");
        dir
    }

    /// Publishes the probes as version 1 of function `name`; a file named
    /// after it in its code dir lets the host find its runtime
    /// (`runtime_pid`).
    fn publish_probes(&self, name: &str, mut function: Function) {
        function
            .package_dirs
            .push(self.dir.path().join("packages/plain").display().to_string());
        self.publish(name, 1, PROBES_PY, function);
        std::fs::write(self.code_dir(name, 1).join(marker(name)), "").expect("write marker");
    }

    async fn invoke(
        &self,
        name: &str,
        call_id: &str,
        payload: &Value,
        timeout_ms: u32,
    ) -> Result<SandboxInvokeResponse, Status> {
        self.client
            .clone()
            .invoke(request(name, 1, call_id, payload.to_string(), timeout_ms))
            .await
            .map(Response::into_inner)
    }

    /// Runs probe `probe` in function `name`: its JSON answer, or what went
    /// wrong instead.
    async fn probe(
        &self,
        name: &str,
        call_id: &str,
        probe: &str,
        args: Value,
    ) -> Result<Value, String> {
        let payload = json!({ "probe": probe, "args": args });
        match self.invoke(name, call_id, &payload, CALL_MS).await {
            Ok(response) => answer(&response),
            Err(status) => Err(format!("the call failed: {status:?}")),
        }
    }

    /// The port of the node's cache.
    fn cache_port(&self) -> u16 {
        self.config
            .cache_addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("the cache's port")
    }

    /// The pids in every cgroup of this instance.
    fn pids(&self) -> Vec<i32> {
        pids_below(&common::cgroup_dir("pids", &self.config.instance))
    }

    /// The host pid of function `name`'s runtime: the process of this
    /// node that is not host root and sees the function's code.
    fn runtime_pid(&self, name: &str) -> Option<i32> {
        self.pids().into_iter().find(|pid| {
            Path::new(&format!("/proc/{pid}/root/code/{}", marker(name))).exists()
                && host_status(*pid)
                    .get("Uid")
                    .is_some_and(|uid| !uid.starts_with("0\t"))
        })
    }

    /// Host pids of processes that run no function: zygotes, inits,
    /// parked children.
    fn non_function_pids(&self) -> Vec<i32> {
        self.pids()
            .into_iter()
            .filter(|pid| {
                let code = std::fs::read_dir(format!("/proc/{pid}/root/code"));
                !code
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".isolation-"))
            })
            .collect()
    }

    /// Waits (bounded) for the root zygote's parked child; its pid. It is
    /// pid 1 of a namespace of its own below the zygote's (three pids, the
    /// host's first), and runs no function yet. (The root zygote is the
    /// only zygote on these nodes.)
    async fn parked_child(&self) -> Option<i32> {
        for _ in 0..1000 {
            let parked = self.non_function_pids().into_iter().find(|pid| {
                host_status(*pid)
                    .get("NSpid")
                    .is_some_and(|ids| ids.split_whitespace().count() == 3)
            });
            if parked.is_some() {
                return parked;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

fn marker(name: &str) -> String {
    format!(".isolation-{name}")
}

fn answer(response: &SandboxInvokeResponse) -> Result<Value, String> {
    match &response.outcome {
        Some(Outcome::Result(body)) => {
            serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))
        }
        Some(Outcome::Error(error)) => Err(format!(
            "the function failed: {:?} {}\n{}",
            error.kind(),
            error.message,
            error.traceback
        )),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// `/proc/<pid>/status` as the host sees it: field → value.
fn host_status(pid: i32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// Birth paths.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Birth {
    /// Rust init, import cache off.
    Fresh,
    /// Forked from the root zygote the long way (no parked child to take).
    ZygoteChild,
    /// The root zygote's parked child, given the function.
    ParkedSpare,
    /// Forked from a zygote that imported the hostile package.
    HostileZygote,
}

const HOSTILE_ZYGOTE: &str = "root/hostile==1";
const FORKHOOK_ZYGOTE: &str = "root/forkhook==1";

impl Birth {
    fn name(self) -> &'static str {
        match self {
            Birth::Fresh => "fresh",
            Birth::ZygoteChild => "zygote child",
            Birth::ParkedSpare => "parked spare",
            Birth::HostileZygote => "hostile-package zygote child",
        }
    }

    fn tune(self, config: &mut Config) {
        if self == Birth::Fresh {
            config.import_cache = sock_service::ImportCache::Off;
        }
    }

    /// What a function of this path is, besides its limits.
    fn function(self, node: &Node) -> Function {
        match self {
            Birth::HostileZygote => {
                let dir =
                    node.package("hostile", "hostile", &format!("{FORBIDDEN_PY}{HOSTILE_PY}"));
                Function {
                    package_dirs: vec![dir.display().to_string()],
                    zygote: Some(importing(HOSTILE_ZYGOTE, &dir, "hostile")),
                    ..Function::default()
                }
            }
            _ => Function::default(),
        }
    }

    /// The first call of function `name`, a cold start by this path
    /// (asserted); the host pid of its runtime. Errors say how the path was
    /// not taken.
    async fn cold_start(self, node: &Node, name: &str) -> Result<i32, String> {
        let before = node.status().await;
        let parked = match self {
            Birth::ZygoteChild | Birth::ParkedSpare => {
                let pid = node
                    .parked_child()
                    .await
                    .ok_or("the root zygote parked no child")?;
                Some(pid)
            }
            _ => None,
        };
        if self == Birth::ZygoteChild
            && let Some(pid) = parked
        {
            // Without a parked child the fork goes the long way.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            for _ in 0..500 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let born = node
            .probe(name, &format!("{name}-birth"), "birth", json!({}))
            .await?;
        let after = node.status().await;
        let pid = node
            .runtime_pid(name)
            .ok_or_else(|| format!("no runtime of {name} found on the host"))?;
        let forks = after.zygote_forks_total - before.zygote_forks_total;
        let cold = after.cold_starts_total - before.cold_starts_total;
        if cold != 1 {
            return Err(format!("{cold} cold starts, not 1: {after:?}"));
        }
        match self {
            Birth::Fresh if forks != 0 => Err(format!("forked from a zygote: {after:?}")),
            Birth::ZygoteChild | Birth::ParkedSpare | Birth::HostileZygote if forks != 1 => Err(
                format!("not forked from a zygote (fresh instead?): {after:?}"),
            ),
            Birth::ZygoteChild if parked == Some(pid) => {
                Err(format!("the runtime {pid} is the parked child"))
            }
            Birth::ParkedSpare if parked != Some(pid) => Err(format!(
                "the runtime {pid} is not the parked child {parked:?}"
            )),
            Birth::HostileZygote
                if !after
                    .zygotes
                    .iter()
                    .any(|z| z.id == HOSTILE_ZYGOTE && z.children > 0) =>
            {
                Err(format!("{HOSTILE_ZYGOTE} has no child: {after:?}"))
            }
            Birth::HostileZygote if born["preloaded"] != json!(["hostile"]) => Err(format!(
                "the hostile package was not imported before the function: {born}"
            )),
            _ => Ok(pid),
        }
    }
}

/// The zygote `id`, which imports `module` from package dir `dir`.
fn importing(id: &str, dir: &Path, module: &str) -> ZygoteNode {
    ZygoteNode {
        id: id.into(),
        package_dirs: vec![dir.display().to_string()],
        imports: vec![module.into()],
    }
}

// ---------------------------------------------------------------------------
// The probes.

/// What the host knows when a probe runs.
struct Ctx {
    /// The probing function's runtime, as the host sees it.
    pid: i32,
    /// Its `/proc/<pid>/status` taken while it ran, for a process gone by
    /// the time the answers are checked (the build's).
    host: Option<HashMap<String, String>>,
    /// Another sandbox's runtime, and the node's processes that run no
    /// function (zygotes, inits, parked children).
    victim_pid: i32,
    others: Vec<i32>,
    cache_port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    /// Read-only dirs besides /code and /packages/N (the build's /in).
    read_only: Vec<&'static str>,
    /// Package dirs are mounted (every function here has one; a build has
    /// none).
    packages: bool,
}

type Check = fn(&Value, &Ctx) -> Result<(), String>;

/// A probe that is one call: its arguments and the check of its answer.
struct Probe {
    name: &'static str,
    args: fn(&Ctx) -> Value,
    check: Check,
    /// The table shows the answer of a pass too (the errnos the attacks
    /// got), where it is short.
    show: bool,
}

/// Every one-call probe, on every path (the build too).
const PROBES: &[Probe] = &[
    Probe {
        name: "identity",
        args: no_args,
        check: check_identity,
        show: false,
    },
    Probe {
        name: "capabilities",
        args: no_args,
        check: check_capabilities,
        show: false,
    },
    Probe {
        name: "proc",
        args: no_args,
        check: check_proc,
        show: false,
    },
    Probe {
        name: "host_paths",
        args: host_paths_args,
        check: check_host_paths,
        show: false,
    },
    Probe {
        name: "mounts",
        args: no_args,
        check: check_mounts,
        show: true,
    },
    Probe {
        name: "network",
        args: network_args,
        check: check_network,
        show: true,
    },
    Probe {
        name: "pids",
        args: pids_args,
        check: check_pids,
        show: true,
    },
    Probe {
        name: "syscalls",
        args: no_args,
        check: check_syscalls,
        show: true,
    },
];

fn no_args(_: &Ctx) -> Value {
    json!({})
}

fn check_identity(got: &Value, ctx: &Ctx) -> Result<(), String> {
    let mut wrong = Vec::new();
    for key in ["uid", "gid"] {
        if got[key]
            .as_array()
            .is_none_or(|ids| ids.iter().any(|id| id == 0))
        {
            wrong.push(format!("{key}s {} include 0", got[key]));
        }
    }
    if got["groups"] != json!([]) {
        wrong.push(format!("supplementary groups {}", got["groups"]));
    }
    // Inside a user namespace 65534 may still be host root: the host says.
    let host = ctx.host_status();
    for key in ["Uid", "Gid"] {
        let ids = host.get(key).cloned().unwrap_or_default();
        if ids.is_empty() || ids.split_whitespace().any(|id| id == "0") {
            wrong.push(format!("host {key} {ids:?}"));
        }
    }
    if host.get("Groups").is_some_and(|g| !g.is_empty()) {
        wrong.push(format!("host Groups {:?}", host["Groups"]));
    }
    verdict(wrong)
}

fn check_capabilities(got: &Value, ctx: &Ctx) -> Result<(), String> {
    const ZERO: &str = "0000000000000000";
    let mut wrong = Vec::new();
    if let Some(error) = got.get("error") {
        wrong.push(format!("inside: {error}"));
    } else {
        for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            if got[key] != ZERO {
                wrong.push(format!("{key} {}", got[key]));
            }
        }
    }
    let host = ctx.host_status();
    for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        if host.get(key).map(String::as_str) != Some(ZERO) {
            wrong.push(format!("host {key} {:?}", host.get(key)));
        }
    }
    verdict(wrong)
}

fn check_proc(got: &Value, _: &Ctx) -> Result<(), String> {
    if got["mounted"] != true {
        return Err(format!("no /proc (listing {})", got["listing"]));
    }
    let mut wrong = Vec::new();
    for (name, entry) in got["masked"].as_object().into_iter().flatten() {
        // Masked: gone, or something else (/dev/null, an empty file)
        // mounted over the kernel's file.
        if entry["kernels"] == true {
            wrong.push(format!(
                "/proc/{name} is the kernel's (read: {})",
                entry["read"]
            ));
        }
    }
    if got["sys_read_only"] != true {
        wrong.push(format!(
            "/proc/sys is not read-only ({}; open for write: {})",
            got["sys_read_only"], got["sys_open_for_write"]
        ));
    }
    verdict(wrong)
}

fn host_paths_args(ctx: &Ctx) -> Value {
    let mut read_only = vec!["/code", "/", "/usr", "/etc", "/sock", "/dev"];
    read_only.extend(&ctx.read_only);
    json!({
        "hidden": [
            "/etc/shadow",
            "/root",
            ctx.data_dir.display().to_string(),
            ctx.dir.display().to_string(),
            ctx.dir.join("code").display().to_string(),
            ctx.dir.join("packages").display().to_string(),
            env!("CARGO_MANIFEST_DIR"),
        ],
        "read_only": read_only,
        "existing": ["/code/f.py"],
    })
}

fn check_host_paths(got: &Value, ctx: &Ctx) -> Result<(), String> {
    let mut wrong = Vec::new();
    for (path, seen) in got["hidden"].as_object().into_iter().flatten() {
        if seen == "visible" {
            wrong.push(format!("{path} is visible"));
        }
    }
    let writable = got["writable"].as_object();
    for (path, outcome) in writable.into_iter().flatten() {
        if outcome == "written" || outcome == "opened for append" {
            wrong.push(format!("{path}: {outcome}"));
        }
    }
    if ctx.packages && !writable.is_some_and(|w| w.keys().any(|k| k.starts_with("/packages/"))) {
        wrong.push(format!("no package dir was tried: {got}"));
    }
    verdict(wrong)
}

fn check_mounts(got: &Value, _: &Ctx) -> Result<(), String> {
    let wrong = ["mount_tmpfs", "unshare_newuser", "unshare_newns"]
        .into_iter()
        .filter(|key| got[key] == "mounted" || got[key] == "allowed" || !got[key].is_string())
        .map(|key| format!("{key}: {}", got[key]))
        .collect();
    verdict(wrong)
}

fn network_args(ctx: &Ctx) -> Value {
    let mut targets = vec![
        json!(["169.254.169.254", 80]),
        json!(["8.8.8.8", 53]),
        // The host's loopback is not the sandbox's: the cache listens there.
        json!(["127.0.0.1", ctx.cache_port]),
    ];
    if let Some(ip) = host_ip() {
        targets.push(json!([ip, ctx.cache_port]));
    }
    json!({ "targets": targets })
}

/// The host's own address on its default route, if it has one (a UDP
/// connect sends nothing).
fn host_ip() -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("8.8.8.8:53").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

fn check_network(got: &Value, _: &Ctx) -> Result<(), String> {
    let mut wrong = Vec::new();
    if got["interfaces"] != json!(["lo"]) {
        wrong.push(format!("interfaces {}", got["interfaces"]));
    }
    for (target, outcome) in got["connect"].as_object().into_iter().flatten() {
        // No route, or (the host's loopback port) nobody there; a timeout
        // means packets left.
        let expected: &[&str] = if target.starts_with("127.") {
            &["ECONNREFUSED"]
        } else {
            &["ENETUNREACH", "EHOSTUNREACH", "EPERM", "EACCES"]
        };
        if !outcome.as_str().is_some_and(|o| expected.contains(&o)) {
            wrong.push(format!("{target}: {outcome}"));
        }
    }
    verdict(wrong)
}

fn pids_args(ctx: &Ctx) -> Value {
    let mut targets = vec![
        ctx.victim_pid,
        i32::try_from(std::process::id()).expect("pid"),
    ];
    // Host pids this low could be the sandbox's own pid numbers.
    targets.extend(ctx.others.iter().filter(|pid| **pid > 64));
    json!({ "targets": targets })
}

fn check_pids(got: &Value, ctx: &Ctx) -> Result<(), String> {
    let mut wrong = Vec::new();
    let nspid = ctx.host_status().get("NSpid").cloned().unwrap_or_default();
    if nspid.split_whitespace().count() < 2 {
        wrong.push(format!("host NSpid {nspid:?}: no pid namespace of its own"));
    }
    for (pid, outcome) in got["kill0"].as_object().into_iter().flatten() {
        if outcome != "ESRCH" {
            let whose = match pid.parse::<i32>() {
                Ok(p) if p == ctx.victim_pid => "another sandbox's runtime",
                Ok(p) if ctx.others.contains(&p) => "a zygote, init or parked child",
                _ => "sandboxd",
            };
            wrong.push(format!("kill({pid}, 0) of {whose}: {outcome}"));
        }
    }
    // /proc of its own namespace shows none of them (no /proc at all is
    // the proc probe's finding).
    let targets: Vec<Value> = got["kill0"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(pid, _)| pid.parse::<i32>().ok().map(Value::from))
        .collect();
    for pid in got["proc_pids"].as_array().into_iter().flatten() {
        if targets.contains(pid) {
            wrong.push(format!("/proc shows {pid}"));
        }
    }
    verdict(wrong)
}

fn check_syscalls(got: &Value, _: &Ctx) -> Result<(), String> {
    let wrong = got
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, outcome)| *outcome == "allowed" || !outcome.is_string())
        .map(|(name, outcome)| format!("{name}: {outcome}"))
        .collect();
    verdict(wrong)
}

impl Ctx {
    /// The prober's `/proc/<pid>/status` as the host sees it.
    fn host_status(&self) -> HashMap<String, String> {
        self.host.clone().unwrap_or_else(|| host_status(self.pid))
    }
}

fn verdict(wrong: Vec<String>) -> Result<(), String> {
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// Asks the host (root, as this test) for one inotify instance, in a
/// process of its own: an `Err` is the errno.
fn host_inotify() -> Result<(), String> {
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n\
             fd = libc.inotify_init1(0)\n\
             print('ok' if fd >= 0 else errno.errorcode[ctypes.get_errno()])",
        ])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "ok" => Ok(()),
        other => Err(other.to_string()),
    }
}

/// inotify instances are counted per user for the whole machine: only one
/// test may have a sandbox hold many at a time, or another's host check
/// would see them. The lock is on the sandboxd binary, which every test
/// process shares and which outlives them (no lock file is left behind).
fn inotify_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::File::open(env!("CARGO_BIN_EXE_sock-sandboxd")).expect("lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock")
}

// ---------------------------------------------------------------------------
// Running the suite on one path.

/// The probes' outcomes on one path, in order; printed as a table.
struct Findings {
    birth: &'static str,
    rows: Vec<(String, Result<String, String>)>,
}

impl Findings {
    /// A probe's outcome (a pass may carry a note), and whether the daemon
    /// still served an ordinary call after it.
    fn record(
        &mut self,
        probe: &str,
        outcome: Result<String, String>,
        serving: Result<(), String>,
    ) {
        let outcome = match (outcome, serving) {
            (outcome, Ok(())) => outcome,
            (Ok(_), Err(stopped)) => Err(stopped),
            (Err(what), Err(stopped)) => Err(format!("{what}; {stopped}")),
        };
        self.rows.push((probe.to_string(), outcome));
    }

    /// Prints the table, then fails naming every probe that got through.
    fn assert_all_resisted(self) {
        let mut table = format!("isolation probes, {}:\n", self.birth);
        for (probe, outcome) in &self.rows {
            let line = match outcome {
                Ok(note) if note.is_empty() => format!("  PASS  {probe}\n"),
                Ok(note) => format!("  PASS  {probe} ({note})\n"),
                Err(what) => format!("  FAIL  {probe}: {what}\n"),
            };
            table.push_str(&line);
        }
        eprintln!("{table}");
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter_map(|(probe, outcome)| {
                outcome
                    .as_ref()
                    .err()
                    .map(|what| format!("[{}] {probe}: {what}", self.birth))
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} probes got through on the {} path:\n{}",
            failed.len(),
            self.rows.len(),
            self.birth,
            failed.join("\n")
        );
    }
}

async fn resist_every_probe(test: &str, birth: Birth) {
    let Some(node) = start(test, |config| birth.tune(config)).await else {
        return;
    };
    let mut findings = Findings {
        birth: birth.name(),
        rows: Vec::new(),
    };
    let base = birth.function(&node);
    // The victim: another sandbox (and, on zygote paths, the call that makes
    // the zygote, which may or may not take a parked child).
    node.publish_probes("victim", base.clone());
    let victim_call = "victim-call";
    let victim = node.probe("victim", victim_call, "birth", json!({})).await;
    let Some(victim_pid) = node.runtime_pid("victim") else {
        let why = format!("the first call (another sandbox, and the zygote) failed: {victim:?}");
        findings.record("birth path taken", Err(why), Ok(()));
        findings.assert_all_resisted();
        return;
    };

    node.publish_probes("probe", base.clone());
    let pid = match birth.cold_start(&node, "probe").await {
        Ok(pid) => pid,
        Err(why) => {
            findings.record("birth path taken", Err(why), Ok(()));
            findings.assert_all_resisted();
            return;
        }
    };
    findings.record("birth path taken", Ok(String::new()), Ok(()));
    let ctx = Ctx {
        pid,
        victim_pid,
        others: node.non_function_pids(),
        cache_port: node.cache_port(),
        dir: node.dir.path().to_path_buf(),
        data_dir: node.dir.path().join("data"),
        read_only: Vec::new(),
        packages: true,
        host: None,
    };

    for probe in PROBES {
        let call_id = format!("probe-{}", probe.name);
        let got = node
            .probe("probe", &call_id, probe.name, (probe.args)(&ctx))
            .await;
        findings.record(probe.name, checked(probe, got, &ctx), serving(&node).await);
    }

    let outcome = inotify(&node).await;
    findings.record("inotify", outcome, serving(&node).await);
    let outcome = forged_marker(&node, victim_call).await;
    findings.record("forged call marker", outcome, serving(&node).await);
    let outcome = flood(&node).await;
    findings.record("output flood", outcome, serving(&node).await);
    let outcome = ceilings(&node, birth, &base).await;
    findings.record("limit ceilings", outcome, serving(&node).await);
    if birth == Birth::HostileZygote {
        let outcome = hostile_import(&node).await;
        findings.record("hostile import code", outcome, serving(&node).await);
        let outcome = at_fork_thread(&node).await;
        findings.record("threads at lockdown", outcome, serving(&node).await);
    }
    node.stop().await;
    findings.assert_all_resisted();
}

/// A one-call probe's answer, checked; the answer goes with a failure.
fn checked(probe: &Probe, got: Result<Value, String>, ctx: &Ctx) -> Result<String, String> {
    let got = got?;
    (probe.check)(&got, ctx)
        .map(|()| {
            if probe.show {
                got.to_string()
            } else {
                String::new()
            }
        })
        .map_err(|what| format!("{what}\n        answer: {got}"))
}

/// An ordinary call still works after a probe.
async fn serving(node: &Node) -> Result<(), String> {
    node.probe("victim", "victim-again", "birth", json!({}))
        .await
        .map(|_| ())
        .map_err(|e| format!("the daemon stopped serving: {e}"))
}

/// The sandbox opens more inotify instances than one user may; the host's
/// root must still get one: they are not charged to host uid 0.
async fn inotify(node: &Node) -> Result<String, String> {
    let _lock = tokio::task::block_in_place(inotify_lock);
    let held = node
        .probe(
            "probe",
            "probe-inotify",
            "inotify_hold",
            json!({ "count": INOTIFY_INSTANCES }),
        )
        .await?;
    let host = tokio::task::block_in_place(host_inotify);
    let released = node
        .probe(
            "probe",
            "probe-inotify-release",
            "inotify_release",
            json!({}),
        )
        .await;
    match host {
        Ok(()) => released.map(|_| format!("the sandbox held {held}")),
        Err(errno) => Err(format!(
            "host root could not create an inotify instance ({errno}) while the sandbox held {held}"
        )),
    }
}

/// A function prints another call's marker: no line may be filed under
/// that call.
async fn forged_marker(node: &Node, victim_call: &str) -> Result<String, String> {
    let nonce = uuid_like();
    let call_id = "probe-forge";
    node.probe(
        "probe",
        call_id,
        "forge",
        json!({ "nonce": nonce, "victim_call": victim_call }),
    )
    .await?;
    let done = format!("done {nonce}");
    let mut lines = Vec::new();
    for _ in 0..500 {
        lines = node.logs("probe").await;
        if lines.iter().any(|l| l.line.contains(&done)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut wrong: Vec<String> = lines
        .iter()
        .filter(|l| l.call_id == victim_call)
        .map(|l| format!("{:?} filed under {victim_call} ({})", l.line, l.stream))
        .collect();
    wrong.extend(
        lines
            .iter()
            .filter(|l| l.line.contains(&nonce) && l.call_id != call_id)
            .filter(|l| l.call_id != victim_call)
            .map(|l| format!("{:?} filed under {:?}", l.line, l.call_id)),
    );
    let kept = lines.iter().filter(|l| l.line.contains(&nonce)).count();
    verdict(wrong).map(|()| format!("{kept} of its lines kept, none under {victim_call}"))
}

/// A function writes 10 MiB at once: the node keeps at most a tenth.
async fn flood(node: &Node) -> Result<String, String> {
    let nonce = uuid_like();
    let call_id = "probe-flood";
    let got = node
        .probe(
            "probe",
            call_id,
            "flood",
            json!({ "bytes": FLOOD_BYTES, "nonce": nonce }),
        )
        .await;
    // The lines reach the ring after the answer: wait for the last one,
    // or for the count to stop growing (a cap may drop it).
    let done = format!("flood done {nonce}");
    let (mut kept, mut stable) = (0, 0);
    for _ in 0..200 {
        let lines = node.logs("probe").await;
        // Only the flood's own lines count: a cap may add a line saying
        // what it dropped.
        let now: u64 = lines
            .iter()
            .filter(|l| l.call_id == call_id && !l.line.is_empty())
            .filter(|l| l.line.bytes().all(|b| b == b'x'))
            .map(|l| l.line.len() as u64)
            .sum();
        if lines.iter().any(|l| l.line.contains(&done)) {
            kept = now;
            break;
        }
        stable = if now == kept { stable + 1 } else { 0 };
        kept = now;
        if stable >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if kept > FLOOD_KEPT_MAX {
        return Err(format!(
            "{kept} of {FLOOD_BYTES} bytes kept (at most {FLOOD_KEPT_MAX} allowed); the call: {got:?}"
        ));
    }
    Ok(format!("{kept} of {FLOOD_BYTES} bytes kept"))
}

/// A function asking far more than the ceilings gets the ceilings: in its
/// cgroup files, and its fork bomb stops there.
async fn ceilings(node: &Node, birth: Birth, base: &Function) -> Result<String, String> {
    node.publish_probes(
        "greedy",
        Function {
            config: FunctionConfig {
                limits: Some(Limits {
                    memory_mb: 4096,
                    pids: 100_000,
                    cpu_percent: 400,
                    timeout_ms: 0,
                }),
                ..FunctionConfig::default()
            },
            ..base.clone()
        },
    );
    let pid = birth
        .cold_start(node, "greedy")
        .await
        .map_err(|why| format!("greedy's birth: {why}"))?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("greedy's cgroups: {e}"))?;
    let read = |controller: &str, file: &str| -> String {
        cgroups
            .lines()
            .filter_map(|l| {
                let mut fields = l.splitn(3, ':').skip(1);
                fields.next().zip(fields.next())
            })
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
            .and_then(|(_, path)| {
                std::fs::read_to_string(
                    Path::new("/sys/fs/cgroup")
                        .join(controller)
                        .join(path.trim_start_matches('/'))
                        .join(file),
                )
                .ok()
            })
            .map_or_else(|| "unreadable".into(), |s| s.trim().to_string())
    };
    let mut wrong = Vec::new();
    let got = [
        (
            "memory.limit_in_bytes",
            read("memory", "memory.limit_in_bytes"),
            (MAX_MEMORY_MB << 20).to_string(),
        ),
        ("pids.max", read("pids", "pids.max"), MAX_PIDS.to_string()),
        (
            "cpu.cfs_quota_us",
            read("cpu", "cpu.cfs_quota_us"),
            (u64::from(MAX_CPU_PERCENT) * 1000).to_string(),
        ),
    ];
    for (file, value, ceiling) in got {
        if value != ceiling {
            wrong.push(format!("{file} {value}, not the ceiling {ceiling}"));
        }
    }
    let bomb = node
        .probe("greedy", "greedy-bomb", "fork_bomb", json!({}))
        .await?;
    if bomb["error"] != "BlockingIOError"
        || bomb["forked"]
            .as_u64()
            .is_none_or(|n| n >= u64::from(MAX_PIDS))
    {
        wrong.push(format!("fork bomb: {bomb}"));
    }
    verdict(wrong).map(|()| format!("fork bomb stopped at {}", bomb["forked"]))
}

/// What the hostile package's import code got in the zygote.
async fn hostile_import(node: &Node) -> Result<String, String> {
    let got = node
        .probe("probe", "probe-hostile", "hostile", json!({}))
        .await?;
    let mut wrong = Vec::new();
    for part in ["import", "thread", "writes"] {
        for (what, outcome) in got[part].as_object().into_iter().flatten() {
            if outcome == "allowed" || outcome == "written" {
                wrong.push(format!("{part}: {what} {outcome}"));
            }
        }
        if !got[part].is_object() {
            wrong.push(format!("{part}: no report"));
        }
    }
    let planted = node.dir.path().join("packages/hostile/hostile-was-here");
    if planted.exists() {
        wrong.push(format!("{} was written", planted.display()));
    }
    verdict(wrong)
        .map(|()| got.to_string())
        .map_err(|what| format!("{what}\n        answer: {got}"))
}

/// A thread the package's at-fork hook starts in the child tries what the
/// filter forbids, before and after lockdown. Passes if none got through:
/// the child was refused (the call ran fresh and the hook never ran) or
/// its lockdown covers that thread.
async fn at_fork_thread(node: &Node) -> Result<String, String> {
    let dir = node.package(
        "forkhook",
        "forkhook",
        &format!("{FORBIDDEN_PY}{FORKHOOK_PY}"),
    );
    node.publish_probes(
        "forkhook",
        Function {
            package_dirs: vec![dir.display().to_string()],
            zygote: Some(importing(FORKHOOK_ZYGOTE, &dir, "forkhook")),
            ..Function::default()
        },
    );
    let before = node.status().await.zygote_forks_total;
    let got = node
        .probe("forkhook", "forkhook-call", "at_fork", json!({}))
        .await?;
    let status = node.status().await;
    let forked = status.zygote_forks_total > before;
    if !status.zygotes.iter().any(|z| z.id == FORKHOOK_ZYGOTE) {
        return Err(format!(
            "{FORKHOOK_ZYGOTE} never started, so nothing was tried: {status:?}"
        ));
    }
    let attempts = got["attempts"].as_array().cloned().unwrap_or_default();
    let through: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["io_uring_setup"] == "allowed" || a["socket_vsock"] == "allowed")
        .collect();
    if through.is_empty() {
        // Which uid each attempt ran as says whether the hook's thread ran
        // before the lockdown (0: still root of the zygote's namespace).
        let uids: std::collections::BTreeSet<String> =
            attempts.iter().map(|a| a["uid"].to_string()).collect();
        return Ok(format!(
            "forked from {FORKHOOK_ZYGOTE}: {forked}; hook ran in pids {}; {} attempts as uids {uids:?}, none through; first: {}",
            got["hooked"],
            attempts.len(),
            attempts.first().unwrap_or(&Value::Null)
        ));
    }
    Err(format!(
        "{} of {} attempts by the hook's thread got through (forked from {FORKHOOK_ZYGOTE}: {forked}; hook ran in pids {}); after the call: {}; first: {}",
        through.len(),
        attempts.len(),
        got["hooked"],
        Value::from(
            attempts
                .iter()
                .filter(|a| a["after_call"] == true)
                .cloned()
                .collect::<Vec<_>>()
        ),
        through[0]
    ))
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_sandboxes_resist_every_probe() {
    resist_every_probe("fresh", Birth::Fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zygote_children_resist_every_probe() {
    resist_every_probe("zygote", Birth::ZygoteChild).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_spares_resist_every_probe() {
    resist_every_probe("spare", Birth::ParkedSpare).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_zygote_with_a_hostile_package_resist_every_probe() {
    resist_every_probe("hostile", Birth::HostileZygote).await;
}

/// The build sandbox: the probes run as an sdist's build backend (package
/// code, as root would run it for `pip wheel`), their answers come back in
/// the wheel sandboxd sends the (fake) cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_builds_resist_every_probe() {
    const REQUIREMENT: &str = "isoprobe==1.0";
    let Some(node) = start("build", |c| c.import_cache = sock_service::ImportCache::Off).await
    else {
        return;
    };
    let mut findings = Findings {
        birth: "source build",
        rows: Vec::new(),
    };
    node.publish_probes("victim", Function::default());
    node.probe("victim", "victim-call", "birth", json!({}))
        .await
        .expect("the victim answers");
    let mut ctx = Ctx {
        pid: 0,
        victim_pid: node.runtime_pid("victim").expect("the victim's runtime"),
        others: node.non_function_pids(),
        cache_port: node.cache_port(),
        dir: node.dir.path().to_path_buf(),
        data_dir: node.dir.path().join("data"),
        read_only: vec!["/in"],
        packages: false,
        host: None,
    };
    let probes: Vec<Value> = PROBES
        .iter()
        .map(|p| json!([p.name, (p.args)(&ctx)]))
        .collect();
    let args = json!({ "probes": probes, "inotify": INOTIFY_INSTANCES }).to_string();
    let backend = BACKEND_PY.replace("__ARGS__", &Value::from(args).to_string());
    let sdists = node.dir.path().join("sdists").join(REQUIREMENT);
    let file_name = sdist(&sdists, &backend);
    node.publish_probes(
        "built",
        Function {
            build: Some(SourceBuild {
                requirement: REQUIREMENT.into(),
                dir: sdists.display().to_string(),
                file_name,
            }),
            ..Function::default()
        },
    );

    // While the backend holds its inotify instances: the host's check, and
    // the build's pid for the host's view of it.
    let builds = node.dir.path().join("data/builds");
    let instance = node.config.instance.clone();
    let held = tokio::task::spawn_blocking(move || {
        let _lock = inotify_lock();
        for _ in 0..6000 {
            let dirs = std::fs::read_dir(&builds).into_iter().flatten().flatten();
            if let Some(out) = dirs
                .map(|e| e.path())
                .find(|d| d.join("inotify-held").exists())
            {
                let pid = pids_below(&Path::new("/sys/fs/cgroup/pids/sock").join(&instance))
                    .into_iter()
                    .find(|pid| {
                        Path::new(&format!("/proc/{pid}/root/out/inotify-held")).exists()
                            && host_status(*pid)
                                .get("Uid")
                                .is_some_and(|uid| !uid.starts_with("0\t"))
                    });
                let status = pid.map(host_status);
                let host = host_inotify();
                let _ = std::fs::write(out.join("inotify-checked"), "");
                return Some((pid, status, host));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    });
    let built = node
        .invoke("built", "built-call", &json!({ "probe": "birth" }), 180_000)
        .await;
    let held = held.await.expect("inotify task");
    let wheel = node
        .catalog
        .wheels
        .lock()
        .expect("catalog")
        .get(REQUIREMENT)
        .cloned();
    let Some(results) = wheel.as_deref().and_then(probe_results) else {
        findings.record(
            "birth path taken",
            Err(format!(
                "no wheel with the probes' answers came back; the call: {built:?}"
            )),
            Ok(()),
        );
        findings.assert_all_resisted();
        return;
    };
    let status = node.status().await;
    findings.record(
        "birth path taken",
        match (&built, status.zygote_forks_total) {
            (Ok(_), 0) => Ok("built, then served fresh".into()),
            other => Err(format!("the built function: {other:?}")),
        },
        Ok(()),
    );
    if let Some((Some(pid), status, _)) = &held {
        ctx.pid = *pid;
        ctx.host.clone_from(status);
    }
    for probe in PROBES {
        let got = match results.get(probe.name) {
            Some(got) if got.get("crashed").is_none() => Ok(got.clone()),
            Some(got) => Err(format!("the probe crashed: {got}")),
            None => Err("no answer".into()),
        };
        let got = match (ctx.pid, probe.name) {
            // The host's view needs the build's pid.
            (0, "identity" | "capabilities" | "pids") => {
                Err(format!("the build's pid was not found; answer: {got:?}"))
            }
            _ => got,
        };
        findings.record(probe.name, checked(probe, got, &ctx), serving(&node).await);
    }
    let inotify = match held {
        Some((_, _, Ok(()))) => Ok(format!("the build held {}", results["inotify_hold"])),
        Some((_, _, Err(errno))) => Err(format!(
            "host root could not create an inotify instance ({errno}) while the build held {}",
            results["inotify_hold"]
        )),
        None => Err(format!(
            "the build never held its instances: {}",
            results["inotify_hold"]
        )),
    };
    findings.record("inotify", inotify, serving(&node).await);
    node.stop().await;
    findings.assert_all_resisted();
}

/// The probes' answers, from the stored (uncompressed) file in the wheel.
fn probe_results(wheel: &[u8]) -> Option<HashMap<String, Value>> {
    let text = String::from_utf8_lossy(wheel);
    let start = text.find("ISOPROBE-BEGIN")? + "ISOPROBE-BEGIN".len();
    let end = start + text[start..].find("ISOPROBE-END")?;
    serde_json::from_str(&text[start..end]).ok()
}

/// Writes the sdist `isoprobe-1.0.tar.gz` into `dir`: an in-tree build
/// backend (no build requirements, so it builds offline) and the probes as
/// its module `probes`. Returns its file name.
fn sdist(dir: &Path, backend: &str) -> String {
    const SCRIPT: &str = r#"
import io, sys, tarfile
out, backend, probes = sys.argv[1:4]
base = "isoprobe-1.0"
files = {
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
    "backend.py": backend,
    "probes.py": probes,
    "PKG-INFO": "Metadata-Version: 2.1\nName: isoprobe\nVersion: 1.0\n",
}
with tarfile.open(f"{out}/{base}.tar.gz", "w:gz") as tar:
    for name, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo(f"{base}/{name}")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
"#;
    std::fs::create_dir_all(dir).expect("mkdir sdists");
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .arg(dir)
        .args([backend, PROBES_PY])
        .output()
        .expect("run python3 to write the sdist");
    assert!(
        output.status.success(),
        "writing the sdist failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    "isoprobe-1.0.tar.gz".into()
}

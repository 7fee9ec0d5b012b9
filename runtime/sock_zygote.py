"""sock's zygote: a runtime that imported a package set and forks children.

Started as `python3 -I -S -B sock_zygote.py CONFIG` with the control socket
as fd 3, as root of a user namespace of its own (sandboxd's init maps that
root to an unprivileged host uid). CONFIG is JSON: `package_dirs` (sandbox
paths, added to sys.path) and `imports` (modules imported once, here, so
every child has them already).

It says ready, then serves fork requests: one byte carrying the child's
fds (SCM_RIGHTS: socket, root, stdout, stderr, cgroup.procs files), then
a `fork` frame (ARCHITECTURE.md, "Zygotes"). A `spare` child gets only
its socket and cgroup files: it goes as far as its cgroup and namespaces,
says `parked`, and waits on its socket for the rest (root, stdout, stderr
and a function's `fork` frame), so a later fork skips those steps. The child, before any code of
the function runs: joins its own cgroup, chroots into the detached root
sandboxd built for it, unshares pid, network, ipc and uts namespaces and
forks once more so it is pid 1 there; then a function child drops to the
unprivileged uid with no capabilities, no_new_privs and the seccomp filter
(last), says `forked`, and serves calls as sock_runtime does. A zygote
child stays root of the user namespace, imports its own packages and
serves forks of its own.
"""

import ctypes
import fcntl
import gc
import importlib.util
import json
import os
import resource
import signal
import socket
import struct
import sys

_spec = importlib.util.spec_from_file_location(
    "sock_runtime", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sock_runtime.py")
)
runtime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runtime)

CONTROL_FD = 3
MAX_FDS = 16
NOFILE = 1024
HOSTNAME = b"sandbox"

CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40

libc = ctypes.CDLL(None, use_errno=True)


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def check(rc, what):
    if rc < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def prctl(option, arg, what):
    check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


def loopback_up():
    """A new network namespace has only `lo`, and it is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP | IFF_RUNNING))


def drop_bounding_set():
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) < 0:
            if ctypes.get_errno() == 22 and cap > 0:  # EINVAL: past the last one
                return
            check(-1, "drop capability bounding set")


_compiled = ([], [])


def compiled(programs):
    """The filters as the kernel takes them; built once per zygote, as
    every child gets the same ones."""
    if programs and _compiled[0] != programs:
        fprogs = []
        for program in programs:
            insns = (SockFilter * len(program))(*[SockFilter(*insn) for insn in program])
            fprogs.append((SockFprog(len(program), insns), insns))
        _compiled[0][:] = programs
        _compiled[1][:] = fprogs
    return _compiled[1]


def install_seccomp(programs):
    for prog, _insns in compiled(programs):
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def import_all(modules):
    for name in modules:
        importlib.import_module(name)


def enter(conn, cgroups, request):
    """The child's half of a fork, up to the point where it is pid 1 of its
    own namespaces, with its socket as fd 3."""
    if len(cgroups) != request["cgroups"]:
        raise RuntimeError(f"expected {request['cgroups']} cgroup fds, got {len(cgroups)}")
    for fd in cgroups:
        os.write(fd, b"0")  # 0: the writing process
        os.close(fd)
    check(libc.unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    if os.fork() != 0:
        # The zygote reaps the new pid 1 once this one is gone.
        os._exit(0)
    check(libc.sethostname(HOSTNAME, len(HOSTNAME)), "sethostname")
    loopback_up()
    os.dup2(conn, CONTROL_FD)
    os.close(conn)


def settle(root, out, err):
    """Its output pipes and root; nothing else stays open."""
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    os.closerange(CONTROL_FD + 1, NOFILE * 64)


def become_function(request):
    """Drops every privilege, then seccomp last."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    drop_bounding_set()
    os.setgroups([])
    gid, uid = request["gid"], request["uid"]
    os.setresgid(gid, gid, gid)
    # From root to another uid without keep-caps clears every capability.
    os.setresuid(uid, uid, uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    os.chdir("/code")
    os.environ.clear()
    for pair in request["environment"]:
        key, _, value = pair.partition("=")
        os.environ[key] = value
    install_seccomp(request["seccomp"])


def child(control, fds, request):
    """Runs in the forked child; never returns."""
    status = 0
    try:
        control.detach()
        os.close(CONTROL_FD)
        if request["kind"] == "spare":
            conn, *cgroups = fds
            enter(conn, cgroups, request)
            sock = socket.socket(fileno=CONTROL_FD)
            runtime.write_frame(sock, {"type": "parked"})
            # Parked until sandboxd has a function for it.
            msg, fds, _flags, _addr = socket.recv_fds(sock, 1, MAX_FDS)
            if not msg:
                return
            request, _ = runtime.read_frame(sock)
            settle(*fds)
        else:
            conn, root, out, err, *cgroups = fds
            enter(conn, cgroups, request)
            settle(root, out, err)
            sock = socket.socket(fileno=CONTROL_FD)
        if request["kind"] == "zygote":
            runtime.write_frame(sock, {"type": "forked"})
            sys.path[:0] = request["package_dirs"]
            import_all(request["imports"])
            serve_forks(sock)
        else:
            become_function(request)
            runtime.write_frame(sock, {"type": "forked"})
            runtime.serve(sock, "/code", request["entry_file"], request["package_dirs"])
    except (BrokenPipeError, ConnectionResetError, runtime.Closed):
        pass
    except BaseException as exc:  # noqa: BLE001 - whatever failed, the child must not return
        print(f"sock zygote: child setup failed: {runtime.describe(exc)}", file=sys.stderr)
        status = 125
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def fork(control, fds, request):
    # Built here, the filters are the children's for free.
    compiled(request["seccomp"])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if os.fork() == 0:
            child(control, fds, request)  # never returns
    finally:
        # The child has its copies; a failed fork closes the child's
        # socket here, which sandboxd sees as the fork failing.
        for fd in fds:
            os.close(fd)


def serve_forks(control):
    # Children are reaped by the kernel: the zygote never waits for one.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # What is imported now lives as long as the zygote: out of the garbage
    # collector's sight, a child's collections do not touch (and copy) the
    # pages it shares with the zygote.
    gc.collect()
    gc.freeze()
    runtime.write_frame(control, {"type": "ready"})
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(control, 1, MAX_FDS)
        except (ConnectionResetError, BrokenPipeError):
            return
        if not msg:
            return
        try:
            header, _ = runtime.read_frame(control)
        except runtime.Closed:
            return
        if header.get("type") != "fork":
            print(f"sock zygote: ignoring frame of type {header.get('type')!r}", file=sys.stderr)
            for fd in fds:
                os.close(fd)
            continue
        try:
            fork(control, fds, header)
        except OSError as exc:
            # The child's socket closes with its fds: sandboxd sees the fork
            # fail and starts a fresh sandbox instead.
            print(f"sock zygote: fork failed: {exc}", file=sys.stderr)


def main(argv):
    if len(argv) != 2:
        print("usage: sock_zygote.py CONFIG", file=sys.stderr)
        return 2
    config = json.loads(argv[1])
    sys.path[:0] = config["package_dirs"]
    import_all(config["imports"])
    control = socket.socket(fileno=CONTROL_FD)
    try:
        serve_forks(control)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""sock's zygote: a runtime that imported a package set and forks children.

Started as `python3 -I -S -B sock_zygote.py CONFIG` with the control socket
as fd 3, as root of a user namespace of its own (sandboxd's init maps that
root to an unprivileged host uid). CONFIG is JSON: `package_dirs` (sandbox
paths, added to sys.path) and `imports` (modules imported once, here, so
every child has them already).

It says ready, then serves fork requests: one byte carrying the child's
fds (SCM_RIGHTS), then a `fork` frame (crates/sandbox/src/protocol.rs). The
loop that reads them and forks, and everything a child does up to its
lockdown, is sock's Rust (`libsock_sandbox.so`, loaded here with ctypes):
the zygote runs no Python between forks, and no Python runs in a child, at-fork
hooks included, until it is in its cgroup, root and namespaces and locked
down. A `spare` child parks and gets its function
(root, output, then ids, environment and seccomp) over its own socket,
never through this process; a `zygote` child stays root of the user
namespace under the zygote filter, imports its own packages and serves
forks of its own.
"""

import ctypes
import gc
import importlib.util
import json
import os
import signal
import socket
import sys
import traceback  # noqa: F401 - imported once here, not by each forked function that fails

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("sock_runtime", os.path.join(_here, "sock_runtime.py"))
runtime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runtime)

CONTROL_FD = 3
# What the library may hand back: a function's request (sandboxd's limit
# for a frame header).
MAX_REQUEST = 64 << 10

# PyDLL: the GIL stays held across the call, so each fork happens with the
# interpreter in the state PyOS_BeforeFork put it in.
_lib = ctypes.PyDLL(os.path.join(_here, "libsock_sandbox.so"))
_lib.sock_zygote_serve.restype = ctypes.c_long
_lib.sock_zygote_serve.argtypes = [
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_size_t),
]
_api = ctypes.pythonapi
for _name in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child"):
    getattr(_api, _name).restype = None
    getattr(_api, _name).argtypes = []


def import_all(modules, sock):
    """Imports `modules`; when one fails, first tells sandboxd why over
    `sock`, so it can log the reason once and back off instead of seeing
    only a closed socket."""
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            try:
                runtime.write_frame(
                    sock,
                    runtime.error_header(
                        "function", f"importing {name} failed: {runtime.describe(exc)}", runtime.user_traceback(exc)
                    ),
                )
            except OSError:
                pass
            raise


def child(control, request):
    """Runs in the child, locked down already; never returns."""
    status = 0
    try:
        # The library closed the zygote's socket and put the child's on
        # fd 3; the old object must never close it.
        control.detach()
        sock = socket.socket(fileno=CONTROL_FD)
        if request["kind"] == "zygote":
            sys.path[:0] = request["package_dirs"]
            import_all(request["imports"], sock)
            serve_forks(sock)
        else:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.environ.clear()
            for pair in request["environment"]:
                key, _, value = pair.partition("=")
                os.environ[key] = value
            runtime.serve(sock, "/code", request["entry_file"], request["package_dirs"])
    except (BrokenPipeError, ConnectionResetError, runtime.Closed):
        pass
    except BaseException as exc:  # noqa: BLE001 - whatever failed, the child must not return
        print(f"sock zygote: child failed: {runtime.describe(exc)}", file=sys.stderr)
        status = 125
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def serve_forks(control):
    # Children are reaped by the kernel: the zygote never waits for one.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # What is imported now lives as long as the zygote: out of the garbage
    # collector's sight, a child's collections do not touch (and copy) the
    # pages it shares with the zygote.
    gc.collect()
    gc.freeze()
    runtime.write_frame(control, {"type": "ready"})
    sys.stdout.flush()
    sys.stderr.flush()
    # The loop is the library's: between forks the zygote runs no Python,
    # which would write (and so copy, once per fork, in the zygote's
    # cgroup) pages its children still share.
    served = ctypes.create_string_buffer(MAX_REQUEST)
    served_len = ctypes.c_size_t(0)
    status = _lib.sock_zygote_serve(
        ctypes.cast(_api.PyOS_BeforeFork, ctypes.c_void_p),
        ctypes.cast(_api.PyOS_AfterFork_Parent, ctypes.c_void_p),
        served,
        MAX_REQUEST,
        ctypes.byref(served_len),
    )
    if status == 0:
        _api.PyOS_AfterFork_Child()
        child(control, json.loads(served.raw[: served_len.value]))  # never returns
    if status < 0:
        raise OSError(-status, f"the zygote's fork loop: {os.strerror(-status)}")


def main(argv):
    if len(argv) != 2:
        print("usage: sock_zygote.py CONFIG", file=sys.stderr)
        return 2
    config = json.loads(argv[1])
    control = socket.socket(fileno=CONTROL_FD)
    sys.path[:0] = config["package_dirs"]
    import_all(config["imports"], control)
    try:
        serve_forks(control)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

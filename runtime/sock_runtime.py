"""sock's runtime: runs inside a sandbox and calls the function.

Started as `python3 -I -S -B sock_runtime.py CODE_DIR ENTRY_FILE [PACKAGE_DIR...]`
with one end of a socketpair as fd 3. It speaks the protocol of
ARCHITECTURE.md ("Sandbox ⇄ runtime protocol"): a frame is a 4-byte
big-endian length and a JSON header, then a 4-byte length and a raw body.

It imports the entry file once, says ready, then answers invoke frames
until sandboxd closes the socket. Everything the function prints goes to
stdout/stderr, which sandboxd logs; only frames go over fd 3.
"""

import importlib.util
import json
import os
import socket
import struct
import sys
import traceback

SOCKET_FD = 3
# Must match MAX_BODY_BYTES in services/sandboxd/src/protocol.rs.
MAX_RESULT_BYTES = 32 << 20
_LEN = struct.Struct(">I")


class Closed(Exception):
    """sandboxd closed the connection: time to exit."""


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise Closed()
        buf += chunk
    return bytes(buf)


def read_frame(sock):
    (header_len,) = _LEN.unpack(read_exact(sock, 4))
    header = json.loads(read_exact(sock, header_len))
    (body_len,) = _LEN.unpack(read_exact(sock, 4))
    return header, read_exact(sock, body_len)


def write_frame(sock, header, body=b""):
    encoded = json.dumps(header).encode()
    sock.sendall(_LEN.pack(len(encoded)) + encoded + _LEN.pack(len(body)) + body)


def error_header(kind, message, tb=""):
    return {"type": "error", "kind": kind, "message": message, "traceback": tb}


def describe(exc):
    """One line a user can act on, e.g. 'ZeroDivisionError: division by zero'."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def user_traceback(exc):
    """The traceback without this file's own frames, so it starts in user code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def load_entry(code_dir, entry_file):
    """Imports the entry file; returns (f, None) or (None, error header)."""
    path = os.path.join(code_dir, entry_file)
    name = os.path.splitext(os.path.basename(entry_file))[0]
    if not os.path.isfile(path):
        return None, error_header(
            "function", f"entry file {entry_file} does not exist in the function's bundle"
        )
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load entry file {entry_file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - any failure of user code is reported
        return None, error_header(
            "function", f"importing {entry_file} failed: {describe(exc)}", user_traceback(exc)
        )
    f = getattr(module, "f", None)
    if not callable(f):
        return None, error_header("function", f"{entry_file} defines no function f(event)")
    return f, None


def handle(f, load_error, body):
    """Runs one call; returns (header, body) of the answer."""
    if body.strip():
        try:
            event = json.loads(body)
        except ValueError as exc:
            return error_header("invalid_payload", f"payload is not valid JSON: {exc}"), b""
    else:
        event = None
    if load_error is not None:
        return load_error, b""
    try:
        result = f(event)
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: the call failed
        return error_header("function", describe(exc), user_traceback(exc)), b""
    try:
        encoded = json.dumps(result).encode()
    except (TypeError, ValueError) as exc:
        return (
            error_header("invalid_result", f"result of f(event) is not JSON serializable: {describe(exc)}"),
            b"",
        )
    if len(encoded) > MAX_RESULT_BYTES:
        return (
            error_header(
                "invalid_result",
                f"result of f(event) is {len(encoded)} bytes, over the limit of {MAX_RESULT_BYTES} bytes",
            ),
            b"",
        )
    return {"type": "result"}, encoded


def serve(sock, code_dir, entry_file, package_dirs):
    sys.path[:0] = [code_dir, *package_dirs]
    f, load_error = load_entry(code_dir, entry_file)
    write_frame(sock, {"type": "ready"})
    while True:
        try:
            header, body = read_frame(sock)
        except Closed:
            return
        if header.get("type") != "invoke":
            print(f"sock runtime: ignoring frame of type {header.get('type')!r}", file=sys.stderr)
            continue
        answer, result = handle(f, load_error, body)
        write_frame(sock, answer, result)
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv):
    if len(argv) < 3:
        print("usage: sock_runtime.py CODE_DIR ENTRY_FILE [PACKAGE_DIR...]", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=SOCKET_FD)
    try:
        serve(sock, argv[1], argv[2], argv[3:])
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

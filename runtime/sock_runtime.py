"""sock's runtime: runs inside a sandbox and calls the function.

Started as `python3 -I -S -B sock_runtime.py CODE_DIR ENTRY_FILE [PACKAGE_DIR...]`
with one end of a socketpair as fd 3. It speaks the protocol of
ARCHITECTURE.md ("Sandbox ⇄ runtime protocol"): a frame is a 4-byte
big-endian length and a JSON header, then a 4-byte length and a raw body.

It imports the entry file once (or, with OL_WSGI_ENTRY "module:app" in
its environment, the WSGI/ASGI app), says ready, then answers invoke and
http frames until sandboxd closes the socket. Everything the function prints goes to
stdout/stderr, which sandboxd logs, tagging each line with the call it was
serving when the line was read (it knows: it sends the calls); only frames
go over fd 3.
"""

import importlib
import importlib.util
import io
import json
import os
import socket
import struct
import sys
import traceback

SOCKET_FD = 3
# The largest result (or HTTP response body) answered; sandboxd's limits
# frame sets it before the first call, and sandboxd refuses larger replies
# anyway. This default is sandboxd's default max_result_bytes.
max_result_bytes = 6 << 20
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


def load_app(entry):
    """Imports "module:app"; returns (app, None) or (None, error header)."""
    module_name, _, attr = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # noqa: BLE001 - any failure of user code is reported
        return None, error_header(
            "function", f"importing {module_name} failed: {describe(exc)}", user_traceback(exc)
        )
    app = getattr(module, attr, None)
    if not callable(app):
        return None, error_header("function", f"{module_name} defines no callable {attr}")
    return app, None


def is_asgi(app):
    """ASGI apps are coroutine functions (or objects whose __call__ is one)."""
    # Imported here, not at the top: inspect and asyncio cost tens of
    # milliseconds of every fresh start, and only web apps need them.
    import inspect

    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        getattr(app, "__call__", None)
    )


def http_error(exc):
    return error_header("function", describe(exc), user_traceback(exc)), b""


def check_body(status, headers, body):
    if len(body) > max_result_bytes:
        return (
            error_header(
                "invalid_result",
                f"response body is {len(body)} bytes, over the limit of {max_result_bytes} bytes",
            ),
            b"",
        )
    return {"type": "http_response", "status": status, "headers": headers}, body


def call_wsgi(app, req, body):
    environ = {
        "REQUEST_METHOD": req["method"],
        "SCRIPT_NAME": req.get("root_path", ""),
        "PATH_INFO": req["path"],
        "QUERY_STRING": req["query"],
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in req["headers"]:
        key = name.upper().replace("-", "_")
        if key == "CONTENT_LENGTH":
            continue
        if key != "CONTENT_TYPE":
            key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    started = {}
    chunks = []

    def start_response(status, headers, exc_info=None):
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started["status"] = int(status.split(" ", 1)[0])
        started["headers"] = [[str(k), str(v)] for k, v in headers]
        return chunks.append

    try:
        result = app(environ, start_response)
        try:
            for chunk in result:
                chunks.append(chunk)
        finally:
            if hasattr(result, "close"):
                result.close()
        if "status" not in started:
            raise RuntimeError("the WSGI app returned without calling start_response")
    except BaseException as exc:  # noqa: BLE001 - the app failed
        return http_error(exc)
    return check_body(started["status"], started["headers"], b"".join(chunks))


def call_asgi(app, req, body):
    import asyncio  # see is_asgi: only ASGI apps pay for it

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": req["method"],
        "scheme": "http",
        "path": req["path"],
        "raw_path": req["path"].encode(),
        "query_string": req["query"].encode(),
        "root_path": req.get("root_path", ""),
        "headers": [(k.lower().encode(), v.encode()) for k, v in req["headers"]],
        "client": None,
        "server": None,
    }
    answer = {"status": None, "headers": [], "body": []}
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The request is complete; the client stays until the app answers.
        await asyncio.Event().wait()

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = int(message["status"])
            answer["headers"] = [
                [bytes(k).decode("latin-1"), bytes(v).decode("latin-1")]
                for k, v in message.get("headers", [])
            ]
        elif message["type"] == "http.response.body":
            answer["body"].append(bytes(message.get("body", b"")))

    try:
        asyncio.run(app(scope, receive, send))
        if answer["status"] is None:
            raise RuntimeError("the ASGI app returned without sending http.response.start")
    except BaseException as exc:  # noqa: BLE001 - the app failed
        return http_error(exc)
    return check_body(answer["status"], answer["headers"], b"".join(answer["body"]))


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
    if len(encoded) > max_result_bytes:
        return (
            error_header(
                "invalid_result",
                f"result of f(event) is {len(encoded)} bytes, over the limit of {max_result_bytes} bytes",
            ),
            b"",
        )
    return {"type": "result"}, encoded


def flush_output():
    """Puts what the call printed in the pipes before its answer goes out:
    sandboxd reads the pipes up to the answer as the call's output."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stream is the function's business


def serve(sock, code_dir, entry_file, package_dirs):
    global max_result_bytes
    sys.path[:0] = [code_dir, *package_dirs]
    wsgi_entry = os.environ.get("OL_WSGI_ENTRY", "")
    if wsgi_entry:
        app, load_error = load_app(wsgi_entry)
        asgi = app is not None and is_asgi(app)
    else:
        f, load_error = load_entry(code_dir, entry_file)
    # What importing printed is no call's: out before sandboxd's first call.
    flush_output()
    write_frame(sock, {"type": "ready"})
    while True:
        try:
            header, body = read_frame(sock)
        except Closed:
            return
        kind = header.get("type")
        if kind == "limits":
            max_result_bytes = header["max_result_bytes"]
            continue
        if kind == "invoke" and not wsgi_entry:
            answer, result = handle(f, load_error, body)
        elif kind == "http" and wsgi_entry:
            if load_error is not None:
                answer, result = load_error, b""
            elif asgi:
                answer, result = call_asgi(app, header, body)
            else:
                answer, result = call_wsgi(app, header, body)
        elif kind in ("invoke", "http"):
            serves = f"a WSGI/ASGI app ({wsgi_entry})" if wsgi_entry else "f(event)"
            how = "over HTTP" if wsgi_entry else "with a JSON event"
            answer = error_header("invalid_payload", f"this function serves {serves}; call it {how}")
            result = b""
        else:
            print(f"sock runtime: ignoring frame of type {kind!r}", file=sys.stderr)
            continue
        flush_output()
        write_frame(sock, answer, result)


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

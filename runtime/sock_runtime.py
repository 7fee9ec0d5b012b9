"""sock's runtime: runs inside a sandbox and calls the function.

Started as `python3 -I -S -B sock_runtime.py CODE_DIR ENTRY_FILE [PACKAGE_DIR...]`
with one end of a socketpair as fd 3. It speaks the protocol of
crates/sandbox/src/protocol.rs: a frame is a 4-byte
big-endian length and a JSON header, then a 4-byte length and a raw body.

It imports the entry file once and finds its entry point as OpenLambda's
runtime does (see discover: f(event), or a WSGI/ASGI app), says ready,
then answers invoke and http frames until sandboxd closes the socket; an
http frame of an f(event) function calls f with the body as the event. Everything the function prints goes to
stdout/stderr, which sandboxd logs, tagging each line with the call it was
serving when the line was read (it knows: it sends the calls); only frames
go over fd 3.
"""

# A fresh sandbox pays for every import here before its first answer:
# only what every call needs is imported at the top (traceback only when
# something failed; no socket or struct module, fd 3 is read and written
# as a plain fd).
import importlib
import importlib.util
import io
import json
import os
import sys

SOCKET_FD = 3
# The largest result (or HTTP response body) answered; sandboxd's limits
# frame sets it before the first call, and sandboxd refuses larger replies
# anyway. This default is sandboxd's default max_result_bytes.
max_result_bytes = 6 << 20


def _len(n):
    """A frame's 4-byte big-endian length."""
    return n.to_bytes(4, "big")


class Closed(Exception):
    """sandboxd closed the connection: time to exit."""


class Channel:
    """The socket on `fd`, with the two calls serve uses (a zygote's child
    passes a socket.socket instead)."""

    def __init__(self, fd):
        self.fd = fd

    def recv(self, n):
        return os.read(self.fd, n)

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise Closed()
        buf += chunk
    return bytes(buf)


def read_frame(sock):
    header_len = int.from_bytes(read_exact(sock, 4), "big")
    header = json.loads(read_exact(sock, header_len))
    body_len = int.from_bytes(read_exact(sock, 4), "big")
    return header, read_exact(sock, body_len)


def write_frame(sock, header, body=b""):
    encoded = json.dumps(header).encode()
    sock.sendall(_len(len(encoded)) + encoded + _len(len(body)) + body)


def error_header(kind, message, tb=""):
    return {"type": "error", "kind": kind, "message": message, "traceback": tb}


def describe(exc):
    """One line a user can act on, e.g. 'ZeroDivisionError: division by zero'."""
    import traceback

    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def user_traceback(exc):
    """The traceback without this file's own frames, so it starts in user code."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


# The kind of an error that keeps the function from starting (its entry
# file does not import or names no entry point): every call fails alike
# until the function is pushed again, unlike an error one call raised.
CANNOT_START = "cannot_start"


def import_entry(code_dir, entry_file):
    """Imports the entry file; returns (module, None) or (None, error header)."""
    path = os.path.join(code_dir, entry_file)
    name = os.path.splitext(os.path.basename(entry_file))[0]
    if not os.path.isfile(path):
        return None, error_header(
            CANNOT_START, f"entry file {entry_file} does not exist in the function's bundle"
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
            CANNOT_START, f"importing {entry_file} failed: {describe(exc)}", user_traceback(exc)
        )
    return module, None


def import_module(module_name):
    """Imports sock's "module:app" module by name, as the entry file."""
    try:
        return importlib.import_module(module_name), None
    except BaseException as exc:  # noqa: BLE001 - any failure of user code is reported
        return None, error_header(
            CANNOT_START, f"importing {module_name} failed: {describe(exc)}", user_traceback(exc)
        )


# What the entry point is, as OpenLambda's runtime names them.
FUNC, WSGI, ASGI = "func", "wsgi", "asgi"


def discover(code_dir, entry_file, environ):
    """Finds the entry point as OpenLambda's Python runtime does.

    OL_WSGI_ENTRY, else OL_ASGI_ENTRY, names an attribute of the entry
    file's module (sock also takes OL_WSGI_ENTRY "module:app", which
    imports that module instead, WSGI or ASGI by its signature); else f
    (f(event)) if the module defines it; else app, ASGI when it (or its
    __call__) is a coroutine function, WSGI otherwise. Returns
    (kind, entry, None) or (None, None, error header).
    """
    wsgi_entry = environ.get("OL_WSGI_ENTRY", "")
    asgi_entry = environ.get("OL_ASGI_ENTRY", "")
    module_name, colon, attr = wsgi_entry.partition(":")
    if colon:
        module, load_error = import_module(module_name)
        where = module_name
    else:
        module, load_error = import_entry(code_dir, entry_file)
        where = entry_file
    if load_error is not None:
        return None, None, load_error
    if colon or wsgi_entry or asgi_entry:
        name = attr if colon else wsgi_entry or asgi_entry
        app = getattr(module, name, None)
        if not callable(app):
            return None, None, error_header(CANNOT_START, f"{where} defines no callable {name}")
        if colon:
            return (ASGI if is_asgi(app) else WSGI), app, None
        return (WSGI if wsgi_entry else ASGI), app, None
    f = getattr(module, "f", None)
    if callable(f):
        return FUNC, f, None
    app = getattr(module, "app", None)
    if callable(app):
        return (ASGI if is_asgi(app) else WSGI), app, None
    return None, None, error_header(
        CANNOT_START,
        f"{entry_file} defines neither a function f(event) nor a WSGI/ASGI app named app "
        "(or name another with OL_WSGI_ENTRY or OL_ASGI_ENTRY in ol.yaml)",
    )


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


# OpenLambda's worker re-sends each request to its sandbox as
# http://root/run/<name>/…, so apps see the host "root" (Flask's
# request.url_root is http://root/run/<name>/): sock answers the same.
APP_HOST = "root"


def app_headers(req):
    """The request's headers as an app sees them: the client's Host
    replaced by OpenLambda's."""
    headers = [(k, v) for k, v in req["headers"] if k.lower() != "host"]
    return [("host", APP_HOST), *headers]


def call_wsgi(app, req, body):
    environ = {
        "REQUEST_METHOD": req["method"],
        "SCRIPT_NAME": req.get("root_path", ""),
        "PATH_INFO": req["path"],
        "QUERY_STRING": req["query"],
        "SERVER_NAME": APP_HOST,
        "SERVER_PORT": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in app_headers(req):
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
        "headers": [(k.lower().encode(), v.encode()) for k, v in app_headers(req)],
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


def handle(f, body):
    """Runs one call of f(event); returns (header, body) of the answer."""
    if body.strip():
        try:
            event = json.loads(body)
        except ValueError as exc:
            return error_header("invalid_payload", f"payload is not valid JSON: {exc}"), b""
    else:
        event = None
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


def handle_http(f, body):
    """An HTTP call of f(event): the body is the event and the JSON result
    the 200 answer, as OpenLambda's /run/<name> does it."""
    answer, result = handle(f, body)
    if answer["type"] != "result":
        return answer, result
    return {
        "type": "http_response",
        "status": 200,
        "headers": [["content-type", "application/json"]],
    }, result


def answer(kind, entry, frame, body):
    """The answer to an invoke or http frame, whatever the entry point is:
    the caller need not know (only importing the module tells)."""
    if frame["type"] == "http":
        if kind == FUNC:
            return handle_http(entry, body)
        return (call_asgi if kind == ASGI else call_wsgi)(entry, frame, body)
    if kind == FUNC:
        return handle(entry, body)
    return error_header(
        "invalid_payload",
        f"this function serves a {kind.upper()} app; call it over HTTP at /run/<name>",
    ), b""


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
    kind, entry, load_error = discover(code_dir, entry_file, os.environ)
    # What importing printed is no call's: out before sandboxd's first call.
    flush_output()
    write_frame(sock, {"type": "ready"})
    while True:
        try:
            header, body = read_frame(sock)
        except Closed:
            return
        frame = header.get("type")
        if frame == "limits":
            max_result_bytes = header["max_result_bytes"]
            continue
        if frame not in ("invoke", "http"):
            print(f"sock runtime: ignoring frame of type {frame!r}", file=sys.stderr)
            continue
        if load_error is not None:
            reply, result = load_error, b""
        else:
            reply, result = answer(kind, entry, header, body)
        flush_output()
        write_frame(sock, reply, result)


def main(argv):
    if len(argv) < 3:
        print("usage: sock_runtime.py CODE_DIR ENTRY_FILE [PACKAGE_DIR...]", file=sys.stderr)
        return 2
    try:
        serve(Channel(SOCKET_FD), argv[1], argv[2], argv[3:])
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

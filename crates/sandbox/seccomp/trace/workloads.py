"""Short workloads whose system calls the allow-list must cover, one per
package family: `python3 workloads.py NAME` (NAME: stdlib, numpy, pandas,
flask, fastapi, requests). trace.sh runs each under strace; run them under
the compiled filter to check a change (README.md)."""

import os
import sys
import tempfile


def stdlib():
    import asyncio, concurrent.futures, ctypes, hashlib, mmap, multiprocessing, select
    import shutil, signal, socket, sqlite3, subprocess, time, uuid, zlib

    out = subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True, check=True)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(abs, range(8)))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        pool.map(abs, range(8))
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    os.waitpid(pid, 0)
    a, b = socket.socketpair()
    a.send(b"x")
    select.select([b], [], [], 1)
    ep = select.epoll()
    ep.register(b.fileno(), select.EPOLLIN)
    ep.poll(1)
    listener = socket.socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.sendall(b"y")
    server.recv(1)
    m = mmap.mmap(-1, 1 << 20)
    m[:3] = b"abc"
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(os.path.join(d, "x.db"))
        db.execute("create table t(a)")
        db.commit()
        shutil.copy(os.path.join(d, "x.db"), os.path.join(d, "y.db"))

    async def subprocess_and_sleep():
        p = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await p.wait()
        await asyncio.sleep(0.01)

    asyncio.run(subprocess_and_sleep())
    signal.signal(signal.SIGALRM, lambda *a: None)
    signal.setitimer(signal.ITIMER_REAL, 0.01)
    time.sleep(0.05)
    print("stdlib ok", out.stdout.strip(), len(os.urandom(16)), uuid.uuid4().version,
          hashlib.sha256(b"x").hexdigest()[:4], len(zlib.compress(b"x" * 100)),
          ctypes.CDLL(None).getpid() == os.getpid(), socket.getaddrinfo("localhost", 80)[0][4],
          len(os.sched_getaffinity(0)))


def numpy():
    import numpy as np

    a = np.random.default_rng(0).standard_normal((400, 400))
    b = a @ a.T
    w = np.linalg.eigvalsh(b)
    x = np.linalg.solve(b + np.eye(400), np.ones(400))
    f = np.fft.fft(np.arange(1024))
    with tempfile.TemporaryDirectory() as d:
        np.save(os.path.join(d, "a.npy"), a)
        c = np.load(os.path.join(d, "a.npy"), mmap_mode="r")
        print("numpy ok", float(w[-1]) > 0, x.shape, f.shape, c.shape)


def pandas():
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"k": np.arange(1000) % 7, "v": np.random.default_rng(1).random(1000),
                       "t": pd.date_range("2024-01-01", periods=1000, freq="h", tz="Europe/Paris")})
    g = df.groupby("k")["v"].agg(["mean", "sum", "count"])
    with tempfile.TemporaryDirectory() as d:
        df.to_csv(os.path.join(d, "df.csv"), index=False)
        back = pd.read_csv(os.path.join(d, "df.csv"), parse_dates=["t"])
    m = df.merge(g, left_on="k", right_index=True)
    print("pandas ok", len(back), m.shape, df["t"].dt.tz_convert("UTC").iloc[0])


def flask():
    import threading

    import requests
    from flask import Flask, jsonify, request
    from werkzeug.serving import make_server

    app = Flask(__name__)

    @app.post("/echo")
    def echo():
        return jsonify(got=request.get_json())

    with app.test_client() as c:
        assert c.post("/echo", json={"a": 1}).get_json()["got"] == {"a": 1}
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    r = requests.post(f"http://127.0.0.1:{srv.server_port}/echo", json={"b": 2}, timeout=5)
    srv.shutdown()
    print("flask ok", r.status_code, r.json())


def fastapi():
    import asyncio, socket, threading, time

    import requests
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    app = FastAPI()

    class Item(BaseModel):
        name: str
        price: float

    @app.post("/items")
    async def items(item: Item):
        await asyncio.sleep(0.01)
        return {"name": item.name, "double": item.price * 2}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.02)
    port = sock.getsockname()[1]
    r = requests.post(f"http://127.0.0.1:{port}/items", json={"name": "x", "price": 2.5}, timeout=5)
    srv.should_exit = True
    t.join(5)
    print("fastapi ok", r.status_code, r.json())


def requests():
    import http.server, socket, ssl, threading

    import requests

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hi")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    r = requests.Session().get(f"http://localhost:{srv.server_port}/", timeout=5)
    srv.shutdown()
    print("requests ok", r.status_code, r.text, ssl.create_default_context().verify_mode,
          socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG)[0][4])


if __name__ == "__main__":
    globals()[sys.argv[1]]()

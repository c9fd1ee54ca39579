"""Continuous load on poolserve's http and grpc servers while the test upgrades the binary
(the test drives h2c itself with hyper's client: Python's h2 fails a request on the PING that
follows a graceful GOAWAY, python-hyper/h2#1199).

    upgrade_load.py HTTP_ADDR GRPC_ADDR DIR

One thread per protocol sends requests back to back, each answer checked:
- http: GET / on a new connection each time (Connection: close), so every request is also a
  connection the server must accept;
- grpc: poolserve.demo.Echo/Unary over one grpcio channel (which reconnects after a GOAWAY).

Prints "running" once every protocol has an answer. When DIR/mark appears, counts answers
anew and prints "marked" once every protocol has MARKED of them after it. Stops when DIR/stop
appears (or after LIMIT seconds) and prints one JSON line: per protocol, requests answered,
answered after the mark, and failures (with the first few errors).
"""

import http.client
import json
import os
import sys
import threading
import time

import grpc

LIMIT = 120
MARKED = 20
TIMEOUT = 10

http_addr, grpc_addr, workdir = sys.argv[1:4]
stop_file = os.path.join(workdir, "stop")
mark_file = os.path.join(workdir, "mark")
deadline = time.monotonic() + LIMIT
lock = threading.Lock()
stats = {p: {"ok": 0, "after_mark": 0, "failed": 0, "errors": []} for p in ("http", "grpc")}


def stopped():
    return os.path.exists(stop_file) or time.monotonic() > deadline


def record(proto, ok, error=None):
    marked = os.path.exists(mark_file)
    with lock:
        s = stats[proto]
        if ok:
            s["ok"] += 1
            if marked:
                s["after_mark"] += 1
        else:
            s["failed"] += 1
            if len(s["errors"]) < 5:
                s["errors"].append(error)


def http_loop():
    host, port = http_addr.rsplit(":", 1)
    while not stopped():
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
            conn.request("GET", "/", headers={"Connection": "close"})
            res = conn.getresponse()
            body = res.read()
            conn.close()
            record("http", res.status == 200, f"status {res.status}: {body[:80]!r}")
        except Exception as e:  # noqa: BLE001 - every failure is counted
            record("http", False, repr(e))


def grpc_loop():
    with grpc.insecure_channel(grpc_addr) as channel:
        unary = channel.unary_unary("/poolserve.demo.Echo/Unary")
        request = b"\x0a\x05hello"  # EchoRequest { message: "hello" }
        while not stopped():
            try:
                reply = unary(request, timeout=TIMEOUT)
                record("grpc", reply == request, f"reply {reply!r}")
            except Exception as e:  # noqa: BLE001
                record("grpc", False, repr(e))


threads = [threading.Thread(target=f, daemon=True) for f in (http_loop, grpc_loop)]
for t in threads:
    t.start()
said_running = said_marked = False
while not stopped():
    with lock:
        running = all(s["ok"] > 0 for s in stats.values())
        marked = all(s["after_mark"] >= MARKED for s in stats.values())
    if running and not said_running:
        print("running", flush=True)
        said_running = True
    if marked and not said_marked:
        print("marked", flush=True)
        said_marked = True
    time.sleep(0.02)
for t in threads:
    t.join(timeout=TIMEOUT + 5)
with lock:
    print(json.dumps(stats), flush=True)

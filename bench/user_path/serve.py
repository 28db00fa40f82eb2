"""Load benchmark of the HTTP service against the same searches in-process (loopback only, bounded).

Usage::

    .venv/bin/python bench/user_path/serve.py --index index_data/scifact --queries ../shared/beir/scifact/queries.jsonl

For 1, 4 and 16 concurrent clients, runs the same text searches (k=10, default settings) twice:

- ``inproc``: client threads call :class:`retriever.service.server.SearchService` directly (the service the
  HTTP layer wraps, same locking), in this process;
- ``http``: client threads send ``POST /search`` over keep-alive connections to ``retriever serve``,
  started as a subprocess on 127.0.0.1 (a free port) and stopped at the end.

Each setting runs at most ``--requests`` requests or ``--seconds`` seconds, whichever comes first, after
a warm-up. Prints one JSON row per (mode, clients) with QPS, p50 and p99 latency, and the HTTP overhead
(p50 http - p50 inproc, and QPS ratio); rows are appended to ``bench/results/serve.jsonl`` (``time``: when the setting ended).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows, beir_root  # noqa: E402  (also puts the repository root on sys.path)

from retriever.core.beir import read_queries  # noqa: E402
from retriever.service.server import SearchService  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(call, bodies, clients: int, n_requests: int, seconds: float) -> dict:
    """Run ``call(body)`` from ``clients`` threads; returns QPS and latency percentiles."""
    lat, lock, counter = [], threading.Lock(), [0]
    deadline = time.perf_counter() + seconds

    def worker(t):
        mine = []
        ctx = call(None)  # per-thread setup (a connection)
        while time.perf_counter() < deadline:
            with lock:
                if counter[0] >= n_requests:
                    break
                i = counter[0]
                counter[0] += 1
            t0 = time.perf_counter()
            call((ctx, bodies[i % len(bodies)]))
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1e3
    return {"requests": int(a.size), "qps": round(a.size / wall, 1), "p50_ms": round(float(np.median(a)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, default=ROOT / "index_data" / "scifact")
    ap.add_argument("--queries", type=Path, default=beir_root() / "scifact" / "queries.jsonl")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=400, help="requests per setting at most")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds per setting at most")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / "serve.jsonl")
    args = ap.parse_args(argv)

    texts = list(read_queries(args.queries).values())
    bodies = [{"queries": [t], "k": args.k} for t in texts]
    service = SearchService(args.index)
    for b in bodies[:10]:
        service.search(**b)

    def inproc(x):
        if x is None:
            return None
        service.search(**x[1])

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "retriever", "-q", "serve", "--index", str(args.index),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        deadline = time.time() + 180
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("error: the server did not start")
            time.sleep(0.2)

        def http_call(x):
            if x is None:
                return http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn, body = x
            conn.request("POST", "/search", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")

        for b in bodies[:10]:  # warm-up (the server encodes its first queries)
            http_call((http_call(None), b))
        load0 = os.getloadavg()[0]
        for clients in args.clients:
            a = drive(inproc, bodies, clients, args.requests, args.seconds)
            b = drive(http_call, bodies, clients, args.requests, args.seconds)
            row = {"clients": clients, "inproc": a, "http": b,
                   "overhead_p50_ms": round(b["p50_ms"] - a["p50_ms"], 2), "qps_ratio": round(b["qps"] / a["qps"], 3),
                   "index": str(args.index), "load_1m_before": round(load0, 2),
                   "load_1m_after": round(os.getloadavg()[0], 2),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    append_rows(args.results, rows, bench="user_path/serve")
    return 0


if __name__ == "__main__":
    sys.exit(main())

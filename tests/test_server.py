"""The HTTP service against a real uvicorn server on 127.0.0.1 (random free port) and a real HTTP client."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from conftest import REPO  # noqa: E402
from lifecycle_util import dir_state, make_docs  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.candidates.fde import FDEConfig  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402
from retriever.index.retriever import Retriever  # noqa: E402
from retriever.service.server import RWLock, SearchService, ServerLimits, create_app  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "encoder"
CFG = IndexConfig(fde=FDEConfig(num_repetitions=4, num_simhash_projections=3, projection_dimension=8))
WORDS = ("aspirin fever pain heart blood pressure sleep memory coffee tea caffeine exercise lungs smoking cancer "
         "diet sugar insulin bone calcium vitamin skin sun virus vaccine brain mood stress").split()
TEXTS = [" ".join(random.Random(i).choices(WORDS, k=6 + i % 9)) for i in range(60)]
IDS = [f"d{i}" for i in range(60)]
QUERIES = ["aspirin fever", "heart blood pressure", "sleep and memory", "coffee caffeine", "vitamin bone",
           "smoking lungs cancer", "brain stress mood", "virus vaccine"]
LIMITS = ServerLimits(max_body_bytes=64 << 10, max_queries=16, max_k=50, max_documents=20, max_text_chars=2000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """A uvicorn server in a thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, service, api_key=None):
        self.service = service
        self.port = free_port()
        config = uvicorn.Config(create_app(service, api_key=api_key), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)
        self.service.close()

    def call(self, method, path, body=None, *, raw: bytes | None = None, headers=None, timeout=60):
        return request(self.port, method, path, body, raw=raw, headers=headers, timeout=timeout)


def request(port, method, path, body=None, *, raw=None, headers=None, timeout=60):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload)
        except ValueError:
            return e.code, payload.decode(errors="replace")


@pytest.fixture(scope="module")
def encoder():
    return ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32")


@pytest.fixture()
def index_dir(tmp_path, encoder):
    path = tmp_path / "idx"
    Retriever.build(list(zip(IDS, TEXTS)), encoder=encoder, config=CFG, path=path, show_progress=False)
    return path


@pytest.fixture()
def live(index_dir, encoder):
    service = SearchService(index_dir, encoder=encoder, limits=LIMITS)
    srv = Live(service)
    yield srv, service
    srv.stop()


def _hits(res):
    return [[(h["id"], h["score"]) for h in q] for q in res["results"]]


def _api(r: Retriever, queries, k=5, **kw):
    res = r.search(queries, k=k, **kw)
    return [[(i, float(s)) for i, s, w in zip(ids, sc, rows) if w >= 0]
            for ids, sc, rows in zip(res.ids.tolist(), res.scores.tolist(), res.rows.tolist())]


def test_documents_metadata_and_filters_over_http(live, index_dir, encoder):
    srv, service = live
    new = [{"id": "m1", "title": "Tea", "text": "green tea and caffeine", "metadata": {"year": 2021, "tags": ["tea"]}},
           {"id": "m2", "text": "black tea with milk", "metadata": {"year": 2015}}]
    status, res = srv.call("POST", "/documents", {"documents": new})
    assert status == 200, res
    status, res = srv.call("POST", "/search", {"queries": ["tea"], "k": 5, "where": {"year": {"$gte": 2020}},
                                               "documents": True})
    assert status == 200, res
    hits = res["results"][0]
    assert [h["id"] for h in hits] == ["m1"]
    assert hits[0]["title"] == "Tea" and hits[0]["text"] == "green tea and caffeine"
    assert hits[0]["metadata"] == {"year": 2021, "tags": ["tea"]}
    status, res = srv.call("POST", "/search", {"queries": ["tea"], "k": 5, "where": {"tags": {"$in": ["tea"]}}})
    assert status == 200 and [h["id"] for h in res["results"][0]] == ["m1"] and set(res["results"][0][0]) == {"id", "score"}
    status, res = srv.call("POST", "/search", {"queries": ["tea"], "k": 5, "where": {"year": {"$near": 1}}})
    assert status == 422 and "unknown operator '$near'" in res["detail"]
    status, res = srv.call("POST", "/save")
    assert status == 200
    back = Retriever.load(index_dir, encoder=encoder)  # a reader: the saved store has the new documents
    assert back.search(["tea"], k=5, where={"year": 2015}).hits()[0][0]["text"] == "black tea with milk"


def test_search_equals_python_api(live, index_dir, encoder):
    srv, _ = live
    r = Retriever.load(index_dir, encoder=encoder)
    assert r.config.hybrid.enabled  # built from text: text queries are fused unless hybrid=false
    for kw in ({}, {"mode": "exact"}, {"n_candidates": 12}, {"subset": IDS[::3]}, {"hybrid": False},
               {"hybrid": True, "mode": "exact"}):
        status, res = srv.call("POST", "/search", {"queries": QUERIES, "k": 5, **kw})
        assert status == 200, res
        assert _hits(res) == _api(r, QUERIES, k=5, **kw), kw
        assert set(res["timings_ms"]) == {"wait", "search"}
    assert _api(r, QUERIES, k=5) != _api(r, QUERIES, k=5, hybrid=False)
    emb = encoder.encode_queries(QUERIES[:3])
    vectors = [emb[i].tolist() for i in range(3)]
    status, res = srv.call("POST", "/search", {"embeddings": vectors, "k": 4})
    assert status == 200 and _hits(res) == _api(r, [np.asarray(v, np.float32) for v in vectors], k=4)
    status, res = srv.call("POST", "/search", {"embeddings": vectors, "k": 4, "hybrid": True})
    assert status == 422 and "query texts" in res["detail"]
    status, health = srv.call("GET", "/health")
    assert status == 200 and health == {"status": "ok", "n_docs": 60}
    status, stats = srv.call("GET", "/stats")
    assert status == 200 and stats["n_docs"] == 60 and stats["counts"]["search_requests"] == 7
    assert stats["latency_ms"]["n"] == 7 and stats["latency_ms"]["p50"] > 0 and stats["index_bytes_on_disk"] > 0
    status, spec = srv.call("GET", "/openapi.json")
    assert status == 200 and {"/search", "/documents", "/compact", "/save", "/health", "/stats"} <= set(spec["paths"])


def test_concurrent_clients_equal_serial(live):
    srv, _ = live
    bodies = [{"queries": [QUERIES[i % len(QUERIES)], QUERIES[(i * 3) % len(QUERIES)]], "k": 3 + i % 5,
               **({"mode": "exact"} if i % 4 == 0 else {"n_candidates": 10 + i % 20})} for i in range(25)]
    serial = [srv.call("POST", "/search", b)[1]["results"] for b in bodies]

    def client(t):
        out = []
        for j in range(100):
            i = (t * 7 + j) % len(bodies)
            status, res = srv.call("POST", "/search", bodies[i])
            out.append((i, status, res["results"] if status == 200 else res))
        return out

    with ThreadPoolExecutor(8) as ex:
        got = [x for part in ex.map(client, range(8)) for x in part]
    assert len(got) == 800
    for i, status, results in got:
        assert status == 200 and results == serial[i]


def test_searches_during_mutations(live, index_dir, encoder):
    srv, service = live
    stop = threading.Event()
    errors, seen = [], set()

    def searcher(t):
        n = 0
        while not stop.is_set() or n < 5:
            status, res = srv.call("POST", "/search", {"queries": [QUERIES[(t + n) % len(QUERIES)]], "k": 5})
            if status != 200:
                errors.append(res)
            else:
                seen.update(h["id"] for q in res["results"] for h in q)
            n += 1

    def mutator():
        for round_ in range(4):
            new = [{"id": f"n{round_}-{i}", "text": f"{WORDS[i]} {WORDS[i + 1]} new"} for i in range(5)]
            assert srv.call("POST", "/documents", {"documents": new})[0] == 200
            assert srv.call("DELETE", "/documents", {"ids": [f"d{round_ * 3}", f"n{round_}-0"]})[0] == 200
            assert srv.call("POST", "/documents", {"documents": [{"id": "d59", "text": "vitamin sun"}],
                                                   "upsert": True})[0] == 200
            assert srv.call("POST", "/compact")[0] == 200
        stop.set()

    with ThreadPoolExecutor(5) as ex:
        futs = [ex.submit(searcher, t) for t in range(4)] + [ex.submit(mutator)]
        for f in futs:
            f.result(timeout=300)
    assert not errors, errors[:3]
    universe = set(IDS) | {f"n{r}-{i}" for r in range(4) for i in range(5)}
    assert seen <= universe
    # the final state equals the same mutations applied through the Python API
    status, _ = srv.call("POST", "/save")
    assert status == 200
    saved = Retriever.load(index_dir, encoder=encoder, verify=True)
    live_ids = set(saved.doc_ids[saved.deleted == 0].tolist())
    expect = (set(IDS) - {f"d{r * 3}" for r in range(4)}) | {f"n{r}-{i}" for r in range(4) for i in range(1, 5)}
    assert live_ids == expect
    assert _api(saved, QUERIES, k=5) == _api(service.retriever, QUERIES, k=5)


BAD = [
    ("POST", "/search", b"{not json", 422),
    ("POST", "/search", json.dumps({"queries": "aspirin"}).encode(), 422),          # a string, not a list
    ("POST", "/search", json.dumps({"queries": ["a"], "k": "ten"}).encode(), 422),
    ("POST", "/search", json.dumps({"queries": ["a"], "k": 0}).encode(), 422),
    ("POST", "/search", json.dumps({"queries": ["a"], "k": 51}).encode(), 422),     # over max_k
    ("POST", "/search", json.dumps({"queries": ["a"], "k": 10, "n_candidates": 3}).encode(), 422),
    ("POST", "/search", json.dumps({"queries": ["a"], "mode": "approx"}).encode(), 422),
    ("POST", "/search", json.dumps({"queries": ["a"], "unknown": 1}).encode(), 422),
    ("POST", "/search", json.dumps({}).encode(), 422),
    ("POST", "/search", json.dumps({"queries": []}).encode(), 422),
    ("POST", "/search", json.dumps({"queries": ["a"] * 17}).encode(), 413),         # over max_queries
    ("POST", "/search", json.dumps({"queries": ["a" * 2001]}).encode(), 413),       # over max_text_chars
    ("POST", "/search", json.dumps({"queries": ["a"], "subset": ["nope"]}).encode(), 404),
    ("POST", "/search", json.dumps({"embeddings": [[[0.1, 0.2]]]}).encode(), 422),  # wrong dim
    ("POST", "/search", json.dumps({"embeddings": [[]]}).encode(), 422),
    ("POST", "/search", json.dumps({"embeddings": [[[0.1] * 12, [0.2] * 11]]}).encode(), 422),  # ragged
    ("POST", "/search", b'{"embeddings": [[[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]]}', 422),       # not finite
    ("POST", "/search", json.dumps({"queries": ["a"], "embeddings": [[[0.1]]]}).encode(), 422),
    ("POST", "/search", b"x" * (65 << 10), 413),                                     # over max_body_bytes
    ("POST", "/documents", json.dumps({"documents": []}).encode(), 422),
    ("POST", "/documents", json.dumps({"documents": [{"id": "d1", "text": "dup"}]}).encode(), 422),  # exists
    ("POST", "/documents", json.dumps({"documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]}).encode(), 422),
    ("POST", "/documents", json.dumps({"documents": [{"id": 5, "text": "int id in a str-id index"}]}).encode(), 422),
    ("POST", "/documents", json.dumps({"documents": [{"id": "y"}]}).encode(), 422),
    ("POST", "/documents", json.dumps({"documents": [{"id": f"z{i}", "text": "t"} for i in range(21)]}).encode(), 413),
    ("DELETE", "/documents", json.dumps({"ids": ["d1", "nope"]}).encode(), 404),
    ("DELETE", "/documents", json.dumps({"ids": []}).encode(), 422),
    ("DELETE", "/documents", json.dumps({"ids": "d1"}).encode(), 422),
    ("GET", "/nowhere", None, 404),
]


def test_bad_requests_are_4xx_and_change_nothing(live, index_dir):
    srv, service = live
    before_disk = dir_state(index_dir)
    before = srv.call("POST", "/search", {"queries": QUERIES, "k": 5})[1]["results"]
    for method, path, raw, expect in BAD:
        status, res = srv.call(method, path, raw=raw)
        assert status == expect, (method, path, raw[:80] if raw else raw, status, res)
        assert res and "detail" in res
    # a chunked body (no Content-Length) over the limit is refused as it arrives
    big = (b"x" * 4096 for _ in range(20))
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/search", data=big, method="POST",
                                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413
    assert srv.call("POST", "/search", {"queries": QUERIES, "k": 5})[1]["results"] == before
    assert dir_state(index_dir) == before_disk
    stats = srv.call("GET", "/stats")[1]
    assert stats["n_docs"] == 60 and stats["n_deleted"] == 0 and stats["counts"]["documents_added"] == 0


def test_api_key(index_dir, encoder):
    srv = Live(SearchService(index_dir, encoder=encoder, limits=LIMITS), api_key="s3cret-key")
    try:
        body = {"queries": ["aspirin"], "k": 2}
        assert srv.call("POST", "/search", body)[0] == 401
        assert srv.call("POST", "/search", body, headers={"X-API-Key": "wrong"})[0] == 401
        assert srv.call("POST", "/search", body, headers={"X-API-Key": "s3cret-key"})[0] == 200
        assert srv.call("POST", "/search", body, headers={"Authorization": "Bearer s3cret-key"})[0] == 200
        assert srv.call("POST", "/save", headers={"Authorization": "Bearer nope"})[0] == 401
        assert srv.call("GET", "/health")[0] == 200  # liveness needs no key
    finally:
        srv.stop()


def test_read_only_refuses_mutations(index_dir, encoder):
    srv = Live(SearchService(index_dir, encoder=encoder, limits=LIMITS, read_only=True))
    try:
        assert srv.call("POST", "/documents", {"documents": [{"id": "x", "text": "a"}]})[0] == 409
        assert srv.call("DELETE", "/documents", {"ids": ["d1"]})[0] == 409
        assert srv.call("POST", "/compact")[0] == 409 and srv.call("POST", "/save")[0] == 409
        assert srv.call("POST", "/search", {"queries": ["a"], "k": 2})[0] == 200
    finally:
        srv.stop()


def test_rwlock_writer_excludes_readers():
    lock, log, inside = RWLock(), [], [0]

    def reader():
        for _ in range(200):
            lock.acquire_read()
            inside[0] += 1
            log.append(("r", inside[0]))
            inside[0] -= 1
            lock.release_read()

    def writer():
        for _ in range(50):
            lock.acquire_write()
            log.append(("w", inside[0]))  # no reader inside while the writer holds the lock
            lock.release_write()

    ts = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert all(n == 0 for kind, n in log if kind == "w") and len(log) == 850


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_sigkill_during_save_leaves_a_good_index(tmp_path):
    """A server killed (SIGKILL) while /save runs leaves the last saved index or the new one, never a broken one."""
    path = tmp_path / "big"
    docs = make_docs(6000, seed=5, max_len=40)
    Retriever.build(docs, config=CFG, path=path, show_progress=False)
    for attempt in range(3):
        port = free_port()
        proc = _start(["--index", str(path)], port)
        try:
            before = Retriever.load(path).deleted.sum()
            assert request(port, "DELETE", "/documents", {"ids": list(range(attempt * 50, attempt * 50 + 50))})[0] == 200
            t = threading.Thread(target=lambda: _quiet(request, port, "POST", "/save", timeout=60), daemon=True)
            t.start()
            time.sleep([0.05, 0.2, 0.6][attempt])
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        r = Retriever.load(path, verify=True)  # checksums every file
        assert int(r.deleted.sum()) in (before, before + 50)
    Retriever.verify(path)


def _quiet(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except OSError:
        pass  # the server was killed mid-request


# -- generated requests: an independent validity oracle, and nothing changes ------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TEXT = st.text(alphabet=st.sampled_from(list("aspirin fever heart tea") + ["é", "\x00", "\n"]), max_size=40)
_JSON = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=False, allow_infinity=False),
                  _TEXT, st.lists(_TEXT, max_size=3))
_SEARCH = st.fixed_dictionaries({}, optional={
    "queries": st.one_of(st.lists(_TEXT, max_size=18), _JSON),
    "k": st.one_of(st.integers(-2, 60), _JSON),
    "n_candidates": st.one_of(st.just("auto"), st.integers(-2, 120), _JSON),
    "mode": st.one_of(st.sampled_from(["auto", "fde", "exact"]), _JSON),
    "subset": st.one_of(st.lists(st.sampled_from(IDS[:20] + ["nope", "d999"]), max_size=5), _JSON),
    "extra": _JSON,
})


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _valid_search(b: dict) -> bool:
    """What the API documents, written out independently of the server's code."""
    q, k, n = b.get("queries"), b.get("k", 10), b.get("n_candidates", "auto")
    return ("extra" not in b and isinstance(q, list) and 1 <= len(q) <= LIMITS.max_queries
            and all(isinstance(t, str) and len(t) <= LIMITS.max_text_chars for t in q)
            and _is_int(k) and 1 <= k <= LIMITS.max_k
            and (n == "auto" or (_is_int(n) and k <= n <= LIMITS.max_candidates))
            and b.get("mode", "auto") in ("auto", "fde", "exact")
            and (b.get("subset") is None or (isinstance(b["subset"], list) and all(i in IDS for i in b["subset"]))))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, encoder):
    path = tmp_path_factory.mktemp("fuzz") / "idx"
    Retriever.build(list(zip(IDS, TEXTS)), encoder=encoder, config=CFG, path=path, show_progress=False)
    service = SearchService(path, encoder=encoder, limits=LIMITS)
    srv = Live(service)
    oracle = Retriever.load(path, encoder=encoder)  # a separate copy: the answers a valid request must get
    yield srv, service, oracle, path, dir_state(path)
    srv.stop()


@settings(max_examples=800, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_SEARCH)
def test_generated_search_requests(fuzz_server, body):
    srv, service, oracle, path, disk = fuzz_server
    status, res = srv.call("POST", "/search", body)
    if _valid_search(body):
        assert status == 200, (body, res)
        kw = {"k": body.get("k", 10), "n_candidates": body.get("n_candidates", "auto"),
              "mode": body.get("mode", "auto"), "subset": body.get("subset")}
        assert _hits(res) == _api(oracle, body["queries"], **kw)
    else:
        assert 400 <= status < 500, (body, status, res)
        assert isinstance(res, dict) and res.get("detail")
    assert service.retriever.n_docs == 60 and not service.retriever.deleted.any()


def test_generated_requests_left_the_index_alone(fuzz_server):
    _, _, _, path, disk = fuzz_server
    assert dir_state(path) == disk


def _start(args, port, timeout=120):
    proc = subprocess.Popen([sys.executable, "-m", "retriever", "-q", "serve", *args, "--port", str(port)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while True:
        try:
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        time.sleep(0.1)


@pytest.mark.slow
def test_cli_serve_with_workers_is_read_only(index_dir):
    port = free_port()
    proc = _start(["--index", str(index_dir), "--workers", "2", "--model", str(FIXTURES / "bert_stanford")], port)
    try:
        status, res = request(port, "POST", "/search", {"queries": QUERIES[:2], "k": 3})
        same = ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"))  # loaded as --model loads it
        assert status == 200 and _hits(res) == _api(Retriever.load(index_dir, encoder=same), QUERIES[:2], k=3)
        assert request(port, "POST", "/documents", {"documents": [{"id": "x", "text": "a"}]})[0] == 409
    finally:
        proc.terminate()
        proc.wait(30)


def test_service_warms_up_before_it_serves(index_dir, encoder, monkeypatch):
    """The service answers one throw-away text search while it loads, before the server listens."""
    seen = []
    real = Retriever.search

    def spy(self, queries, *a, **kw):
        seen.append(queries)
        return real(self, queries, *a, **kw)

    monkeypatch.setattr(Retriever, "search", spy)
    service = SearchService(index_dir, encoder=encoder, limits=LIMITS)
    assert seen == [["warm up"]]
    assert service.counts["search_requests"] == 0 and service.stats()["n_docs"] == len(IDS)


def test_warmup_of_an_embeddings_index_and_of_an_empty_one(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((5, 16)).astype(np.float32) for _ in range(10)]
    r = Retriever.build(docs, config=CFG, show_progress=False)
    r.warmup()  # a random unit query of the index's dimension
    r.delete(list(range(10)))
    r.warmup()  # nothing to search: returns

"""Concurrent use: many threads searching one index, several processes sharing one index directory,
and saves over an index that another process (or thread) keeps reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import REPO
from lifecycle_util import build, make_docs, make_queries
from reader_worker import answers as reader_answers
from retriever.core.locks import StaleIndexError
from retriever.candidates.fde import FDEConfig
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever

DOCS = make_docs(300, seed=31)
IDS = [f"d{i}" for i in range(300)]
QUERIES = make_queries(40, seed=32)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    d = tmp_path_factory.mktemp("conc") / "idx"
    r = build(DOCS, IDS)
    r.delete(IDS[::7])
    r.save(d)
    return Retriever.load(d, mmap=True)


# one call per (query batch, search knobs); both search stages, filters, deletions (every 7th is deleted)
_SUB_A = [f"d{i}" for i in range(1, 200, 3) if i % 7]
_SUB_B = [f"d{i}" for i in range(2, 60) if i % 7]
CALLS = [
    (slice(i, i + n), kw)
    for i, n in ((0, 1), (3, 5), (10, 17), (0, 40))
    for kw in ({"mode": "exact"}, {"n_candidates": 12}, {"n_candidates": 50}, {"n_candidates": 20, "subset": _SUB_A},
               {"mode": "exact", "subset": _SUB_B})
]


def _run(r, call):
    sl, kw = call
    res = r.search(QUERIES[sl], k=7, **kw)
    return res.ids.tolist(), res.scores.tolist(), res.rows.tolist()


def test_threads_give_serial_results(loaded):
    serial = [_run(loaded, c) for c in CALLS]
    jobs = [j % len(CALLS) for j in range(8 * len(CALLS))]
    np.random.default_rng(0).shuffle(jobs)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda j: (j, _run(loaded, CALLS[j])), jobs))
    for j, res in got:
        assert res == serial[j], f"call {j} differs under concurrency"


def test_threads_with_hnsw_and_ivf(tmp_path):
    fde = FDEConfig(num_repetitions=6, num_simhash_projections=3, projection_dimension=8)
    for factory, knobs in (("HNSW16", {"ef_search": 40}), ("IVF8,Flat", {"nprobe": 3})):
        r = Retriever.build(DOCS, doc_ids=IDS, config=IndexConfig(fde=fde, faiss_factory=factory), show_progress=False)
        r.delete(IDS[::5])
        calls = [(slice(i, i + 8), dict(knobs, n_candidates=nc)) for i in (0, 8, 16, 24) for nc in (10, 30)]
        serial = [_run(r, c) for c in calls]
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda j: _run(r, calls[j % len(calls)]), range(4 * len(calls))))
        assert all(g == serial[j % len(calls)] for j, g in enumerate(got)), factory


def test_two_processes_load_the_same_index(tmp_path):
    d = tmp_path / "idx"
    r = build(DOCS[:120], IDS[:120])
    r.save(d)
    expected = reader_answers(Retriever.load(d))
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "reader_worker.py"), str(d)], cwd=REPO, env=_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "READY", p.stderr.read()
        for p in procs:  # both answer at once (each also searches continuously in a thread)
            p.stdin.write("query\n")
            p.stdin.flush()
        for p in procs:
            assert json.loads(p.stdout.readline()) == json.loads(json.dumps(expected))
        for p in procs:
            p.stdin.write("stats\nquit\n")
            p.stdin.flush()
            stats = json.loads(p.stdout.readline())
            assert stats["mismatches"] == 0 and not stats["errors"] and stats["rounds"] > 0, stats
            assert p.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    Retriever.verify(d)  # read-only users changed nothing


def test_save_over_an_index_another_process_keeps_reading(tmp_path):
    d = tmp_path / "idx"
    build(DOCS[:150], IDS[:150]).save(d)
    baseline = json.loads(json.dumps(reader_answers(Retriever.load(d))))
    p = subprocess.Popen([sys.executable, str(REPO / "tests" / "reader_worker.py"), str(d)], cwd=REPO, env=_env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "READY", p.stderr.read()

        def ask() -> list:
            p.stdin.write("query\n")
            p.stdin.flush()
            return json.loads(p.stdout.readline())

        assert ask() == baseline
        # replace the directory under the reader in every way a writer can
        w = Retriever.load(d)
        w.add(DOCS[150:250], IDS[150:250])
        w.save(d)
        assert ask() == baseline
        w.delete(IDS[:100])
        w.compact()
        w.save(d)
        assert ask() == baseline
        w.close()  # the next writer
        build(DOCS[250:], IDS[250:]).save(d)  # a different index altogether
        assert ask() == baseline
        with pytest.raises(StaleIndexError):  # w's view predates that commit: refused, not a lost update
            w.save(d)
        assert ask() == baseline
        p.stdin.write("stats\nquit\n")
        p.stdin.flush()
        stats = json.loads(p.stdout.readline())
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert stats["mismatches"] == 0 and not stats["errors"] and stats["rounds"] > 0, stats
    now = Retriever.load(d, verify=True)
    assert sorted(now.doc_ids.tolist()) == sorted(IDS[250:])


def test_save_over_an_index_a_thread_keeps_reading(tmp_path):
    d = tmp_path / "idx"
    build(DOCS[:150], IDS[:150]).save(d)
    reader = Retriever.load(d, mmap=True)
    baseline = reader_answers(reader)
    stop = threading.Event()
    bad: list = []
    rounds = [0]

    def loop():
        while not stop.is_set():
            try:
                if reader_answers(reader) != baseline:
                    bad.append("mismatch")
            except Exception as e:  # noqa: BLE001 - reported below
                bad.append(repr(e))
            rounds[0] += 1

    t = threading.Thread(target=loop)
    t.start()
    try:
        w = Retriever.load(d)
        for step in range(4):
            w.add(DOCS[150 + 20 * step : 170 + 20 * step], IDS[150 + 20 * step : 170 + 20 * step])
            w.delete(IDS[10 * step : 10 * step + 10])
            if step % 2:
                w.compact()
            w.save(d)
        w.close()
        with pytest.raises(StaleIndexError):  # the reader's (old) view would undo w's commits
            reader.save(d)
        w = Retriever.load(d)
        w.save(d)  # a save over the directory the reader maps, from an up-to-date view
    finally:
        stop.set()
        t.join()
    assert not bad and rounds[0] > 0
    assert reader_answers(reader) == baseline
    assert Retriever.load(d, verify=True).n_docs == 150 + 4 * 20 - 4 * 10

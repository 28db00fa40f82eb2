"""One writer per index directory, checked with real processes (tests/lock_worker.py).

A process takes the write lock with its first change and holds it until it closes the index; another
writer fails at once with an error naming the holder; a writer whose view is older than the last
commit is refused; readers never wait; a killed writer's lock goes with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lifecycle_util import CFG, make_docs, make_queries
from retriever.core.locks import IndexLockedError, StaleIndexError, WriteLock, lock_path
from retriever.index.retriever import Retriever

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("lock_worker.py")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture()
def index_dir(tmp_path) -> Path:
    p = tmp_path / "idx"
    Retriever.build(make_docs(40, seed=0), doc_ids=[f"d{i}" for i in range(40)], config=CFG, path=p,
                    show_progress=False).close()
    return p


def _holder(index_dir: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(WORKER), "hold", str(index_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env())
    line = proc.stdout.readline().strip()
    assert line.startswith("LOCKED"), line
    return proc, int(line.split()[1])


def test_second_writer_is_refused_naming_the_holder_then_stale_after_its_commit(index_dir):
    proc, pid = _holder(index_dir)
    try:
        r = Retriever.load(index_dir)
        with pytest.raises(IndexLockedError, match=f"pid {pid}"):
            r.add(make_docs(1, seed=5), ["mine"])
        assert "mine" not in r.doc_ids.tolist()  # refused before any change
        with pytest.raises(IndexLockedError):
            r.save(index_dir)
        # readers never wait: a load and a search while the lock is held
        reader = Retriever.load(index_dir)
        assert reader.search(make_queries(1, seed=1)[0], k=3).ids.shape == (1, 3)
        proc.stdin.write("save\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "SAVED"
        proc.wait(timeout=60)
        # the lock is free now, but this object's view predates the other writer's commit
        with pytest.raises(StaleIndexError, match="load it again"):
            r.add(make_docs(1, seed=5), ["mine"])
        with pytest.raises(StaleIndexError):
            r.save(index_dir)
        fresh = Retriever.load(index_dir)
        fresh.add(make_docs(1, seed=5), ["mine"])
        fresh.save(index_dir)
        fresh.close()
        ids = Retriever.load(index_dir).doc_ids.tolist()
        assert "held-doc" in ids and "mine" in ids  # nothing lost
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_writers_lock_goes_with_it(index_dir):
    proc, pid = _holder(index_dir)
    before = Retriever.load(index_dir).doc_ids.tolist()
    with pytest.raises(IndexLockedError):
        WriteLock(index_dir).acquire()
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    r = Retriever.load(index_dir)
    assert r.doc_ids.tolist() == before  # the killed writer never saved
    r.add(make_docs(1, seed=7), ["after-kill"])  # takes the lock at once
    r.save(index_dir)
    r.close()
    assert "after-kill" in Retriever.load(index_dir).doc_ids.tolist()


def test_build_into_a_locked_path_is_refused_and_changes_nothing(index_dir):
    proc, pid = _holder(index_dir)
    try:
        before = (index_dir / "manifest.json").read_bytes()
        with pytest.raises(IndexLockedError, match=f"pid {pid}"):
            Retriever.build(make_docs(10, seed=3), config=CFG, path=index_dir, show_progress=False)
        assert (index_dir / "manifest.json").read_bytes() == before
        assert not list(index_dir.parent.glob(".idx.tmp-*"))
    finally:
        proc.kill()
        proc.wait()


def test_close_and_context_manager_release_the_lock(index_dir):
    with Retriever.load(index_dir) as r:
        r.delete(["d0"])
        assert lock_path(index_dir).exists()
        with pytest.raises(IndexLockedError):
            Retriever.load(index_dir).add(make_docs(1, seed=1), ["x"])  # a second object of this process too
        r.save(index_dir)
    other = Retriever.load(index_dir)
    other.add(make_docs(1, seed=1), ["x"])
    other.close()
    r.close()  # idempotent


def test_searching_and_saving_elsewhere_need_no_lock_on_the_source(index_dir, tmp_path):
    proc, _ = _holder(index_dir)
    try:
        r = Retriever.load(index_dir)
        r.save(tmp_path / "copy")  # a copy: locks the copy, not the source
        assert Retriever.load(tmp_path / "copy").n_docs == r.n_docs
        r.close()
    finally:
        proc.kill()
        proc.wait()


def test_two_writers_in_a_loop_lose_nothing(index_dir):
    n, seconds = 12, 120
    procs = [subprocess.Popen([sys.executable, str(WORKER), "loop", str(index_dir), name, str(n), str(seconds)],
                              stdout=subprocess.PIPE, text=True, env=_env()) for name in ("a", "b")]
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    accepted = [line.split()[1] for out in outs for line in out.splitlines() if line.startswith("ACCEPTED")]
    refused = [line.split()[2] for out in outs for line in out.splitlines() if line.startswith("REFUSED")]
    assert set(refused) <= {"IndexLockedError", "StaleIndexError"}
    final = Retriever.load(index_dir)
    live = set(final.doc_ids[final.deleted == 0].tolist())
    assert set(accepted) <= live, f"lost: {sorted(set(accepted) - live)}"
    assert len(accepted) == 2 * n  # every round was eventually accepted within the time bound
    assert final.n_docs == 40 + 2 * n
    np.testing.assert_array_equal(np.sort(final.doc_ids[:40]), np.sort(np.array([f"d{i}" for i in range(40)], dtype=object)))


def test_a_writable_service_holds_the_lock_a_read_only_one_does_not(index_dir):
    from retriever.service.server import SearchService

    svc = SearchService(index_dir)
    try:
        with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
            WriteLock(index_dir).acquire()
    finally:
        svc.close()
    with WriteLock(index_dir):
        ro = SearchService(index_dir, read_only=True)  # a reader: starts while another writer holds the lock
        assert len(ro.search(embeddings=[make_queries(1, seed=2)[0].tolist()], k=2)["results"]) == 1
        ro.close()


def test_cli_commands_name_the_holder(index_dir, capsys):
    from retriever.cli.main import main as cli_main

    proc, pid = _holder(index_dir)
    try:
        assert cli_main(["centroids", str(index_dir), "--off"]) == 2
        assert f"pid {pid}" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()

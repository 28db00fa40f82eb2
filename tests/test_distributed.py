"""The Ray backend of sharded indexes (retriever.cluster.distributed) on a local Ray kept on the loopback interface.

Same answers as the local backend (exact and hybrid, embeddings and texts); a killed shard actor is
restarted and the search retried; every Ray node address is 127.0.0.1.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# read by Ray when it is imported: every Ray service on 127.0.0.1 (../shared/docs/scale.md)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = pytest.importorskip("ray")

from conftest import REPO  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.candidates.fde import FDEConfig  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402
from retriever.cluster.distributed import RayShardedRetriever  # noqa: E402
from retriever.cluster.shards import ShardedRetriever  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "encoder"
CFG = IndexConfig(fde=FDEConfig(num_repetitions=4, num_simhash_projections=3, projection_dimension=8))
WORDS = ("aspirin fever pain heart blood pressure sleep memory coffee tea caffeine exercise vitamin cancer risk "
         "gene protein virus brain cells").split()


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
                 _temp_dir="/tmp/ray-retriever-tests")
    try:
        addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
        assert addresses == {"127.0.0.1"}, f"Ray is not on loopback only: {addresses}"
        yield
    finally:
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def encoder():
    return ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, encoder):
    rng = np.random.default_rng(0)
    docs = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, int(rng.integers(3, 12))))}
            for i in range(60)]
    path = tmp_path_factory.mktemp("dist") / "idx"
    ShardedRetriever.build(docs, n_shards=3, encoder=encoder, config=CFG, path=path, show_progress=False)
    return path


QUERIES = ["aspirin fever", "coffee and tea", "blood pressure exercise", "gene protein virus"]


def test_ray_backend_answers_as_the_local_one(local_ray, saved, encoder):
    local = ShardedRetriever.load(saved, encoder=encoder)
    remote = RayShardedRetriever.load(saved, encoder=encoder, replicas=2)
    try:
        assert remote.n_shards == 3 and remote.n_docs == 60
        for kw in ({}, {"mode": "exact"}, {"hybrid": False}, {"hybrid": False, "mode": "exact"}, {"n_candidates": 10}):
            a, b = local.search(QUERIES, k=7, **kw), remote.search(QUERIES, k=7, **kw)
            np.testing.assert_array_equal(a.ids, b.ids, err_msg=str(kw))
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, err_msg=str(kw))
            np.testing.assert_array_equal(a.shards, b.shards)
        q = encoder.encode_queries(QUERIES)
        a, b = local.search(q, k=5, mode="exact"), remote.search(q, k=5, mode="exact")
        np.testing.assert_array_equal(a.ids, b.ids)
    finally:
        remote.close()


def test_a_killed_shard_actor_is_restarted_and_the_search_retried(local_ray, saved, encoder):
    remote = RayShardedRetriever.load(saved, encoder=encoder)
    try:
        before = remote.search(QUERIES, k=5)
        victim = remote.actors[1][0]
        pid = ray.get(victim.info.remote())["pid"]
        ray.kill(victim, no_restart=False)  # the process dies; Ray restarts the actor
        after = remote.search(QUERIES, k=5)
        np.testing.assert_array_equal(before.ids, after.ids)
        assert ray.get(victim.info.remote())["pid"] != pid
    finally:
        remote.close()


def test_bad_backend_arguments(saved):
    with pytest.raises(ValueError, match="backend must be"):
        ShardedRetriever.load(saved, backend="spark")
    with pytest.raises(ValueError, match="RayShardedRetriever.load"):
        ShardedRetriever.load(saved, backend="ray")
    with pytest.raises(TypeError, match="replicas"):
        ShardedRetriever.load(saved, replicas=2)


def test_cli_searches_a_sharded_index_on_ray(local_ray, saved, capsys):
    from retriever.cli.main import main as cli_main

    assert cli_main(["-q", "search", "--index", str(saved), "--query", "aspirin fever", "--k", "3"]) == 0
    local = capsys.readouterr().out
    assert cli_main(["-q", "search", "--index", str(saved), "--query", "aspirin fever", "--k", "3",
                     "--backend", "ray"]) == 0
    assert capsys.readouterr().out == local and len(local.strip().splitlines()) == 3


def test_batches_spread_over_replicas_and_partial_results(local_ray, saved, encoder):
    local = ShardedRetriever.load(saved, encoder=encoder)
    remote = RayShardedRetriever.load(saved, encoder=encoder, replicas=2, timeout_s=60)
    try:
        for kw in ({}, {"hybrid": False, "mode": "exact"}):  # 4 queries: 2 chunks, one per replica
            a, b = local.search(QUERIES, k=6, **kw), remote.search(QUERIES, k=6, **kw)
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        for a in remote.actors[2]:
            ray.kill(a, no_restart=True)  # shard 2 is gone for good
        with pytest.raises(RuntimeError, match="shard 2 .*allow_partial"):
            remote.search(QUERIES, k=6, hybrid=False)
        part = remote.search(QUERIES, k=6, hybrid=False, mode="exact", allow_partial=True)
        assert part.missing_shards == (2,) and not (part.shards == 2).any()
        full = local.search(QUERIES, k=60, hybrid=False, mode="exact")
        for i in range(len(QUERIES)):  # the partial answer is the full one without shard 2's documents
            keep = full.shards[i] != 2
            np.testing.assert_array_equal(part.ids[i], full.ids[i][keep][:6])
    finally:
        remote.close()


def test_a_shard_actor_killed_during_a_search_is_retried(local_ray, saved, encoder):
    import threading

    local = ShardedRetriever.load(saved, encoder=encoder)
    remote = RayShardedRetriever.load(saved, encoder=encoder)
    try:
        queries = QUERIES * 50  # a batch long enough to be running when the actor dies
        want = local.search(queries, k=5, hybrid=False, mode="exact")
        got = {}
        t = threading.Thread(target=lambda: got.update(res=remote.search(queries, k=5, hybrid=False, mode="exact")))
        t.start()
        ray.kill(remote.actors[0][0], no_restart=False)
        t.join(timeout=240)
        assert not t.is_alive() and "res" in got
        np.testing.assert_array_equal(got["res"].ids, want.ids)
    finally:
        remote.close()


def _corpus(n=50, seed=1):
    rng = np.random.default_rng(seed)
    return [{"_id": f"c{i}", "title": "", "text": " ".join(rng.choice(WORDS, int(rng.integers(3, 12))))}
            for i in range(n)]


def test_ray_build_equals_the_local_build_and_resumes(local_ray, tmp_path, encoder, caplog):
    import logging

    from retriever.cluster.distributed import build_sharded_on_ray

    docs = _corpus()
    local = ShardedRetriever.build(docs, n_shards=2, encoder=encoder, config=CFG, show_progress=False)
    built = build_sharded_on_ray(docs, tmp_path / "ray", n_shards=2, config=CFG, encoder=encoder, workers=2,
                                 chunk_docs=8, show_progress=False)
    assert not (tmp_path / ".ray.build").exists()  # the chunk directory is removed once the index is in place
    for a, b in zip(local.shards, built.shards):
        assert a.doc_ids.tolist() == b.doc_ids.tolist()
        np.testing.assert_allclose(np.asarray(a.codec.decode(np.asarray(a.tokens))),
                                   np.asarray(b.codec.decode(np.asarray(b.tokens))), atol=2e-2)
    for kw in ({"hybrid": False, "mode": "exact"}, {}):
        np.testing.assert_array_equal(local.search(QUERIES, k=5, **kw).ids, built.search(QUERIES, k=5, **kw).ids)
    ShardedRetriever.verify(tmp_path / "ray")
    texts = {d["_id"]: d["text"] for d in docs}  # empty titles: the encoded text is the body
    for hits in built.search(QUERIES, k=3, hybrid=False, mode="exact").hits():
        assert all(h["text"] == texts[h["id"]] for h in hits)  # the Ray-built shards' document stores
    # an interrupted build leaves .NAME.build/ behind: here the driver fails at the final swap, and two of
    # the seven chunk files are then removed (as if it had died while encoding them)
    import retriever.storage as storage

    first = build_sharded_on_ray(docs, tmp_path / "full", n_shards=2, config=CFG, encoder=encoder, workers=1,
                                 chunk_docs=8, show_progress=False)

    def crash(*a, **kw):
        raise KeyboardInterrupt("driver killed")

    real = storage.atomic_replace_dir
    storage.atomic_replace_dir = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            build_sharded_on_ray(docs, tmp_path / "again", n_shards=2, config=CFG, encoder=encoder, chunk_docs=8,
                                 show_progress=False)
    finally:
        storage.atomic_replace_dir = real
    work = tmp_path / ".again.build"
    chunks = sorted((work / "chunks").glob("chunk-*.npz"))
    assert len(chunks) == 7 and not (tmp_path / "again").exists()
    chunks[1].unlink()
    chunks[4].unlink()
    kept = chunks[2].stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="resume"):
        build_sharded_on_ray(docs, tmp_path / "again", n_shards=2, config=CFG, encoder=encoder, chunk_docs=8,
                             show_progress=False)
    with pytest.raises(ValueError, match="another corpus"):
        build_sharded_on_ray(docs[:-1], tmp_path / "again", n_shards=2, config=CFG, encoder=encoder, chunk_docs=8,
                             resume=True, show_progress=False)
    assert chunks[2].stat().st_mtime_ns == kept
    with caplog.at_level(logging.INFO, logger="retriever.cluster.distributed"):
        again = build_sharded_on_ray(docs, tmp_path / "again", n_shards=2, config=CFG, encoder=encoder, chunk_docs=8,
                                     resume=True, show_progress=False)
    assert "7 chunks of 8 documents, 2 to encode (5 done before)" in caplog.text
    for a, b in zip(first.shards, again.shards):  # the same index as the uninterrupted build
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        assert a.doc_ids.tolist() == b.doc_ids.tolist()
    assert not work.exists()


def test_cli_index_with_ray(local_ray, tmp_path, capsys):
    import gzip
    import json as _json

    from retriever.cli.main import main as cli_main

    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as fh:
        for d in _corpus(30, seed=4):
            fh.write(_json.dumps(d) + "\n")
    out = tmp_path / "idx"
    argv = ["-q", "index", "--corpus", str(corpus), "--out", str(out), "--model", str(FIXTURES / "bert_stanford"),
            "--dtype", "float32", "--shards", "2", "--ray-address", "local", "--workers", "2", "--chunk-docs", "8",
            "--num-repetitions", "4", "--num-simhash-projections", "3", "--projection-dimension", "8"]
    assert cli_main(argv) == 0
    assert _json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_shards"] == 2
    assert cli_main(["verify", str(out)]) == 0
    with pytest.raises(SystemExit, match="give --shards"):
        cli_main(["-q", "index", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "--ray-address", "local"])


def test_a_killed_encoder_worker_is_restarted_mid_build(local_ray, tmp_path, encoder):
    import threading
    import time

    from retriever.cluster.distributed import build_sharded_on_ray, hashlib_sha256

    docs = _corpus(200, seed=7)  # 100 chunks of 2: encoding lasts long enough to kill the worker in it
    want = build_sharded_on_ray(docs, tmp_path / "ref", n_shards=2, config=CFG, encoder=encoder, workers=1,
                                chunk_docs=2, show_progress=False)
    out = tmp_path / "killed"
    tag = hashlib_sha256(str((tmp_path / ".killed.build").resolve()))[:12]
    got = {}
    t = threading.Thread(target=lambda: got.update(sr=build_sharded_on_ray(
        docs, out, n_shards=2, config=CFG, encoder=encoder, workers=1, chunk_docs=2, show_progress=False)))
    t.start()
    killed = False
    deadline = time.monotonic() + 120
    while t.is_alive() and time.monotonic() < deadline and not killed:
        chunks = list((tmp_path / ".killed.build" / "chunks").glob("chunk-*.npz"))
        if 1 <= len(chunks) < 90:
            try:
                actor = ray.get_actor(f"retriever-encoder-{tag}-0")
            except ValueError:  # not registered yet
                actor = None
            if actor is not None:
                ray.kill(actor, no_restart=False)  # the worker process dies mid-build
                killed = True
        time.sleep(0.005)
    t.join(timeout=240)
    assert killed and "sr" in got, "the build ended before the worker could be killed, or did not finish"
    for a, b in zip(want.shards, got["sr"].shards):
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_sigkill_driver_then_resume_gives_the_uninterrupted_index(local_ray, tmp_path, encoder):
    import gzip
    import json as _json
    import signal
    import subprocess
    import sys
    import time

    from retriever.cluster.distributed import build_sharded_on_ray

    docs = _corpus(120, seed=8)  # 60 chunks of 2
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as fh:
        for d in docs:
            fh.write(_json.dumps(d) + "\n")
    out = tmp_path / "idx"
    argv = [sys.executable, "-m", "retriever", "-q", "index", "--corpus", str(corpus), "--out", str(out),
            "--model", str(FIXTURES / "bert_stanford"), "--dtype", "float32", "--shards", "2", "--ray-address",
            "local", "--workers", "1", "--chunk-docs", "2", "--num-repetitions", "4", "--num-simhash-projections",
            "3", "--projection-dimension", "8"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    chunks_dir = tmp_path / ".idx.build" / "chunks"
    deadline = time.monotonic() + 180
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if chunks_dir.is_dir() and len(list(chunks_dir.glob("chunk-*.npz"))) >= 3:
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=60)
    n_done = len(list(chunks_dir.glob("chunk-*.npz")))
    assert 3 <= n_done < 60 and not out.exists(), n_done
    resumed = build_sharded_on_ray(docs, out, n_shards=2, config=CFG, encoder=encoder, workers=1, chunk_docs=2,
                                   resume=True, show_progress=False)
    assert resumed.build_timings["encoded_docs"] == 120 - 2 * n_done  # the chunks written before are kept
    want = build_sharded_on_ray(docs, tmp_path / "ref", n_shards=2, config=CFG, encoder=encoder, workers=1,
                                chunk_docs=2, show_progress=False)
    for a, b in zip(want.shards, resumed.shards):
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        assert a.doc_ids.tolist() == b.doc_ids.tolist()
    ShardedRetriever.verify(out)


def test_encoder_worker_reports_progress_per_step_and_writes_the_whole_chunk(tmp_path, encoder):
    """The actor's encode, called in-process: a progress report every _PROGRESS_DOCS documents, and the
    chunk file holds what one encode call of the whole chunk gives."""
    from retriever.cluster.distributed import _PROGRESS_DOCS, _EncoderWorker, _read_chunk

    class Counter:
        def __init__(self):
            self.calls = []
            self.add = self

        def remote(self, n):
            self.calls.append(n)

    pairs = [(d["_id"], d["text"]) for d in _corpus(2 * _PROGRESS_DOCS + 5, seed=7)]
    worker = _EncoderWorker(encoder.config.to_dict(), None)
    counter = Counter()
    path = str(tmp_path / "chunk-000000.npz")
    assert worker.encode(pairs, path, False, counter) == len(pairs)
    assert counter.calls == [_PROGRESS_DOCS, _PROGRESS_DOCS, 5]
    vectors, offsets, pooled, ids, texts = _read_chunk(tmp_path / "chunk-000000.npz")
    emb, ref_pooled = worker.encoder.encode_documents([t for _, t in pairs], return_pooled=True)
    np.testing.assert_array_equal(offsets, emb.offsets)
    np.testing.assert_allclose(vectors, emb.vectors, atol=1e-5)
    np.testing.assert_allclose(pooled, ref_pooled, atol=1e-5)
    assert ids == [i for i, _ in pairs] and texts == [t for _, t in pairs]


def test_a_build_whose_encoders_cannot_be_placed_stops_with_a_clear_error(local_ray, tmp_path, encoder):
    from retriever.cluster.distributed import build_sharded_on_ray

    if ray.cluster_resources().get("GPU"):
        pytest.skip("this Ray cluster has a GPU: the encoder actors would be placed")
    with pytest.raises(RuntimeError, match="no document encoded in 3 s .*ray status"):
        build_sharded_on_ray(_corpus(12), tmp_path / "idx", n_shards=2, config=CFG, encoder=encoder, workers=1,
                             chunk_docs=8, gpus_per_worker=1.0, show_progress=False, stall_timeout_s=3.0)
    assert not (tmp_path / "idx").exists() and (tmp_path / ".idx.build").is_dir()  # kept for --resume


def test_auto_chunk_docs_keeps_every_actor_busy_on_small_corpora():
    from retriever.cluster.distributed import auto_chunk_docs

    assert auto_chunk_docs(1) == 32 and auto_chunk_docs(300) == 32  # 300 documents: 10 chunks, not one
    assert auto_chunk_docs(1000) == 63 and auto_chunk_docs(16 * 1024) == 1024 and auto_chunk_docs(10**7) == 1024

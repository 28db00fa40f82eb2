"""The Ray backend of sharded indexes (retriever.distributed) on a local Ray kept on the loopback interface.

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
from retriever.encoder import ColBERTEncoder  # noqa: E402
from retriever.fde import FDEConfig  # noqa: E402
from retriever.index import IndexConfig  # noqa: E402
from retriever.shards import ShardedRetriever  # noqa: E402

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
    remote = ShardedRetriever.load(saved, backend="ray", encoder=encoder, replicas=2)
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
    remote = ShardedRetriever.load(saved, backend="ray", encoder=encoder)
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
    with pytest.raises(TypeError, match="backend='ray'"):
        ShardedRetriever.load(saved, replicas=2)


def test_cli_searches_a_sharded_index_on_ray(local_ray, saved, capsys):
    from retriever.cli import main as cli_main

    assert cli_main(["-q", "search", "--index", str(saved), "--query", "aspirin fever", "--k", "3"]) == 0
    local = capsys.readouterr().out
    assert cli_main(["-q", "search", "--index", str(saved), "--query", "aspirin fever", "--k", "3",
                     "--backend", "ray"]) == 0
    assert capsys.readouterr().out == local and len(local.strip().splitlines()) == 3


def test_batches_spread_over_replicas_and_partial_results(local_ray, saved, encoder):
    local = ShardedRetriever.load(saved, encoder=encoder)
    remote = ShardedRetriever.load(saved, backend="ray", encoder=encoder, replicas=2, timeout_s=60)
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
    remote = ShardedRetriever.load(saved, backend="ray", encoder=encoder)
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

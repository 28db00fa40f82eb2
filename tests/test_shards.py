"""Sharded indexes (retriever.cluster.shards, local backend): a sharded index answers as the single one does.

Exact (exhaustive MaxSim) results equal the single index's, ids and scores; FDE-mode recall is at
least the single index's; routing is stable and checked by verify; add / upsert / delete go to the
right shard, are all-or-nothing across shards and survive save / load; bad directories are named.
"""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from conftest import REPO
from retriever.index import format as fmt
from retriever.cli.main import main as cli_main
from retriever.encoders.colbert import ColBERTEncoder
from retriever.evaluation.metrics import chamfer_recall
from retriever.candidates.fde import FDEConfig
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever
from retriever.cluster.shards import ShardedRetriever, shard_of

FIXTURES = REPO / "tests" / "fixtures" / "encoder"
CFG = IndexConfig(fde=FDEConfig(num_repetitions=4, num_simhash_projections=3, projection_dimension=8))
DIM = 16


def _docs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal((int(rng.integers(3, 20)), DIM)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


DOCS = _docs(240)
IDS = [f"doc-{i}" for i in range(240)]
QUERIES = [d[:4] + 0.05 for d in DOCS[::30]]


@pytest.fixture(scope="module")
def single():
    return Retriever.build(DOCS, doc_ids=IDS, config=CFG, show_progress=False)


@pytest.fixture(scope="module")
def sharded():
    return ShardedRetriever.build(DOCS, doc_ids=IDS, n_shards=4, config=CFG, show_progress=False)


def test_routing_is_stable_and_spread():
    # pinned: a change of the hash would send existing documents to other shards
    assert [shard_of(i, 4) for i in ("a", "doc-1", "doc-2", 0, 12345)] == [
        shard_of("a", 4), shard_of("doc-1", 4), shard_of("doc-2", 4), shard_of("0", 4), shard_of("12345", 4)]
    assert [shard_of(x, 7) for x in ("alpha", "beta", "gamma")] == [6, 4, 3]
    counts = np.bincount([shard_of(f"id{i}", 8) for i in range(8000)], minlength=8)
    assert counts.min() > 850 and counts.max() < 1150


def test_each_document_lives_in_its_shard(sharded):
    assert sharded.n_docs == 240 and sharded.n_shards == 4
    for s, shard in enumerate(sharded.shards):
        assert all(shard_of(i, 4) == s for i in shard.doc_ids.tolist())


def test_sharded_exact_equals_single_exact(single, sharded):
    a = single.search(QUERIES, k=15, mode="exact")
    b = sharded.search(QUERIES, k=15, mode="exact")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert b.shards is not None and (b.shards >= 0).all()
    for i in range(len(QUERIES)):  # (shard, row) names the hit
        for j in range(15):
            assert sharded.shards[b.shards[i, j]].doc_ids[b.rows[i, j]] == b.ids[i, j]


def test_sharded_fde_recall_at_least_single(single, sharded):
    exact = single.search(QUERIES, k=10, mode="exact").ids
    for n in (20, 40):
        r1 = chamfer_recall(single.search(QUERIES, k=10, n_candidates=n, mode="fde").ids, exact, 10)
        r4 = chamfer_recall(sharded.search(QUERIES, k=10, n_candidates=n, mode="fde").ids, exact, 10)
        assert r4 >= r1  # every shard fetches n candidates of its own


def test_save_load_verify_and_wrong_loader(tmp_path, sharded):
    sharded.save(tmp_path / "s")
    loaded = ShardedRetriever.load(tmp_path / "s")
    a, b = sharded.search(QUERIES, k=8), loaded.search(QUERIES, k=8)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    top = ShardedRetriever.verify(tmp_path / "s")
    assert top["n_shards"] == 4 and sum(s["n_docs"] for s in top["shards"]) == 240
    with pytest.raises(fmt.IndexFormatError, match="is a sharded index"):
        Retriever.load(tmp_path / "s")
    # an ordinary index directory loads through the sharded API as one shard
    Retriever.build(DOCS[:20], doc_ids=IDS[:20], config=CFG, show_progress=False).save(tmp_path / "one")
    one = ShardedRetriever.load(tmp_path / "one")
    assert one.n_shards == 1 and one.n_docs == 20


def test_damaged_sharded_directories_are_named(tmp_path, sharded):
    sharded.save(tmp_path / "s")
    shutil.copytree(tmp_path / "s", tmp_path / "missing")
    shutil.rmtree(tmp_path / "missing" / "shard-0002")
    with pytest.raises(fmt.IndexFormatError, match="shard 2 .* is missing"):
        ShardedRetriever.load(tmp_path / "missing")
    shutil.copytree(tmp_path / "s", tmp_path / "swapped")
    Retriever.build(DOCS[:10], doc_ids=IDS[:10], config=CFG, show_progress=False).save(tmp_path / "swapped" / "shard-0001")
    with pytest.raises(fmt.IndexFormatError, match="shard-0001: its manifest is not the one"):
        ShardedRetriever.load(tmp_path / "swapped")
    shutil.copytree(tmp_path / "s", tmp_path / "edited")
    top = json.loads((tmp_path / "edited" / "sharded.json").read_text())
    top["n_shards"] = 3
    (tmp_path / "edited" / "sharded.json").write_text(json.dumps(top))
    with pytest.raises(fmt.IndexFormatError, match="sharded.json does not match"):
        ShardedRetriever.load(tmp_path / "edited")


def test_add_delete_upsert_are_routed_and_survive_save(tmp_path):
    sr = ShardedRetriever.build(DOCS[:120], doc_ids=IDS[:120], n_shards=3, config=CFG, show_progress=False)
    sr.add(DOCS[120:], doc_ids=IDS[120:])
    whole = ShardedRetriever.build(DOCS, doc_ids=IDS, n_shards=3, config=CFG, show_progress=False)
    a, b = sr.search(QUERIES, k=10, mode="exact"), whole.search(QUERIES, k=10, mode="exact")
    np.testing.assert_array_equal(a.ids, b.ids)
    for s, shard in enumerate(sr.shards):
        assert all(shard_of(i, 3) == s for i in shard.doc_ids.tolist())
    gone = IDS[::7]
    sr.delete(gone)
    res = sr.search(QUERIES, k=240, mode="exact")
    assert not set(gone) & set(res.ids[res.rows >= 0].tolist())
    new = _docs(1, seed=99)[0]
    sr.upsert([new], doc_ids=[IDS[1]])
    hit = sr.search([new], k=1, mode="exact")
    assert hit.ids[0, 0] == IDS[1]
    sr.save(tmp_path / "s")
    sr.close()  # one writer at a time: ``loaded`` compacts below
    loaded = ShardedRetriever.load(tmp_path / "s")
    np.testing.assert_array_equal(loaded.search(QUERIES, k=10, mode="exact").ids, sr.search(QUERIES, k=10, mode="exact").ids)
    ShardedRetriever.verify(tmp_path / "s")
    assert loaded.n_docs == 240 - len(gone)
    loaded.compact()
    assert sum(len(s.doc_ids) for s in loaded.shards) == 240 - len(gone)


def test_failed_changes_change_no_shard():
    sr = ShardedRetriever.build(DOCS[:100], doc_ids=IDS[:100], n_shards=4, config=CFG, show_progress=False)
    before = sr.search(QUERIES, k=20, mode="exact")
    sizes = [len(s.doc_ids) for s in sr.shards]
    # new documents for several shards, and one id that exists: that shard refuses, the others roll back
    with pytest.raises(ValueError):
        sr.add(DOCS[100:140] + [DOCS[0]], doc_ids=IDS[100:140] + [IDS[0]])
    after = sr.search(QUERIES, k=20, mode="exact")
    np.testing.assert_array_equal(before.ids, after.ids)
    assert sr.n_docs == 100
    assert [len(s.doc_ids) for s in sr.shards] >= sizes  # rows may remain, deleted, until compact
    with pytest.raises(KeyError, match="nope"):
        sr.delete([IDS[3], "nope"])
    assert sr.n_docs == 100 and IDS[3] in sr.search(DOCS[3], k=1, mode="exact").ids[0].tolist()
    with pytest.raises(ValueError, match="routes documents by id"):
        sr.add(DOCS[:2])


def test_bad_builds_are_refused():
    with pytest.raises(ValueError, match="n_shards"):
        ShardedRetriever.build(DOCS, doc_ids=IDS, n_shards=0)
    with pytest.raises(ValueError, match="would be empty"):
        ShardedRetriever.build(DOCS[:3], doc_ids=IDS[:3], n_shards=16, config=CFG, show_progress=False)
    a = Retriever.build(DOCS[:10], doc_ids=IDS[:10], config=CFG, show_progress=False)
    b = Retriever.build(_docs(10, seed=3), config=IndexConfig(fde=CFG.fde), show_progress=False)
    with pytest.raises(ValueError, match="ids"):
        ShardedRetriever([a, b])


@pytest.fixture(scope="module")
def encoder():
    return ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32")


TEXT_DOCS = [{"_id": f"t{i}", "title": "", "text": t} for i, t in enumerate(
    ("aspirin reduces fever and pain; the heart pumps blood; sleep improves memory; coffee holds caffeine; "
     "exercise lowers blood pressure; vitamin d and cancer risk; genes code for proteins; a virus infects cells; "
     "tea has less caffeine than coffee; pain relief with aspirin in adults; the brain needs sleep; "
     "blood cells carry oxygen; caffeine keeps the brain awake; fever is a sign of infection; "
     "proteins fold into shapes; pressure in the blood vessels").split("; "))]


def test_text_sharded_index_and_cli(tmp_path, encoder, capsys):
    docs = [{**d, "_id": f"{d['_id']}-{j}"} for j, d in enumerate(TEXT_DOCS)]
    single = Retriever.build(docs, encoder=encoder, config=CFG, show_progress=False)
    sr = ShardedRetriever.build(docs, n_shards=2, encoder=encoder, config=CFG, show_progress=False)
    q = ["aspirin fever", "coffee caffeine tea"]
    a = single.search(q, k=6, mode="exact", hybrid=False)
    b = sr.search(q, k=6, mode="exact", hybrid=False)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    fused = sr.search(q, k=6)  # hybrid within each shard, merged
    assert fused.ids.shape == (2, 6) and (fused.rows >= 0).all()
    sr.add([("new-1", "aspirin fever aspirin")])
    assert sr.search(["aspirin fever"], k=1, hybrid=False).ids[0, 0] == "new-1"
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
    out = tmp_path / "idx"
    model = str(FIXTURES / "bert_stanford")
    assert cli_main(["-q", "index", "--corpus", str(corpus), "--out", str(out), "--model", model, "--shards", "2",
                     "--num-repetitions", "4", "--num-simhash-projections", "3", "--projection-dimension", "8"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_shards"] == 2
    assert cli_main(["-q", "search", "--index", str(out), "--query", "aspirin fever", "--k", "3"]) == 0
    hits = capsys.readouterr().out.strip().splitlines()
    assert len(hits) == 3 and hits[0].startswith("q0\t1\t")
    assert cli_main(["verify", str(out)]) == 0
    assert "2 shards" in capsys.readouterr().out


def test_sharded_hybrid_fuses_with_global_top_lists(encoder):
    """Dense + MaxSim do not depend on the partition: with each signal's top list taken over all shards,
    the sharded fused ranking equals the single index's (exhaustive MaxSim side). BM25's statistics are
    per shard (as in a sharded Lucene), so with it the two differ slightly."""
    from retriever.hybrid.fusion import HybridConfig

    docs = [{**d, "_id": f"{d['_id']}-x"} for d in TEXT_DOCS]
    cfg = IndexConfig(fde=CFG.fde, hybrid=HybridConfig(signals=("dense",)))
    single = Retriever.build(docs, encoder=encoder, config=cfg, show_progress=False)
    q = ["aspirin fever", "coffee caffeine tea", "blood pressure"]
    for n in (1, 3):
        sr = ShardedRetriever.build(docs, n_shards=n, encoder=encoder, config=cfg, show_progress=False)
        a, b = single.search(q, k=5, mode="exact"), sr.search(q, k=5, mode="exact")
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)


def test_shards_of_different_encoders_are_refused(encoder):
    a = Retriever.build([("x1", "aspirin fever"), ("x2", "heart blood")], encoder=encoder, config=CFG,
                        show_progress=False)
    other = ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32", document_length=20)
    b = Retriever.build([("y1", "coffee tea"), ("y2", "sleep memory")], encoder=other, config=CFG,
                        show_progress=False)
    with pytest.raises(ValueError, match="mixed encoders"):
        ShardedRetriever([a, b])

"""The scale path: faiss_factory="auto", streamed builds from embedding batches, bounded FAISS training."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from lifecycle_util import SMALL_FDE, make_docs, make_queries
from retriever.candidates import ann
from retriever.candidates.fde import FDEEncoder
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever
from retriever.store.tokens import TokenEmbeddings

N_AUTO = ann.AUTO_FLAT_BELOW + 300  # just past the size where "auto" compresses
DOCS = make_docs(N_AUTO, seed=3, max_len=12)
QUERIES = make_queries(10, seed=4)
CFG = IndexConfig(fde=SMALL_FDE)  # faiss_factory "auto", int8 codec: the defaults
DIM_FDE = FDEEncoder(SMALL_FDE, 32).output_dim


def test_auto_factory_rule():
    assert ann.auto_factory(ann.AUTO_FLAT_BELOW - 1, 10240) == "Flat"
    assert ann.auto_factory(ann.AUTO_FLAT_BELOW, 10240) == "IVF1,PQ2560x4fs"
    assert ann.auto_factory(10**6, 1024) == "IVF1,PQ256x4fs"
    assert ann.auto_factory(10**6, 1020) == "Flat"  # not a multiple of 8
    assert ann.resolve_factory("HNSW32", 5, 64) == "HNSW32"
    assert ann.resolve_factory(" AUTO ", 10**5, 64) == "IVF1,PQ16x4fs"


@pytest.fixture(scope="module")
def auto_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "idx"
    r = Retriever.build(DOCS, config=CFG, path=path, show_progress=False)
    r.close()  # searchable still; the tests below load and change the directory as its next writer
    return r, path


def test_auto_builds_compressed_index_and_records_it(auto_index):
    r, path = auto_index
    assert r.config.faiss_factory == f"IVF1,PQ{DIM_FDE // 4}x4fs"
    assert json.loads((path / "manifest.json").read_text())["config"]["faiss_factory"] == r.config.faiss_factory
    base = faiss.downcast_index(faiss.extract_index_ivf(r.faiss_index))
    assert isinstance(base, faiss.IndexIVFPQFastScan) and r.faiss_index.ntotal == N_AUTO
    assert base.code_size * 8 == DIM_FDE  # dim / 8 bytes per document
    small = Retriever.build(DOCS[:100], config=CFG, show_progress=False)
    assert small.config.faiss_factory == "Flat"


def test_auto_index_candidates_match_flat_ranking(auto_index):
    """PQ candidates approximate the exact FDE inner-product ranking (the Flat index's answer)."""
    r, _ = auto_index
    flat = Retriever.build(DOCS, config=IndexConfig(fde=SMALL_FDE, faiss_factory="Flat"), show_progress=False)
    q = TokenEmbeddings.from_list(QUERIES)
    qf = r.fde_encoder.encode_queries(q)
    _, a = r.faiss_index.search(qf, 100)
    _, b = flat.faiss_index.search(qf, 10)
    found = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)])  # random rows would find ~4%
    assert found >= 0.8, found
    # the pipeline over compressed candidates finds about as much of the exact top-5 as over Flat ones
    ex = r.search(QUERIES, k=5, mode="exact")

    def hit(index):
        res = index.search(QUERIES, k=5, n_candidates=400)
        return np.mean([len(set(x) & set(y)) / 5 for x, y in zip(res.rows, ex.rows)])

    assert hit(r) >= hit(flat) - 0.1, (hit(r), hit(flat))


def test_auto_index_round_trips_filters_and_lifecycle(auto_index, tmp_path):
    r, path = auto_index
    loaded = Retriever.load(path, verify=True)
    for kw in ({"n_candidates": 200}, {"mode": "exact"}):
        a, b = r.search(QUERIES, k=5, **kw), loaded.search(QUERIES, k=5, **kw)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.scores, b.scores)
    # subset filters and deletes go through FAISS's ID selector (a plain fast-scan index has none)
    keep = list(range(0, N_AUTO, 3))
    res = loaded.search(QUERIES, k=5, n_candidates=200, subset=keep)
    assert set(res.ids[res.rows >= 0].tolist()) <= set(keep)
    gone = res.ids[:, 0].tolist()
    loaded.delete(gone)
    again = loaded.search(QUERIES, k=5, n_candidates=200)
    assert not set(again.ids[again.rows >= 0].tolist()) & set(gone)
    loaded.add(DOCS[:3], doc_ids=[10**6, 10**6 + 1, 10**6 + 2])
    assert loaded.faiss_index.ntotal == N_AUTO + 3
    top = loaded.search(DOCS[:3], k=1, n_candidates=300)
    assert top.ids[:, 0].tolist() == [10**6, 10**6 + 1, 10**6 + 2] or top.scores[:, 0].min() > 0
    loaded.compact()
    assert loaded.config.faiss_factory == r.config.faiss_factory and loaded.faiss_index.ntotal == loaded.n_docs
    loaded.save(tmp_path / "c")
    back = Retriever.load(tmp_path / "c", verify=True)
    np.testing.assert_array_equal(back.search(QUERIES, k=5, n_candidates=200).rows,
                                  loaded.search(QUERIES, k=5, n_candidates=200).rows)


def _batches(docs, step):
    for s in range(0, len(docs), step):
        yield TokenEmbeddings.from_list(docs[s : s + step]), list(range(s, min(len(docs), s + step)))


@pytest.mark.parametrize("codec", ["int8", "residual2"])
def test_streamed_build_equals_one_shot_build(codec):
    docs = DOCS[:700]
    cfg = IndexConfig(fde=SMALL_FDE, codec=codec, faiss_factory="Flat")
    one = Retriever.build(docs, config=cfg, show_progress=False)
    streamed = Retriever.build(_batches(docs, 128), config=cfg, show_progress=False)
    np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(streamed.tokens))
    np.testing.assert_array_equal(one.doc_offsets, streamed.doc_offsets)
    np.testing.assert_array_equal(one.doc_ids, streamed.doc_ids)
    for kw in ({"n_candidates": 50}, {"mode": "exact"}):
        a, b = one.search(QUERIES, k=5, **kw), streamed.search(QUERIES, k=5, **kw)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_streamed_build_checks_batches():
    with pytest.raises(ValueError, match="doc_ids must be None"):
        Retriever.build(_batches(DOCS[:10], 5), doc_ids=list(range(10)), config=CFG, show_progress=False)
    bad = iter([next(_batches(DOCS[:10], 5)), "not a batch"])
    with pytest.raises(TypeError, match="documents batch 1"):
        Retriever.build(bad, config=CFG, show_progress=False)
    dup = iter([(TokenEmbeddings.from_list(DOCS[:2]), [0, 1]), (TokenEmbeddings.from_list(DOCS[2:4]), [1, 2])])
    with pytest.raises(ValueError, match="duplicate document id 1"):
        Retriever.build(dup, config=CFG, show_progress=False)


def test_faiss_training_sample_is_bounded_by_bytes():
    dim, n = 64, 5000
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    seen = []

    def sample_rows(rows):
        seen.append(rows.copy())
        return x[rows]

    index = ann.make_faiss_index("PQ16x4fs", dim)
    ann.train_index(index, "PQ16x4fs", n, sample_rows, max_bytes=1000 * 4 * dim)
    assert index.is_trained and seen[0].size == 1000 and np.all(np.diff(seen[0]) > 0)
    # never fewer rows than the index type needs, whatever the byte budget
    index = ann.make_faiss_index("IVF64,Flat", dim)
    ann.train_index(index, "IVF64,Flat", n, sample_rows, max_bytes=1)
    assert seen[1].size == 64


def test_npy_row_reader_equals_numpy(tmp_path):
    from retriever.core.storage import NpyRowReader

    x = np.random.default_rng(0).integers(0, 255, (1000, 13), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    with NpyRowReader(tmp_path / "x.npy") as r:
        assert r.shape == x.shape and r.dtype == x.dtype and len(r) == 1000
        np.testing.assert_array_equal(r[10:500], x[10:500])
        np.testing.assert_array_equal(r[995:2000], x[995:])
        assert r[7:7].shape == (0, 13)
        rows = np.array([5, 6, 7, 999, 0, 6, 300])
        np.testing.assert_array_equal(r[rows], x[rows])
        with pytest.raises(IndexError):
            r[np.array([1000])]
        with pytest.raises(IndexError):
            r[::2]
    (tmp_path / "t.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-20])  # truncated file
    with NpyRowReader(tmp_path / "t.npy") as r, pytest.raises(ValueError, match="truncated"):
        r[990:1000]


def test_exhaustive_is_cheaper_cost_model():
    from retriever.index.search import exhaustive_is_cheaper

    one = np.array([20])
    assert not exhaustive_is_cheaper(one, 999, 1000, margin=1.0)  # one query: rerank N < n_docs is cheaper
    assert exhaustive_is_cheaper(one, 1000, 1000, margin=1.0)
    short = np.full(323, 7)  # NFCorpus-like batch: 323 queries of 7 tokens, N=1,205 of 3,633
    assert exhaustive_is_cheaper(short, 1205, 3633)
    long = np.full(300, 23)  # SciFact-like: 300 queries of 23 tokens, N=1,440 of 5,183
    assert not exhaustive_is_cheaper(long, 1440, 5183)
    assert not exhaustive_is_cheaper(np.array([], dtype=np.int64), 10, 10)


def test_batch_search_switches_to_exhaustive_when_cheaper(auto_index, monkeypatch):
    """A batch of short queries with a large N is scored exhaustively: exact answers, same as mode='exact'."""
    r, _ = auto_index
    queries = [q[:2] for q in make_queries(60, seed=9)]
    calls = []
    from retriever.index import retriever as index_mod

    real = index_mod.search_candidates
    monkeypatch.setattr(index_mod, "search_candidates", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = r.search(queries, k=5, n_candidates=1500)
    assert not calls  # 60 x 1,500 pairs of one chunk cost more than one pass over 2,348 documents
    ex = r.search(queries, k=5, mode="exact")
    np.testing.assert_array_equal(res.rows, ex.rows)
    r.search(queries[:1], k=5, n_candidates=1500)  # one query: the FDE pipeline
    assert calls == [1]
    r.search(queries, k=5, n_candidates=1500, mode="fde")  # asked for: the pipeline, whatever it costs
    assert calls == [1, 1]


def test_failed_add_to_a_fast_scan_index_is_rolled_back(monkeypatch):
    """A failure inside FAISS's add on the auto (IVF1,PQ..x4fs) index removes what it added: nothing changes."""
    from lifecycle_util import state_of

    r = Retriever.build(DOCS, config=CFG, show_progress=False)
    assert r.config.faiss_factory.endswith("x4fs")
    qf = r.fde_encoder.encode_queries(TokenEmbeddings.from_list(QUERIES))

    def state():
        # a fast-scan list packs codes in blocks of 32: removal leaves stale bytes past the list's end that
        # the serialised form keeps but no search reads, so FAISS is compared by what it answers
        st = state_of(r)
        st.pop("faiss")
        return st, r.faiss_index.search(qf, 200)

    before = state()
    cls = type(r.faiss_index)
    real_add = cls.add

    def add_then_fail(self, x):
        real_add(self, x)
        raise MemoryError("simulated")

    monkeypatch.setattr(cls, "add", add_then_fail)
    with pytest.raises(MemoryError):
        r.add(DOCS[:4], doc_ids=[10**7 + i for i in range(4)])
    monkeypatch.undo()
    after = state()
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1][1], before[1][1])
    np.testing.assert_array_equal(after[1][0], before[1][0])
    r.add(DOCS[:4], doc_ids=[10**7 + i for i in range(4)])
    assert r.faiss_index.ntotal == N_AUTO + 4

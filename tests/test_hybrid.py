"""Hybrid scoring: BM25 (retriever.hybrid.lexical), fusion (retriever.hybrid.fusion) and hybrid indexes end to end.

Fast paths against plain references: BM25 against the formula in pure Python (and bm25s when
installed), fusion against a per-document Python loop, the hybrid pipeline against a brute-force
fusion over every signal's exact scores; the index keeps its hybrid answers across save / load,
add, delete, compact and subset, and refuses what it cannot serve with errors that name the cause.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest

from conftest import REPO
from lifecycle_util import damaged_copy
from retriever.index import format as fmt
from retriever.encoders.colbert import ColBERTEncoder
from retriever.candidates.fde import FDEConfig
from retriever.hybrid.fusion import FusionConfig, HybridConfig, fuse
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever
from retriever.cluster.shards import ShardedRetriever
from retriever.hybrid.lexical import ENGLISH_STOPWORDS, Analyzer, BM25Config, LexicalIndex

FIXTURES = REPO / "tests" / "fixtures" / "encoder"
FDE = FDEConfig(num_repetitions=4, num_simhash_projections=3, projection_dimension=8)
CFG = IndexConfig(fde=FDE)
WORDS = ("aspirin fever pain heart blood pressure sleep memory coffee tea caffeine exercise vitamin cancer risk "
         "gene protein virus brain cells the of and with").split()


def _texts(n, seed=0, lo=3, hi=16):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(lo, hi))) for _ in range(n)]


def _docs(n, seed=0):
    return [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(_texts(n, seed))]


# -- BM25 ----------------------------------------------------------------------------------------


def _bm25_reference(texts, query, cfg=BM25Config(stemmer="none")):
    """BM25 by the formula, one document at a time."""
    an = Analyzer(cfg)
    docs = [an.terms(t) for t in texts]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    out = []
    for d in docs:
        s = 0.0
        for t in an.terms(query):
            df = sum(t in x for x in docs)
            if df == 0:
                continue
            tf = d.count(t)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf / (tf + cfg.k1 * (1 - cfg.b + cfg.b * len(d) / avgdl))
        out.append(s)
    return np.array(out)


def test_bm25_scores_equal_the_formula():
    texts = _texts(40, seed=1) + ["", "the of and"]  # empty and stop-word-only documents too
    lex = LexicalIndex.from_texts(texts, BM25Config(stemmer="none"))
    for q in ["aspirin fever", "heart heart blood", "the", "zebra", "Caffeine, COFFEE; tea!"]:
        np.testing.assert_allclose(lex.scores(q), _bm25_reference(texts, q), rtol=1e-5, atol=1e-6)


def test_bm25_matches_bm25s_lucene():
    bm25s = pytest.importorskip("bm25s")
    stemmer = pytest.importorskip("Stemmer")
    from bm25s.tokenization import Tokenizer

    texts = _texts(60, seed=2) + ["aspirins reduced fevers in the running patients"]
    lex = LexicalIndex.from_texts(texts)
    tok = Tokenizer(stopwords=list(ENGLISH_STOPWORDS), stemmer=stemmer.Stemmer("english"), lower=True)
    model = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    model.index(tok.tokenize(texts, return_as="tuple", show_progress=False), show_progress=False)
    for q in ["aspirin fevers", "running heart", "tea coffee caffeine memory"]:
        ids = tok.tokenize([q], update_vocab=False, return_as="ids", show_progress=False)[0]
        np.testing.assert_allclose(lex.scores(q), model.get_scores(ids), rtol=1e-5, atol=1e-6)


def test_bm25_extend_and_select_equal_a_fresh_index():
    texts = _texts(50, seed=3)
    whole = LexicalIndex.from_texts(texts)
    grown = LexicalIndex.from_texts(texts[:17]).extend(texts[17:30]).extend(texts[30:])
    for key, arr in whole.arrays().items():
        np.testing.assert_array_equal(grown.arrays()[key], arr, err_msg=key)
    assert grown.vocab == whole.vocab
    keep = np.array([i for i in range(50) if i % 3])
    sub, fresh = whole.select(keep), LexicalIndex.from_texts([texts[i] for i in keep])
    for q in ["aspirin fever", "brain cells virus"]:
        np.testing.assert_allclose(sub.scores(q), fresh.scores(q), rtol=1e-6)
    sub.check(keep.size)


def test_bm25_search_ranks_pads_and_filters():
    texts = ["aspirin fever", "heart blood", "aspirin aspirin", "tea"]
    lex = LexicalIndex.from_texts(texts)
    rows, scores = lex.search(["aspirin", "zebra"], 3)
    assert rows[0, :2].tolist() == [2, 0] and rows[0, 2] == -1 and np.isneginf(scores[0, 2])
    assert (rows[1] == -1).all()
    allowed = np.array([1, 1, 0, 1], dtype=np.uint8)
    rows, _ = lex.search(["aspirin"], 3, allowed=allowed)
    assert rows[0].tolist() == [0, -1, -1]


@pytest.mark.parametrize("kw, field", [({"k1": -1}, "k1"), ({"b": 1.5}, "b"), ({"stopwords": "fr"}, "stopwords"),
                                       ({"stemmer": "porter"}, "stemmer"), ({"k1": float("nan")}, "k1")])
def test_bm25_config_names_the_bad_field(kw, field):
    with pytest.raises(ValueError, match=f"BM25Config.{field}"):
        BM25Config(**kw)


# -- fusion --------------------------------------------------------------------------------------


def _fuse_reference(signals, tops, fusion):
    w = dict(zip(("maxsim", "dense", "bm25"), fusion.weights))
    n = len(next(iter(signals.values())))
    out = [0.0] * n
    for name, x in signals.items():
        if not w[name]:
            continue
        top = list(tops[name])
        mu = sum(top) / len(top) if top else 0.0
        sd = math.sqrt(sum((t - mu) ** 2 for t in top) / len(top)) if top else 0.0
        for i in range(n):
            if fusion.method == "zscore":
                out[i] += 0.0 if len(top) < 2 or sd <= 1e-9 * max(1.0, abs(mu)) else w[name] * (x[i] - mu) / sd
            else:
                rank = 1 + sum(x[j] > x[i] or (x[j] == x[i] and j < i) for j in range(n))
                out[i] += w[name] / (fusion.rrf_k + rank)
    return np.array(out)


@pytest.mark.parametrize("method", ["zscore", "rrf"])
def test_fuse_equals_the_reference(method):
    rng = np.random.default_rng(4)
    fusion = FusionConfig(method=method, weights=(1.0, 0.5, 2.0), depth=5)
    for _ in range(20):
        n = int(rng.integers(1, 12))
        signals = {"maxsim": rng.normal(size=n).astype(np.float32), "dense": rng.normal(size=n).astype(np.float32),
                   "bm25": np.round(rng.random(n), 1).astype(np.float32)}  # ties
        tops = {s: np.sort(x)[-5:] for s, x in signals.items()}
        np.testing.assert_allclose(fuse(signals, tops, fusion), _fuse_reference(signals, tops, fusion), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("kw, field", [({"method": "sum"}, "method"), ({"weights": (1, 1)}, "weights"),
                                       ({"weights": (0, 0, 0)}, "weights"), ({"weights": (1, -1, 1)}, "weights"),
                                       ({"depth": 0}, "depth"), ({"rrf_k": -1}, "rrf_k")])
def test_fusion_config_names_the_bad_field(kw, field):
    with pytest.raises(ValueError, match=f"FusionConfig.{field}"):
        FusionConfig(**kw)


def test_hybrid_config_round_trips_and_rejects_unknown_signals():
    cfg = HybridConfig(signals=("bm25", "dense"), bm25=BM25Config(k1=1.2), fusion=FusionConfig(method="rrf"))
    assert cfg.signals == ("dense", "bm25")
    assert HybridConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="HybridConfig.signals"):
        HybridConfig(signals=("splade",))
    with pytest.raises(ValueError, match="IndexConfig.hybrid"):
        IndexConfig(hybrid="yes")


# -- the index -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    return ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32")


@pytest.fixture(scope="module")
def hindex(encoder):
    return Retriever.build(_docs(30), encoder=encoder, config=CFG, show_progress=False)


QUERIES = ["aspirin fever", "coffee and tea with caffeine", "the of", "vitamin cancer risk gene"]


def _brute_force(r: Retriever, encoder, queries, k, fusion=None, allowed=None):
    """Fusion over U computed from every document's exact signals (no FAISS, no candidate lists)."""
    fusion = fusion or r.config.hybrid.fusion
    q, qp = encoder.encode_queries(queries, return_pooled=True)
    n = len(r.doc_ids)
    live = np.ones(n, bool) if allowed is None else allowed.astype(bool)
    live &= r.deleted == 0
    vec = r.codec.decode(np.asarray(r.tokens))
    dense = np.asarray(r.dense, dtype=np.float32)
    out = []
    for i in range(len(queries)):
        qi = q[i]
        ms = np.array([(qi @ vec[r.doc_offsets[d]:r.doc_offsets[d + 1]].T).max(1).sum() for d in range(n)])
        de = dense @ qp[i]
        bm = r.lexical.scores(queries[i])
        depth = max(fusion.depth, k)

        def top(x, positive=False):
            idx = np.flatnonzero(live & (x > 0)) if positive else np.flatnonzero(live)
            return idx[np.lexsort((idx, -x[idx]))][:depth]
        u = np.unique(np.concatenate([top(ms), top(de), top(bm, True)]))
        bm_live = bm[live]
        tops = {"maxsim": np.sort(ms[top(ms)]), "dense": de[top(de)],
                "bm25": np.sort(bm_live)[-depth:]}
        f = fuse({"maxsim": ms[u].astype(np.float32), "dense": de[u].astype(np.float32),
                  "bm25": bm[u].astype(np.float32)}, tops, fusion)
        order = np.lexsort((u, -f))[:k]
        out.append((u[order], f[order]))
    return out


def test_text_build_stores_both_signals_and_fuses_by_default(hindex, encoder):
    assert hindex.config.hybrid.signals == ("dense", "bm25")
    assert hindex.dense.shape == (30, encoder.pooled_dim) and hindex.dense.dtype == np.float16
    assert hindex.lexical.n_rows == 30
    fused = hindex.search(QUERIES, k=5)
    plain = hindex.search(QUERIES, k=5, hybrid=False)
    maxsim = hindex.search(encoder.encode_queries(QUERIES), k=5)  # embeddings: MaxSim alone
    np.testing.assert_array_equal(plain.rows, maxsim.rows)
    assert not np.array_equal(fused.scores, plain.scores)


@pytest.mark.parametrize("mode", ["exact", "fde"])
@pytest.mark.parametrize("method", ["zscore", "rrf"])
def test_hybrid_search_equals_brute_force_fusion(hindex, encoder, mode, method):
    fusion = FusionConfig(method=method, weights=(1.0, 0.7, 1.3), depth=8)
    # fde mode with every document as a candidate: the same union as the exhaustive pass
    res = hindex.search(QUERIES, k=6, mode=mode, n_candidates=30, hybrid=fusion)
    for i, (rows, scores) in enumerate(_brute_force(hindex, encoder, QUERIES, 6, fusion)):
        np.testing.assert_array_equal(res.rows[i, : rows.size], rows)
        np.testing.assert_allclose(res.scores[i, : rows.size], scores, rtol=1e-4, atol=1e-4)


def test_hybrid_search_survives_save_and_load(tmp_path, hindex, encoder):
    hindex.save(tmp_path / "h")
    loaded = Retriever.load(tmp_path / "h", encoder=encoder)
    a, b = hindex.search(QUERIES, k=5), loaded.search(QUERIES, k=5)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    m = Retriever.verify(tmp_path / "h")
    assert m["config"]["hybrid"]["signals"] == ["dense", "bm25"] and m["hybrid"]["pooled_dim"] == encoder.pooled_dim
    assert {fmt.DENSE, fmt.BM25_VOCAB, *fmt.BM25_FILES.values()} <= set(m["files"])


def test_damaged_bm25_files_are_named(tmp_path, hindex):
    hindex.save(tmp_path / "h")
    post = tmp_path / "h" / fmt.BM25_FILES["post_rows"]
    arr = np.load(post)
    arr[0] = 10_000  # a row outside the index, same size
    np.save(post, arr)
    with pytest.raises(fmt.IndexFormatError, match="bm25_post_rows"):
        Retriever.verify(tmp_path / "h")
    hindex.save(tmp_path / "g")
    (tmp_path / "g" / fmt.BM25_VOCAB).write_text("x\n")
    with pytest.raises(fmt.IndexFormatError, match="bm25_vocab"):
        Retriever.load(tmp_path / "g")


def test_embedding_build_with_texts_and_pooled_equals_the_text_build(hindex, encoder):
    texts = [d["text"] for d in _docs(30)]
    emb, pooled = encoder.encode_documents(texts, return_pooled=True)
    r = Retriever.build(emb, doc_ids=[f"d{i}" for i in range(30)], config=CFG, encoder=encoder, texts=texts,
                        pooled=pooled, show_progress=False)
    assert r.config.hybrid == hindex.config.hybrid
    a, b = r.search(QUERIES, k=5), hindex.search(QUERIES, k=5)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    plain = Retriever.build(emb, config=CFG, show_progress=False)  # no texts, no pooled: no signals
    assert plain.config.hybrid.signals == ()
    with pytest.raises(ValueError, match="'bm25' signal, which needs the documents' texts"):
        Retriever.build(emb, config=IndexConfig(fde=FDE, hybrid=HybridConfig()), pooled=pooled, show_progress=False)


def test_query_embeddings_with_texts_and_pooled_equal_text_queries(hindex, encoder):
    q, qp = encoder.encode_queries(QUERIES, return_pooled=True)
    a = hindex.search(q, k=5, query_texts=QUERIES, query_pooled=qp)
    b = hindex.search(QUERIES, k=5)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="needs query_pooled"):
        hindex.search(q, k=5, query_texts=QUERIES)
    with pytest.raises(ValueError, match="query_texts must be a list of 4 strings"):
        hindex.search(q, k=5, query_texts=QUERIES[:2], query_pooled=qp)
    with pytest.raises(ValueError, match="query_pooled must be a finite float array"):
        hindex.search(q, k=5, query_texts=QUERIES, query_pooled=qp[:, :5])
    with pytest.raises(ValueError, match="go with query embeddings"):
        hindex.search(QUERIES, k=5, query_texts=QUERIES)
    with pytest.raises(ValueError, match="serve hybrid searches only"):
        hindex.search(q, k=5, query_texts=QUERIES, query_pooled=qp, hybrid=False)


def test_hybrid_refusals(hindex, encoder):
    plain = Retriever.build(encoder.encode_documents(_texts(5)), config=CFG, show_progress=False)
    with pytest.raises(ValueError, match="stores none"):
        plain.search(["aspirin"], hybrid=True)
    with pytest.raises(ValueError, match="needs query texts"):
        hindex.search(encoder.encode_queries(["aspirin"]), hybrid=True)
    with pytest.raises(TypeError, match="hybrid must be"):
        hindex.search(["aspirin"], hybrid="yes")


def test_add_texts_then_compact_equals_a_fresh_build(encoder):
    docs = _docs(40, seed=5)
    r = Retriever.build(docs[:25], encoder=encoder, config=CFG, show_progress=False)
    r.add(docs[25:])
    whole = Retriever.build(docs, encoder=encoder, config=CFG, show_progress=False)
    a, b = r.search(QUERIES, k=6), whole.search(QUERIES, k=6)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    gone = [f"d{i}" for i in range(0, 40, 4)]
    r.delete(gone)
    res = r.search(QUERIES, k=40)
    assert not set(gone) & set(res.ids[res.rows >= 0].tolist())
    r.compact()
    live = [d for d in docs if d["_id"] not in gone]
    fresh = Retriever.build(live, encoder=encoder, config=CFG, show_progress=False)
    a, b = r.search(QUERIES, k=6), fresh.search(QUERIES, k=6)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    assert r.lexical.n_rows == r.dense.shape[0] == len(live)


def test_add_embeddings_to_a_hybrid_index_is_refused_and_changes_nothing(hindex, encoder):
    r = Retriever.build(_docs(10), encoder=encoder, config=CFG, show_progress=False)
    before = r.search(QUERIES, k=5)
    with pytest.raises(ValueError, match="'dense' hybrid signal"):
        r.add(encoder.encode_documents(["new text"]), doc_ids=["n1"])
    assert len(r.doc_ids) == 10 and r.dense.shape[0] == 10 and r.lexical.n_rows == 10
    after = r.search(QUERIES, k=5)
    np.testing.assert_array_equal(before.rows, after.rows)


def test_upsert_and_subset_with_hybrid(encoder):
    r = Retriever.build(_docs(20, seed=6), encoder=encoder, config=CFG, show_progress=False)
    r.upsert([("d3", "aspirin fever aspirin pain")])
    res = r.search(["aspirin fever"], k=3)
    assert res.ids[0, 0] == "d3"
    sub = r.search(["aspirin fever"], k=5, subset=["d1", "d2", "d5"])
    assert set(sub.ids[0][sub.rows[0] >= 0].tolist()) <= {"d1", "d2", "d5"}


def test_plain_text_index_with_no_signals(encoder):
    r = Retriever.build(_docs(8), encoder=encoder, config=IndexConfig(fde=FDE, hybrid=HybridConfig(signals=())),
                        show_progress=False)
    assert r.dense is None and r.lexical is None
    a = r.search(["aspirin"], k=3)
    b = r.search(encoder.encode_queries(["aspirin"]), k=3)
    np.testing.assert_array_equal(a.rows, b.rows)


def test_bm25_only_index(tmp_path, encoder):
    r = Retriever.build(_docs(12), encoder=encoder, config=IndexConfig(fde=FDE, hybrid=HybridConfig(signals=("bm25",))),
                        show_progress=False)
    assert r.dense is None and r.lexical is not None
    r.save(tmp_path / "b")
    loaded = Retriever.load(tmp_path / "b", encoder=encoder)
    np.testing.assert_array_equal(r.search(QUERIES, k=4).rows, loaded.search(QUERIES, k=4).rows)


# -- damaged hybrid files (property) -------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HYBRID_FILES = [fmt.DENSE, fmt.BM25_VOCAB, *fmt.BM25_FILES.values()]


@pytest.fixture(scope="module")
def saved_hybrid(tmp_path_factory, encoder):
    d = tmp_path_factory.mktemp("hyb") / "idx"
    Retriever.build(_docs(16, seed=9), encoder=encoder, config=CFG, show_progress=False).save(d)
    return d


@settings(max_examples=25, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(HYBRID_FILES), pos=st.floats(0, 1), byte=st.integers(0, 255), cut=st.booleans())
def test_damaged_hybrid_files_are_refused_by_name(saved_hybrid, encoder, tmp_path_factory, name, pos, byte, cut):
    expected = Retriever.load(saved_hybrid, encoder=encoder).search(QUERIES, k=4)
    d = tmp_path_factory.mktemp("dmg") / "idx"
    changed = damaged_copy(saved_hybrid, d, name, pos, byte, cut)
    try:
        r = Retriever.load(d, verify=True, encoder=encoder)
    except fmt.IndexFormatError as e:
        assert changed and name in str(e), str(e)
    else:
        assert not changed, "damage went unnoticed"
        res = r.search(QUERIES, k=4)
        np.testing.assert_array_equal(res.ids, expected.ids)


# z-score fusion only: RRF ranks a document of U outside the MaxSim top list by its rank among the
# reranked candidates, which differs from its rank among all documents once one is left out (so does
# the FDE path with N < n_docs)
@pytest.mark.parametrize("method", ["zscore"])
def test_hybrid_search_with_the_token_centroid_stage(encoder, method):
    from retriever.candidates.centroids import CentroidConfig

    cfg = dataclasses.replace(CFG, centroids=CentroidConfig(enabled=True, n_centroids=16))
    r = Retriever.build(_docs(30), encoder=encoder, config=cfg, show_progress=False)
    assert r.centroid_stage is not None and r.config.hybrid.signals == ("dense", "bm25")
    fusion = FusionConfig(method=method, weights=(1.0, 0.7, 1.3), depth=8)
    # every list probed and all but one document reranked: the exact MaxSim top-8 is among the candidates
    res = r.search(QUERIES, k=6, mode="centroids", nprobe=16, n_candidates=29, hybrid=fusion)
    for i, (rows, scores) in enumerate(_brute_force(r, encoder, QUERIES, 6, fusion)):
        np.testing.assert_array_equal(res.rows[i, : rows.size], rows)
        np.testing.assert_allclose(res.scores[i, : rows.size], scores, rtol=1e-4, atol=1e-4)
    assert r.search(QUERIES, k=5).ids.tolist() == r.search(QUERIES, k=5, mode="centroids").ids.tolist()


# -- long queries: their own fusion weights and depth ---------------------------------------------

LONG = " ".join(_texts(1, seed=5, lo=150, hi=151)[0].split()[:150])  # far past 64 tokens


def test_fusion_config_long_query_fields():
    f = FusionConfig()
    assert f.long_weights == (0.5, 1.0, 1.0) and f.long_depth == 400 and f.long_query_tokens == 64
    assert FusionConfig.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    old = {"method": "zscore", "weights": [1, 1, 1], "depth": 100, "rrf_k": 60}  # a manifest before these fields
    assert FusionConfig.from_dict(old) == f  # query-side: old indexes rank long queries the new way
    assert f.for_length(64) == FusionConfig(long_weights=None)
    assert f.for_length(65) == FusionConfig(weights=(0.5, 1, 1), depth=400, long_weights=None)
    assert [(g, idx.tolist()) for g, idx in f.groups([10, 70, 64, 65])] == [
        (f.for_length(1), [0, 2]), (f.for_length(99), [1, 3])]
    assert FusionConfig(long_weights=None).groups([10, 500])[0][1].tolist() == [0, 1]
    for kw, field in (({"long_weights": (1, 1)}, "long_weights"), ({"long_weights": (0, 0, 0)}, "long_weights"),
                      ({"long_depth": 0}, "long_depth"), ({"long_query_tokens": 0}, "long_query_tokens")):
        with pytest.raises(ValueError, match=f"FusionConfig.{field}"):
            FusionConfig(**kw)


def test_a_long_query_is_fused_with_the_long_weights(hindex, encoder):
    # the fixture encoder keeps at most 24 query tokens: the threshold is lowered to make its queries "long"
    n_tokens = int(encoder.encode_queries([LONG]).lengths[0])
    fusion = FusionConfig(long_query_tokens=16)
    assert n_tokens > 16
    res = hindex.search([LONG], k=6, mode="exact", hybrid=fusion)
    (rows, scores), = _brute_force(hindex, encoder, [LONG], 6, fusion.for_length(n_tokens))
    np.testing.assert_array_equal(res.rows[0, : rows.size], rows)
    np.testing.assert_allclose(res.scores[0, : rows.size], scores, rtol=1e-4, atol=1e-5)
    flat = hindex.search([LONG], k=6, mode="exact", hybrid=FusionConfig(long_query_tokens=16, long_weights=None))
    assert not np.allclose(flat.scores, res.scores)  # the rule changes the fused scores
    short = hindex.search(QUERIES[:1], k=6, hybrid=fusion)
    assert int(encoder.encode_queries(QUERIES[:1]).lengths[0]) <= 16
    np.testing.assert_array_equal(short.rows, hindex.search(QUERIES[:1], k=6, hybrid=FusionConfig(long_weights=None)).rows)


def test_a_batch_split_by_candidate_stage_equals_its_queries_searched_apart(encoder):
    from retriever.candidates.centroids import CentroidConfig

    # the fixture encoder keeps at most 24 query tokens: the stage threshold is lowered to 20 to make some "long";
    # one fusion (no long weights) and a shallow union, so that the candidate stage shapes the answer
    config = IndexConfig(fde=FDE, centroids=CentroidConfig(enabled=True, max_query_tokens=20))
    r = Retriever.build(_docs(80, seed=3), encoder=encoder, config=config, show_progress=False)
    fusion = FusionConfig(depth=5, long_weights=None)
    batch = [QUERIES[0], LONG, QUERIES[2], QUERIES[1] + " " + QUERIES[3]]
    lengths = encoder.encode_queries(batch).lengths
    assert (lengths <= 20).any() and (lengths > 20).any()
    both = r.search(batch, k=5, n_candidates=10, hybrid=fusion)
    apart = [r.search([q], k=5, n_candidates=10, hybrid=fusion) for q in batch]
    np.testing.assert_array_equal(both.rows, np.concatenate([a.rows for a in apart]))
    np.testing.assert_allclose(both.scores, np.concatenate([a.scores for a in apart]), rtol=1e-5)
    _, scored, ids = r.hybrid_union(batch, k=5, n_candidates=10, hybrid=fusion)
    for i, q in enumerate(batch):
        _, one, one_ids = r.hybrid_union([q], k=5, n_candidates=10, hybrid=fusion)
        np.testing.assert_array_equal(scored[i][0], one[0][0])
        assert list(ids[i]) == list(one_ids[0])
    sr = ShardedRetriever.build(_docs(80, seed=3), n_shards=2, encoder=encoder, config=config, show_progress=False)
    sb = sr.search(batch, k=5, hybrid=fusion)
    sa = [sr.search([q], k=5, hybrid=fusion) for q in batch]
    assert sb.ids.tolist() == [a.ids.tolist()[0] for a in sa]


def test_a_mixed_batch_equals_its_groups_searched_apart(hindex, encoder):
    fusion = FusionConfig(long_query_tokens=16)
    batch = [QUERIES[0], LONG, QUERIES[1], LONG + " caffeine"]
    lengths = encoder.encode_queries(batch).lengths
    assert (lengths <= 16).any() and (lengths > 16).any()
    both = hindex.search(batch, k=5, hybrid=fusion)
    apart = [hindex.search([q], k=5, hybrid=fusion) for q in batch]
    np.testing.assert_array_equal(both.rows, np.concatenate([a.rows for a in apart]))
    np.testing.assert_allclose(both.scores, np.concatenate([a.scores for a in apart]), rtol=1e-5)
    with pytest.raises(ValueError, match="mixes short and long queries"):
        hindex.hybrid_union(batch, k=5, hybrid=fusion)
    sr = ShardedRetriever.build(_docs(30), n_shards=2, encoder=encoder, config=CFG, show_progress=False)
    sb = sr.search(batch, k=5, hybrid=fusion)
    sa = [sr.search([q], k=5, hybrid=fusion) for q in batch]
    assert sb.ids.tolist() == [a.ids.tolist()[0] for a in sa]

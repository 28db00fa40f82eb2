"""The token centroid candidate stage: kernels against numpy twins, and the stage inside an index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retriever_kernels.centroids import build_lists, build_token_lists, centroid_candidates, probe_cells
from lifecycle_util import DIM, SMALL_FDE, make_docs, make_queries, unit
from retriever import IndexConfig, Retriever
from retriever.index import format as fmt
from retriever.candidates.centroids import (
    AUTO_LONG_QUERY_MAX_DOCS,
    AUTO_MAX_QUERY_TOKENS,
    AUTO_MIN_DOCS,
    AUTO_PQ_MAX_TOKENS,
    CentroidConfig,
    CentroidIndex,
    _pq_encode,
    _split,
    auto_candidates,
    auto_n_centroids,
    probes_per_token,
    residual_lut,
)
from retriever.index.format import IndexFormatError
from retriever.index.search import stage_groups
from retriever.store.tokens import as_token_embeddings

ON = IndexConfig(fde=SMALL_FDE, codec="float16", centroids=CentroidConfig(enabled=True, n_centroids=64))
NO_PQ = IndexConfig(fde=SMALL_FDE, codec="float16", centroids=CentroidConfig(enabled=True, n_centroids=64, residual_pq=0))


# -- numpy twins -------------------------------------------------------------------------------


def lists_ref(codes, doc_offsets, k):
    out = [[] for _ in range(k)]
    for d in range(len(doc_offsets) - 1):
        for c in sorted(set(codes[doc_offsets[d] : doc_offsets[d + 1]].tolist())):
            out[c].append(d)
    return out


def probe_ref(q, coarse, centroids, cells, n_cells, nprobe):
    """Best fine centroids within the best coarse cells (enough cells for nprobe centroids), by brute force."""
    top, vals = [], []
    for x in q.astype(np.float64):
        order = sorted(range(coarse.shape[0]), key=lambda c: (-float(np.float32(coarse[c] @ x)), c))
        cand, r = [], 0
        while r < len(order) and (r < n_cells or len(cand) < nprobe):
            cand += list(range(cells[order[r]], cells[order[r] + 1]))
            r += 1
        s = {f: centroids[f].astype(np.float64) @ x for f in cand}
        best = sorted(cand, key=lambda f: (-s[f], f))[:nprobe]
        top.append(best)
        vals.append([s[f] for f in best])
    return np.array(top), np.array(vals)


def top_of(scores, nprobe):
    """Exact top-nprobe columns of a full score matrix and their scores (equal scores: lower column first)."""
    top = np.array([sorted(range(row.size), key=lambda c: (-row[c], c))[:nprobe] for row in scores])
    return top, np.take_along_axis(scores, top, 1)


def approx_ref(top_scores, top, lists, n_docs, allowed=None, lut=None):
    """Centroid interaction with missing-token imputation, per document, and which documents were found.

    ``lists[c]``: the documents of centroid ``c``; with ``lut`` (refined interaction) its
    ``(document, residual code)`` token entries, each scored as its centroid's score plus its residual's
    from the lookup table. Per query token, a document's best probed entry; a miss scores the last list."""
    total = np.zeros(n_docs)
    found = np.zeros(n_docs, bool)
    for i in range(top.shape[0]):
        miss = float(top_scores[i, -1])
        best = np.full(n_docs, -np.inf)
        for j, c in enumerate(top[i]):
            for entry in lists[c]:
                if lut is None:
                    d, s = entry, float(top_scores[i, j])
                else:
                    d, code = entry
                    s = float(top_scores[i, j]) + sum(float(lut[i, u * 256 + v]) for u, v in enumerate(code))
                best[d] = max(best[d], s)
        hit = np.isfinite(best)
        found |= hit
        total += np.where(hit, best, miss)
    if allowed is not None:
        found &= allowed.astype(bool)
    return total, found


def token_lists_ref(codes, residuals, doc_offsets, k):
    """Per centroid, [(document, residual code tuple)] of its tokens in token order."""
    out = [[] for _ in range(k)]
    for d in range(len(doc_offsets) - 1):
        for t in range(doc_offsets[d], doc_offsets[d + 1]):
            out[codes[t]].append((d, tuple(residuals[t].tolist())))
    return out


def candidates_ref(top_scores, q_offsets, top, lists, n_docs, k, allowed=None, lut=None):
    rows = np.full((len(q_offsets) - 1, k), -1)
    vals = np.full((len(q_offsets) - 1, k), -np.inf)
    for q in range(len(q_offsets) - 1):
        a, b = q_offsets[q], q_offsets[q + 1]
        total, found = approx_ref(top_scores[a:b], top[a:b], lists, n_docs, allowed,
                                  None if lut is None else lut[a:b])
        docs = sorted(np.flatnonzero(found).tolist(), key=lambda d: (-np.float32(total[d]), d))[:k]
        rows[q, : len(docs)] = docs
        vals[q, : len(docs)] = total[docs]
    return rows, vals


def _random_lists(rng, n_docs=40, k=16):
    lengths = rng.integers(1, 9, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    codes = rng.integers(0, k, size=int(offsets[-1])).astype(np.uint16)
    return codes, offsets


# -- kernels -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_build_lists_matches_reference(seed):
    rng = np.random.default_rng(seed)
    codes, offsets = _random_lists(rng)
    lo, ld = build_lists(codes, offsets, 16)
    ref = lists_ref(codes, offsets, 16)
    assert lo.dtype == np.int64 and ld.dtype == np.int32 and lo[-1] == ld.size
    assert [ld[lo[c] : lo[c + 1]].tolist() for c in range(16)] == ref


def test_build_lists_rejects_bad_codes():
    offsets = np.array([0, 2, 3], np.int64)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        build_lists(np.array([0, 4, 1], np.uint16), offsets, 4)
    with pytest.raises(ValueError, match="codes must have shape"):
        build_lists(np.array([0, 1], np.uint16), offsets, 4)


@pytest.mark.parametrize("n_cells", [1, 2, 5])
@pytest.mark.parametrize("nprobe", [1, 3, 12])
def test_probe_cells_matches_reference(n_cells, nprobe):
    rng = np.random.default_rng(10 * n_cells + nprobe)
    d, sizes = 8, np.array([3, 0, 5, 2, 4])  # an empty cell, and cells smaller than nprobe
    cells = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    centroids = unit(rng.standard_normal((int(cells[-1]), d)))
    centroids[3] = centroids[0]  # equal scores within a cell: the lower id first
    coarse = unit(rng.standard_normal((sizes.size, d)))
    q = unit(rng.standard_normal((6, d)))
    top, vals = probe_cells(q, coarse, centroids, cells, n_cells, nprobe)
    ref_top, ref_vals = probe_ref(q, coarse, centroids, cells, n_cells, nprobe)
    assert top.tolist() == ref_top.tolist()
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="nprobe must be in"):
        probe_cells(q, coarse, centroids, cells, n_cells, 15)


def test_probing_every_cell_scores_every_centroid():
    rng = np.random.default_rng(3)
    centroids, coarse = unit(rng.standard_normal((40, 8))), unit(rng.standard_normal((4, 8)))
    cells = np.array([0, 10, 20, 30, 40], np.int64)
    q = unit(rng.standard_normal((5, 8)))
    top, vals = probe_cells(q, coarse, centroids, cells, 4, 7)
    ref_top, ref_vals = top_of(q @ centroids.T, 7)
    assert top.tolist() == ref_top.tolist()
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threads", [1, 2])
def test_centroid_candidates_match_reference(seed, threads):
    rng = np.random.default_rng(seed)
    n_docs, kc = 40, 16
    codes, offsets = _random_lists(rng, n_docs, kc)
    lo, ld = build_lists(codes, offsets, kc)
    lists = lists_ref(codes, offsets, kc)
    q_len = rng.integers(1, 5, size=5)
    q_off = np.concatenate([[0], np.cumsum(q_len)]).astype(np.int64)
    scores = rng.standard_normal((int(q_off[-1]), kc)).astype(np.float32)
    nprobe = int(rng.integers(1, 5))
    top, top_scores = top_of(scores, nprobe)
    allowed = (rng.random(n_docs) > 0.3).astype(np.uint8) if seed % 2 else None
    for k in (1, 7, 60):  # 60 > documents: padded
        rows, vals = centroid_candidates(top_scores, q_off, top, lo, ld, n_docs, k, allowed=allowed,
                                         n_threads=threads)
        ref_rows, ref_vals = candidates_ref(top_scores, q_off, top, lists, n_docs, k, allowed)
        assert rows.tolist() == ref_rows.tolist()
        np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_build_token_lists_matches_reference(seed):
    rng = np.random.default_rng(seed)
    codes, offsets = _random_lists(rng)
    residuals = rng.integers(0, 256, size=(codes.size, 3)).astype(np.uint8)
    lo, ld, lr = build_token_lists(codes, residuals, offsets, 16)
    ref = token_lists_ref(codes, residuals, offsets, 16)
    assert lo.dtype == np.int64 and ld.dtype == np.int32 and lr.dtype == np.uint8 and lo[-1] == ld.size == codes.size
    got = [list(zip(ld[lo[c] : lo[c + 1]].tolist(), map(tuple, lr[lo[c] : lo[c + 1]].tolist()))) for c in range(16)]
    assert got == ref
    with pytest.raises(ValueError, match="residuals must have shape"):
        build_token_lists(codes, residuals[1:], offsets, 16)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threads", [1, 2])
def test_refined_candidates_match_reference(seed, threads):
    rng = np.random.default_rng(100 + seed)
    n_docs, kc, m = 40, 16, 2
    codes, offsets = _random_lists(rng, n_docs, kc)
    residuals = rng.integers(0, 256, size=(codes.size, m)).astype(np.uint8)
    lo, ld, lr = build_token_lists(codes, residuals, offsets, kc)
    lists = token_lists_ref(codes, residuals, offsets, kc)
    q_len = rng.integers(1, 5, size=5)
    q_off = np.concatenate([[0], np.cumsum(q_len)]).astype(np.int64)
    scores = rng.standard_normal((int(q_off[-1]), kc)).astype(np.float32)
    lut = (0.3 * rng.standard_normal((int(q_off[-1]), 256 * m))).astype(np.float32)
    nprobe = int(rng.integers(1, 5))
    top, top_scores = top_of(scores, nprobe)
    allowed = (rng.random(n_docs) > 0.3).astype(np.uint8) if seed % 2 else None
    for k in (1, 7, 60):
        rows, vals = centroid_candidates(top_scores, q_off, top, lo, ld, n_docs, k, allowed=allowed, n_threads=threads,
                                         lut=lut, list_residuals=lr)
        ref_rows, ref_vals = candidates_ref(top_scores, q_off, top, lists, n_docs, k, allowed, lut=lut)
        assert rows.tolist() == ref_rows.tolist()
        np.testing.assert_allclose(vals, ref_vals, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="lut and list_residuals go together"):
        centroid_candidates(top_scores, q_off, top, lo, ld, n_docs, 3, lut=lut)
    with pytest.raises(ValueError, match="lut must have shape"):
        centroid_candidates(top_scores, q_off, top, lo, ld, n_docs, 3, lut=lut[:, :256], list_residuals=lr)


def test_residual_codes_and_lookup_table_match_numpy():
    rng = np.random.default_rng(4)
    pq = rng.standard_normal((4, 256, 3)).astype(np.float32)
    r = rng.standard_normal((50, 12)).astype(np.float32)
    codes = _pq_encode(pq, r)
    for u in range(4):  # nearest codeword by brute force
        d = ((r[:, None, 3 * u : 3 * u + 3] - pq[u][None]) ** 2).sum(-1)
        assert np.array_equal(codes[:, u], d.argmin(1))
    q = rng.standard_normal((6, 12)).astype(np.float32)
    lut = residual_lut(pq, q)
    recon = np.concatenate([pq[u][codes[:, u]] for u in range(4)], axis=1)  # (50, 12) decoded residuals
    via_lut = np.array([[sum(lut[i, u * 256 + int(codes[t, u])] for u in range(4)) for t in range(50)] for i in range(6)])
    np.testing.assert_allclose(via_lut, q @ recon.T, rtol=1e-5, atol=1e-5)


def test_centroid_candidates_tie_break_is_lower_row():
    # every document holds the same centroid: equal scores, the lowest rows win
    offsets = np.arange(11, dtype=np.int64)
    codes = np.zeros(10, np.uint16)
    lo, ld = build_lists(codes, offsets, 2)
    top, top_scores = np.array([[0]]), np.array([[1.0]], np.float32)
    rows, _ = centroid_candidates(top_scores, np.array([0, 1], np.int64), top, lo, ld, 10, 3)
    assert rows.tolist() == [[0, 1, 2]]


# -- training and assignment ---------------------------------------------------------------------


def test_split_shares_every_centroid():
    sizes = np.array([50, 0, 7, 1, 300])
    out = _split(32, sizes)
    assert out.sum() == 32 and out[1] == 0 and (out <= sizes).all() and (out[sizes > 0] >= 1).all()


def test_auto_rules():
    assert auto_n_centroids(6_821_748) == 16384 and auto_n_centroids(68_000_000) == 65536
    assert auto_n_centroids(1_073_089) == 16384 and auto_n_centroids(20_399_676) == 32768
    assert auto_n_centroids(100) == 16 and auto_n_centroids(80_000) == 10_000
    assert auto_candidates(1_000_000, 10) == 2055 and auto_candidates(3633, 10) == 505
    assert auto_candidates(50, 10) == 50 and auto_candidates(100_000, 100) == 1156
    assert auto_candidates(1000, 10) == 400 and auto_candidates(1000, 50) == 500  # the floors
    assert CentroidConfig().resolved(AUTO_MIN_DOCS, 10**5).enabled is True
    assert CentroidConfig().resolved(AUTO_MIN_DOCS - 1, 10**5).enabled is False
    assert CentroidConfig().resolved(5183, AUTO_PQ_MAX_TOKENS).residual_pq == 4
    assert CentroidConfig().resolved(5183, AUTO_PQ_MAX_TOKENS + 1).residual_pq == 0
    assert CentroidConfig(residual_pq=8).resolved(5183, 10**9).residual_pq == 8  # an explicit choice stays


def test_assign_is_the_best_fine_centroid_of_the_nearest_cell():
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((3000, 16)))
    ci = CentroidIndex.train(x[:2000], 3000, CentroidConfig(n_centroids=64, seed=3))
    assert ci.n_centroids == 64 and ci.code_dtype == np.uint16
    np.testing.assert_allclose(np.linalg.norm(ci.centroids, axis=1), 1.0, atol=1e-5)
    codes = ci.assign(x)
    cell = np.argmax(x @ ci.coarse.T, axis=1)
    for t in range(0, 3000, 37):
        a, b = ci.cells[cell[t]], ci.cells[cell[t] + 1]
        assert codes[t] == a + int(np.argmax(ci.centroids[a:b] @ x[t]))


@pytest.mark.parametrize("bad", [dict(enabled="yes"), dict(n_centroids=1), dict(n_centroids=2.5), dict(nprobe=0),
                                 dict(probe_cells=0), dict(max_train_bytes=10), dict(seed=-1),
                                 dict(residual_pq=-1), dict(residual_pq=1.5), dict(residual_pq=257),
                                 dict(residual_pq="yes"), dict(probe_budget=-1),
                                 dict(probe_budget=2.0), dict(max_query_tokens=0), dict(max_query_tokens=2.5),
                                 dict(max_query_tokens="64")])
def test_centroid_config_names_the_bad_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=f"CentroidConfig.{field}"):
        CentroidConfig(**bad)


def test_centroid_config_round_trips_and_refuses_unknown_keys():
    c = CentroidConfig(enabled=True, n_centroids=128, nprobe=4)
    assert CentroidConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="CentroidConfig.*bogus"):
        CentroidConfig.from_dict({**c.to_dict(), "bogus": 1})
    assert IndexConfig(centroids=True).centroids.enabled is True
    with pytest.raises(TypeError, match="IndexConfig.centroids"):
        IndexConfig(centroids=3)
    # a manifest written before the stage existed: no stage; before residual codes: none
    d = IndexConfig().to_dict()
    del d["centroids"]
    assert IndexConfig.from_dict(d).centroids.enabled is False
    old = {k: v for k, v in c.to_dict().items() if k != "residual_pq"}
    assert CentroidConfig.from_dict(old).residual_pq == 0 and CentroidConfig().residual_pq == "auto"
    # before the stage rule: every query through the stage; "auto" decides by corpus size
    old = {k: v for k, v in c.to_dict().items() if k != "max_query_tokens"}
    assert CentroidConfig.from_dict(old).max_query_tokens is None and CentroidConfig().max_query_tokens == "auto"
    for value in (None, 32, "auto"):
        one = CentroidConfig(max_query_tokens=value)
        assert CentroidConfig.from_dict(json.loads(json.dumps(one.to_dict()))) == one
    auto = CentroidConfig()
    assert auto.query_token_limit(AUTO_LONG_QUERY_MAX_DOCS - 1) == AUTO_MAX_QUERY_TOKENS == 64
    assert auto.query_token_limit(AUTO_LONG_QUERY_MAX_DOCS) is None
    assert auto.resolved(1000, 10**5).max_query_tokens == 64 and auto.resolved(10**5, 10**7).max_query_tokens is None
    assert CentroidConfig(max_query_tokens=8).resolved(10**6, 10**8).max_query_tokens == 8


def test_stage_groups():
    lengths = [10, 70, 64, 65, 3]
    assert [(st, idx.tolist()) for st, idx in stage_groups(lengths, True, "auto", 64)] == [
        ("centroids", [0, 2, 4]), ("fde", [1, 3])]
    assert [(st, idx.tolist()) for st, idx in stage_groups(lengths, True, "auto", None)] == [
        ("centroids", [0, 1, 2, 3, 4])]
    for has, mode, stage in ((True, "centroids", "centroids"), (True, "fde", "fde"), (False, "auto", "fde"),
                             (True, "exact", "fde")):
        assert [(st, idx.tolist()) for st, idx in stage_groups(lengths, has, mode, 64)] == [(stage, [0, 1, 2, 3, 4])]
    assert [(st, idx.tolist()) for st, idx in stage_groups([100], True, "auto", 64)] == [("fde", [0])]


# -- inside an index -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus():
    return make_docs(300, seed=5), make_queries(25, seed=6)


def _build(docs, ids=None, config=ON, **kw):
    ids = list(range(len(docs))) if ids is None else ids
    return Retriever.build(docs, doc_ids=ids, config=config, show_progress=False, **kw)


def test_stage_is_built_and_recorded(corpus, tmp_path):
    docs, _ = corpus
    r = _build(docs, path=tmp_path / "i")
    assert r.centroid_stage is not None and r.centroid_stage.n_centroids == 64
    m = json.loads((tmp_path / "i" / fmt.MANIFEST).read_text())
    assert m["config"]["centroids"]["enabled"] is True and m["centroids"] == {"n_centroids": 64, "n_coarse": 8}
    assert set(fmt.IVF_FILES.values()) | {fmt.IVF_CODES, fmt.IVF_PQ, fmt.IVF_RESIDUALS} <= set(m["files"])
    assert m["config"]["centroids"]["residual_pq"] == 4 and r.centroid_stage.residual_bytes == 4
    off = _build(docs, config=NO_PQ)
    assert off.centroid_stage.residual_bytes == 0 and off.centroid_stage.list_residuals is None
    small = Retriever.build(docs, config=IndexConfig(fde=SMALL_FDE), show_progress=False)  # auto, 300 docs: off
    assert small.centroid_stage is None and small.config.centroids.enabled is False
    with pytest.raises(ValueError, match="mode='centroids' needs an index built with the token centroid stage"):
        small.search(corpus[1], k=5, mode="centroids")


def test_probing_every_list_gives_the_exact_answer(corpus):
    docs, queries = corpus
    r = _build(docs)
    exact = r.search(queries, k=10, mode="exact")
    full = r.search(queries, k=10, mode="centroids", nprobe=64, n_candidates=len(docs))
    assert full.ids.tolist() == exact.ids.tolist()
    np.testing.assert_allclose(full.scores, exact.scores, rtol=1e-6)


def test_default_search_uses_the_stage_and_finds_the_exact_top(corpus):
    docs, queries = corpus
    r = _build(docs)
    exact = r.search(queries, k=10, mode="exact").ids
    got = r.search(queries, k=10, n_candidates=100, mode="centroids").ids
    fde = r.search(queries, k=10, n_candidates=100, mode="fde").ids

    def recall(ids):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist())])

    # a hard corpus (noisy tokens, short queries): the stage beats the FDEs at equal N (0.76 vs 0.60)
    assert recall(got) >= 0.7 and recall(got) > recall(fde)
    one = r.search(queries[:1], k=10, n_candidates=100)  # mode auto, one query: the centroid stage
    assert one.ids.tolist() == r.search(queries[:1], k=10, n_candidates=100, mode="centroids").ids.tolist()
    with pytest.raises(ValueError, match="ef_search applies to HNSW"):
        r.search(queries, k=5, ef_search=10)
    with pytest.raises(ValueError, match="nprobe must be a positive integer"):
        r.search(queries, k=5, nprobe=0)


def test_save_load_verify_and_damage(corpus, tmp_path):
    docs, queries = corpus
    r = _build(docs)
    before = r.search(queries, k=10, n_candidates=60, mode="centroids")
    r.save(tmp_path / "i")
    Retriever.verify(tmp_path / "i")
    r2 = Retriever.load(tmp_path / "i")
    after = r2.search(queries, k=10, n_candidates=60, mode="centroids")
    assert after.ids.tolist() == before.ids.tolist() and np.array_equal(after.scores, before.scores)
    # a code out of range is refused at load; a wrong (in-range) code by verify
    codes = np.load(tmp_path / "i" / fmt.IVF_CODES)
    m = json.loads((tmp_path / "i" / fmt.MANIFEST).read_text())
    for value, where in ((64, "load"), (None, "verify")):
        bad = codes.copy()
        t = 17
        bad[t, 0] = value if value is not None else (int(codes[t, 0]) + 32) % 64
        np.save(tmp_path / "i" / fmt.IVF_CODES, bad)
        m2 = dict(m, files=fmt.describe_files(tmp_path / "i", list(m["files"])))
        m2.pop(fmt.CHECKSUM_FIELD)
        fmt.write_manifest(tmp_path / "i", m2)
        if where == "load":
            with pytest.raises(IndexFormatError, match="names centroid 64, the stage has 64"):
                Retriever.load(tmp_path / "i")
        else:
            with pytest.raises(IndexFormatError, match="centroid ids of 1 of"):
                Retriever.verify(tmp_path / "i")
    # a wrong residual code: verify names the file; a missing one: load names it
    np.save(tmp_path / "i" / fmt.IVF_CODES, codes)
    res = np.load(tmp_path / "i" / fmt.IVF_RESIDUALS)
    x = r.codec.decode(np.asarray(r.tokens[:1]))[0] - r.centroid_stage.centroids[int(codes[0, 0])]
    bad = res.copy()
    pq = r.centroid_stage.pq
    far = ((x[: pq.shape[2]][None] - pq[0]) ** 2).sum(1).argmax()  # the farthest codeword of sub-vector 0
    bad[0, 0] = far
    np.save(tmp_path / "i" / fmt.IVF_RESIDUALS, bad)
    m2 = dict(m, files=fmt.describe_files(tmp_path / "i", list(m["files"])))
    m2.pop(fmt.CHECKSUM_FIELD)
    fmt.write_manifest(tmp_path / "i", m2)
    Retriever.load(tmp_path / "i")
    with pytest.raises(IndexFormatError, match=r"ivf_residuals.npy: the residual codes of 1 of"):
        Retriever.verify(tmp_path / "i")
    m3 = dict(m2, files={k: v for k, v in m2["files"].items() if k != fmt.IVF_RESIDUALS})
    fmt.write_manifest(tmp_path / "i", m3)
    with pytest.raises(IndexFormatError, match="residual_pq=4 needs 'ivf_residuals.npy'"):
        Retriever.load(tmp_path / "i")


def _assert_stage_matches_its_store(r):
    """Codes, residual codes and lists are those a fresh assignment of the stored tokens gives."""
    stage = r.centroid_stage
    x = r.codec.decode(np.asarray(r.tokens))
    codes = stage.assign(x)
    assert np.array_equal(np.asarray(stage.codes), codes)
    if stage.residuals is None:
        lo, ld = build_lists(codes, r.doc_offsets, stage.n_centroids)
    else:
        assert np.array_equal(np.asarray(stage.residuals), stage.encode_residuals(x, codes))
        lo, ld, lr = build_token_lists(codes, stage.encode_residuals(x, codes), r.doc_offsets, stage.n_centroids)
        assert np.array_equal(lr, stage.list_residuals)
    assert np.array_equal(lo, stage.list_offsets) and np.array_equal(ld, stage.list_docs)


@pytest.mark.parametrize("config", [ON, NO_PQ], ids=["residual_pq", "centroid_scores"])
def test_add_delete_compact_keep_the_stage_consistent(corpus, tmp_path, config):
    docs, queries = corpus
    extra = make_docs(40, seed=9)
    r = _build(docs[:250], config=config)
    cents = r.centroid_stage.centroids.copy()
    pq = None if r.centroid_stage.pq is None else r.centroid_stage.pq.copy()
    r.add(docs[250:] + extra, doc_ids=list(range(250, 300)) + list(range(1000, 1040)))
    stage = r.centroid_stage
    assert np.array_equal(stage.centroids, cents)  # trained once, kept for adds
    assert pq is None or np.array_equal(stage.pq, pq)
    _assert_stage_matches_its_store(r)
    # a new document is found through the stage
    q = [extra[3][:4]]
    assert r.search(q, k=1, mode="centroids", n_candidates=50).ids[0, 0] == 1003
    # deleted and subset-excluded documents never come back
    r.delete([1003] + list(range(0, 100)))
    res = r.search(queries + q, k=20, mode="centroids", n_candidates=80)
    assert not (set(res.ids.ravel().tolist()) & ({1003} | set(range(100))))
    sub = r.search(queries, k=5, mode="centroids", n_candidates=40, subset=list(range(200, 260)))
    assert set(sub.ids.ravel().tolist()) - {-1} <= set(range(200, 260))
    before = r.search(queries, k=10, mode="centroids", n_candidates=80)
    r.compact()
    after = r.search(queries, k=10, mode="centroids", n_candidates=80)
    assert after.ids.tolist() == before.ids.tolist()
    _assert_stage_matches_its_store(r)
    r.save(tmp_path / "c")
    Retriever.verify(tmp_path / "c")
    r.compact(retrain=True)
    assert not np.array_equal(r.centroid_stage.centroids, cents)
    _assert_stage_matches_its_store(r)
    r.save(tmp_path / "d")
    Retriever.verify(tmp_path / "d")
    assert Retriever.load(tmp_path / "d").search(queries, k=10, mode="exact").ids.tolist() == \
        r.search(queries, k=10, mode="exact").ids.tolist()


def test_sharded_index_with_the_stage(corpus, tmp_path):
    from retriever.cluster.shards import ShardedRetriever

    docs, queries = corpus
    sr = ShardedRetriever.build(docs, doc_ids=list(range(len(docs))), n_shards=2, config=ON, show_progress=False)
    assert all(s.centroid_stage is not None for s in sr.shards)
    exact = _build(docs).search(queries, k=10, mode="exact").ids
    assert sr.search(queries, k=10, mode="exact").ids.tolist() == exact.tolist()
    got = sr.search(queries, k=10, n_candidates=100).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), exact.tolist())])
    assert recall >= 0.7


def test_failed_add_leaves_the_stage_unchanged(corpus, monkeypatch):
    from lifecycle_util import results_of, state_of

    docs, queries = corpus
    r = _build(docs[:200])
    before, answers = state_of(r), results_of(r, queries, mode="centroids", n_candidates=50)

    def fail(self, x):
        raise RuntimeError("injected")

    monkeypatch.setattr(CentroidIndex, "assign", fail)
    with pytest.raises(RuntimeError, match="injected"):
        r.add(docs[200:210], doc_ids=list(range(200, 210)))
    monkeypatch.undo()
    real_add = type(r.faiss_index).add
    monkeypatch.setattr(type(r.faiss_index), "add", lambda self, x: (_ for _ in ()).throw(MemoryError("injected")))
    with pytest.raises(MemoryError, match="injected"):
        r.add(docs[200:210], doc_ids=list(range(200, 210)))
    monkeypatch.setattr(type(r.faiss_index), "add", real_add)
    assert state_of(r) == before
    assert results_of(r, queries, mode="centroids", n_candidates=50) == answers
    r.add(docs[200:210], doc_ids=list(range(200, 210)))
    assert r.centroid_stage.n_docs == 210


def _long_and_short(seed=7, n_long=3, n_short=3):
    """Queries of 80 tokens (past the default ``max_query_tokens``) and of 1-8 tokens, interleaved."""
    rng = np.random.default_rng(seed)
    centres = unit(np.random.default_rng(12345).standard_normal((12, DIM)))
    long = [unit(centres[rng.integers(0, 12, size=80)] + 0.3 * rng.standard_normal((80, DIM))) for _ in range(n_long)]
    short = make_queries(n_short, seed=seed)
    return [q for pair in zip(short, long) for q in pair]


def test_auto_sends_long_queries_to_the_fdes(corpus, tmp_path):
    import dataclasses

    docs, _ = corpus
    r = _build(docs, path=tmp_path / "i")
    assert json.loads((tmp_path / "i" / fmt.MANIFEST).read_text())["config"]["centroids"]["max_query_tokens"] == 64
    batch = _long_and_short()
    assert batch[0].shape[1] == r.dim and [len(q) > 64 for q in batch] == [False, True] * 3
    got = r.search(batch, k=10, n_candidates=60)
    stages = ["fde" if len(q) > 64 else "centroids" for q in batch]
    apart = [r.search([q], k=10, n_candidates=60, mode=st) for q, st in zip(batch, stages)]
    assert got.ids.tolist() == [a.ids[0].tolist() for a in apart]
    np.testing.assert_array_equal(got.scores, np.concatenate([a.scores for a in apart]))
    via_centroids = r.search(batch, k=10, n_candidates=60, mode="centroids")
    assert via_centroids.ids[1::2].tolist() != got.ids[1::2].tolist()  # the rule changes the long queries' answers
    assert via_centroids.ids[0::2].tolist() == got.ids[0::2].tolist()
    # a corpus of 40,000 documents or more, or max_query_tokens=None: every query through the centroid stage
    assert r.config.centroids.query_token_limit(10**6) == 64  # decided at build time, for the built corpus
    r.config = dataclasses.replace(r.config, centroids=dataclasses.replace(r.config.centroids, max_query_tokens=None))
    assert r.search(batch, k=10, n_candidates=60).ids.tolist() == via_centroids.ids.tolist()


def test_sharded_auto_sends_long_queries_to_the_fdes(corpus):
    from retriever.cluster.shards import ShardedRetriever

    docs, _ = corpus
    sr = ShardedRetriever.build(docs, doc_ids=list(range(len(docs))), n_shards=2, config=ON, show_progress=False)
    batch = _long_and_short()
    for n in ("auto", 30):  # auto: each group with its stage's own candidate count
        got = sr.search(batch, k=10, n_candidates=n)
        apart = [sr.search([q], k=10, n_candidates=n) for q in batch]
        assert got.ids.tolist() == [a.ids[0].tolist() for a in apart]
        np.testing.assert_array_equal(got.scores, np.concatenate([a.scores for a in apart]))
    long = [sr.search([q], k=10, n_candidates=30, mode=m).ids[0].tolist() for q in batch[1::2] for m in ("fde", "centroids")]
    assert [a.ids[0].tolist() for a in apart[1::2]] == long[0::2]  # the long queries took the FDEs
    assert long[0::2] != long[1::2]  # which answer differently here
    assert [a.ids[0].tolist() for a in apart[0::2]] == [
        sr.search([q], k=10, n_candidates=30, mode="centroids").ids[0].tolist() for q in batch[0::2]]


def test_sharded_build_decides_the_stage_rule_for_the_whole_corpus(corpus, monkeypatch):
    import retriever.candidates.centroids as centroids_module
    from retriever.cluster.shards import ShardedRetriever

    docs, _ = corpus
    monkeypatch.setattr(centroids_module, "AUTO_LONG_QUERY_MAX_DOCS", 200)  # 300 documents: "large"; a shard: not
    assert _build(docs).config.centroids.max_query_tokens is None
    assert _build(docs[:150]).config.centroids.max_query_tokens == 64
    sr = ShardedRetriever.build(docs, doc_ids=list(range(len(docs))), n_shards=2, config=ON, show_progress=False)
    assert all(len(s.doc_ids) < 200 for s in sr.shards)
    assert [s.config.centroids.max_query_tokens for s in sr.shards] == [None, None]


def test_batch_search_equals_one_query_at_a_time(corpus):
    docs, queries = corpus
    r = _build(docs)
    whole = r.search(queries, k=10, mode="centroids", n_candidates=40)  # two workers
    singles = [r.search([q], k=10, mode="centroids", n_candidates=40) for q in queries]
    assert whole.ids.tolist() == [s.ids[0].tolist() for s in singles]
    np.testing.assert_array_equal(whole.scores, np.concatenate([s.scores for s in singles]))


def test_probe_budget_gives_short_queries_more_lists(corpus):
    assert probes_per_token(np.array([1, 7, 16, 40]), 16, 256, 65536).tolist() == [256, 36, 16, 16]
    assert probes_per_token(np.array([1, 7]), 16, 0, 65536).tolist() == [16, 16]
    assert probes_per_token(np.array([0, 1]), 16, 256, 100).tolist() == [100, 100]  # at most every list
    docs, queries = corpus
    r = _build(docs)
    stage = r.centroid_stage
    q = as_token_embeddings(queries)
    got = stage.candidates(q.vectors, q.offsets, 30, 4, 8, probe_budget=40)  # queries in groups of equal probes
    for i in range(len(q)):  # each query alone, with its own probe count
        one = q.select([i])
        p = int(probes_per_token(np.diff(one.offsets), 4, 40, stage.n_centroids)[0])
        assert got[i].tolist() == stage.candidates(one.vectors, one.offsets, 30, p, 8)[0].tolist()
    # search(nprobe=...) fixes the lists per token: the budget does not apply
    import dataclasses

    fixed = r.search(queries, k=10, mode="centroids", n_candidates=30, nprobe=4).ids
    r.config = dataclasses.replace(r.config, centroids=dataclasses.replace(r.config.centroids, probe_budget=0, nprobe=4))
    assert r.search(queries, k=10, mode="centroids", n_candidates=30).ids.tolist() == fixed.tolist()


def test_rebuild_centroids_adds_changes_and_removes_the_stage(corpus, tmp_path):
    from retriever.cli.main import main

    docs, queries = corpus
    plain = IndexConfig(fde=SMALL_FDE, codec="float16", centroids=False)
    r = _build(docs, config=plain)
    assert r.centroid_stage is None
    exact = r.search(queries, k=10, mode="exact")
    r.save(tmp_path / "i")
    r.close()  # the command below is the next writer
    assert main(["centroids", str(tmp_path / "i"), "--ivf-centroids", "64"]) == 0
    Retriever.verify(tmp_path / "i")
    r2 = Retriever.load(tmp_path / "i")
    assert r2.centroid_stage.n_centroids == 64 and r2.config.centroids.enabled is True
    built = _build(docs)  # the same config from the start: the same stage
    assert np.array_equal(np.asarray(r2.centroid_stage.codes), np.asarray(built.centroid_stage.codes))
    assert r2.search(queries, k=10, mode="exact").ids.tolist() == exact.ids.tolist()
    assert r2.search(queries, k=10, n_candidates=60).ids.tolist() == \
        built.search(queries, k=10, n_candidates=60).ids.tolist()
    assert main(["centroids", str(tmp_path / "i"), "--off"]) == 0
    r3 = Retriever.load(tmp_path / "i")
    assert r3.centroid_stage is None and r3.config.centroids.enabled is False
    assert fmt.IVF_CODES not in json.loads((tmp_path / "i" / fmt.MANIFEST).read_text())["files"]
    with pytest.raises(TypeError, match="config must be a CentroidConfig"):
        r3.rebuild_centroids("on")


def test_fde_index_is_read_on_first_use_with_the_stage(corpus, tmp_path):
    docs, queries = corpus
    _build(docs, path=tmp_path / "i")
    r = Retriever.load(tmp_path / "i")
    assert not r.faiss_loaded  # default searches use the centroid stage
    auto = r.search(queries, k=5, n_candidates=50)
    assert not r.faiss_loaded
    fde = r.search(queries, k=5, n_candidates=50, mode="fde")
    assert r.faiss_loaded and r.faiss_index.ntotal == len(docs)
    eager = Retriever.load(tmp_path / "i", verify=True)
    assert eager.faiss_loaded
    assert eager.search(queries, k=5, n_candidates=50, mode="fde").ids.tolist() == fde.ids.tolist()
    assert eager.search(queries, k=5, n_candidates=50).ids.tolist() == auto.ids.tolist()
    # a damaged FDE file is named when first used (and by verify)
    raw = (tmp_path / "i" / fmt.FAISS).read_bytes()
    (tmp_path / "i" / fmt.FAISS).write_bytes(raw[:100])
    m = json.loads((tmp_path / "i" / fmt.MANIFEST).read_text())
    m2 = dict(m, files=fmt.describe_files(tmp_path / "i", list(m["files"])))
    m2.pop(fmt.CHECKSUM_FIELD)
    fmt.write_manifest(tmp_path / "i", m2)
    lazy = Retriever.load(tmp_path / "i")
    lazy.search(queries, k=5)  # the centroid stage does not need it
    with pytest.raises(IndexFormatError, match="fde.faiss is not a readable FAISS index"):
        lazy.search(queries, k=5, n_candidates=50, mode="fde")
    with pytest.raises(IndexFormatError, match="fde.faiss"):
        Retriever.verify(tmp_path / "i")

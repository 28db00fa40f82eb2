"""MaxSim kernels against the float64 numpy oracle in tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from retriever_kernels.maxsim import (
    _f32_rows,
    _make_tile_max,
    _pack_per_query,
    maxsim_exhaustive,
    maxsim_exhaustive_topk,
    maxsim_scores,
    maxsim_scores_batch,
    warmup,
)
from retriever_kernels.topk import topk
from tests.reference import (
    assert_scores_close,
    check_topk_with_ties,
    maxsim_exhaustive_ref,
    maxsim_pairs_ref,
    maxsim_ref,
    maxsim_tolerance,
    split,
)

DTYPES = [np.float16, np.float32]


def csr(rng, lengths, dim, dtype=np.float32):
    """Random unit-ish token vectors in CSR form."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    vectors = rng.standard_normal((int(offsets[-1]), dim)).astype(np.float32) / np.sqrt(dim)
    return vectors.astype(dtype), offsets


def store(rng, dtype, lengths=(5, 1, 40, 33, 0, 300, 7), dim=48):
    """A token store with a one-token doc, an empty doc and a doc longer than one row block."""
    return csr(rng, lengths, dim, dtype)


# --------------------------------------------------------------------------------------
# correctness against the oracle
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_match_oracle(dtype):
    rng = np.random.default_rng(0)
    tokens, offsets = store(rng, dtype)
    for n_q_tokens in (1, 5, 32, 33, 70):
        q = rng.standard_normal((n_q_tokens, tokens.shape[1])).astype(np.float32)
        idx = np.array([0, 1, 2, -1, 3, 4, 5, 6, 2, 2], dtype=np.int64)
        got = maxsim_scores(q, tokens, offsets, idx)
        ref, tol = maxsim_pairs_ref(q, np.array([0, n_q_tokens]), tokens, offsets, idx[None])
        assert_scores_close(got[None], ref, tol)
        assert got[3] == -np.inf and got[5] == -np.inf  # padding, empty document
        assert got[2] == got[8] == got[9]  # duplicates score identically


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.sampled_from([1, 3, 16, 17, 64, 128]),
    n_docs=st.integers(1, 12),
    n_q=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES),
)
def test_batch_random_sizes(seed, dim, n_docs, n_q, dtype):
    rng = np.random.default_rng(seed)
    tokens, offsets = csr(rng, rng.integers(1, 60, n_docs), dim, dtype)
    q_vectors, q_offsets = csr(rng, rng.integers(1, 70, n_q), dim)
    cand = rng.integers(-1, n_docs, (n_q, int(rng.integers(1, 9)))).astype(np.int64)
    got = maxsim_scores_batch(q_vectors, q_offsets, tokens, offsets, cand)
    assert_scores_close(got, *maxsim_pairs_ref(q_vectors, q_offsets, tokens, offsets, cand))
    # one row of the batch is bit-identical to the single-query call
    i = int(rng.integers(n_q))
    np.testing.assert_array_equal(got[i], maxsim_scores(q_vectors[q_offsets[i] : q_offsets[i + 1]], tokens, offsets, cand[i]))


@pytest.mark.parametrize("pack_chunks", [1, 3, 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_packs_queries_sharing_a_document_bit_identically(dtype, pack_chunks, monkeypatch):
    """Queries that share a candidate document are scored with their tokens packed lane after lane, in as
    many passes as the pack holds: every row equals the single-query call bit for bit, and the oracle."""
    import retriever_kernels.maxsim as km

    monkeypatch.setattr(km, "_PACK_CHUNKS", pack_chunks)
    rng = np.random.default_rng(7)
    tokens, offsets = store(rng, dtype)
    n_docs = offsets.size - 1
    q_vectors, q_offsets = csr(rng, rng.integers(1, 70, 40), tokens.shape[1])  # 40 queries of 1-69 tokens
    cand = np.stack([rng.permutation(n_docs) for _ in range(40)]).astype(np.int64)  # every query: every document
    cand[::5, -1] = -1
    got = maxsim_scores_batch(q_vectors, q_offsets, tokens, offsets, cand)
    assert_scores_close(got, *maxsim_pairs_ref(q_vectors, q_offsets, tokens, offsets, cand))
    for i in range(40):
        one = maxsim_scores(q_vectors[q_offsets[i] : q_offsets[i + 1]], tokens, offsets, cand[i])
        np.testing.assert_array_equal(got[i], one)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exhaustive_matches_oracle_and_batch(dtype):
    rng = np.random.default_rng(1)
    tokens, offsets = store(rng, dtype)
    q_vectors, q_offsets = csr(rng, [1, 32, 0, 45, 3], tokens.shape[1])
    got = maxsim_exhaustive(q_vectors, q_offsets, tokens, offsets)
    ref, tol = maxsim_exhaustive_ref(q_vectors, q_offsets, tokens, offsets)
    assert_scores_close(got, ref, tol)
    assert np.all(got[2] == 0.0)  # a query with no tokens
    # queries share lane chunks here, not in the batch kernel: same arithmetic, same bits
    n_docs = offsets.size - 1
    cand = np.tile(np.arange(n_docs, dtype=np.int64), (q_offsets.size - 1, 1))
    np.testing.assert_array_equal(got, maxsim_scores_batch(q_vectors, q_offsets, tokens, offsets, cand))


def test_float16_conversion_is_exact():
    # subnormals, the largest finite half and signed zeros must convert exactly
    special = np.array(
        [[2.0**-24, -(2.0**-24), 1e-5, 1.0], [-0.0, 0.0, -65504.0, 0.5], [2.0**-24 * 3, 2.0, -0.0, 65504.0]],
        dtype=np.float16,
    )
    offsets = np.array([0, 2, 3], dtype=np.int64)
    # a query of unit vectors picks one column per query token: the score is a sum of column maxima
    q = np.eye(4, dtype=np.float32)
    got = maxsim_scores(q, special, offsets, np.array([0, 1], dtype=np.int64))
    exact = special.astype(np.float32)  # numpy's conversion is exact
    for j, rows in enumerate((slice(0, 2), slice(2, 3))):
        expect = np.float32(0.0)
        for lane in range(4):
            expect = np.float32(expect + exact[rows, lane].max())
        assert got[j] == expect
    assert got[1] == np.float32(2.0**-24 * 3 + 2.0) + 65504.0
    # the smallest subnormal on its own
    assert maxsim_scores(q[:1], special, offsets, np.array([0], dtype=np.int64))[0] == np.float32(2.0**-24)


def test_one_token_query_and_document():
    tokens = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=np.float16)
    offsets = np.array([0, 1, 3], dtype=np.int64)
    q = np.array([[2.0, 1.0]], dtype=np.float32)
    got = maxsim_scores(q, tokens, offsets, np.array([0, 1], dtype=np.int64))
    np.testing.assert_array_equal(got, np.array([4.0, 5.0], dtype=np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_readonly_memmap_store(tmp_path, dtype):
    rng = np.random.default_rng(2)
    tokens, offsets = store(rng, dtype)
    np.save(tmp_path / "tokens.npy", tokens)
    np.save(tmp_path / "offsets.npy", offsets)
    mm_tokens = np.load(tmp_path / "tokens.npy", mmap_mode="r")
    mm_offsets = np.load(tmp_path / "offsets.npy", mmap_mode="r")
    assert not mm_tokens.flags.writeable
    q_vectors, q_offsets = csr(rng, [4, 31], tokens.shape[1])
    cand = np.array([[0, 2, -1], [6, 5, 1]], dtype=np.int64)
    np.testing.assert_array_equal(
        maxsim_scores_batch(q_vectors, q_offsets, mm_tokens, mm_offsets, cand),
        maxsim_scores_batch(q_vectors, q_offsets, tokens, offsets, cand),
    )
    np.testing.assert_array_equal(
        maxsim_exhaustive(q_vectors, q_offsets, mm_tokens, mm_offsets),
        maxsim_exhaustive(q_vectors, q_offsets, tokens, offsets),
    )


def test_all_padding_rows_and_empty_candidate_lists():
    rng = np.random.default_rng(3)
    tokens, offsets = store(rng, np.float16)
    q_vectors, q_offsets = csr(rng, [3, 4], tokens.shape[1])
    got = maxsim_scores_batch(q_vectors, q_offsets, tokens, offsets, np.full((2, 5), -1, dtype=np.int64))
    assert got.shape == (2, 5) and np.all(np.isneginf(got))
    assert maxsim_scores_batch(q_vectors, q_offsets, tokens, offsets, np.empty((2, 0), np.int64)).shape == (2, 0)
    assert maxsim_scores(q_vectors[:3], tokens, offsets, np.empty(0, np.int64)).shape == (0,)


# --------------------------------------------------------------------------------------
# masks and exhaustive top-k
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_dtype", [np.bool_, np.uint8])
def test_allowed_mask(mask_dtype):
    rng = np.random.default_rng(4)
    tokens, offsets = store(rng, np.float16)
    n_docs = offsets.size - 1
    q_vectors, q_offsets = csr(rng, [6, 2], tokens.shape[1])
    allowed = np.array([1, 0, 1, 1, 0, 1, 0], dtype=mask_dtype)
    got = maxsim_exhaustive(q_vectors, q_offsets, tokens, offsets, allowed=allowed)
    assert_scores_close(got, *maxsim_exhaustive_ref(q_vectors, q_offsets, tokens, offsets, allowed))
    none = np.zeros(n_docs, dtype=mask_dtype)
    assert np.all(np.isneginf(maxsim_exhaustive(q_vectors, q_offsets, tokens, offsets, allowed=none)))
    idx, vals = maxsim_exhaustive_topk(q_vectors, q_offsets, tokens, offsets, 3, allowed=none)
    assert np.all(idx == -1) and np.all(np.isneginf(vals))
    idx, _ = maxsim_exhaustive_topk(q_vectors, q_offsets, tokens, offsets, 10, allowed=allowed)
    assert set(idx[0][idx[0] >= 0]) == {0, 2, 3, 5}  # doc 4 is empty, so never a hit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 4, 7, 50])
def test_exhaustive_topk(dtype, k):
    rng = np.random.default_rng(5)
    tokens, offsets = store(rng, dtype)
    # exact duplicates of documents 0 and 2 at the end: exact score ties, lower row first
    docs = split(tokens, offsets) + [split(tokens, offsets)[2], split(tokens, offsets)[0]]
    tokens = np.ascontiguousarray(np.concatenate(docs))
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    q_vectors, q_offsets = csr(rng, [1, 32, 9], tokens.shape[1])
    idx, vals = maxsim_exhaustive_topk(q_vectors, q_offsets, tokens, offsets, k)
    assert idx.dtype == np.int64 and vals.dtype == np.float32 and idx.shape == (3, k)
    # same scores as the exhaustive kernel, so exactly the same answer as topk() over them
    full = maxsim_exhaustive(q_vectors, q_offsets, tokens, offsets)
    ti, tv = topk(full, k)
    np.testing.assert_array_equal(idx, ti)
    np.testing.assert_array_equal(vals, tv)
    ref, tol = maxsim_exhaustive_ref(q_vectors, q_offsets, tokens, offsets)
    check_topk_with_ties(ref, idx, vals, k, tol)
    for row in idx:  # tied duplicates appear lower row first
        for a, b in ((0, 8), (2, 7)):
            if a in row and b in row:
                assert list(row).index(a) < list(row).index(b)


def test_exhaustive_topk_spans_several_blocks(monkeypatch):
    import retriever_kernels.maxsim as km

    monkeypatch.setattr(km, "_TOPK_BLOCK_BYTES", 1)  # 256-document blocks
    rng = np.random.default_rng(6)
    tokens, offsets = csr(rng, rng.integers(1, 6, 700), 8, np.float16)
    q_vectors, q_offsets = csr(rng, [2, 3], 8)
    idx, vals = km.maxsim_exhaustive_topk(q_vectors, q_offsets, tokens, offsets, 20)
    ti, tv = topk(maxsim_exhaustive(q_vectors, q_offsets, tokens, offsets), 20)
    np.testing.assert_array_equal(idx, ti)
    np.testing.assert_array_equal(vals, tv)


# --------------------------------------------------------------------------------------
# the micro-kernel in both tile shapes (the AVX2 shape is exercised on any CPU)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 8), (8, 2), (16, 3)])
def test_tile_shapes(shape):
    tile = _make_tile_max(*shape)

    @njit
    def score(qp, nq, tokens, start, stop, buf):
        mx = np.full(qp.shape[0] * 32, -np.inf, dtype=np.float32)
        b = start
        while b < stop:
            nb = min(buf.shape[0], stop - b)
            rows, r0 = _f32_rows(tokens, b, nb, buf)
            for c in range(qp.shape[0]):
                tile(qp, c, rows, r0, r0 + nb, mx, c * 32)
            b += nb
        return mx[:nq].sum()

    rng = np.random.default_rng(7)
    d = rng.standard_normal((37, 24)).astype(np.float16)
    for n_q in (1, 32, 40):
        q = rng.standard_normal((n_q, 24)).astype(np.float32)
        qp = _pack_per_query(q, np.array([0, n_q], dtype=np.int64))[0]
        got = score(qp, n_q, d.view(np.uint16), 0, 37, np.empty((10, 24), np.float32))
        assert abs(got - maxsim_ref(q, d)) <= maxsim_tolerance(q, d)


def test_warmup_runs():
    warmup()
    warmup()


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _valid():
    rng = np.random.default_rng(8)
    tokens, offsets = store(rng, np.float16, dim=8)
    q_vectors, q_offsets = csr(rng, [3, 2], 8)
    return q_vectors, q_offsets, tokens, offsets


def test_validation_tokens_and_offsets():
    q, qo, tokens, offsets = _valid()
    idx = np.array([0], dtype=np.int64)
    with pytest.raises(TypeError, match="tokens"):
        maxsim_scores(q[:3], tokens.astype(np.float64), offsets, idx)
    with pytest.raises(ValueError, match="tokens.*C-contiguous"):
        maxsim_scores(q[:3], np.asfortranarray(tokens), offsets, idx)
    with pytest.raises(TypeError, match="doc_offsets"):
        maxsim_scores(q[:3], tokens, offsets.astype(np.int32), idx)
    with pytest.raises(ValueError, match="doc_offsets"):
        maxsim_scores(q[:3], tokens, offsets[:-1], idx)
    bad = offsets.copy()
    bad[2], bad[3] = bad[3], bad[2]
    with pytest.raises(ValueError, match="non-decreasing"):
        maxsim_exhaustive(q, qo, tokens, bad)
    with pytest.raises(ValueError, match="non-decreasing"):
        maxsim_scores(q[:3], tokens, bad, np.array([2], dtype=np.int64))
    bad = offsets.copy()
    bad[1] = tokens.shape[0] + 5
    with pytest.raises(ValueError, match="doc_offsets must lie in"):
        maxsim_scores(q[:3], tokens, bad, np.array([0], dtype=np.int64))
    with pytest.raises(TypeError, match="tokens"):
        maxsim_scores(q[:3], tokens.tolist(), offsets, idx)


def test_validation_queries_and_ids():
    q, qo, tokens, offsets = _valid()
    n_docs = offsets.size - 1
    with pytest.raises(TypeError, match="query"):
        maxsim_scores(q[:3].astype(np.float64), tokens, offsets, np.array([0], dtype=np.int64))
    with pytest.raises(ValueError, match="query dim"):
        maxsim_scores(np.zeros((2, 5), np.float32), tokens, offsets, np.array([0], dtype=np.int64))
    with pytest.raises(ValueError, match="query"):
        maxsim_scores(q[0], tokens, offsets, np.array([0], dtype=np.int64))
    for bad in (n_docs, -2):
        with pytest.raises(ValueError, match="doc_idx"):
            maxsim_scores(q[:3], tokens, offsets, np.array([0, bad], dtype=np.int64))
    with pytest.raises(TypeError, match="doc_idx"):
        maxsim_scores(q[:3], tokens, offsets, np.array([0], dtype=np.int32))
    with pytest.raises(ValueError, match="candidates has 1 rows"):
        maxsim_scores_batch(q, qo, tokens, offsets, np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="candidates"):
        maxsim_scores_batch(q, qo, tokens, offsets, np.full((2, 2), n_docs, np.int64))
    with pytest.raises(ValueError, match="q_offsets"):
        maxsim_scores_batch(q, np.array([0, 4], np.int64), tokens, offsets, np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="q_offsets must be non-decreasing"):
        maxsim_exhaustive(q, np.array([0, 4, 3, 5], np.int64), tokens, offsets)
    with pytest.raises(ValueError, match="q_vectors dim"):
        maxsim_exhaustive(np.zeros((5, 3), np.float32), qo, tokens, offsets)


def test_validation_k_and_allowed():
    q, qo, tokens, offsets = _valid()
    n_docs = offsets.size - 1
    for bad in (0, -1):
        with pytest.raises(ValueError, match="k must be >= 1"):
            maxsim_exhaustive_topk(q, qo, tokens, offsets, bad)
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="k must be an integer"):
            maxsim_exhaustive_topk(q, qo, tokens, offsets, bad)
    with pytest.raises(ValueError, match="allowed must have shape"):
        maxsim_exhaustive(q, qo, tokens, offsets, allowed=np.ones(n_docs + 1, dtype=bool))
    with pytest.raises(TypeError, match="allowed"):
        maxsim_exhaustive_topk(q, qo, tokens, offsets, 2, allowed=np.ones(n_docs, dtype=np.int64))
    assert maxsim_exhaustive_topk(q, qo, tokens, offsets, np.int64(2))[0].shape == (2, 2)

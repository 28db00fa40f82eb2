"""kernels/retriever_kernels/dense.py against numpy: float16 document vectors, float32 queries, exact top-k."""

from __future__ import annotations

import numpy as np
import pytest

from retriever_kernels.dense import dense_scores_all, dense_scores_rows, dense_topk


def _data(n=300, d=48, n_q=5, seed=0):
    rng = np.random.default_rng(seed)
    store = rng.standard_normal((n, d)).astype(np.float16)
    q = rng.standard_normal((n_q, d)).astype(np.float32)
    return q, store


def _ref(q, store):
    return q.astype(np.float64) @ store.astype(np.float64).T


def test_scores_all_and_rows_equal_numpy():
    q, store = _data()
    ref = _ref(q, store)
    np.testing.assert_allclose(dense_scores_all(q, store), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dense_scores_all(q, store, r0=40, r1=97), ref[:, 40:97], rtol=1e-4, atol=1e-4)
    allowed = (np.arange(300) % 3 != 0).astype(np.uint8)
    got = dense_scores_all(q, store, allowed)
    assert np.isneginf(got[:, allowed == 0]).all()
    np.testing.assert_allclose(got[:, allowed == 1], ref[:, allowed == 1], rtol=1e-4, atol=1e-4)
    rows = np.random.default_rng(1).integers(-1, 300, (5, 17))
    got = dense_scores_rows(q, store, rows)
    want = np.where(rows >= 0, np.take_along_axis(ref, np.maximum(rows, 0), axis=1), -np.inf)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [None, 7 * 5 * 4])  # one block, or many (merged across blocks)
def test_topk_is_exact_with_ties_by_row(monkeypatch, block):
    import retriever_kernels.dense as kd

    if block is not None:
        monkeypatch.setattr(kd, "_BLOCK_BYTES", block)
    q, store = _data(n=120, d=16)
    store[50] = store[10]  # an exact tie: the lower row first
    allowed = np.ones(120, dtype=np.uint8)
    allowed[[3, 77]] = 0
    rows, scores = dense_topk(q, store, 12, allowed)
    s = dense_scores_all(q, store, allowed)
    for i in range(q.shape[0]):
        order = np.lexsort((np.arange(120), -s[i]))[:12]
        np.testing.assert_array_equal(rows[i], order)
        np.testing.assert_array_equal(scores[i], s[i, order])
    rows, scores = dense_topk(q, store[:4], 6)  # k past the documents: padded
    assert (rows[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()


def test_bad_inputs_are_named():
    q, store = _data()
    with pytest.raises(TypeError, match="float16"):
        dense_scores_all(q, store.astype(np.float32))
    with pytest.raises(ValueError, match="queries must be"):
        dense_scores_all(q[:, :5], store)
    with pytest.raises(ValueError, match="rows must be"):
        dense_scores_rows(q, store, np.full((5, 2), 300))

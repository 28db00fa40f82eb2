"""Top-k kernels against the argsort oracle in tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retriever_kernels.topk import topk, topk_candidates
from tests.reference import check_topk_with_ties, topk_ref


def tie_heavy_scores(rng, shape):
    """Few distinct values (many exact ties) plus some -inf entries."""
    s = rng.integers(-3, 4, shape).astype(np.float32)
    s[rng.random(shape) < 0.2] = -np.inf
    return s


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_rows=st.integers(0, 5),
    n=st.integers(0, 40),
    k=st.integers(1, 50),
    ties=st.booleans(),
)
def test_topk_matches_argsort(seed, n_rows, n, k, ties):
    rng = np.random.default_rng(seed)
    scores = tie_heavy_scores(rng, (n_rows, n)) if ties else rng.standard_normal((n_rows, n)).astype(np.float32)
    idx, vals = topk(scores, k)
    assert idx.dtype == np.int64 and vals.dtype == np.float32 and idx.shape == vals.shape == (n_rows, k)
    ref_i, ref_v = topk_ref(scores, k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(vals, ref_v)
    check_topk_with_ties(scores.astype(np.float64), idx, vals, k, 0.0)


def test_topk_tie_rule_and_padding():
    scores = np.array([[1.0, 5.0, 5.0, -np.inf, 5.0, 0.0]], dtype=np.float32)
    idx, vals = topk(scores, 8)
    assert idx.tolist() == [[1, 2, 4, 0, 5, -1, -1, -1]]
    assert vals.tolist() == [[5.0, 5.0, 5.0, 1.0, 0.0, -np.inf, -np.inf, -np.inf]]
    idx, _ = topk(scores, 2)
    assert idx.tolist() == [[1, 2]]


def test_topk_never_returns_nan_or_neg_inf():
    scores = np.array([[np.nan, -np.inf, 2.0, np.nan], [np.nan, np.nan, -np.inf, -np.inf]], dtype=np.float32)
    idx, vals = topk(scores, 3)
    assert idx.tolist() == [[2, -1, -1], [-1, -1, -1]]
    assert vals[0, 0] == 2.0 and np.all(np.isneginf(vals.ravel()[1:]))


def test_topk_large_k_and_empty_inputs():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 1000)).astype(np.float32)
    idx, vals = topk(scores, 1000)
    np.testing.assert_array_equal(idx, np.argsort(-scores, axis=1, kind="stable"))
    assert topk(np.empty((0, 4), np.float32), 2)[0].shape == (0, 2)
    assert np.all(topk(np.empty((2, 0), np.float32), 2)[0] == -1)


def test_topk_readonly_input():
    scores = np.arange(6, dtype=np.float32).reshape(2, 3)
    scores.flags.writeable = False
    assert topk(scores, 1)[0].tolist() == [[2], [2]]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_rows=st.integers(0, 4),
    n=st.integers(0, 30),
    k=st.integers(1, 35),
    id_range=st.integers(1, 50),
)
def test_topk_candidates_matches_argsort(seed, n_rows, n, k, id_range):
    rng = np.random.default_rng(seed)
    # small id ranges force duplicated ids; -1 is padding
    cands = rng.integers(-1, id_range, (n_rows, n)).astype(np.int64)
    scores = tie_heavy_scores(rng, (n_rows, n))
    ids, vals = topk_candidates(cands, scores, k)
    ref_i, ref_v = topk_ref(scores, k, ids=cands)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(vals, ref_v)


def test_topk_candidates_rules():
    cands = np.array([[9, -1, 4, 9, 2, 7], [-1, -1, -1, -1, -1, -1]], dtype=np.int64)
    scores = np.array([[1.0, 99.0, 3.0, 3.0, 3.0, -np.inf], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=np.float32)
    ids, vals = topk_candidates(cands, scores, 5)
    # duplicate 9 keeps its best score; ties by lower id; padding and -inf never returned
    assert ids.tolist() == [[2, 4, 9, -1, -1], [-1, -1, -1, -1, -1]]
    assert vals[0, :3].tolist() == [3.0, 3.0, 3.0] and np.all(np.isneginf(vals[0, 3:])) and np.all(np.isneginf(vals[1]))


def test_validation():
    s = np.zeros((2, 3), np.float32)
    c = np.zeros((2, 3), np.int64)
    with pytest.raises(TypeError, match="scores must have dtype float32"):
        topk(s.astype(np.float64), 1)
    with pytest.raises(ValueError, match="scores must be 2-D"):
        topk(s[0], 1)
    with pytest.raises(ValueError, match="scores must be C-contiguous"):
        topk(np.asfortranarray(np.zeros((3, 2), np.float32)), 1)
    with pytest.raises(TypeError, match="scores must be a numpy array"):
        topk([[1.0]], 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk(s, 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        topk(s, 2.0)
    with pytest.raises(TypeError, match="candidates must have dtype int64"):
        topk_candidates(c.astype(np.int32), s, 1)
    with pytest.raises(ValueError, match="scores shape"):
        topk_candidates(c, s[:, :2].copy(), 1)
    with pytest.raises(TypeError, match="k must be an integer"):
        topk_candidates(c, s, False)

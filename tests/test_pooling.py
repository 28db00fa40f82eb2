"""Tests of hierarchical token pooling (kernels/retriever_kernels/pooling.py).

The slow twin is scipy: ``fcluster(linkage(X, "ward"), t, "maxclust")`` on the token vectors
(``linkage`` on an observation matrix uses the Euclidean distance, as the kernel does). The
kernel's partition (read from ``pool_tokens_with_rows``) must equal scipy's as a set of
token sets, and its vectors the normalised cluster means in order of each cluster's first
token. Data are continuous Gaussians, so no two merge heights tie (where scipy's
threshold cut and the kernel's exact-``t`` cut could legitimately differ).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from retriever_kernels.pooling import pool_tokens, pool_tokens_with_rows, pooled_lengths

from scipy.cluster import hierarchy  # noqa: E402  (a dev dependency: the twin must never skip)

# -- slow twin -----------------------------------------------------------------------------


def expected_count(n: int, pool_factor: int) -> int:
    """Vectors a document of ``n`` tokens keeps (the paper's ``max(1, n // f)``, capped at n)."""
    if pool_factor == 1:
        return n
    return min(n, max(1, n // pool_factor))


def scipy_partition(x: np.ndarray, t: int) -> list[frozenset[int]]:
    """Ward partition of the rows of ``x`` into ``t`` clusters, by smallest member."""
    n = x.shape[0]
    if t >= n:
        return [frozenset([i]) for i in range(n)]
    labels = hierarchy.fcluster(hierarchy.linkage(x.astype(np.float64), method="ward"), t, criterion="maxclust")
    groups = [frozenset(np.flatnonzero(labels == lab).tolist()) for lab in np.unique(labels)]
    return sorted(groups, key=min)


def pooled_reference(x: np.ndarray, groups: list[frozenset[int]]) -> np.ndarray:
    """Normalised float64 mean of each group, in the given order; when nothing is pooled
    (every group a singleton) the tokens as they are."""
    if len(groups) == x.shape[0]:
        return x.astype(np.float64)
    out = []
    for g in groups:
        idx = sorted(g)
        mean = x[idx].astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(mean)
        out.append(mean / norm if norm > 0 else mean)
    return np.asarray(out).reshape(len(groups), x.shape[1])


def kernel_partition(rows: np.ndarray, t0: int, n: int) -> list[frozenset[int]]:
    """Token sets (document-local indices) sharing an output row, by smallest member."""
    r = rows[t0 : t0 + n]
    groups = [frozenset(np.flatnonzero(r == v).tolist()) for v in np.unique(r)]
    return sorted(groups, key=min)


def random_doc(rng: np.random.Generator, n: int, dim: int, unit: bool) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x)


def csr(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([d.shape[0] for d in docs], out=offsets[1:])
    dim = docs[0].shape[1] if docs else 8
    vectors = np.concatenate(docs) if docs else np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), offsets


# -- against scipy -------------------------------------------------------------------------


@pytest.mark.parametrize("pool_factor", [2, 3, 4])
@pytest.mark.parametrize("dim", [8, 128])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 50, 300])
def test_matches_scipy_ward(n, dim, pool_factor):
    rng = np.random.default_rng(1000 * n + 10 * dim + pool_factor)
    # Unit vectors at dim 128 (as ColBERT emits), raw Gaussians at dim 8.
    x = random_doc(rng, n, dim, unit=dim == 128)
    vectors, offsets = csr([x])
    pooled, new_offsets, rows = pool_tokens_with_rows(vectors, offsets, pool_factor)
    t = expected_count(n, pool_factor)
    assert new_offsets.tolist() == [0, t]
    assert pooled.dtype == np.float32 and pooled.shape == (t, dim)
    ref = scipy_partition(x, t)
    got = kernel_partition(rows, 0, n)
    assert len(ref) == t
    assert got == ref
    # rows points at the cluster's own output row, numbered by smallest member.
    for c, g in enumerate(got):
        assert set(rows[sorted(g)].tolist()) == {c}
    np.testing.assert_allclose(pooled, pooled_reference(x, ref), rtol=0, atol=1e-5)


def test_scipy_comparison_has_teeth():
    """Single and average linkage give other partitions on the same data, so agreement
    with scipy's Ward partition is not an accident of easy data."""
    rng = np.random.default_rng(7)
    x = random_doc(rng, 120, 128, unit=True)
    t = 40
    ward = scipy_partition(x, t)
    vectors, offsets = csr([x])
    _, _, rows = pool_tokens_with_rows(vectors, offsets, 3)
    assert kernel_partition(rows, 0, 120) == ward
    for method in ("single", "average", "complete"):
        labels = hierarchy.fcluster(hierarchy.linkage(x.astype(np.float64), method=method), t, criterion="maxclust")
        other = sorted((frozenset(np.flatnonzero(labels == lab).tolist()) for lab in np.unique(labels)), key=min)
        assert other != ward, method


def test_batch_matches_scipy_per_document():
    """A mixed batch: every document's slice equals its scipy twin (and rows stay in-block)."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 70, size=60)
    docs = [random_doc(rng, int(n), 16, unit=True) for n in lengths]
    vectors, offsets = csr(docs)
    pooled, new_offsets, rows = pool_tokens_with_rows(vectors, offsets, 3)
    for i, x in enumerate(docs):
        n = x.shape[0]
        t = expected_count(n, 3)
        o0, o1 = new_offsets[i], new_offsets[i + 1]
        assert o1 - o0 == t
        r = rows[offsets[i] : offsets[i + 1]]
        assert r.min() == o0 and r.max() == o1 - 1
        ref = scipy_partition(x, t)
        assert kernel_partition(rows - o0, int(offsets[i]), n) == ref
        np.testing.assert_allclose(pooled[o0:o1], pooled_reference(x, ref), rtol=0, atol=1e-5)


# -- structure -----------------------------------------------------------------------------


def test_pool_factor_one_is_identity_copy():
    rng = np.random.default_rng(2)
    vectors, offsets = csr([random_doc(rng, n, 32, unit=False) for n in (1, 4, 9)])
    pooled, new_offsets = pool_tokens(vectors, offsets, 1)
    np.testing.assert_array_equal(pooled, vectors)
    np.testing.assert_array_equal(new_offsets, offsets)
    assert not np.shares_memory(pooled, vectors) and not np.shares_memory(new_offsets, offsets)
    _, _, rows = pool_tokens_with_rows(vectors, offsets, 1)
    np.testing.assert_array_equal(rows, np.arange(vectors.shape[0]))


@pytest.mark.parametrize("pool_factor", [2, 3, 4, 7, 1000, 2**70])
def test_offsets_and_counts(pool_factor):
    rng = np.random.default_rng(3)
    lengths = np.concatenate([[1, 2, 3, 4, 5, 6, 7, 8], rng.integers(1, 120, size=40)])
    vectors, offsets = csr([random_doc(rng, int(n), 8, unit=True) for n in lengths])
    pooled, new_offsets = pool_tokens(vectors, offsets, pool_factor)
    assert new_offsets.dtype == np.int64 and new_offsets.shape == offsets.shape
    assert new_offsets[0] == 0 and new_offsets[-1] == pooled.shape[0]
    counts = np.diff(new_offsets)
    assert (counts >= 1).all()
    assert counts.tolist() == [expected_count(int(n), pool_factor) for n in lengths]
    np.testing.assert_array_equal(counts, pooled_lengths(lengths, pool_factor))


def test_short_documents_kept_verbatim():
    """A document with t >= n (here one token) is copied bit for bit, not renormalised."""
    rng = np.random.default_rng(4)
    x = random_doc(rng, 1, 16, unit=False) * 3.0
    pooled, new_offsets = pool_tokens(x, np.array([0, 1], dtype=np.int64), 4)
    np.testing.assert_array_equal(pooled, x)
    assert new_offsets.tolist() == [0, 1]


def test_outputs_unit_norm():
    rng = np.random.default_rng(5)
    docs = [random_doc(rng, int(n), 128, unit=True) for n in rng.integers(1, 200, size=30)]
    vectors, offsets = csr(docs)
    pooled, _ = pool_tokens(vectors, offsets, 2)
    np.testing.assert_allclose(np.linalg.norm(pooled.astype(np.float64), axis=1), 1.0, atol=1e-6)
    # Pooled rows are renormalised whatever the input scale.
    pooled, new_offsets, rows = pool_tokens_with_rows(vectors * 5.0, offsets, 2)
    merged = np.bincount(rows, minlength=pooled.shape[0]) > 1
    assert merged.any()
    np.testing.assert_allclose(np.linalg.norm(pooled[merged].astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_zero_mean_cluster_left_as_is():
    x = np.array([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]], dtype=np.float32)
    pooled, _ = pool_tokens(x, np.array([0, 2], dtype=np.int64), 2)
    np.testing.assert_array_equal(pooled, np.zeros((1, 3), np.float32))


def test_ties_are_deterministic():
    """Four orthonormal tokens (all pairwise distances equal, every merge height ties):
    lower index first merges 0+1, then {0,1}+2, leaving {0,1,2}, {3} at t = 2."""
    x = np.eye(4, 6, dtype=np.float32)
    pooled, new_offsets, rows = pool_tokens_with_rows(x, np.array([0, 4], dtype=np.int64), 2)
    assert rows.tolist() == [0, 0, 0, 1]
    expected = np.zeros((2, 6))
    expected[0, :3] = 1 / np.sqrt(3)
    expected[1, 3] = 1.0
    np.testing.assert_allclose(pooled, expected, atol=1e-7)
    # Duplicated tokens: all distances 0.
    x = np.tile(random_doc(np.random.default_rng(6), 1, 8, unit=True), (6, 1))
    a = pool_tokens_with_rows(x, np.array([0, 6], dtype=np.int64), 2)
    b = pool_tokens_with_rows(x, np.array([0, 6], dtype=np.int64), 2)
    assert a[2].tolist() == b[2].tolist() and len(set(a[2].tolist())) == 3
    np.testing.assert_allclose(a[0], np.repeat(x[:1], 3, axis=0), atol=1e-7)


def test_batch_equals_single_calls_and_thread_count():
    """Enough documents of mixed lengths that tasks hold several documents (shared scratch,
    long documents next to short ones); every slice is bit-identical to a call on its own,
    with any thread count."""
    rng = np.random.default_rng(8)
    lengths = rng.integers(1, 90, size=300)
    lengths[::37] = 150
    docs = [random_doc(rng, int(n), 24, unit=True) for n in lengths]
    vectors, offsets = csr(docs)
    pooled, new_offsets, rows = pool_tokens_with_rows(vectors, offsets, 3)
    for i, x in enumerate(docs):
        one, one_off, one_rows = pool_tokens_with_rows(x, np.array([0, x.shape[0]], dtype=np.int64), 3)
        o0, o1 = new_offsets[i], new_offsets[i + 1]
        np.testing.assert_array_equal(pooled[o0:o1], one)
        np.testing.assert_array_equal(rows[offsets[i] : offsets[i + 1]] - o0, one_rows)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        serial = pool_tokens(vectors, offsets, 3)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(serial[0], pooled)
    np.testing.assert_array_equal(serial[1], new_offsets)


def test_no_documents():
    pooled, new_offsets = pool_tokens(np.zeros((0, 16), np.float32), np.zeros(1, np.int64), 2)
    assert pooled.shape == (0, 16) and pooled.dtype == np.float32
    assert new_offsets.tolist() == [0]


def test_readonly_and_numpy_int_inputs():
    rng = np.random.default_rng(9)
    vectors, offsets = csr([random_doc(rng, 10, 8, unit=True)])
    ref = pool_tokens(vectors, offsets, 2)
    vectors.flags.writeable = False
    offsets.flags.writeable = False
    got = pool_tokens(vectors, offsets, np.int32(2))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


# -- validation ----------------------------------------------------------------------------

_X = np.zeros((4, 8), np.float32)
_OFF = np.array([0, 2, 4], np.int64)


@pytest.mark.parametrize(
    "vectors, offsets, pool_factor, exc, name",
    [
        (_X, _OFF, 0, ValueError, "pool_factor"),
        (_X, _OFF, -2, ValueError, "pool_factor"),
        (_X, _OFF, 2.0, TypeError, "pool_factor"),
        (_X, _OFF, "2", TypeError, "pool_factor"),
        (_X, _OFF, True, TypeError, "pool_factor"),
        (_X, _OFF, None, TypeError, "pool_factor"),
        (_X.astype(np.float64), _OFF, 2, TypeError, "vectors"),
        (_X.astype(np.float16), _OFF, 2, TypeError, "vectors"),
        (_X.tolist(), _OFF, 2, TypeError, "vectors"),
        (_X[0], _OFF, 2, ValueError, "vectors"),
        (np.asfortranarray(np.zeros((4, 8), np.float32)), _OFF, 2, ValueError, "vectors"),
        (_X, _OFF.astype(np.int32), 2, TypeError, "offsets"),
        (_X, _OFF.astype(np.float64), 2, TypeError, "offsets"),
        (_X, [0, 2, 4], 2, TypeError, "offsets"),
        (_X, _OFF.reshape(1, 3), 2, ValueError, "offsets"),
        (_X, np.zeros(0, np.int64), 2, ValueError, "offsets"),
        (_X, np.array([1, 2, 4], np.int64), 2, ValueError, "offsets"),
        (_X, np.array([0, 2, 5], np.int64), 2, ValueError, "offsets"),
        (_X, np.array([0, 2, 3], np.int64), 2, ValueError, "offsets"),
        (_X, np.array([0, 2, 2, 4], np.int64), 2, ValueError, "offsets"),  # empty document
        (_X, np.array([0, 3, 1, 4], np.int64), 2, ValueError, "offsets"),  # decreasing
        (_X, np.array([0, 0, 4], np.int64), 2, ValueError, "offsets"),  # empty first document
    ],
)
def test_bad_inputs(vectors, offsets, pool_factor, exc, name):
    with pytest.raises(exc, match=name):
        pool_tokens(vectors, offsets, pool_factor)
    with pytest.raises(exc, match=name):
        pool_tokens_with_rows(vectors, offsets, pool_factor)

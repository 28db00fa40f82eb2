"""Exact top-k selection over score matrices, in numba.

Every function here follows one set of rules, shared with
:func:`retriever_kernels.maxsim.maxsim_exhaustive_topk`:

* results are sorted by score, descending; equal scores are ordered by the lower id;
* an entry whose score is ``-inf`` (or NaN) is never returned as a hit;
* rows with fewer than ``k`` eligible entries are padded with id ``-1`` and score ``-inf``,
  so ``k`` may exceed the number of entries.

Selection uses a bounded min-heap per row whose root is the *worst* kept entry (lowest
score, then highest id), so a row costs ``O(n log k)`` and rows run in parallel.
"""

from __future__ import annotations

import numbers

import numpy as np
from numba import njit, prange

__all__ = ["topk", "topk_candidates"]


# --------------------------------------------------------------------------------------
# heap primitives (root = worst kept entry)
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _worse(score_a, id_a, score_b, id_b):
    """True when entry a ranks below entry b (lower score, or equal score and higher id)."""
    return score_a < score_b or (score_a == score_b and id_a > id_b)


@njit(cache=True)
def _sift_down(heap_s, heap_i, size, pos):
    s = heap_s[pos]
    i = heap_i[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(heap_s[child + 1], heap_i[child + 1], heap_s[child], heap_i[child]):
            child += 1
        if _worse(heap_s[child], heap_i[child], s, i):
            heap_s[pos] = heap_s[child]
            heap_i[pos] = heap_i[child]
            pos = child
        else:
            break
    heap_s[pos] = s
    heap_i[pos] = i


@njit(cache=True)
def _sift_up(heap_s, heap_i, pos):
    s = heap_s[pos]
    i = heap_i[pos]
    while pos > 0:
        parent = (pos - 1) // 2
        if _worse(s, i, heap_s[parent], heap_i[parent]):
            heap_s[pos] = heap_s[parent]
            heap_i[pos] = heap_i[parent]
            pos = parent
        else:
            break
    heap_s[pos] = s
    heap_i[pos] = i


@njit(cache=True)
def _heap_push(heap_s, heap_i, size, score, idx):
    """Offer ``(score, idx)`` to a heap of capacity ``heap_s.shape[0]``; return the new size."""
    if not score > -np.inf:  # -inf and NaN never become hits
        return size
    cap = heap_s.shape[0]
    if size < cap:
        heap_s[size] = score
        heap_i[size] = idx
        _sift_up(heap_s, heap_i, size)
        return size + 1
    if _worse(heap_s[0], heap_i[0], score, idx):
        heap_s[0] = score
        heap_i[0] = idx
        _sift_down(heap_s, heap_i, size, 0)
    return size


@njit(cache=True)
def _heap_finish(heap_s, heap_i, size):
    """Sort a heap in place into descending rank order and pad the unused tail."""
    n = size
    while n > 1:
        n -= 1
        s = heap_s[0]
        i = heap_i[0]
        heap_s[0] = heap_s[n]
        heap_i[0] = heap_i[n]
        heap_s[n] = s
        heap_i[n] = i
        _sift_down(heap_s, heap_i, n, 0)
    for j in range(size, heap_s.shape[0]):
        heap_s[j] = -np.inf
        heap_i[j] = -1


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _topk_kernel(scores, out_i, out_s):
    n_rows, n = scores.shape
    for r in prange(n_rows):
        hs = out_s[r]
        hi = out_i[r]
        size = 0
        for j in range(n):
            size = _heap_push(hs, hi, size, scores[r, j], j)
        _heap_finish(hs, hi, size)


@njit(parallel=True, cache=True)
def _topk_candidates_kernel(candidates, scores, out_i, out_s):
    n_rows, n = candidates.shape
    for r in prange(n_rows):
        hs = out_s[r]
        hi = out_i[r]
        size = 0
        # Visit candidates grouped by id so that a duplicated id is offered once, with its best score.
        order = np.argsort(candidates[r])
        j = 0
        while j < n:
            doc = candidates[r, order[j]]
            best = scores[r, order[j]]
            j += 1
            while j < n and candidates[r, order[j]] == doc:
                s = scores[r, order[j]]
                if s > best or best != best:
                    best = s
                j += 1
            if doc >= 0:
                size = _heap_push(hs, hi, size, best, doc)
        _heap_finish(hs, hi, size)


@njit(parallel=True, cache=True)
def push_block_kernel(block, id0, heap_s, heap_i, sizes):
    """Offer ``block[r, j]`` with id ``id0 + j`` to the running heap of row ``r``."""
    n_rows, n = block.shape
    for r in prange(n_rows):
        hs = heap_s[r]
        hi = heap_i[r]
        size = sizes[r]
        for j in range(n):
            size = _heap_push(hs, hi, size, block[r, j], id0 + j)
        sizes[r] = size


@njit(parallel=True, cache=True)
def finish_heaps_kernel(heap_s, heap_i, sizes):
    for r in prange(heap_s.shape[0]):
        _heap_finish(heap_s[r], heap_i[r], sizes[r])


# --------------------------------------------------------------------------------------
# validation helpers (shared with retriever_kernels.maxsim)
# --------------------------------------------------------------------------------------
def check_k(k) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def check_array(name: str, a, dtypes, ndim: int) -> np.ndarray:
    """Check type, dtype, ndim and C-contiguity of a public argument; never copies."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in dtypes:
        want = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise TypeError(f"{name} must have dtype {want}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return a


def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only base-class view, so that kernels compile once whatever the caller passes."""
    v = np.ndarray.view(a, np.ndarray)
    v.flags.writeable = False
    return v


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of every row of a score matrix.

    Parameters
    ----------
    scores : ndarray, shape (n_q, n), float32, C-contiguous
        Higher is better. ``-inf`` (and NaN) entries are never returned as hits.
    k : int
        Number of results per row, ``>= 1``; may exceed ``n`` (the rest is padding).

    Returns
    -------
    idx : ndarray, shape (n_q, k), int64
        Column indices, best first; ties broken by the lower index; ``-1`` pads.
    vals : ndarray, shape (n_q, k), float32
        The matching scores, descending; ``-inf`` pads.

    Examples
    --------
    >>> s = np.array([[0.5, 2.0, -np.inf, 2.0]], dtype=np.float32)
    >>> idx, vals = topk(s, 4)
    >>> idx.tolist(), vals.tolist()
    ([[1, 3, 0, -1]], [[2.0, 2.0, 0.5, -inf]])
    """
    check_array("scores", scores, (np.float32,), 2)
    k = check_k(k)
    n_rows = scores.shape[0]
    out_i = np.empty((n_rows, k), dtype=np.int64)
    out_s = np.empty((n_rows, k), dtype=np.float32)
    if n_rows:
        _topk_kernel(readonly(scores), out_i, out_s)
    return out_i, out_s


def topk_candidates(candidates: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k candidate ids of every row, given the candidates' scores.

    Parameters
    ----------
    candidates : ndarray, shape (n_q, n_cand), int64, C-contiguous
        Candidate ids per row; ``-1`` is padding and never returned. An id listed more
        than once in a row is returned at most once, with its highest score.
    scores : ndarray, shape (n_q, n_cand), float32, C-contiguous
        ``scores[r, j]`` belongs to ``candidates[r, j]``; ``-inf`` (and NaN) entries are
        never returned as hits.
    k : int
        Number of results per row, ``>= 1``; may exceed ``n_cand``.

    Returns
    -------
    ids : ndarray, shape (n_q, k), int64
        Candidate ids, best first; ties broken by the lower id; ``-1`` pads.
    vals : ndarray, shape (n_q, k), float32
        The matching scores, descending; ``-inf`` pads.

    Examples
    --------
    >>> c = np.array([[7, -1, 3, 7]], dtype=np.int64)
    >>> s = np.array([[1.0, 9.0, 1.0, 0.5]], dtype=np.float32)
    >>> ids, vals = topk_candidates(c, s, 3)
    >>> ids.tolist(), vals.tolist()
    ([[3, 7, -1]], [[1.0, 1.0, -inf]])
    """
    check_array("candidates", candidates, (np.int64,), 2)
    check_array("scores", scores, (np.float32,), 2)
    if scores.shape != candidates.shape:
        raise ValueError(f"scores shape {scores.shape} must equal candidates shape {candidates.shape}")
    k = check_k(k)
    n_rows = candidates.shape[0]
    out_i = np.empty((n_rows, k), dtype=np.int64)
    out_s = np.empty((n_rows, k), dtype=np.float32)
    if n_rows:
        _topk_candidates_kernel(readonly(candidates), readonly(scores), out_i, out_s)
    return out_i, out_s

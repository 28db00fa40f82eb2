"""Inner products of float32 query vectors with float16 document vectors (the hybrid "dense" signal).

One vector per document, stored float16 (``(n_docs, d)``); scores accumulate in float32. Two entry
points: every (allowed) document for each query, and each query against its own rows. numba kernels
rather than BLAS or FAISS: their thread pools spin after each call and then compete with the MaxSim
kernels that run right after (measured: a FAISS ``SQfp16`` scan before a 10 ms rerank made the
rerank take 17 ms on 2 cores).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .maxsim import h2f

__all__ = ["dense_scores_all", "dense_scores_rows", "dense_topk"]

_ROWS_PER_TASK = 64
_BLOCK_BYTES = 32 << 20  # most float32 scores held per block of queries in dense_scores_all


@njit(parallel=True, fastmath=True, cache=True)
def _rows_kernel(q, bits, rows, out):
    """out[i, j] = q[i] . store[rows[i, j]] (-inf where rows is -1); bits: the store as uint16."""
    n_q, m = rows.shape
    d = q.shape[1]
    n_pairs = n_q * m
    for task in prange((n_pairs + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        for p in range(task * _ROWS_PER_TASK, min(n_pairs, (task + 1) * _ROWS_PER_TASK)):
            i = p // m
            j = p - i * m
            r = rows[i, j]
            if r < 0:
                out[i, j] = -np.inf
                continue
            s = np.float32(0.0)
            for c in range(d):
                s += q[i, c] * h2f(bits[r, c])
            out[i, j] = s


@njit(parallel=True, fastmath=True, cache=True)
def _all_kernel(q, bits, r0, r1, allowed, use_mask, out):
    """out[i, r - r0] = q[i] . store[r] for r in [r0, r1) (-inf where not allowed)."""
    n_q, d = q.shape
    n = r1 - r0
    for task in prange((n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        buf = np.empty(d, dtype=np.float32)
        for r in range(r0 + task * _ROWS_PER_TASK, min(r1, r0 + (task + 1) * _ROWS_PER_TASK)):
            if use_mask and allowed[r] == 0:
                for i in range(n_q):
                    out[i, r - r0] = -np.inf
                continue
            for c in range(d):
                buf[c] = h2f(bits[r, c])
            for i in range(n_q):
                s = np.float32(0.0)
                for c in range(d):
                    s += q[i, c] * buf[c]
                out[i, r - r0] = s


def _check(q: np.ndarray, store: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(store, np.ndarray) or store.dtype != np.float16 or store.ndim != 2:
        raise TypeError(f"store must be a 2-D float16 array, got {getattr(store, 'dtype', type(store))}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != store.shape[1]:
        raise ValueError(f"queries must be (n_q, {store.shape[1]}), got {q.shape}")
    return q, np.ascontiguousarray(store).view(np.uint16)


def dense_scores_rows(q: np.ndarray, store: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``out[i, j] = q[i] . store[rows[i, j]]``: float32 ``(n_q, m)``, ``-inf`` where ``rows`` is -1."""
    q, bits = _check(q, store)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.ndim != 2 or rows.shape[0] != q.shape[0]:
        raise ValueError(f"rows must be (n_q={q.shape[0]}, m), got {rows.shape}")
    if rows.size and (rows.max() >= store.shape[0] or rows.min() < -1):
        raise ValueError(f"rows must be -1 or in [0, {store.shape[0]})")
    out = np.empty(rows.shape, dtype=np.float32)
    if out.size:
        _rows_kernel(q, bits, rows, out)
    return out


def dense_scores_all(q: np.ndarray, store: np.ndarray, allowed: np.ndarray | None = None, r0: int = 0,
                     r1: int | None = None) -> np.ndarray:
    """Scores of every row in ``[r0, r1)`` for each query: float32 ``(n_q, r1 - r0)``, ``-inf`` where
    ``allowed`` (uint8 over all rows) is 0."""
    q, bits = _check(q, store)
    r1 = store.shape[0] if r1 is None else r1
    use_mask = allowed is not None
    mask = np.ascontiguousarray(allowed, dtype=np.uint8) if use_mask else np.zeros(1, dtype=np.uint8)
    if use_mask and mask.shape != (store.shape[0],):
        raise ValueError(f"allowed must have shape ({store.shape[0]},), got {mask.shape}")
    out = np.empty((q.shape[0], r1 - r0), dtype=np.float32)
    if out.size:
        _all_kernel(q, bits, r0, r1, mask, use_mask, out)
    return out


def dense_topk(q: np.ndarray, store: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Exact top-``k`` rows per query by inner product (ties: lower row first), over row blocks
    of bounded memory. Returns (rows int64 (n_q, k), scores float32 (n_q, k)), padded -1 / -inf."""
    from .topk import topk, topk_candidates

    n = store.shape[0]
    n_q = np.asarray(q).shape[0]
    block = max(1, _BLOCK_BYTES // (4 * max(n_q, 1)))
    rows = np.full((n_q, k), -1, dtype=np.int64)
    scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        ids, sc = topk(dense_scores_all(q, store, allowed, r0, r1), k)
        ids = np.where(ids >= 0, ids + r0, -1)
        rows, scores = topk_candidates(np.ascontiguousarray(np.concatenate([rows, ids], axis=1)),
                                       np.ascontiguousarray(np.concatenate([scores, sc], axis=1)), k)
    return rows, scores

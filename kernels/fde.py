"""numba hot loops for MUVERA fixed dimensional encodings (FDE).

The orchestration (random matrices, the GEMM, chunking, validation) lives in
``retriever/fde.py``. These kernels only scatter already-projected token rows into FDE
rows, and apply the final count-sketch. They are pure functions over arrays: every
input is an array or a scalar, outputs are written into caller-allocated arrays.

Partition ids follow the reference encoder (google/graph-mining,
``sketching/point_cloud/fixed_dimensional_encoding.cc``): a token's SimHash bits
``b_0 .. b_{k-1}`` (``b_i = <x, g_i> > 0``) are read most-significant-bit first as a
code ``c``, and the token goes to partition ``p = gray_decode(c)`` (the number whose
Gray code is ``c``). So partition ``p`` holds the tokens whose bit pattern is
``gray_encode(p) = p ^ (p >> 1)``, and an empty document partition ``p`` is filled with
the token whose code is nearest in Hamming distance to ``p ^ (p >> 1)`` (not to ``p``).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["fde_scatter", "count_sketch_rows", "gray_decode", "popcount"]


@numba.njit(cache=True, inline="always")
def popcount(x: int) -> int:
    """Number of set bits of a non-negative integer."""
    n = 0
    while x:
        x &= x - 1
        n += 1
    return n


@numba.njit(cache=True, inline="always")
def gray_decode(code: int) -> int:
    """The integer whose Gray code is ``code`` (prefix XOR of the bits, MSB first).

    Valid for codes below ``2**32``.
    """
    p = code
    p ^= p >> 1
    p ^= p >> 2
    p ^= p >> 4
    p ^= p >> 8
    p ^= p >> 16
    return p


@numba.njit(parallel=True, cache=True)
def fde_scatter(
    sims,
    sim_col0,
    vals,
    val_col0,
    val_rep_stride,
    offsets,
    num_repetitions,
    num_simhash_projections,
    projection_dim,
    average,
    fill_empty,
    out,
):
    """Scatter projected tokens into FDE rows (one row per item, parallel over items).

    Parameters
    ----------
    sims : ndarray, shape (n_tokens, >= sim_col0 + R * k), float32
        SimHash projections. Column ``sim_col0 + r * k + i`` holds ``<x, g_{r,i}>``.
    sim_col0 : int
        First SimHash column in ``sims``.
    vals : ndarray, shape (n_tokens, >= val_col0 + ...), float32
        Projected token vectors. Repetition ``r`` reads columns
        ``val_col0 + r * val_rep_stride`` to ``... + projection_dim`` (a stride of 0 makes
        every repetition read the same columns, as the identity projection does).
    val_col0, val_rep_stride : int
    offsets : ndarray, shape (n_items + 1,), int64
        CSR offsets of the items into the rows of ``sims`` and ``vals``.
    num_repetitions, num_simhash_projections, projection_dim : int
        ``R``, ``k`` (so ``B = 2**k`` partitions) and ``P``.
    average : bool
        Divide each non-empty partition block by its token count (documents); otherwise
        keep the sum (queries).
    fill_empty : bool
        Copy into each empty partition block the projected token whose SimHash code is
        nearest (Hamming) to the partition's bit pattern; ties go to the earliest token.
        Only applies when ``k >= 1``; items with no tokens stay all-zero.
    out : ndarray, shape (n_items, R * B * P), float32, zero-filled
        Written in place: block ``(r, p)`` of row ``i`` is
        ``out[i, (r * B + p) * P : (r * B + p + 1) * P]``.
    """
    n_items = offsets.shape[0] - 1
    k = num_simhash_projections
    n_part = 1 << k
    P = projection_dim
    for i in numba.prange(n_items):
        t0 = offsets[i]
        n = offsets[i + 1] - t0
        if n == 0:
            continue
        counts = np.zeros(n_part, dtype=np.int64)
        # first token (local index) seen with each SimHash code, -1 if none
        first_tok = np.empty(n_part, dtype=np.int64)
        present = np.empty(min(n, n_part), dtype=np.int64)
        for r in range(num_repetitions):
            counts[:] = 0
            first_tok[:] = -1
            n_present = 0
            base = r * n_part * P
            scol = sim_col0 + r * k
            vcol = val_col0 + r * val_rep_stride
            for t in range(n):
                row = t0 + t
                code = 0
                for b in range(k):
                    code = (code << 1) | (1 if sims[row, scol + b] > 0 else 0)
                if first_tok[code] < 0:
                    first_tok[code] = t
                    present[n_present] = code
                    n_present += 1
                p = gray_decode(code)
                counts[p] += 1
                dst = base + p * P
                for j in range(P):
                    out[i, dst + j] += vals[row, vcol + j]
            if average:
                for p in range(n_part):
                    c = counts[p]
                    if c > 1:
                        dst = base + p * P
                        fc = np.float32(c)
                        for j in range(P):
                            out[i, dst + j] = out[i, dst + j] / fc
            if fill_empty and k > 0 and n_present < n_part:
                for p in range(n_part):
                    if counts[p] != 0:
                        continue
                    pattern = p ^ (p >> 1)
                    best_d = k + 1
                    best_t = n
                    for s in range(n_present):
                        c = present[s]
                        d = popcount(c ^ pattern)
                        ft = first_tok[c]
                        if d < best_d or (d == best_d and ft < best_t):
                            best_d = d
                            best_t = ft
                    row = t0 + best_t
                    dst = base + p * P
                    for j in range(P):
                        out[i, dst + j] = vals[row, vcol + j]
    return out


@numba.njit(parallel=True, cache=True)
def count_sketch_rows(x, indices, signs, out):
    """Count-sketch each row: ``out[i, indices[j]] += signs[j] * x[i, j]``.

    Parameters
    ----------
    x : ndarray, shape (n_rows, d_in), float32
    indices : ndarray, shape (d_in,), int64, values in ``[0, d_out)``
    signs : ndarray, shape (d_in,), float32, values +-1
    out : ndarray, shape (n_rows, d_out), float32, zero-filled; written in place.
    """
    n_rows, d_in = x.shape
    for i in numba.prange(n_rows):
        for j in range(d_in):
            out[i, indices[j]] += signs[j] * x[i, j]
    return out

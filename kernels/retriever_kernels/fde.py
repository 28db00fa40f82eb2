"""numba hot loops for MUVERA fixed dimensional encodings (FDE).

The orchestration (random matrices, chunking, validation) lives in ``retriever/fde.py``.
These kernels are pure functions over arrays: every input is an array or a scalar, and
outputs are written into caller-allocated, zero-filled arrays.

Partition ids follow the reference encoder (google/graph-mining,
``sketching/point_cloud/fixed_dimensional_encoding.cc``): a token's SimHash bits
``b_0 .. b_{k-1}`` (``b_i = <x, g_i> > 0``) are read most-significant-bit first as a
code ``c``, and the token goes to partition ``p = gray_decode(c)`` (the number whose
Gray code is ``c``). So partition ``p`` holds the tokens whose bit pattern is
``gray_encode(p) = p ^ (p >> 1)``, and an empty document partition ``p`` is filled with
the token whose code is nearest in Hamming distance to ``p ^ (p >> 1)`` (not to ``p``).

Why one kernel and no BLAS call: an encoder built as "GEMM in numpy, then a parallel
numba scatter" lost half its speed here, because OpenBLAS worker threads keep spinning
for a long while after each GEMM and steal the core the numba threads need (measured:
the same scatter took 2x longer right after a GEMM than after a pause). This kernel
does everything per document in one parallel region instead: the SimHash products, the
partition sums of the raw tokens, and the projection of each partition sum (projection
is linear, so projecting the sum equals summing the projections, at ``B`` instead of
``n`` projections per repetition; the count-sketch "AMS" projection runs sparse).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "PROJ_IDENTITY",
    "PROJ_DENSE",
    "PROJ_SPARSE",
    "count_sketch_rows",
    "count_sketch_rows_serial",
    "fde_encode",
    "fde_encode_serial",
    "gray_decode",
    "popcount",
]

# Projection kinds (compile-time constants inside the kernels).
PROJ_IDENTITY, PROJ_DENSE, PROJ_SPARSE = 0, 1, 2


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


@numba.njit(cache=True, inline="always")
def _simhash_products(x, t0, n, hyperplanes, sims):
    """``sims[:n] = x[t0:t0+n] @ hyperplanes``, four tokens at a time (each hyperplane
    row is loaded once per four tokens), summed over the input dimension in order."""
    dim = x.shape[1]
    n_cols = hyperplanes.shape[1]
    t = 0
    while t + 4 <= n:
        s0 = sims[t]
        s1 = sims[t + 1]
        s2 = sims[t + 2]
        s3 = sims[t + 3]
        for c in range(n_cols):
            s0[c] = 0.0
            s1[c] = 0.0
            s2[c] = 0.0
            s3[c] = 0.0
        for d in range(dim):
            x0 = x[t0 + t, d]
            x1 = x[t0 + t + 1, d]
            x2 = x[t0 + t + 2, d]
            x3 = x[t0 + t + 3, d]
            w = hyperplanes[d]
            for c in range(n_cols):
                wc = w[c]
                s0[c] += x0 * wc
                s1[c] += x1 * wc
                s2[c] += x2 * wc
                s3[c] += x3 * wc
        t += 4
    while t < n:
        s0 = sims[t]
        for c in range(n_cols):
            s0[c] = 0.0
        for d in range(dim):
            x0 = x[t0 + t, d]
            w = hyperplanes[d]
            for c in range(n_cols):
                s0[c] += x0 * w[c]
        t += 1


@numba.njit(cache=True)
def _encode_item(i, x, offsets, hyperplanes, R, k, P, proj_kind, dense, sk_index, sk_sign, average, fill_empty, out):
    """FDE row ``i`` (see :func:`fde_encode` for the arguments); allocates its own scratch."""
    dim = x.shape[1]
    B = 1 << k
    t0 = offsets[i]
    n = offsets[i + 1] - t0
    if n == 0:
        return
    sims = np.empty((n, R * k), dtype=np.float32)
    if k > 0:
        _simhash_products(x, t0, n, hyperplanes, sims)
    part_sum = np.empty((B, dim), dtype=np.float32)  # raw token sum (or fill token) of each partition
    counts = np.empty(B, dtype=np.int64)  # tokens in each partition; 1 for a filled one
    first_tok = np.empty(B, dtype=np.int64)  # first token with each SimHash code, -1 if none
    present = np.empty(min(n, B), dtype=np.int64)  # the codes seen, in order of appearance
    if proj_kind != PROJ_IDENTITY:
        part_t = np.empty((dim, B), dtype=np.float32)
        proj_t = np.empty((P, B), dtype=np.float32)
    for r in range(R):
        counts[:] = 0
        first_tok[:] = -1
        n_present = 0
        for t in range(n):
            code = 0
            for b in range(k):
                code = (code << 1) | (1 if sims[t, r * k + b] > 0 else 0)
            if first_tok[code] < 0:
                first_tok[code] = t
                present[n_present] = code
                n_present += 1
            p = gray_decode(code)
            if counts[p] == 0:
                for d in range(dim):
                    part_sum[p, d] = x[t0 + t, d]
            else:
                for d in range(dim):
                    part_sum[p, d] += x[t0 + t, d]
            counts[p] += 1
        for p in range(B):
            if counts[p] != 0:
                continue
            if fill_empty and k > 0:
                pattern = p ^ (p >> 1)
                best_dist = k + 1
                best_tok = n
                for s in range(n_present):
                    code = present[s]
                    dist = popcount(code ^ pattern)
                    ft = first_tok[code]
                    if dist < best_dist or (dist == best_dist and ft < best_tok):
                        best_dist = dist
                        best_tok = ft
                for d in range(dim):
                    part_sum[p, d] = x[t0 + best_tok, d]
                counts[p] = 1
            else:
                for d in range(dim):
                    part_sum[p, d] = 0.0
        if proj_kind == PROJ_IDENTITY:
            for p in range(B):
                if counts[p] == 0:
                    continue
                scale = np.float32(counts[p]) if average else np.float32(1.0)
                dst = (r * B + p) * P
                for d in range(dim):
                    out[i, dst + d] = part_sum[p, d] / scale
            continue
        # Project all partitions at once with partitions along the vector lanes:
        # proj_t[:, p] = part_sum[p] @ projection[r].
        for p in range(B):
            for d in range(dim):
                part_t[d, p] = part_sum[p, d]
        proj_t[:, :] = 0.0
        if proj_kind == PROJ_SPARSE:
            for d in range(dim):
                j = sk_index[r, d]
                sign = sk_sign[r, d]
                for p in range(B):
                    proj_t[j, p] += sign * part_t[d, p]
        else:
            for d in range(dim):
                for j in range(P):
                    a = dense[r, d, j]
                    for p in range(B):
                        proj_t[j, p] += a * part_t[d, p]
        for p in range(B):
            if counts[p] == 0:
                continue
            scale = np.float32(counts[p]) if average else np.float32(1.0)
            dst = (r * B + p) * P
            for j in range(P):
                out[i, dst + j] = proj_t[j, p] / scale


@numba.njit(parallel=True, cache=True)
def fde_encode(
    x,
    offsets,
    hyperplanes,
    num_repetitions,
    num_simhash_projections,
    projection_dim,
    proj_kind,
    dense,
    sk_index,
    sk_sign,
    average,
    fill_empty,
    out,
):
    """FDE rows of a batch of token sets (parallel over items).

    Parameters
    ----------
    x : ndarray, shape (n_tokens, dim), float32, C-contiguous
        Token vectors of all items, item after item.
    offsets : ndarray, shape (n_items + 1,), int64
        CSR offsets of the items into the rows of ``x``.
    hyperplanes : ndarray, shape (dim, R * k), float32
        SimHash hyperplanes: column ``r * k + i`` is hyperplane ``i`` of repetition ``r``.
    num_repetitions, num_simhash_projections, projection_dim : int
        ``R``, ``k`` (``B = 2**k`` partitions) and the block dimension ``P`` (``dim`` for
        the identity projection).
    proj_kind : int
        ``PROJ_IDENTITY``, ``PROJ_DENSE`` (uses ``dense``) or ``PROJ_SPARSE`` (the
        count-sketch, uses ``sk_index`` and ``sk_sign``).
    dense : ndarray, shape (R, dim, P), float32
        Dense projection of each repetition (ignored unless ``PROJ_DENSE``).
    sk_index : ndarray, shape (R, dim), int64, values in ``[0, P)``
    sk_sign : ndarray, shape (R, dim), float32, values +-1
        Count-sketch of each repetition: input coordinate ``d`` is added, times
        ``sk_sign[r, d]``, to output coordinate ``sk_index[r, d]`` (ignored unless
        ``PROJ_SPARSE``).
    average : bool
        Divide each non-empty partition block by its token count (documents); otherwise
        keep the sum (queries).
    fill_empty : bool
        Give each empty partition block the projected token whose SimHash code is nearest
        (Hamming) to the partition's bit pattern; ties go to the earliest token. Only
        when ``k >= 1``. Items with no tokens stay all-zero.
    out : ndarray, shape (n_items, R * B * P), float32, zero-filled
        Written in place: block ``(r, p)`` of row ``i`` is
        ``out[i, (r * B + p) * P : (r * B + p + 1) * P]``.
    """
    for i in numba.prange(offsets.shape[0] - 1):
        _encode_item(
            i, x, offsets, hyperplanes, num_repetitions, num_simhash_projections, projection_dim, proj_kind,
            dense, sk_index, sk_sign, average, fill_empty, out,
        )
    return out


@numba.njit(cache=True)
def fde_encode_serial(
    x,
    offsets,
    hyperplanes,
    num_repetitions,
    num_simhash_projections,
    projection_dim,
    proj_kind,
    dense,
    sk_index,
    sk_sign,
    average,
    fill_empty,
    out,
):
    """:func:`fde_encode` on the calling thread only: for small batches (one query), where
    waking the worker threads costs more than the work (milliseconds when another process
    holds a core)."""
    for i in range(offsets.shape[0] - 1):
        _encode_item(
            i, x, offsets, hyperplanes, num_repetitions, num_simhash_projections, projection_dim, proj_kind,
            dense, sk_index, sk_sign, average, fill_empty, out,
        )
    return out


@numba.njit(cache=True, inline="always")
def _count_sketch_row(i, x, indices, signs, out):
    for j in range(x.shape[1]):
        out[i, indices[j]] += signs[j] * x[i, j]


@numba.njit(parallel=True, cache=True)
def count_sketch_rows(x, indices, signs, out):
    """Count-sketch each row: ``out[i, indices[j]] += signs[j] * x[i, j]`` (parallel over rows).

    Parameters
    ----------
    x : ndarray, shape (n_rows, d_in), float32
    indices : ndarray, shape (d_in,), int64, values in ``[0, d_out)``
    signs : ndarray, shape (d_in,), float32, values +-1
    out : ndarray, shape (n_rows, d_out), float32, zero-filled; written in place.
    """
    for i in numba.prange(x.shape[0]):
        _count_sketch_row(i, x, indices, signs, out)
    return out


@numba.njit(cache=True)
def count_sketch_rows_serial(x, indices, signs, out):
    """:func:`count_sketch_rows` on the calling thread only (small batches)."""
    for i in range(x.shape[0]):
        _count_sketch_row(i, x, indices, signs, out)
    return out

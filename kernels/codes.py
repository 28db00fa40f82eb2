"""Compressed token stores: fixed-width byte rows that the MaxSim kernels decode block by block.

A token store is one 2-D array with a row per token, so every store type is written, appended,
copied and memory-mapped the same way. Besides plain ``float16`` / ``float32`` arrays, the
MaxSim kernels (``kernels.maxsim``) accept two compressed stores, passed as named tuples of
arrays (numba compiles one specialisation per store type):

``Int8Rows(rows)``
    ``rows`` uint8 ``(n, dim + 2)``: per token, ``dim`` values ``q + 128`` with
    ``q = round(x / s)`` in ``[-127, 127]``, then the per-token scale ``s = max|x| / 127`` as a
    little-endian float16. Decodes to ``(rows[:, :dim] - 128) * s``. No training; any norm.

``ResidualRows(rows, centroids, lut)``
    PLAID-style residual codes. ``rows`` uint8 ``(n, id_bytes + dim * nbits / 8)``: the
    centroid id (``id_bytes`` = 2 or 4, little-endian), then ``nbits`` per dimension, dimension
    ``k`` at bits ``(k * nbits) % 8`` of byte ``k * nbits // 8`` (little-endian bit order).
    ``centroids`` float32 ``(n_centroids, dim)``; ``lut`` float32 ``(dim * nbits / 8, 256,
    8 / nbits)`` maps (byte position, byte value) to the residual values of the dimensions that
    byte holds (:func:`residual_lut` builds it from per-dimension bucket weights). Decodes to
    ``centroids[id] + residual`` rescaled to unit length, as ColBERT's decompression does: the
    codes are for L2-normalised token vectors, and the renormalisation removes the radial part of
    the quantisation error (SciFact train, 2,048 centroids: the exact top-10's overlap with
    float16 went from 0.953 to 0.975 at 4 bits, 0.893 to 0.926 at 2 bits).

Decoding happens inside the kernels, a block of rows at a time into a float32 scratch buffer,
exactly where float16 rows are converted: no per-query copy of the candidates' vectors exists.
:func:`decode_rows` exposes the same decoding for whole ranges (FDEs, verification, compaction);
``tests/reference.py`` holds the plain-numpy twin of both encoders and decoders.

Note for developers: numba's on-disk cache keys a compiled function by its own file, so the
kernels of ``kernels/maxsim.py`` cached before an edit of the decoders here keep the old
decoders. After changing this file, delete ``kernels/__pycache__/*.nbi`` and ``*.nbc`` (a fresh
install or checkout has no cache).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

__all__ = [
    "Int8Rows",
    "ResidualRows",
    "int8_encode",
    "residual_pack",
    "residual_lut",
    "decode_rows",
    "store_shape",
]


class Int8Rows(NamedTuple):
    """Int8 token store: uint8 rows ``(n_tokens, dim + 2)`` (values + float16 scale)."""

    rows: np.ndarray


class ResidualRows(NamedTuple):
    """Residual-coded token store (see the module docstring for the row layout)."""

    rows: np.ndarray
    centroids: np.ndarray
    lut: np.ndarray


def store_shape(store) -> tuple[int, int]:
    """(n_tokens, dim) of a plain array or a compressed store."""
    if isinstance(store, Int8Rows):
        return int(store.rows.shape[0]), int(store.rows.shape[1]) - 2
    if isinstance(store, ResidualRows):
        return int(store.rows.shape[0]), int(store.centroids.shape[1])
    return int(store.shape[0]), int(store.shape[1])


# --------------------------------------------------------------------------------------
# row decoders (called from numba code: here and in kernels.maxsim)
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _half_to_f32(lo, hi):
    """The float16 with little-endian bytes ``lo, hi`` as float32 (finite values; numba has no float16)."""
    h = np.int64(lo) | (np.int64(hi) << 8)
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        v = math.ldexp(np.float64(mant), -24)
    elif exp == 0x1F:
        v = np.inf if mant == 0 else np.nan
    else:
        v = math.ldexp(np.float64(mant + 1024), int(exp) - 25)
    return np.float32(-v if (h >> 15) & 1 else v)


@njit(cache=True)
def decode_int8_block(rows, start, n, buf):
    """buf[r] = decoded row ``start + r`` for ``r < n`` (int8 store)."""
    dim = buf.shape[1]
    for r in range(n):
        row = start + r
        s = _half_to_f32(rows[row, dim], rows[row, dim + 1])
        for k in range(dim):
            buf[r, k] = (np.float32(rows[row, k]) - np.float32(128.0)) * s


@njit(cache=True)
def decode_residual_block(rows, centroids, lut, start, n, buf):
    """buf[r] = decoded row ``start + r`` for ``r < n`` (residual store).

    One fused pass per row: ``buf[r, per*j + t] = centroid[per*j + t] + lut[j, byte_j, t]``, then
    a rescale to unit length (a zero row stays zero). For 2 and 4 values per code byte the loop
    is spelled out with a constant trip count, so LLVM turns each byte's adds into one short
    vector add (measured 72 vs 88 ns/token at 2 bits and 76 vs 134 at 4 bits, one thread).
    """
    n_cent = centroids.shape[0]
    n_bytes = lut.shape[0]
    per = lut.shape[2]
    id_bytes = rows.shape[1] - n_bytes
    part = np.empty(16, dtype=np.float32)  # partial sums of the squared norm (allocated once per block)
    for r in range(n):
        row = start + r
        c = np.int64(0)
        for j in range(id_bytes):
            c |= np.int64(rows[row, j]) << np.int64(8 * j)
        c = min(c, n_cent - 1)  # a damaged row never reads outside the centroids (verify() reports it)
        if per == 4:
            for j in range(n_bytes):
                v = rows[row, id_bytes + j]
                b = 4 * j
                for t in range(4):
                    buf[r, b + t] = centroids[c, b + t] + lut[j, v, t]
        elif per == 2:
            for j in range(n_bytes):
                v = rows[row, id_bytes + j]
                b = 2 * j
                for t in range(2):
                    buf[r, b + t] = centroids[c, b + t] + lut[j, v, t]
        else:  # 8 values per byte (1 bit) decode as fast without a constant trip count
            for j in range(n_bytes):
                v = rows[row, id_bytes + j]
                b = per * j
                for t in range(per):
                    buf[r, b + t] = centroids[c, b + t] + lut[j, v, t]
        # squared norm in 16 independent partial sums: a single running sum is a chain of dependent
        # adds that the compiler may not reorder (no fastmath), which cost more than the decode
        dim = centroids.shape[1]
        for t in range(16):
            part[t] = 0.0
        k0 = 0
        while k0 + 16 <= dim:
            for t in range(16):
                part[t] += buf[r, k0 + t] * buf[r, k0 + t]
            k0 += 16
        for k in range(k0, dim):
            part[k - k0] += buf[r, k] * buf[r, k]
        ss = np.float32(0.0)
        for t in range(16):
            ss += part[t]
        if ss > 0:
            inv = np.float32(1.0) / np.sqrt(ss)
            for k in range(dim):
                buf[r, k] *= inv


@njit(parallel=True, cache=True)
def _decode_int8_range(rows, start, out):
    n = out.shape[0]
    step = 256
    for b in prange((n + step - 1) // step):
        s = b * step
        m = min(step, n - s)
        decode_int8_block(rows, start + s, m, out[s : s + m])


@njit(parallel=True, cache=True)
def _decode_residual_range(rows, centroids, lut, start, out):
    n = out.shape[0]
    step = 256
    for b in prange((n + step - 1) // step):
        s = b * step
        m = min(step, n - s)
        decode_residual_block(rows, centroids, lut, start + s, m, out[s : s + m])


def decode_rows(store, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a token store as float32 ``(stop - start, dim)``.

    ``store`` is a float16/float32 array, an :class:`Int8Rows` or a :class:`ResidualRows`.
    """
    n_tokens, dim = store_shape(store)
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= n_tokens:
        raise ValueError(f"row range [{start}, {stop}) is outside the store's {n_tokens} rows")
    out = np.empty((stop - start, dim), dtype=np.float32)
    if stop == start:
        return out
    if isinstance(store, Int8Rows):
        _decode_int8_range(np.ascontiguousarray(store.rows), start, out)
    elif isinstance(store, ResidualRows):
        _decode_residual_range(np.ascontiguousarray(store.rows), store.centroids, store.lut, start, out)
    else:
        out[:] = store[start:stop]
    return out


# --------------------------------------------------------------------------------------
# encoders (vectorised numpy: build time, not query time)
# --------------------------------------------------------------------------------------
def int8_encode(x: np.ndarray) -> np.ndarray:
    """Int8 rows ``(n, dim + 2)`` uint8 of float32 vectors ``x`` ``(n, dim)`` (finite, |x| <= 65504)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    amax = np.abs(x).max(axis=1) if dim else np.zeros(n, dtype=np.float32)
    scale = (amax / np.float32(127.0)).astype(np.float16)  # the scale as stored (numba has no float16)
    out = np.empty((n, dim + 2), dtype=np.uint8)
    out[:, dim:] = scale.view(np.uint8).reshape(n, 2)
    _int8_values(x, scale.astype(np.float32), out)
    return out


@njit(parallel=True, cache=True)
def _int8_values(x, scale, out):
    """out[i, :dim] = clip(rint(x[i] / scale[i]), -127, 127) + 128 (0 + 128 where the scale is 0)."""
    n, dim = x.shape
    for i in prange(n):
        s = scale[i]
        for k in range(dim):
            q = np.rint(x[i, k] / s) if s > 0 else np.float32(0.0)
            q = min(max(q, np.float32(-127.0)), np.float32(127.0))
            out[i, k] = np.uint8(np.int32(q) + 128)


def residual_pack(
    x: np.ndarray, ids: np.ndarray, centroids: np.ndarray, cutoffs: np.ndarray, nbits: int, id_bytes: int
) -> np.ndarray:
    """Residual rows of float32 vectors ``x`` ``(n, dim)`` assigned to centroids ``ids`` ``(n,)``.

    ``cutoffs`` float32 ``(dim, 2**nbits - 1)``, ascending per dimension: the residual of
    dimension ``k`` gets bucket ``#{cutoffs[k] < r_k}``.
    """
    x = np.asarray(x, dtype=np.float32)
    n, dim = x.shape
    per = 8 // nbits
    resid = x - centroids[ids]
    buckets = np.zeros((n, dim), dtype=np.uint8)
    for j in range(cutoffs.shape[1]):
        buckets += resid > cutoffs[:, j]
    packed = np.zeros((n, dim // per), dtype=np.uint8)
    for t in range(per):
        packed |= buckets[:, t::per] << np.uint8(t * nbits)
    idb = ids.astype("<u4").view(np.uint8).reshape(n, 4)[:, :id_bytes]
    return np.ascontiguousarray(np.concatenate([idb, packed], axis=1))


def residual_lut(weights: np.ndarray, nbits: int) -> np.ndarray:
    """Decode table ``(dim * nbits / 8, 256, 8 / nbits)`` float32 from bucket weights ``(dim, 2**nbits)``."""
    dim = weights.shape[0]
    per = 8 // nbits
    values = np.arange(256)
    lut = np.empty((dim // per, 256, per), dtype=np.float32)
    for t in range(per):
        bucket = (values >> (t * nbits)) & ((1 << nbits) - 1)
        lut[:, :, t] = weights[t::per][:, bucket]
    return lut

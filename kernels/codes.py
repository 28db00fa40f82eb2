"""Compressed token stores: fixed-width byte rows that the MaxSim kernels decode block by block.

A token store is one 2-D array with a row per token, so every store type is written, appended,
copied and memory-mapped the same way. Besides plain ``float16`` / ``float32`` arrays, the
MaxSim kernels (``kernels.maxsim``) accept two compressed stores, passed as named tuples of
arrays (numba compiles one specialisation per store type):

``Int8Rows(rows)``
    ``rows`` uint8 ``(n, dim + 2)``: per token, ``dim`` values ``q + 128`` with
    ``q = round(x / s)`` in ``[-127, 127]``, then the per-token scale ``s = max|x| / 127`` as a
    little-endian float16. Decodes to ``(rows[:, :dim] - 128) * s``. No training; any norm.

``ResidualRows(rows, centroids, table)``
    PLAID-style residual codes. ``rows`` uint8 ``(n, id_bytes + dim * nbits / 8)``: the
    centroid id (``id_bytes`` = 1, 2 or 4, little-endian), then ``nbits`` per dimension, dimension
    ``k`` at bits ``(k * nbits) % 8`` of byte ``k * nbits // 8`` (little-endian bit order).
    ``centroids`` float32 ``(n_centroids, dim)``; ``table`` float32 ``(2**nbits, dim)``:
    ``table[b, k]`` is the residual value of bucket ``b`` in dimension ``k`` (:func:`residual_table`
    builds it from per-dimension bucket weights). Decodes to ``centroids[id] + residual``
    rescaled to unit length, as ColBERT's decompression does: the codes are for L2-normalised
    token vectors, and the renormalisation removes the radial part of the quantisation error
    (SciFact train, 2,048 centroids: the exact top-10's overlap with float16 went from 0.953 to
    0.975 at 4 bits, 0.893 to 0.926 at 2 bits).

Decoding happens inside the kernels, a block of rows at a time into a float32 scratch buffer,
exactly where float16 rows are converted: no per-query copy of the candidates' vectors exists.
A residual row is decoded by a SIMD routine written in LLVM vector IR (numba's auto-vectoriser
turns the bit extraction and per-dimension table lookup into scalar code, ~70 ns per 128-d
token): per vector of 16 (AVX-512) or 8 dimensions, one broadcast of the code word, one bit test
per code bit, and a tree of ``2**nbits - 1`` lane selects between the bucket rows of ``table``,
then the centroid add; the squared norm accumulates in a vector, and at 128-d the whole row
stays in registers until it is rescaled (about 15 / 18 / 27-44 ns per token at 1 / 2 / 4 bits on the
development machine; ``bench/bench_maxsim.py``). Dimensions that are not a multiple of the vector
width take a plain scalar loop.
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
from llvmlite import ir  # numba's code generator; used only to emit the SIMD decoder
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import hsum, splat, tile_shape

__all__ = [
    "Int8Rows",
    "ResidualRows",
    "int8_encode",
    "residual_pack",
    "residual_table",
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
    table: np.ndarray


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


def _make_residual_row_decoder(nbits: int, width: int, unrolled_dim: int = 128):
    """Build the intrinsic ``decode_row(rows, row, code_off, centroids, c, table, buf, r)``.

    Writes ``buf[r] = unit(centroids[c] + residual(rows[row, code_off:]))`` for a residual
    store of ``nbits`` bits whose ``dim`` is a multiple of ``width`` (callers check). Arrays are
    C-contiguous: ``rows`` uint8 2-D, ``centroids``/``table``/``buf`` float32 2-D. For
    ``dim == unrolled_dim`` the row is decoded in straight-line code and kept in registers until
    it is rescaled; other dimensions loop over the vectors and rescale in a second pass.
    """
    n_buckets = 1 << nbits
    group_bytes = width * nbits // 8  # code bytes of one vector of dimensions

    @intrinsic
    def decode_row(typingctx, rows, row, code_off, centroids, c, table, buf, r):
        def c_array(t, dtype):
            return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == 2 and t.layout == "C"

        if not (c_array(rows, types.uint8) and all(c_array(t, types.float32) for t in (centroids, table, buf))):
            return None
        if not all(isinstance(t, types.Integer) for t in (row, code_off, c, r)):
            return None
        sig = types.void(rows, row, code_off, centroids, c, table, buf, r)

        def codegen(context, builder, signature, args):
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vf, vi = ir.VectorType(f32, width), ir.VectorType(i32, width)

            def array(i):
                return context.make_array(signature.args[i])(context, builder, args[i])

            def int_arg(i):
                return context.cast(builder, args[i], signature.args[i], types.int64)

            def c64(v):
                return ir.Constant(i64, v)

            def vptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vf.as_pointer())

            rows_a, cen_a, tab_a, buf_a = array(0), array(3), array(5), array(6)
            row_width = cgutils.unpack_tuple(builder, rows_a.shape)[1]
            dim = cgutils.unpack_tuple(builder, cen_a.shape)[1]
            code_ptr = builder.gep(rows_a.data, [builder.add(builder.mul(int_arg(1), row_width), int_arg(2))])
            cen_ptr = builder.gep(cen_a.data, [builder.mul(int_arg(4), dim)])
            buf_ptr = builder.gep(buf_a.data, [builder.mul(int_arg(7), dim)])
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), f"llvm.fma.v{width}f32")
            sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32]), "llvm.sqrt.f32")
            zero_i = ir.Constant(vi, [0] * width)
            # lane l holds dimension k0 + l: its code bits start at bit (l * nbits) of the group's bytes
            bit_masks = [ir.Constant(vi, [1 << ((lane * nbits) % 32 + bit) for lane in range(width)]) for bit in range(nbits)]

            def code_words(g):
                """The group's code bits as a vector: lane l holds the 32-bit word with its bits."""
                p = builder.gep(code_ptr, [builder.mul(g, c64(group_bytes))])
                if group_bytes >= 4:
                    wv = ir.VectorType(i32, group_bytes // 4)
                    words = builder.load(builder.bitcast(p, wv.as_pointer()), align=1)
                    pick = ir.Constant(vi, [(lane * nbits) // 32 for lane in range(width)])
                    return builder.shuffle_vector(words, ir.Constant(wv, ir.Undefined), pick)
                word = builder.load(builder.bitcast(p, ir.IntType(8 * group_bytes).as_pointer()), align=1)
                return splat(builder, builder.zext(word, i32), width)

            def decode_group(g):
                """(unscaled decoded vector, its first dimension) of dimension group ``g`` (i64)."""
                k0 = builder.mul(g, c64(width))
                words = code_words(g)
                level = [builder.load(vptr(tab_a.data, builder.add(builder.mul(c64(b), dim), k0)), align=4)
                         for b in range(n_buckets)]
                for bit in range(nbits):  # select tree: bit 0 picks within pairs of buckets, bit 1 within pairs of pairs...
                    take = builder.icmp_unsigned("!=", builder.and_(words, bit_masks[bit]), zero_i)
                    level = [builder.select(take, level[2 * i + 1], level[2 * i]) for i in range(len(level) // 2)]
                return builder.fadd(level[0], builder.load(vptr(cen_ptr, k0), align=4)), k0

            def inverse_norm(sum_sq):
                """1 / sqrt(sum_sq) as a vector; 1 where sum_sq is not > 0 (a zero row stays zero)."""
                inv = builder.fdiv(ir.Constant(f32, 1.0), builder.call(sqrt, [sum_sq]))
                inv = builder.select(builder.fcmp_ordered(">", sum_sq, ir.Constant(f32, 0.0)), inv, ir.Constant(f32, 1.0))
                return splat(builder, inv, width)

            n_groups = builder.sdiv(dim, c64(width))
            unrolled_groups = unrolled_dim // width
            with builder.if_else(builder.icmp_signed("==", n_groups, c64(unrolled_groups))) as (straight, looped):
                with straight:
                    acc = ir.Constant(vf, [0.0] * width)
                    decoded = []
                    for g in range(unrolled_groups):
                        x, k0 = decode_group(c64(g))
                        decoded.append((x, k0))
                        acc = builder.call(fma, [x, x, acc])
                    inv = inverse_norm(hsum(builder, acc, width))
                    for x, k0 in decoded:
                        builder.store(builder.fmul(x, inv), vptr(buf_ptr, k0), align=4)
                with looped:
                    acc_p = cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * width))
                    with cgutils.for_range(builder, n_groups) as loop:
                        x, k0 = decode_group(loop.index)
                        builder.store(x, vptr(buf_ptr, k0), align=4)
                        builder.store(builder.call(fma, [x, x, builder.load(acc_p)]), acc_p)
                    inv = inverse_norm(hsum(builder, builder.load(acc_p), width))
                    with cgutils.for_range(builder, n_groups) as loop:
                        p = vptr(buf_ptr, builder.mul(loop.index, c64(width)))
                        builder.store(builder.fmul(builder.load(p, align=4), inv), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return decode_row


_WIDTH = tile_shape()[0]
_decode_row_1 = _make_residual_row_decoder(1, _WIDTH)
_decode_row_2 = _make_residual_row_decoder(2, _WIDTH)
_decode_row_4 = _make_residual_row_decoder(4, _WIDTH)


@njit(cache=True)
def _centroid_id(rows, row, id_bytes, n_cent):
    """The little-endian centroid id at the start of ``rows[row]``, clamped to ``n_cent - 1``
    (a damaged row never reads outside the centroids; verify() reports it)."""
    if id_bytes == 2:
        c = np.int64(rows[row, 0]) | (np.int64(rows[row, 1]) << 8)
    elif id_bytes == 4:
        c = (np.int64(rows[row, 0]) | (np.int64(rows[row, 1]) << 8) | (np.int64(rows[row, 2]) << 16)
             | (np.int64(rows[row, 3]) << 24))
    else:
        c = np.int64(rows[row, 0])
    return min(c, n_cent - 1)


@njit(cache=True)
def _nbits(n_buckets):
    """Bits per dimension of a decode table with ``n_buckets`` rows (2, 4 or 16)."""
    return 1 if n_buckets == 2 else (2 if n_buckets == 4 else 4)


@njit(cache=True)
def decode_residual_rows_scalar(rows, centroids, table, start, n, buf):
    """buf[r] = decoded row ``start + r`` for ``r < n`` (residual store), one value at a time.

    The plain loop that the SIMD decoder replaces where ``dim`` is a multiple of the vector width.
    """
    n_cent, dim = centroids.shape
    nbits = _nbits(table.shape[0])
    mask = (1 << nbits) - 1
    id_bytes = rows.shape[1] - dim * nbits // 8
    for r in range(n):
        row = start + r
        c = _centroid_id(rows, row, id_bytes, n_cent)
        ss = np.float32(0.0)
        for k in range(dim):
            bit = k * nbits
            b = (np.int64(rows[row, id_bytes + bit // 8]) >> (bit % 8)) & mask
            v = centroids[c, k] + table[b, k]
            buf[r, k] = v
            ss += v * v
        if ss > 0:
            inv = np.float32(1.0) / np.sqrt(ss)
            for k in range(dim):
                buf[r, k] *= inv


@njit(cache=True)
def decode_residual_block(rows, centroids, table, start, n, buf):
    """buf[r] = decoded row ``start + r`` for ``r < n`` (residual store), SIMD where ``dim`` allows."""
    n_cent, dim = centroids.shape
    if dim % _WIDTH != 0:
        decode_residual_rows_scalar(rows, centroids, table, start, n, buf)
        return
    nbits = _nbits(table.shape[0])
    code_off = rows.shape[1] - dim * nbits // 8
    for r in range(n):
        row = start + r
        c = _centroid_id(rows, row, code_off, n_cent)
        if nbits == 2:
            _decode_row_2(rows, row, code_off, centroids, c, table, buf, r)
        elif nbits == 1:
            _decode_row_1(rows, row, code_off, centroids, c, table, buf, r)
        else:
            _decode_row_4(rows, row, code_off, centroids, c, table, buf, r)


@njit(parallel=True, cache=True)
def _decode_int8_range(rows, start, out):
    n = out.shape[0]
    step = 256
    for b in prange((n + step - 1) // step):
        s = b * step
        m = min(step, n - s)
        decode_int8_block(rows, start + s, m, out[s : s + m])


@njit(parallel=True, cache=True)
def _decode_residual_range(rows, centroids, table, start, out):
    n = out.shape[0]
    step = 256
    for b in prange((n + step - 1) // step):
        s = b * step
        m = min(step, n - s)
        decode_residual_block(rows, centroids, table, start + s, m, out[s : s + m])


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
        _decode_residual_range(
            np.ascontiguousarray(store.rows), np.ascontiguousarray(store.centroids), np.ascontiguousarray(store.table), start, out
        )
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


def residual_table(weights: np.ndarray) -> np.ndarray:
    """Decode table ``(2**nbits, dim)`` float32 from per-dimension bucket weights ``(dim, 2**nbits)``."""
    return np.ascontiguousarray(np.asarray(weights, dtype=np.float32).T)

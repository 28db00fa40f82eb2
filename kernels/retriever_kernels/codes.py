"""Compressed token stores: fixed-width byte rows that the MaxSim kernels decode block by block.

A token store is one 2-D array with a row per token, so every store type is written, appended,
copied and memory-mapped the same way. Besides plain ``float16`` / ``float32`` arrays, the
MaxSim kernels (``retriever_kernels.maxsim``) accept two compressed stores, passed as named tuples of
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
    builds it from per-dimension bucket weights); ``lanes`` float32 ``(dim, 16)``, the same values
    per dimension, ``lanes[k, i] = table[i % 2**nbits, k]`` (:func:`residual_lanes`: the 16-entry
    lookup vector of the dimension-major decoder). Decodes to ``centroids[id] + residual``
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
development machine; ``bench/kernels/maxsim.py``). Dimensions that are not a multiple of the vector
width take a plain scalar loop. At 4 bits the select tree is 15 selects per vector, so with AVX-512
and 128 dimensions rows are decoded 16 at a time, dimension-major: the 16 tokens' code words are
transposed in registers (lane = token), each dimension is one ``vpermps`` of its 16 bucket values
(``lanes``) indexed by the shifted word, and a 16x16 transpose per group of 16 dimensions turns the
result back into rows (about 17-21 ns per token instead of 44-48; same sums in the same order, so
bit-identical to the row decoder, which decodes the 0-15 rows left over).
:func:`decode_rows` exposes the same decoding for whole ranges (FDEs, verification, compaction);
``tests/reference.py`` holds the plain-numpy twin of both encoders and decoders.

Note for developers: numba's on-disk cache keys a compiled function by its own file, so the
kernels of ``kernels/retriever_kernels/maxsim.py`` cached before an edit of the decoders here keep the old
decoders. After changing this file, delete ``kernels/retriever_kernels/__pycache__/*.nbi`` and ``*.nbc`` (a fresh
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
    "residual_lanes",
    "residual_rows",
    "decode_rows",
    "store_shape",
]


class Int8Rows(NamedTuple):
    """Int8 token store: uint8 rows ``(n_tokens, dim + 2)`` (values + float16 scale)."""

    rows: np.ndarray


class ResidualRows(NamedTuple):
    """Residual-coded token store (see the module docstring for the row layout).

    Build one with :func:`residual_rows`, which derives ``table`` and ``lanes`` from the bucket weights.
    """

    rows: np.ndarray
    centroids: np.ndarray
    table: np.ndarray
    lanes: np.ndarray


def store_shape(store) -> tuple[int, int]:
    """(n_tokens, dim) of a plain array or a compressed store."""
    if isinstance(store, Int8Rows):
        return int(store.rows.shape[0]), int(store.rows.shape[1]) - 2
    if isinstance(store, ResidualRows):
        return int(store.rows.shape[0]), int(store.centroids.shape[1])
    return int(store.shape[0]), int(store.shape[1])


# --------------------------------------------------------------------------------------
# row decoders (called from numba code: here and in retriever_kernels.maxsim)
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


def _c_array(t, dtype, ndim: int = 2) -> bool:
    """Whether numba type ``t`` is a C-contiguous ``ndim``-D array of ``dtype`` (intrinsic typing)."""
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == ndim and t.layout == "C"


def _inverse_norm(builder: ir.IRBuilder, sum_sq, width: int):
    """``1 / sqrt(sum_sq)`` splat to ``width`` lanes; 1 where ``sum_sq`` is not > 0 (a zero row stays zero).

    Both residual decoders rescale through this, so their results stay bit-identical."""
    f32 = ir.FloatType()
    sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32]), "llvm.sqrt.f32")
    inv = builder.fdiv(ir.Constant(f32, 1.0), builder.call(sqrt, [sum_sq]))
    inv = builder.select(builder.fcmp_ordered(">", sum_sq, ir.Constant(f32, 0.0)), inv, ir.Constant(f32, 1.0))
    return splat(builder, inv, width)


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
        if not (_c_array(rows, types.uint8) and all(_c_array(t, types.float32) for t in (centroids, table, buf))):
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
                    inv = _inverse_norm(builder, hsum(builder, acc, width), width)
                    for x, k0 in decoded:
                        builder.store(builder.fmul(x, inv), vptr(buf_ptr, k0), align=4)
                with looped:
                    acc_p = cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * width))
                    with cgutils.for_range(builder, n_groups) as loop:
                        x, k0 = decode_group(loop.index)
                        builder.store(x, vptr(buf_ptr, k0), align=4)
                        builder.store(builder.call(fma, [x, x, builder.load(acc_p)]), acc_p)
                    inv = _inverse_norm(builder, hsum(builder, builder.load(acc_p), width), width)
                    with cgutils.for_range(builder, n_groups) as loop:
                        p = vptr(buf_ptr, builder.mul(loop.index, c64(width)))
                        builder.store(builder.fmul(builder.load(p, align=4), inv), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return decode_row


def _make_residual4_block_decoder():
    """Build the intrinsic ``decode_block(rows, start, code_off, centroids, cids, lanes, buf, r0)``.

    AVX-512, 4-bit codes, ``dim == 128`` only. Writes ``buf[r0 + t] = unit(centroids[cids[t]] +
    residual(rows[start + t, code_off:]))`` for the 16 rows ``t < 16``, dimension-major: the 16
    tokens' code words are transposed into one vector per word (lane = token), each dimension's
    residual is one ``vpermps`` of that dimension's 16 bucket values (``lanes`` float32
    ``(dim, 16)``) by the shifted word, and a 16x16 register transpose turns each group of 16
    dimensions back into rows. The sums run in the same order as the row decoder's, so the
    results are bit-identical to it.
    """
    width, dim, n_groups = 16, 128, 8

    @intrinsic
    def decode_block(typingctx, rows, start, code_off, centroids, cids, lanes, buf, r0):
        if not (_c_array(rows, types.uint8) and _c_array(cids, types.int64, 1)
                and all(_c_array(t, types.float32) for t in (centroids, lanes, buf))):
            return None
        if not all(isinstance(t, types.Integer) for t in (start, code_off, r0)):
            return None
        sig = types.void(rows, start, code_off, centroids, cids, lanes, buf, r0)

        def codegen(context, builder, signature, args):
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vf, vi = ir.VectorType(f32, width), ir.VectorType(i32, width)

            def array(i):
                return context.make_array(signature.args[i])(context, builder, args[i])

            def int_arg(i):
                return context.cast(builder, args[i], signature.args[i], types.int64)

            def c64(v):
                return ir.Constant(i64, v)

            rows_a, cen_a, cid_a, tab_a, buf_a = array(0), array(3), array(4), array(5), array(6)
            row_width = cgutils.unpack_tuple(builder, rows_a.shape)[1]
            permvar = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vi]),
                                                     "llvm.x86.avx512.permvar.sf.512")
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")
            lo_mask = ir.Constant(vi, [k // 2 + (16 if k % 2 else 0) for k in range(16)])
            hi_mask = ir.Constant(vi, [8 + k // 2 + (16 if k % 2 else 0) for k in range(16)])

            def transpose(vs):
                """16 vectors of 16 lanes, transposed (four rounds of perfect-shuffle interleaves)."""
                for _ in range(4):
                    out = []
                    for j in range(8):
                        out.append(builder.shuffle_vector(vs[j], vs[j + 8], lo_mask))
                        out.append(builder.shuffle_vector(vs[j], vs[j + 8], hi_mask))
                    vs = out
                return vs

            start_v, code_off_v, r0_v = int_arg(1), int_arg(2), int_arg(7)
            code_rows = []
            for t in range(width):
                p = builder.gep(rows_a.data, [builder.add(builder.mul(builder.add(start_v, c64(t)), row_width), code_off_v)])
                code_rows.append(builder.load(builder.bitcast(p, vi.as_pointer()), align=1))
            words = transpose(code_rows)  # words[w]: lane t = code word w of token t (dims 8w .. 8w+7)
            cen_ptrs = [builder.gep(cen_a.data, [builder.mul(builder.load(builder.gep(cid_a.data, [c64(t)])), c64(dim))])
                        for t in range(width)]
            buf_ptrs = [builder.gep(buf_a.data, [builder.mul(builder.add(r0_v, c64(t)), c64(dim))]) for t in range(width)]

            def vptr(base, offset):
                return builder.bitcast(builder.gep(base, [c64(offset)]), vf.as_pointer())

            for g in range(n_groups):
                cols = []
                for j in range(width):
                    k = g * width + j
                    word = words[k // 8]
                    idx = builder.lshr(word, ir.Constant(vi, [4 * (k % 8)] * width)) if k % 8 else word
                    tab = builder.load(vptr(tab_a.data, k * 16), align=4)
                    cols.append(builder.call(permvar, [tab, idx]))
                for t, u in enumerate(transpose(cols)):
                    x = builder.fadd(u, builder.load(vptr(cen_ptrs[t], g * width), align=4))
                    builder.store(x, vptr(buf_ptrs[t], g * width), align=4)
            for t in range(width):
                acc = ir.Constant(vf, [0.0] * width)
                xs = []
                for g in range(n_groups):
                    x = builder.load(vptr(buf_ptrs[t], g * width), align=4)
                    xs.append(x)
                    acc = builder.call(fma, [x, x, acc])
                inv = _inverse_norm(builder, hsum(builder, acc, width), width)
                for g, x in enumerate(xs):
                    builder.store(builder.fmul(x, inv), vptr(buf_ptrs[t], g * width), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return decode_block


_WIDTH = tile_shape()[0]
_decode_row_1 = _make_residual_row_decoder(1, _WIDTH)
_decode_row_2 = _make_residual_row_decoder(2, _WIDTH)
_decode_row_4 = _make_residual_row_decoder(4, _WIDTH)
_decode_block_4 = _make_residual4_block_decoder() if _WIDTH == 16 else None


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
def decode_residual_block(rows, centroids, table, lanes, start, n, buf):
    """buf[r] = decoded row ``start + r`` for ``r < n`` (residual store), SIMD where ``dim`` allows:
    4-bit codes of 128 dimensions with AVX-512 16 rows at a time, dimension-major (the row decoder
    spends 15 lane selects per vector on them); the other rows one at a time."""
    n_cent, dim = centroids.shape
    if dim % _WIDTH != 0:
        decode_residual_rows_scalar(rows, centroids, table, start, n, buf)
        return
    nbits = _nbits(table.shape[0])
    code_off = rows.shape[1] - dim * nbits // 8
    first = 0
    if _WIDTH == 16 and nbits == 4 and dim == 128 and n >= 16:
        first = _decode_residual4_blocks(rows, centroids, lanes, start, n, buf, code_off)
    for r in range(first, n):
        row = start + r
        c = _centroid_id(rows, row, code_off, n_cent)
        if nbits == 2:
            _decode_row_2(rows, row, code_off, centroids, c, table, buf, r)
        elif nbits == 1:
            _decode_row_1(rows, row, code_off, centroids, c, table, buf, r)
        else:
            _decode_row_4(rows, row, code_off, centroids, c, table, buf, r)


def _decode_residual4_blocks_impl(rows, centroids, lanes, start, n, buf, code_off):
    """Decode rows ``start .. start + 16 * (n // 16)`` 16 at a time (4-bit, dim 128, AVX-512);
    returns how many rows were decoded."""
    n_cent = centroids.shape[0]
    cids = np.empty(16, dtype=np.int64)
    done = 0
    while done + 16 <= n:
        for t in range(16):
            cids[t] = _centroid_id(rows, start + done + t, code_off, n_cent)
        _decode_block_4(rows, start + done, code_off, centroids, cids, lanes, buf, done)
        done += 16
    return done


if _decode_block_4 is not None:
    _decode_residual4_blocks = njit(cache=True)(_decode_residual4_blocks_impl)
else:  # no AVX-512: every row takes the row decoder

    @njit(cache=True)
    def _decode_residual4_blocks(rows, centroids, lanes, start, n, buf, code_off):
        return 0


@njit(parallel=True, cache=True)
def _decode_int8_range(rows, start, out):
    n = out.shape[0]
    step = 256
    for b in prange((n + step - 1) // step):
        s = b * step
        m = min(step, n - s)
        decode_int8_block(rows, start + s, m, out[s : s + m])


@njit(parallel=True, cache=True)
def _decode_residual_range(rows, centroids, table, lanes, start, out):
    n = out.shape[0]
    step = 256
    for b in prange((n + step - 1) // step):
        s = b * step
        m = min(step, n - s)
        decode_residual_block(rows, centroids, table, lanes, start + s, m, out[s : s + m])


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
        if np.shape(store.lanes) != (dim, 16):
            raise ValueError(f"store.lanes must have shape ({dim}, 16) (residual_lanes(table)), got {np.shape(store.lanes)}")
        _decode_residual_range(
            np.ascontiguousarray(store.rows), np.ascontiguousarray(store.centroids), np.ascontiguousarray(store.table),
            np.ascontiguousarray(store.lanes), start, out
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


def residual_lanes(table: np.ndarray) -> np.ndarray:
    """Per-dimension lookup vectors ``(dim, 16)`` float32 of a decode table ``(2**nbits, dim)``:
    ``lanes[k, i] = table[i % 2**nbits, k]`` (a 16-lane permute indexed by the code word's low
    four bits then needs no masking at 1 or 2 bits)."""
    table = np.asarray(table, dtype=np.float32)
    reps = 16 // table.shape[0]
    return np.ascontiguousarray(np.tile(table.T, (1, reps)))


def residual_rows(rows: np.ndarray, centroids: np.ndarray, weights: np.ndarray) -> ResidualRows:
    """The :class:`ResidualRows` store of packed ``rows`` with its centroids and bucket ``weights`` ``(dim, 2**nbits)``."""
    table = residual_table(weights)
    return ResidualRows(rows, centroids, table, residual_lanes(table))

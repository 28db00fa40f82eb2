"""Exact late-interaction (MaxSim / Chamfer) scores in numba.

``MaxSim(Q, D) = sum_i max_t <q_i, d_t>`` over the query tokens ``q_i`` and the document
tokens ``d_t``. Documents live in one CSR token store: ``tokens`` (n_tokens, dim), float16 or
float32, and ``doc_offsets`` (n_docs + 1,) int64, document ``d`` being
``tokens[doc_offsets[d]:doc_offsets[d + 1]]`` (see ``retriever.tokens.TokenEmbeddings``).

How the kernel is built, and why
--------------------------------
MaxSim is a small GEMM (query tokens x document tokens x dim) followed by a max over the
document tokens. The query is packed, transposed, into chunks of 32 *lanes* (query tokens),
``(n_chunks, dim, 32)``. For a pass over ``R`` document tokens the micro-kernel keeps
``R x 32`` accumulators in vector registers and, for every ``k < dim``, broadcasts the ``R``
document values and issues ``R x 32 / W`` fused multiply-adds against the query lanes
(``W`` = floats per vector register); the pass ends with a vertical max into the running
per-lane maxima. There is no horizontal reduction in the hot loop. Float16 documents are
converted to float32 block by block into a per-task buffer (``vcvtph2ps`` where the CPU has
F16C); all arithmetic is float32.

numba's auto-vectoriser cannot keep such a register tile (accumulators written per ``k`` end
up in memory, and LLVM caps auto-vectorised code at 256-bit vectors on AVX-512 CPUs), so the
micro-kernel is written as a numba ``@intrinsic`` that emits LLVM vector IR directly through
llvmlite, numba's own code generator. ``W`` and ``R`` follow the target: 16 x 8 with
AVX-512 (16 zmm accumulators), 8 x 2 otherwise (fits the 16 AVX2 registers).

Floating point: the kernels are compiled without ``fastmath``; the hot loop uses explicit
FMAs, so results differ from a numpy float32 GEMM only by summation order and rounding of
the fused multiply-adds (relative error of order ``dim * 2**-24`` per dot product).

Conventions: a candidate id ``-1`` is padding and scores ``-inf``; a document with no tokens
scores ``-inf`` (the max over an empty set) unless the query has no tokens, which scores 0;
all ``-inf`` entries are ignored by the top-k functions. NaN inputs give unspecified scores.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir  # numba's code generator; used only to emit the SIMD micro-kernel
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .codes import Int8Rows, ResidualRows, decode_int8_block, decode_residual_block, residual_lanes, store_shape
from .simd import splat, tile_shape
from .topk import check_array, check_k, finish_heaps_kernel, push_block_kernel, readonly

__all__ = [
    "maxsim_scores",
    "maxsim_scores_batch",
    "maxsim_exhaustive",
    "maxsim_exhaustive_topk",
    "warmup",
]

LANES = 32  # query tokens per packed chunk
_ROW_BLOCK = 256  # document rows converted to float32 at a time (128 KiB at dim 128)
_PAIRS_PER_TASK = 16  # (query, candidate) pairs per parallel task: amortises scratch allocation
_DOCS_PER_TASK = 4  # documents per parallel task in the exhaustive kernel
_GROUPS_PER_TASK = 8  # documents (each with all its (query, candidate) pairs) per task of the grouped pairs kernel
_PACK_CHUNKS = 16  # 32-lane chunks of packed query tokens per scoring pass of the grouped kernel (256 KiB at dim 128)
_GROUP_MAX_ROWS = 4096  # longest document the grouped kernel decodes whole (2 MiB of float32 at dim 128 per thread)
_TOPK_BLOCK_BYTES = 8 << 20  # score block size of maxsim_exhaustive_topk


# --------------------------------------------------------------------------------------
# LLVM-level building blocks
# --------------------------------------------------------------------------------------
@intrinsic
def h2f(typingctx, bits):
    """float16 bit pattern (uint16) -> float32, exact (subnormals, inf and NaN included)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


def _emit_tile_max(builder, qp_ptr, dim, chunk, rows_ptr, row_stride, r0, r1, mx_ptr, width, n_rows):
    """Emit IR for: mx[0:32] = max(mx[0:32], max_{r0 <= t < r1} qp[chunk].T @ rows[t])."""
    f32 = ir.FloatType()
    i64 = ir.IntType(64)
    vec = ir.VectorType(f32, width)
    n_vec = LANES // width
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{width}f32")
    zero = ir.Constant(vec, [0.0] * width)

    def c64(v):
        return ir.Constant(i64, v)

    def vptr(base, offset):
        return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

    q_base = builder.gep(qp_ptr, [builder.mul(builder.mul(chunk, dim), c64(LANES))])
    m_ptrs = [vptr(mx_ptr, c64(width * v)) for v in range(n_vec)]
    acc = [[cgutils.alloca_once(builder, vec) for _ in range(n_vec)] for _ in range(n_rows)]
    last = builder.sub(r1, c64(1))
    n_pass = builder.sdiv(builder.add(builder.sub(r1, r0), c64(n_rows - 1)), c64(n_rows))
    with cgutils.for_range(builder, n_pass) as p:
        first = builder.add(r0, builder.mul(p.index, c64(n_rows)))
        row_ptrs = []
        for r in range(n_rows):
            # A short last pass repeats the last row: the max is unchanged by duplicates.
            row = builder.add(first, c64(r))
            row = builder.select(builder.icmp_signed("<", row, last), row, last)
            row_ptrs.append(builder.gep(rows_ptr, [builder.mul(row, row_stride)]))
        for r in range(n_rows):
            for v in range(n_vec):
                builder.store(zero, acc[r][v])
        with cgutils.for_range(builder, dim) as kk:
            q_row = builder.gep(q_base, [builder.mul(kk.index, c64(LANES))])
            q = [builder.load(vptr(q_row, c64(width * v)), align=4) for v in range(n_vec)]
            for r in range(n_rows):
                x = builder.load(builder.gep(row_ptrs[r], [kk.index]))
                xs = splat(builder, x, width)
                for v in range(n_vec):
                    builder.store(builder.call(fma, [xs, q[v], builder.load(acc[r][v])]), acc[r][v])
        for v in range(n_vec):
            m = builder.load(m_ptrs[v], align=4)
            for r in range(n_rows):
                a = builder.load(acc[r][v])
                m = builder.select(builder.fcmp_ordered(">", a, m), a, m)
            builder.store(m, m_ptrs[v], align=4)


def _make_tile_max(width: int | None = None, n_rows: int | None = None):
    """Build the micro-kernel intrinsic ``tile_max(qp, chunk, rows, r0, r1, mx, m0)``.

    Updates ``mx[m0:m0 + 32] = max(mx[m0:m0 + 32], max over r0 <= t < r1 of qp[chunk].T @ rows[t])``
    with ``qp`` float32 (n_chunks, dim, 32), ``rows`` float32 (n, dim), ``mx`` float32 1-D, all
    C-contiguous. Nothing happens when ``r1 <= r0``. ``width``/``n_rows`` default to the
    target's tile shape (chosen when the kernel is compiled); tests pass them explicitly.
    """

    @intrinsic
    def tile_max(typingctx, qp, chunk, rows, r0, r1, mx, m0):
        def f32_array(t, ndim):
            return isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == ndim and t.layout == "C"

        ints = (chunk, r0, r1, m0)
        if not (f32_array(qp, 3) and f32_array(rows, 2) and f32_array(mx, 1)):
            return None
        if not all(isinstance(t, types.Integer) for t in ints):
            return None
        sig = types.void(qp, chunk, rows, r0, r1, mx, m0)

        def codegen(context, builder, signature, args):
            w, r = (width, n_rows) if width is not None else tile_shape()
            qp_t, chunk_t, rows_t, r0_t, r1_t, mx_t, m0_t = signature.args
            qp_a = context.make_array(qp_t)(context, builder, args[0])
            rows_a = context.make_array(rows_t)(context, builder, args[2])
            mx_a = context.make_array(mx_t)(context, builder, args[5])

            def as_i64(val, ty):
                return context.cast(builder, val, ty, types.int64)

            dim = cgutils.unpack_tuple(builder, qp_a.shape)[1]
            row_stride = cgutils.unpack_tuple(builder, rows_a.shape)[1]
            mx_ptr = builder.gep(mx_a.data, [as_i64(args[6], m0_t)])
            _emit_tile_max(
                builder, qp_a.data, dim, as_i64(args[1], chunk_t), rows_a.data, row_stride,
                as_i64(args[3], r0_t), as_i64(args[4], r1_t), mx_ptr, w, r,
            )
            return context.get_dummy_value()

        return sig, codegen

    return tile_max


_tile_max = _make_tile_max()


def _f32_rows(tokens, start, n, buf):
    """Rows ``tokens[start:start + n]`` as float32: returns ``(array, first_row)``."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(_f32_rows, jit_options={"cache": True})
def _f32_rows_impl(tokens, start, n, buf):
    if isinstance(tokens, types.Array) and tokens.dtype == types.uint16:

        def convert(tokens, start, n, buf):
            dim = tokens.shape[1]
            for r in range(n):
                for k in range(dim):
                    buf[r, k] = h2f(tokens[start + r, k])
            return buf, 0

        return convert
    if isinstance(tokens, types.Array) and tokens.dtype == types.float32:

        def passthrough(tokens, start, n, buf):
            return tokens, start

        return passthrough
    store_class = getattr(tokens, "instance_class", None)
    if store_class is Int8Rows:

        def int8(tokens, start, n, buf):
            decode_int8_block(tokens.rows, start, n, buf)
            return buf, 0

        return int8
    if store_class is ResidualRows:

        def residual(tokens, start, n, buf):
            decode_residual_block(tokens.rows, tokens.centroids, tokens.table, tokens.lanes, start, n, buf)
            return buf, 0

        return residual
    return None


# --------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _doc_lane_max(qp, c0, c1, tokens, start, stop, buf, mx):
    """Per-lane max of chunks ``c0..c1-1`` of ``qp`` over document rows ``start..stop-1``."""
    n_lanes = (c1 - c0) * LANES
    for j in range(n_lanes):
        mx[j] = -np.inf
    b = start
    while b < stop:
        nb = min(_ROW_BLOCK, stop - b)
        rows, r0 = _f32_rows(tokens, b, nb, buf)
        for c in range(c0, c1):
            _tile_max(qp, c, rows, r0, r0 + nb, mx, (c - c0) * LANES)
        b += nb


@njit(parallel=True, cache=True)
def _pairs_kernel(qp, q_chunks, q_ntok, tokens, doc_offsets, candidates, max_chunks, out):
    """out[i, j] = MaxSim(query i, doc candidates[i, j]); query i owns chunks q_chunks[i]..q_chunks[i+1]-1."""
    n_q, n_cand = candidates.shape
    dim = qp.shape[1]
    n_pairs = n_q * n_cand
    n_tasks = (n_pairs + _PAIRS_PER_TASK - 1) // _PAIRS_PER_TASK
    for task in prange(n_tasks):
        buf = np.empty((_ROW_BLOCK, dim), dtype=np.float32)
        mx = np.empty(max(max_chunks, 1) * LANES, dtype=np.float32)
        for p in range(task * _PAIRS_PER_TASK, min(n_pairs, (task + 1) * _PAIRS_PER_TASK)):
            qi = p // n_cand
            ci = p - qi * n_cand
            d = candidates[qi, ci]
            if d < 0:
                out[qi, ci] = -np.inf
                continue
            _doc_lane_max(qp, q_chunks[qi], q_chunks[qi + 1], tokens, doc_offsets[d], doc_offsets[d + 1], buf, mx)
            s = np.float32(0.0)
            for j in range(q_ntok[qi]):
                s += mx[j]
            out[qi, ci] = s


@njit(parallel=True, cache=True)
def _grouped_pairs_kernel(qp, q_chunks, q_ntok, q_vectors, q_offsets, tokens, doc_offsets, pair_q, pair_c, pair_d,
                          group_starts, max_chunks, pack_chunks, buf_rows, out):
    """Like :func:`_pairs_kernel`, over pairs sorted by document: a document of at most ``buf_rows``
    tokens is converted to float32 once for all the queries that have it as a candidate, and those
    queries' token vectors (rows of ``q_vectors``) are packed lane after lane into chunks of up to
    ``pack_chunks`` x 32 lanes, so a query of fewer than 32 tokens does not pay for a whole chunk (as in
    the exhaustive kernel). Each lane's dot products and each query's sum run in the same order as per
    pair: results are bit-identical to :func:`_pairs_kernel`. A longer document is scored pair by pair."""
    n_groups = group_starts.shape[0] - 1
    dim = qp.shape[1]
    n_tasks = (n_groups + _GROUPS_PER_TASK - 1) // _GROUPS_PER_TASK
    cap = pack_chunks * LANES
    for task in prange(n_tasks):
        buf = np.empty((max(buf_rows, _ROW_BLOCK), dim), dtype=np.float32)
        mx = np.empty(max(max_chunks, pack_chunks, 1) * LANES, dtype=np.float32)
        pq = np.zeros((pack_chunks, dim, LANES), dtype=np.float32)
        for g in range(task * _GROUPS_PER_TASK, min(n_groups, (task + 1) * _GROUPS_PER_TASK)):
            p0, p1 = group_starts[g], group_starts[g + 1]
            d = pair_d[p0]
            start, stop = doc_offsets[d], doc_offsets[d + 1]
            if stop - start > buf.shape[0]:  # longer than the buffer: block by block, per pair, as _pairs_kernel
                for p in range(p0, p1):
                    qi = pair_q[p]
                    _doc_lane_max(qp, q_chunks[qi], q_chunks[qi + 1], tokens, start, stop, buf, mx)
                    s = np.float32(0.0)
                    for j in range(q_ntok[qi]):
                        s += mx[j]
                    out[qi, pair_c[p]] = s
                continue
            rows, r0 = _f32_rows(tokens, start, stop - start, buf)
            p = p0
            while p < p1:
                # pack the next queries of this document's pairs into pq, as many as fit
                lanes = 0
                pe = p
                while pe < p1 and (pe == p or lanes + q_ntok[pair_q[pe]] <= cap):
                    qi = pair_q[pe]
                    for t in range(q_ntok[qi]):
                        lane = lanes + t
                        ch, ln = lane // LANES, lane % LANES
                        row = q_offsets[qi] + t
                        for k in range(dim):
                            pq[ch, k, ln] = q_vectors[row, k]
                    lanes += q_ntok[qi]
                    pe += 1
                # the last chunk's unused lanes hold earlier packs' (finite) values: lanes are scored
                # independently and those are never summed
                n_ch = (lanes + LANES - 1) // LANES
                for j in range(n_ch * LANES):
                    mx[j] = -np.inf
                for c in range(n_ch):
                    _tile_max(pq, c, rows, r0, r0 + (stop - start), mx, c * LANES)
                lanes = 0
                for q in range(p, pe):
                    qi = pair_q[q]
                    s = np.float32(0.0)
                    for j in range(q_ntok[qi]):
                        s += mx[lanes + j]
                    out[qi, pair_c[q]] = s
                    lanes += q_ntok[qi]
                p = pe


@njit(parallel=True, cache=True)
def _exhaustive_kernel(qp, lane_offsets, tokens, doc_offsets, d0, d1, allowed, use_mask, out):
    """out[i, d - d0] = MaxSim(query i, doc d) for d0 <= d < d1; queries packed lane after lane."""
    n_q = lane_offsets.shape[0] - 1
    n_chunks, dim, _ = qp.shape
    n_docs = d1 - d0
    n_tasks = (n_docs + _DOCS_PER_TASK - 1) // _DOCS_PER_TASK
    for task in prange(n_tasks):
        buf = np.empty((_ROW_BLOCK, dim), dtype=np.float32)
        mx = np.empty(max(n_chunks, 1) * LANES, dtype=np.float32)
        for d in range(d0 + task * _DOCS_PER_TASK, min(d1, d0 + (task + 1) * _DOCS_PER_TASK)):
            if use_mask and allowed[d] == 0:
                for i in range(n_q):
                    out[i, d - d0] = -np.inf
                continue
            _doc_lane_max(qp, 0, n_chunks, tokens, doc_offsets[d], doc_offsets[d + 1], buf, mx)
            for i in range(n_q):
                s = np.float32(0.0)
                for j in range(lane_offsets[i], lane_offsets[i + 1]):
                    s += mx[j]
                out[i, d - d0] = s


# --------------------------------------------------------------------------------------
# validation and packing (plain numpy)
# --------------------------------------------------------------------------------------
def _check_store(tokens, doc_offsets, full: bool):
    """Validate the token store; return kernel views (float16 is reinterpreted as uint16)."""
    if isinstance(tokens, (Int8Rows, ResidualRows)):
        store = _check_codes(tokens)
    else:
        check_array("tokens", tokens, (np.float16, np.float32), 2)
        store = tokens.view(np.uint16) if tokens.dtype == np.float16 else tokens
        store = readonly(store)
    n_tokens, dim = store_shape(tokens)
    check_array("doc_offsets", doc_offsets, (np.int64,), 1)
    if dim < 1:
        raise ValueError(f"tokens must have dim >= 1, got dim {dim}")
    if doc_offsets.size < 1 or doc_offsets[0] != 0 or doc_offsets[-1] != n_tokens:
        raise ValueError(
            f"doc_offsets must start at 0 and end at n_tokens={n_tokens}, got "
            f"{doc_offsets[:1].tolist()}...{doc_offsets[-1:].tolist()}"
        )
    if full and doc_offsets.size > 1 and bool(np.any(doc_offsets[1:] < doc_offsets[:-1])):
        raise ValueError("doc_offsets must be non-decreasing")
    return store, readonly(doc_offsets)


def _check_codes(store):
    """Validate a compressed store's arrays (shapes and dtypes only: codes are not scanned)."""
    check_array("tokens.rows", store.rows, (np.uint8,), 2)
    if isinstance(store, Int8Rows):
        if store.rows.shape[1] < 3:
            raise ValueError(f"tokens.rows of an Int8Rows store must have dim + 2 >= 3 columns, got {store.rows.shape}")
        return Int8Rows(readonly(store.rows))
    check_array("tokens.centroids", store.centroids, (np.float32,), 2)
    check_array("tokens.table", store.table, (np.float32,), 2)
    n_buckets, dim = store.table.shape
    if n_buckets not in (2, 4, 16) or dim != store.centroids.shape[1]:
        raise ValueError(
            f"tokens.table must have shape (2**nbits, dim) with nbits in (1, 2, 4) and dim {store.centroids.shape[1]}, "
            f"got {store.table.shape}"
        )
    nbits = n_buckets.bit_length() - 1
    if (dim * nbits) % 8:
        raise ValueError(f"tokens.table: {dim} dimensions of {nbits} bits do not fill whole bytes")
    n_bytes = dim * nbits // 8
    id_bytes = store.rows.shape[1] - n_bytes
    if id_bytes not in (1, 2, 4) or store.centroids.shape[0] > 1 << (8 * id_bytes):
        raise ValueError(
            f"tokens.rows has {store.rows.shape[1]} columns: {id_bytes} bytes of centroid id before the "
            f"{n_bytes} code bytes do not fit {store.centroids.shape[0]} centroids"
        )
    check_array("tokens.lanes", store.lanes, (np.float32,), 2)
    if not np.array_equal(store.lanes, residual_lanes(store.table)):
        raise ValueError("tokens.lanes is not residual_lanes(tokens.table) (build stores with retriever_kernels.codes.residual_rows)")
    return ResidualRows(readonly(store.rows), readonly(store.centroids), readonly(store.table), readonly(store.lanes))


def _check_doc_ids(name: str, ids: np.ndarray, doc_offsets: np.ndarray, n_tokens: int) -> None:
    """Ids must be -1 or valid rows, and the rows they name must have in-bounds offsets."""
    n_docs = doc_offsets.size - 1
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < -1 or hi >= n_docs:
        bad = lo if lo < -1 else hi
        raise ValueError(f"{name} must hold document rows in [0, {n_docs}) or -1 for padding, got {bad}")
    real = ids[ids >= 0]
    if real.size:
        start, stop = doc_offsets[real], doc_offsets[real + 1]
        if bool(np.any(stop < start)):
            raise ValueError("doc_offsets must be non-decreasing")
        if bool(np.any(start < 0)) or bool(np.any(stop > n_tokens)):
            raise ValueError(f"doc_offsets must lie in [0, n_tokens={n_tokens}]")


def _check_queries(q_vectors, q_offsets, dim: int) -> None:
    check_array("q_vectors", q_vectors, (np.float32,), 2)
    check_array("q_offsets", q_offsets, (np.int64,), 1)
    if q_vectors.shape[1] != dim:
        raise ValueError(f"q_vectors dim {q_vectors.shape[1]} does not match tokens dim {dim}")
    if q_offsets.size < 1 or q_offsets[0] != 0 or q_offsets[-1] != q_vectors.shape[0]:
        raise ValueError(
            f"q_offsets must start at 0 and end at total_q_tokens={q_vectors.shape[0]}, got "
            f"{q_offsets[:1].tolist()}...{q_offsets[-1:].tolist()}"
        )
    if bool(np.any(q_offsets[1:] < q_offsets[:-1])):
        raise ValueError("q_offsets must be non-decreasing")


def _pack_lanes(q_vectors: np.ndarray, lanes: np.ndarray, n_chunks: int) -> np.ndarray:
    """Scatter query token ``t`` into lane ``lanes[t]`` of a zeroed (n_chunks, dim, 32) array."""
    qp = np.zeros((n_chunks, q_vectors.shape[1], LANES), dtype=np.float32)
    qp[lanes // LANES, :, lanes % LANES] = q_vectors
    return qp


def _pack_per_query(q_vectors: np.ndarray, q_offsets: np.ndarray):
    """Each query starts on a fresh chunk: returns (qp, q_chunks (n_q+1,), q_ntok (n_q,), max_chunks)."""
    q_ntok = np.diff(q_offsets)
    n_chunks = (q_ntok + LANES - 1) // LANES
    q_chunks = np.zeros(q_ntok.size + 1, dtype=np.int64)
    np.cumsum(n_chunks, out=q_chunks[1:])
    query_of = np.repeat(np.arange(q_ntok.size), q_ntok)
    lanes = q_chunks[query_of] * LANES + (np.arange(q_vectors.shape[0]) - q_offsets[query_of])
    qp = _pack_lanes(q_vectors, lanes, int(q_chunks[-1]))
    return qp, q_chunks, q_ntok.astype(np.int64), int(n_chunks.max(initial=0))


def _pack_all(q_vectors: np.ndarray) -> np.ndarray:
    """All query tokens lane after lane (queries share chunks): for the exhaustive kernel."""
    n = q_vectors.shape[0]
    return _pack_lanes(q_vectors, np.arange(n), (n + LANES - 1) // LANES)


def _check_allowed(allowed, n_docs: int) -> tuple[np.ndarray, bool]:
    if allowed is None:
        return readonly(np.ones(1, dtype=np.uint8)), False
    check_array("allowed", allowed, (np.uint8, np.bool_), 1)
    if allowed.shape[0] != n_docs:
        raise ValueError(f"allowed must have shape ({n_docs},) (one entry per document), got {allowed.shape}")
    return readonly(allowed.view(np.uint8)), True


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
def maxsim_scores(query: np.ndarray, tokens: np.ndarray, doc_offsets: np.ndarray, doc_idx: np.ndarray) -> np.ndarray:
    """MaxSim of one query against a list of candidate documents.

    Parameters
    ----------
    query : ndarray, shape (n_q_tokens, dim), float32, C-contiguous
    tokens : ndarray, shape (n_tokens, dim), float16 or float32, C-contiguous; or a compressed
        store (``retriever_kernels.codes.Int8Rows`` / ``ResidualRows``), decoded inside the kernel
        The token store; a read-only ``np.memmap`` is fine (it is never copied).
    doc_offsets : ndarray, shape (n_docs + 1,), int64
        CSR offsets of the documents in ``tokens``.
    doc_idx : ndarray, shape (n_cand,), int64
        Document rows to score; ``-1`` is padding. Duplicates are allowed.

    Returns
    -------
    ndarray, shape (n_cand,), float32
        ``sum_i max_t query[i] . doc[t]``; ``-inf`` at padding.

    Examples
    --------
    >>> q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    >>> tok = np.array([[2, 0], [0, 3], [1, 1]], dtype=np.float16)
    >>> off = np.array([0, 2, 3], dtype=np.int64)
    >>> maxsim_scores(q, tok, off, np.array([0, 1, -1], dtype=np.int64)).tolist()
    [5.0, 2.0, -inf]
    """
    store, offsets = _check_store(tokens, doc_offsets, full=False)
    check_array("query", query, (np.float32,), 2)
    n_tokens, dim = store_shape(tokens)
    if query.shape[1] != dim:
        raise ValueError(f"query dim {query.shape[1]} does not match tokens dim {dim}")
    check_array("doc_idx", doc_idx, (np.int64,), 1)
    _check_doc_ids("doc_idx", doc_idx, doc_offsets, n_tokens)
    q_offsets = np.array([0, query.shape[0]], dtype=np.int64)
    return _score_pairs(query, q_offsets, store, offsets, doc_idx.reshape(1, -1))[0]


def maxsim_scores_batch(
    q_vectors: np.ndarray, q_offsets: np.ndarray, tokens: np.ndarray, doc_offsets: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """MaxSim of many queries, each against its own candidate list.

    Parameters
    ----------
    q_vectors : ndarray, shape (total_q_tokens, dim), float32, C-contiguous
    q_offsets : ndarray, shape (n_q + 1,), int64
        CSR offsets of the queries in ``q_vectors``.
    tokens : ndarray, shape (n_tokens, dim), float16 or float32, C-contiguous; or a compressed
        store (``retriever_kernels.codes.Int8Rows`` / ``ResidualRows``), decoded inside the kernel
    doc_offsets : ndarray, shape (n_docs + 1,), int64
    candidates : ndarray, shape (n_q, n_cand), int64, C-contiguous
        Document rows per query; ``-1`` is padding.

    Returns
    -------
    ndarray, shape (n_q, n_cand), float32
        ``out[i, j] = MaxSim(query i, doc candidates[i, j])``; ``-inf`` at padding.
    """
    store, offsets = _check_store(tokens, doc_offsets, full=False)
    _check_queries(q_vectors, q_offsets, store_shape(tokens)[1])
    check_array("candidates", candidates, (np.int64,), 2)
    if candidates.shape[0] != q_offsets.size - 1:
        raise ValueError(f"candidates has {candidates.shape[0]} rows but q_offsets describes {q_offsets.size - 1} queries")
    _check_doc_ids("candidates", candidates, doc_offsets, store_shape(tokens)[0])
    return _score_pairs(q_vectors, q_offsets, store, offsets, candidates)


def _score_pairs(q_vectors, q_offsets, store, offsets, candidates) -> np.ndarray:
    out = np.empty(candidates.shape, dtype=np.float32)
    if out.size == 0:
        return out
    qp, q_chunks, q_ntok, max_chunks = _pack_per_query(q_vectors, q_offsets)
    if candidates.shape[0] == 1:  # one query: no document is shared
        _pairs_kernel(qp, q_chunks, q_ntok, store, offsets, readonly(candidates), max_chunks, out)
        return out
    # a batch: group the (query, candidate) pairs by document, so a document shared by several queries'
    # candidate lists is decoded once (the conversion costs about as much as one 32-lane chunk of scoring)
    flat = candidates.reshape(-1)
    valid = np.flatnonzero(flat >= 0)
    order = valid[np.argsort(flat[valid], kind="stable")]
    pair_d = flat[order]
    pair_q, pair_c = np.divmod(order, candidates.shape[1])
    starts = np.flatnonzero(np.diff(pair_d)) + 1
    group_starts = np.concatenate([[0], starts, [pair_d.size]]).astype(np.int64)
    out.reshape(-1)[flat < 0] = -np.inf
    if pair_d.size:
        longest = int((offsets[pair_d[group_starts[1:] - 1] + 1] - offsets[pair_d[group_starts[1:] - 1]]).max())
        _grouped_pairs_kernel(qp, q_chunks, q_ntok, readonly(q_vectors), readonly(q_offsets), store,
                              offsets, pair_q.astype(np.int64), pair_c.astype(np.int64), pair_d, group_starts,
                              max_chunks, max(max_chunks, _PACK_CHUNKS), min(longest, _GROUP_MAX_ROWS), out)
    return out


def maxsim_exhaustive(
    q_vectors: np.ndarray, q_offsets: np.ndarray, tokens: np.ndarray, doc_offsets: np.ndarray, allowed=None
) -> np.ndarray:
    """MaxSim of every query against every document.

    Parameters
    ----------
    q_vectors : ndarray, shape (total_q_tokens, dim), float32, C-contiguous
    q_offsets : ndarray, shape (n_q + 1,), int64
    tokens : ndarray, shape (n_tokens, dim), float16 or float32, C-contiguous; or a compressed
        store (``retriever_kernels.codes.Int8Rows`` / ``ResidualRows``), decoded inside the kernel
    doc_offsets : ndarray, shape (n_docs + 1,), int64, non-decreasing
    allowed : ndarray, shape (n_docs,), bool or uint8, optional
        Documents whose entry is false/0 are not scored and get ``-inf``.

    Returns
    -------
    ndarray, shape (n_q, n_docs), float32
    """
    store, offsets = _check_store(tokens, doc_offsets, full=True)
    _check_queries(q_vectors, q_offsets, store_shape(tokens)[1])
    n_docs = doc_offsets.size - 1
    mask, use_mask = _check_allowed(allowed, n_docs)
    out = np.empty((q_offsets.size - 1, n_docs), dtype=np.float32)
    if out.size:
        _exhaustive_kernel(_pack_all(q_vectors), readonly(q_offsets), store, offsets, 0, n_docs, mask, use_mask, out)
    return out


def maxsim_exhaustive_topk(
    q_vectors: np.ndarray, q_offsets: np.ndarray, tokens: np.ndarray, doc_offsets: np.ndarray, k: int, allowed=None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k documents by MaxSim for every query, scanning all documents.

    Scores are computed block by block (about 8 MiB of scores at a time) and merged into
    per-query heaps, so the full (n_q, n_docs) matrix is never held.

    Parameters
    ----------
    q_vectors : ndarray, shape (total_q_tokens, dim), float32, C-contiguous
    q_offsets : ndarray, shape (n_q + 1,), int64
    tokens : ndarray, shape (n_tokens, dim), float16 or float32, C-contiguous; or a compressed
        store (``retriever_kernels.codes.Int8Rows`` / ``ResidualRows``), decoded inside the kernel
    doc_offsets : ndarray, shape (n_docs + 1,), int64, non-decreasing
    k : int
        Results per query, ``>= 1``; may exceed the number of documents.
    allowed : ndarray, shape (n_docs,), bool or uint8, optional
        Only documents whose entry is true/non-zero can be returned.

    Returns
    -------
    idx : ndarray, shape (n_q, k), int64
        Document rows, best first; ties broken by the lower row; ``-1`` pads.
    scores : ndarray, shape (n_q, k), float32
        Descending; ``-inf`` pads.
    """
    store, offsets = _check_store(tokens, doc_offsets, full=True)
    _check_queries(q_vectors, q_offsets, store_shape(tokens)[1])
    k = check_k(k)
    n_docs = doc_offsets.size - 1
    mask, use_mask = _check_allowed(allowed, n_docs)
    n_q = q_offsets.size - 1
    heap_s = np.empty((n_q, k), dtype=np.float32)
    heap_i = np.empty((n_q, k), dtype=np.int64)
    sizes = np.zeros(n_q, dtype=np.int64)
    if n_q and n_docs:
        qp = _pack_all(q_vectors)
        lane_offsets = readonly(q_offsets)
        step = max(256, _TOPK_BLOCK_BYTES // (4 * n_q))
        block = np.empty(n_q * min(step, n_docs), dtype=np.float32)
        for d0 in range(0, n_docs, step):
            d1 = min(n_docs, d0 + step)
            part = block[: n_q * (d1 - d0)].reshape(n_q, d1 - d0)
            _exhaustive_kernel(qp, lane_offsets, store, offsets, d0, d1, mask, use_mask, part)
            push_block_kernel(part, d0, heap_s, heap_i, sizes)
    if n_q:
        finish_heaps_kernel(heap_s, heap_i, sizes)
    return heap_i, heap_s


def warmup(stores: tuple[str, ...] = ("float16", "float32")) -> None:
    """Compile (or load from numba's cache) the kernel specialisations for the given store types.

    ``stores`` names any of ``"float16"``, ``"float32"``, ``"int8"``, ``"residual"``. Runs each
    public function on a tiny store of each type, so that the first real query does not pay the
    JIT cost.
    """
    from .codes import int8_encode, residual_pack, residual_rows
    from .topk import topk, topk_candidates

    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    q_offsets = np.array([0, 1, 3], dtype=np.int64)
    doc_offsets = np.array([0, 2, 5], dtype=np.int64)
    cand = np.array([[0, -1], [1, 0]], dtype=np.int64)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    for kind in stores:
        if kind in ("float16", "float32"):
            tokens = x.astype(kind)
        elif kind == "int8":
            tokens = Int8Rows(int8_encode(x))
        elif kind == "residual":
            cent = x[:2].copy()
            cut = np.zeros((8, 3), dtype=np.float32)
            rows = residual_pack(x, np.zeros(5, dtype=np.int64), cent, cut, 2, 2)
            tokens = residual_rows(rows, cent, np.zeros((8, 4), dtype=np.float32))
        else:
            raise ValueError(f"unknown store type {kind!r}; expected float16, float32, int8 or residual")
        maxsim_scores(q, tokens, doc_offsets, cand[1])
        maxsim_scores_batch(q, q_offsets, tokens, doc_offsets, cand)
        maxsim_exhaustive(q, q_offsets, tokens, doc_offsets)
        maxsim_exhaustive_topk(q, q_offsets, tokens, doc_offsets, 1, allowed=np.ones(2, dtype=bool))
    scores = rng.standard_normal((2, 2)).astype(np.float32)
    topk(scores, 1)
    topk_candidates(cand, scores, 1)

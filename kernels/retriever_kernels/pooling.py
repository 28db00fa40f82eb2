"""Per-document token pooling (hierarchical Ward clustering of the token vectors) in numba.

Token pooling (Clavié, Chaffin & Adams 2024, "Reducing the Footprint of Multi-Vector
Retrieval with Minimal Performance Impact via Token Pooling", arXiv 2409.14683) shrinks a
document's multi-vector representation by clustering its token vectors and keeping one
vector per cluster. We implement the paper's best variant, hierarchical pooling: a
document with ``n`` tokens and pool factor ``f`` keeps ``t = max(1, n // f)`` vectors (the
count its reference code uses); the tokens are clustered by agglomerative clustering with
Ward linkage on the Euclidean distance between the token vectors (for unit vectors the
squared Euclidean distance is ``2 * (1 - cos)``, so this is Ward on the cosine distance),
the dendrogram is cut into exactly ``t`` clusters, and each cluster becomes the mean of its
members, L2-renormalised. Without tied merge heights this is the partition of
``scipy.cluster.hierarchy.fcluster(linkage(X, "ward"), t, criterion="maxclust")``.

(Widely copied public code, e.g. colpali-engine's ``HierarchicalTokenPooler``, calls
``linkage(1 - X @ X.T, metric="euclidean", method="ward")``: scipy takes a 2-D argument as
*observations*, so that clusters the rows of the cosine-distance matrix, which gives a
different partition. We follow the stated method, Ward on the token vectors.)

How the kernel is built, and why
--------------------------------
Parallel over documents (``prange`` over tasks of up to ``_DOCS_PER_TASK`` consecutive
documents). A task allocates one set of float64 scratch buffers sized to its longest
document (the ``n x n`` distance matrix is 2 MiB at ``n = 512``; allocating it per document
measured ~15% slower) and writes pooled vectors straight into the output, whose offsets
are known before any clustering (the number of clusters depends only on ``n`` and ``f``).
Per document, ``O(n^2 dim)`` time for the distances and ``O(n^2)`` for the clustering;
nothing is ``O(n^3)``. At ``n = 240``, ``dim = 128`` the distances take about two thirds of
the time:

1. *Distances.* The squared Euclidean distances ``|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>`` are
   computed from float64 dot products (float32 inputs widen exactly, so the only error is
   float64 rounding, negligible next to the float32 data), clamped at 0. The Gram rows are
   accumulated as ``row[j] += x_i[d] * xT[d, j]`` with ``j`` innermost over a transposed
   float64 copy of the document, eight ``d`` per sweep: independent accumulators in the
   vector lanes, so LLVM vectorises it without ``fastmath`` and without reassociating any
   sum (about 3x faster than the scalar loop that a plain dot product compiles to).
2. *Dendrogram.* The nearest-neighbour-chain algorithm (the one scipy uses for Ward) with
   Lance–Williams updates on squared distances,
   ``d2(i+j, k) = ((n_i + n_k) d2(i, k) + (n_j + n_k) d2(j, k) - n_k d2(i, j)) / (n_i + n_j + n_k)``.
   Ward is *reducible* (merging two clusters never brings the union closer to a third than
   the nearer of the two was), so the chain's reciprocal nearest neighbours are exactly the
   merges of the greedy algorithm, only found in a different order. Squaring is monotone,
   so the merges equal scipy's, which updates the unsquared distances. The diagonal and
   the columns of retired clusters hold ``+inf``, so the nearest-neighbour scan is a bare
   minimum over a row.
3. *Cut.* The ``n - 1`` merges are sorted by height (stable) and the first ``n - t`` are
   applied with a union-find over the token indices. A merge of slots ``a < b`` keeps the
   union in slot ``b``, so slot ``s`` always contains token ``s`` and a merge can be
   replayed as ``union(a, b)`` on token indices; the ``n - 1`` merges form a spanning tree,
   so any ``n - t`` of them leave exactly ``t`` clusters.
4. *Output.* Clusters are ordered by the smallest token index they contain; each output
   vector is the float64 mean of its members divided by its L2 norm (a zero mean is kept
   as is), rounded to float32. :func:`pool_tokens_with_rows` also reports each token's
   output row.

Determinism: ties in the chain's nearest-neighbour search go to the previous chain element
(needed for termination), then to the lower slot index; the chain restarts from the lowest
live slot; ties in merge height keep the order in which the chain found the merges
(``argsort(kind="mergesort")``). These are scipy's rules, but exact ties need not survive
its different rounding, and ``fcluster`` cuts at a height, so with tied heights it can
return fewer than ``t`` clusters where this returns exactly ``t``. Results do not depend on
the thread count or on how documents are batched. Compiled without ``fastmath``. NaN or
infinite inputs give unspecified (but finite-time) results.
"""

from __future__ import annotations

import operator

import numpy as np
from numba import get_num_threads, njit, prange

from .topk import check_array, readonly

__all__ = ["pool_tokens", "pool_tokens_with_rows", "pooled_lengths"]

_DOCS_PER_TASK = 8  # documents per parallel task at most: they share one set of scratch buffers


# --------------------------------------------------------------------------------------
# per-document kernels
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _sq_distances(vectors, t0, n, xt, sq, dist):
    """``dist[i, j] = |x_i - x_j|^2`` (float64, from dot products) for the ``n`` tokens
    ``vectors[t0 : t0 + n]``; the diagonal is ``+inf`` (no point is its own neighbour).

    ``xt`` (dim, n) and ``sq`` (n,) float64 are scratch. Row ``i`` of the Gram matrix is
    accumulated right of the diagonal as ``r[j] += x_i[d] * xt[d, j]``, eight coordinates
    ``d`` per sweep, each term added in order of ``d``: the ``j`` loop has independent
    accumulators, so LLVM vectorises it without reassociating any sum. (The operands are
    1-D views that start at column ``i + 1`` and are indexed from 0: the same loop over 2-D
    indices, or over whole rows from ``j = i + 1``, compiled to scalar code.)
    """
    dim = vectors.shape[1]
    for i in range(n):
        for d in range(dim):
            xt[d, i] = vectors[t0 + i, d]
    sq[:n] = 0.0
    for d in range(dim):
        for j in range(n):
            sq[j] += xt[d, j] * xt[d, j]
    for i in range(n):
        m = n - i - 1
        r = dist[i, i + 1 :]
        r[:] = 0.0
        d = 0
        while d + 8 <= dim:
            a0, a1, a2, a3 = xt[d, i], xt[d + 1, i], xt[d + 2, i], xt[d + 3, i]
            a4, a5, a6, a7 = xt[d + 4, i], xt[d + 5, i], xt[d + 6, i], xt[d + 7, i]
            c0, c1, c2, c3 = xt[d, i + 1 :], xt[d + 1, i + 1 :], xt[d + 2, i + 1 :], xt[d + 3, i + 1 :]
            c4, c5, c6, c7 = xt[d + 4, i + 1 :], xt[d + 5, i + 1 :], xt[d + 6, i + 1 :], xt[d + 7, i + 1 :]
            for jj in range(m):
                r[jj] = (
                    r[jj] + a0 * c0[jj] + a1 * c1[jj] + a2 * c2[jj] + a3 * c3[jj]
                    + a4 * c4[jj] + a5 * c5[jj] + a6 * c6[jj] + a7 * c7[jj]
                )
            d += 8
        while d < dim:
            a0 = xt[d, i]
            c0 = xt[d, i + 1 :]
            for jj in range(m):
                r[jj] += a0 * c0[jj]
            d += 1
        dist[i, i] = np.inf
        for j in range(i + 1, n):
            v = sq[i] + sq[j] - 2.0 * dist[i, j]
            if v < 0.0:
                v = 0.0
            dist[i, j] = v
            dist[j, i] = v


@njit(cache=True)
def _ward_nn_chain(dist, n, size, active, chain, merge_a, merge_b, merge_h):
    """Ward dendrogram of ``n`` points by the nearest-neighbour chain.

    ``dist`` (n, n) float64 holds the squared distances with ``+inf`` on the diagonal and
    is overwritten; ``size`` (float64), ``active`` (bool) and ``chain`` (int64), all
    ``(n,)``, are scratch. Merge ``m`` (in the order found, not sorted) joins slots
    ``merge_a[m] < merge_b[m]`` at squared height ``merge_h[m]``; the union lives on in
    slot ``merge_b[m]``. A retired slot's column is set to ``+inf``, so the
    nearest-neighbour scan needs no activity test.
    """
    size[:n] = 1.0
    active[:n] = True
    clen = 0
    for m in range(n - 1):
        while True:
            if clen == 0:
                for s in range(n):
                    if active[s]:
                        chain[0] = s
                        clen = 1
                        break
            c = chain[clen - 1]
            row = dist[c]
            # Nearest neighbour of c: the previous chain element wins ties (this is what
            # makes the chain terminate), then the lower index (strict < in an ascending
            # scan).
            if clen >= 2:
                best = chain[clen - 2]
                best_d = row[best]
            else:
                best = -1
                best_d = np.inf
            for k in range(n):
                if row[k] < best_d:
                    best = k
                    best_d = row[k]
            if best < 0:
                # Only NaN / inf distances left (non-finite input): take any other slot.
                for k in range(n):
                    if active[k] and k != c:
                        best = k
                        break
            if clen >= 2 and best == chain[clen - 2]:
                clen -= 2
                break
            chain[clen] = best
            clen += 1
        a = min(c, best)
        b = max(c, best)
        d_ab = dist[a, b]
        merge_a[m] = a
        merge_b[m] = b
        merge_h[m] = d_ab
        na = size[a]
        nb = size[b]
        active[a] = False
        for k in range(n):
            dist[k, a] = np.inf
            if k == b or not active[k]:
                continue
            nk = size[k]
            v = ((na + nk) * dist[a, k] + (nb + nk) * dist[b, k] - nk * d_ab) / (na + nb + nk)
            dist[b, k] = v
            dist[k, b] = v
        size[b] = na + nb


@njit(cache=True, inline="always")
def _find(parent, x):
    """Root of ``x`` in a union-find forest, with path halving."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True)
def _pool_document(vectors, t0, n, n_out, out, o0, rows, dist_buf, xt_buf, f_buf, i_buf, active):
    """Pool tokens ``vectors[t0 : t0 + n]`` into ``1 <= n_out < n`` vectors, written to
    ``out[o0 : o0 + n_out]`` in order of each cluster's smallest token index; when
    ``rows`` is not empty, ``rows[t0 + j]`` receives the output row of token ``j``.

    Scratch, with room for at least ``n`` tokens: ``dist_buf`` (n * n,), ``xt_buf``
    (n * dim,) and ``f_buf`` (3 * n,) float64, ``i_buf`` (5 * n,) int64, ``active`` (n,)
    bool.
    """
    dim = vectors.shape[1]
    dist = dist_buf[: n * n].reshape((n, n))
    xt = xt_buf[: dim * n].reshape((dim, n))
    sq = f_buf[:n]
    size = f_buf[n : 2 * n]
    merge_h = f_buf[2 * n : 3 * n - 1]
    chain = i_buf[:n]
    merge_a = i_buf[n : 2 * n - 1]
    merge_b = i_buf[2 * n : 3 * n - 1]
    parent = i_buf[3 * n : 4 * n]
    cluster = i_buf[4 * n : 5 * n]  # cluster id of each union-find root, -1 if none yet
    _sq_distances(vectors, t0, n, xt, sq, dist)
    _ward_nn_chain(dist, n, size, active, chain, merge_a, merge_b, merge_h)
    order = np.argsort(merge_h, kind="mergesort")
    for j in range(n):
        parent[j] = j
    for r in range(n - n_out):
        m = order[r]
        ra = _find(parent, merge_a[m])
        rb = _find(parent, merge_b[m])
        if ra < rb:
            parent[rb] = ra
        else:
            parent[ra] = rb
    # Number the clusters by first appearance and sum their members in float64 (in the
    # transposed copy's buffer, which is free now).
    sums = xt_buf[: n_out * dim].reshape((n_out, dim))
    sums[:, :] = 0.0
    cluster[:n] = -1
    n_seen = 0
    for j in range(n):
        r = _find(parent, j)
        cid = cluster[r]
        if cid < 0:
            cid = n_seen
            cluster[r] = cid
            n_seen += 1
        if rows.shape[0] > 0:
            rows[t0 + j] = o0 + cid
        for d in range(dim):
            sums[cid, d] += vectors[t0 + j, d]
    # The mean's direction is the sum's; the count only matters for a zero mean, which is
    # kept as is (all zeros either way).
    for c in range(n_out):
        norm2 = 0.0
        for d in range(dim):
            norm2 += sums[c, d] * sums[c, d]
        scale = 1.0 / np.sqrt(norm2) if norm2 > 0.0 else 1.0
        for d in range(dim):
            out[o0 + c, d] = np.float32(sums[c, d] * scale)


@njit(parallel=True, cache=True)
def _pool_kernel(vectors, offsets, new_offsets, docs_per_task, out, rows):
    """Fill ``out`` (new_offsets[-1], dim) float32 with every document's pooled vectors,
    and ``rows`` (n_tokens,) int64, unless empty, with every token's output row.

    Parallel over tasks of ``docs_per_task`` consecutive documents; a task allocates one
    set of scratch buffers, sized to its longest document that needs clustering.
    """
    dim = vectors.shape[1]
    n_docs = offsets.shape[0] - 1
    n_tasks = (n_docs + docs_per_task - 1) // docs_per_task
    for task in prange(n_tasks):
        lo = task * docs_per_task
        hi = min(n_docs, lo + docs_per_task)
        n_max = 0
        for i in range(lo, hi):
            n = offsets[i + 1] - offsets[i]
            if new_offsets[i + 1] - new_offsets[i] < n:
                n_max = max(n_max, n)
        dist_buf = np.empty(n_max * n_max, dtype=np.float64)
        xt_buf = np.empty(n_max * dim, dtype=np.float64)
        f_buf = np.empty(3 * n_max, dtype=np.float64)
        i_buf = np.empty(5 * n_max, dtype=np.int64)
        active = np.empty(n_max, dtype=np.bool_)
        for i in range(lo, hi):
            t0 = offsets[i]
            n = offsets[i + 1] - t0
            o0 = new_offsets[i]
            n_out = new_offsets[i + 1] - o0
            if n_out >= n:
                for j in range(n):
                    if rows.shape[0] > 0:
                        rows[t0 + j] = o0 + j
                    for d in range(dim):
                        out[o0 + j, d] = vectors[t0 + j, d]
            else:
                _pool_document(vectors, t0, n, n_out, out, o0, rows, dist_buf, xt_buf, f_buf, i_buf, active)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
def _check_pool_factor(pool_factor) -> int:
    if isinstance(pool_factor, (bool, np.bool_)) or not isinstance(pool_factor, (int, np.integer)):
        raise TypeError(f"pool_factor must be an int, got {type(pool_factor).__name__} {pool_factor!r}")
    pool_factor = operator.index(pool_factor)
    if pool_factor < 1:
        raise ValueError(f"pool_factor must be >= 1, got {pool_factor}")
    return pool_factor


def pooled_lengths(lengths: np.ndarray, pool_factor: int) -> np.ndarray:
    """Number of pooled vectors of documents with ``lengths`` tokens.

    Parameters
    ----------
    lengths : ndarray, shape (n_docs,), int64
        Tokens per document, each ``>= 1``.
    pool_factor : int
        ``>= 1``.

    Returns
    -------
    ndarray, shape (n_docs,), int64
        ``lengths`` when ``pool_factor == 1``, else ``min(n, max(1, n // pool_factor))``.
    """
    pool_factor = _check_pool_factor(pool_factor)
    lengths = np.asarray(lengths, dtype=np.int64)
    pool_factor = min(pool_factor, 1 << 62)  # any factor above the length keeps 1 vector
    if pool_factor == 1:
        return lengths.copy()
    return np.minimum(lengths, np.maximum(1, lengths // pool_factor))


def _pool(vectors, offsets, pool_factor, want_rows: bool):
    """Validate, then run the kernel: (pooled, new_offsets, rows or None)."""
    check_array("vectors", vectors, (np.float32,), 2)
    check_array("offsets", offsets, (np.int64,), 1)
    pool_factor = _check_pool_factor(pool_factor)
    n_tokens = vectors.shape[0]
    if offsets.size == 0:
        raise ValueError("offsets must have n_docs + 1 >= 1 entries, got an empty array")
    if offsets[0] != 0:
        raise ValueError(f"offsets[0] must be 0, got {int(offsets[0])}")
    if offsets[-1] != n_tokens:
        raise ValueError(f"offsets[-1] must equal vectors.shape[0] = {n_tokens}, got {int(offsets[-1])}")
    lengths = np.diff(offsets)
    if lengths.size and lengths.min() < 1:
        bad = int(np.argmax(lengths < 1))
        raise ValueError(
            f"offsets must be strictly increasing (every document needs >= 1 token): "
            f"document {bad} has offsets[{bad}] = {int(offsets[bad])}, offsets[{bad + 1}] = {int(offsets[bad + 1])}"
        )
    if pool_factor == 1:
        rows = np.arange(n_tokens, dtype=np.int64) if want_rows else None
        return vectors.copy(), offsets.copy(), rows
    new_offsets = np.zeros_like(offsets)
    np.cumsum(pooled_lengths(lengths, pool_factor), out=new_offsets[1:])
    out = np.empty((int(new_offsets[-1]), vectors.shape[1]), dtype=np.float32)
    rows = np.empty(n_tokens if want_rows else 0, dtype=np.int64)
    n_docs = offsets.size - 1
    # Enough tasks to balance the threads, few enough to amortise the scratch allocation.
    docs_per_task = max(1, min(_DOCS_PER_TASK, n_docs // (8 * get_num_threads())))
    _pool_kernel(readonly(vectors), readonly(offsets), readonly(new_offsets), docs_per_task, out, rows)
    return out, new_offsets, (rows if want_rows else None)


def pool_tokens(vectors: np.ndarray, offsets: np.ndarray, pool_factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical (Ward) token pooling of every document of a CSR token store.

    A document with ``n`` tokens keeps ``t = max(1, n // pool_factor)`` vectors (all ``n``,
    unchanged, when ``t >= n`` or ``pool_factor == 1``): its tokens are clustered by
    agglomerative clustering with Ward linkage on the Euclidean distance between the vectors,
    cut into exactly ``t`` clusters (scipy's ``fcluster(linkage(X, "ward"), t, "maxclust")``
    when no two merge heights tie; with ties, where ``fcluster`` may return fewer clusters,
    this still returns ``t``), and each cluster is replaced by the mean of its members,
    L2-normalised (a zero mean stays zero). Clusters come out in order of the smallest
    token index they contain. Parallel over documents; see the module docstring for the
    algorithm. Float64 scratch of ``n * (n + dim)`` values per thread (2.5 MiB at
    ``n = 512``, ``dim = 128``).

    Parameters
    ----------
    vectors : ndarray, shape (n_tokens, dim), float32, C-contiguous
        Token vectors of all documents, document after document.
    offsets : ndarray, shape (n_docs + 1,), int64, C-contiguous
        CSR offsets: document ``i`` is ``vectors[offsets[i]:offsets[i + 1]]``. Requires
        ``offsets[0] == 0``, ``offsets[-1] == n_tokens`` and at least one token per
        document (``n_docs == 0`` is fine).
    pool_factor : int
        ``>= 1``; 1 returns copies of the inputs.

    Returns
    -------
    pooled : ndarray, shape (m, dim), float32
        The pooled vectors, document after document.
    new_offsets : ndarray, shape (n_docs + 1,), int64
        CSR offsets of the documents into the rows of ``pooled`` (``m = new_offsets[-1]``);
        document ``i`` has :func:`pooled_lengths` ``(n_i, pool_factor)`` rows.

    Raises
    ------
    TypeError
        An argument of the wrong type or dtype (``pool_factor`` a bool or not an integer).
    ValueError
        A wrong shape, non-contiguous array, malformed ``offsets`` (first entry not 0,
        last not ``n_tokens``, an empty document) or ``pool_factor < 1``.
    """
    out, new_offsets, _ = _pool(vectors, offsets, pool_factor, want_rows=False)
    return out, new_offsets


def pool_tokens_with_rows(
    vectors: np.ndarray, offsets: np.ndarray, pool_factor: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pool_tokens`, plus where each token went.

    Returns
    -------
    pooled, new_offsets : ndarray
        As :func:`pool_tokens`.
    rows : ndarray, shape (n_tokens,), int64
        ``pooled[rows[k]]`` is the vector that token ``k`` was pooled into (a row of its
        own document's block; two tokens share a row exactly when they share a cluster).
    """
    return _pool(vectors, offsets, pool_factor, want_rows=True)

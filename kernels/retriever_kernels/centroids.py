"""Token-level centroid candidate generation (PLAID-style), in numba.

Every stored token has the id of its nearest token centroid (``codes``). The kernels here turn
those ids into per-centroid document lists and score documents from them without touching a
single token vector:

* :func:`build_lists`: CSR lists ``centroid -> documents`` (each document once per centroid, in
  row order), from the token codes and the documents' token offsets;
* :func:`probe_cells`: per query token, the ``nprobe`` centroids of highest score within its best
  coarse cells, best first;
* :func:`build_token_lists`: the same lists with one entry per token and the token's residual
  code (product quantisation of ``token - centroid``), for the refined score below;
* :func:`centroid_candidates`: the approximate late-interaction score of every document found in
  the probed lists, and the ``n`` best of them.

The approximate score of document ``d`` for query tokens ``i`` is the centroid interaction of
PLAID (Santhanam et al. 2022) with WARP's imputation of missing tokens (Scheerer et al. 2025)::

    sum_i  max(S[i, c] for c in probed_i, c a centroid of a token of d)   if d is in a probed list of i
           S[i, probed_i[-1]]                                             otherwise

``S[i, c]`` being the inner product of query token ``i`` with centroid ``c``: a token's centroid
stands for the token, and a query token whose probed lists miss the document is given the score
of the last list it probed (an upper bound of what the document's tokens can score there under
the centroid approximation). The documents' exact MaxSim then reranks the candidates.

With residual codes (WARP scores the residuals too), a token's term is refined from ``S[i, c]`` to
``S[i, c] + <q_i, pq(token - c)>``, the second part summed from a per-query-token lookup table of
``m`` sub-vector products (``lut[i, u * 256 + code_u]``, IVFADC's asymmetric distance): the max runs
over the document's tokens in the probed lists, not over its centroids, and a missing token is
imputed as before.

Plain numpy twins of each kernel live in ``tests/test_centroids.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["build_lists", "build_token_lists", "probe_cells", "centroid_candidates"]


@njit(cache=True)
def _build_lists(codes, doc_offsets, n_centroids):
    n_docs = doc_offsets.size - 1
    counts = np.zeros(n_centroids + 1, np.int64)
    last = np.full(n_centroids, -1, np.int64)
    for d in range(n_docs):
        for t in range(doc_offsets[d], doc_offsets[d + 1]):
            c = codes[t]
            if last[c] != d:
                last[c] = d
                counts[c + 1] += 1
    for c in range(n_centroids):
        counts[c + 1] += counts[c]
    docs = np.empty(counts[n_centroids], np.int32)
    pos = counts[:-1].copy()
    last[:] = -1
    for d in range(n_docs):
        for t in range(doc_offsets[d], doc_offsets[d + 1]):
            c = codes[t]
            if last[c] != d:
                last[c] = d
                docs[pos[c]] = d
                pos[c] += 1
    return counts, docs


def build_lists(codes: np.ndarray, doc_offsets: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR inverted lists of documents per centroid.

    Parameters
    ----------
    codes : (n_tokens,) integer array, the centroid of each stored token, in ``[0, n_centroids)``
    doc_offsets : int64 (n_docs + 1,) CSR offsets of the documents' tokens
    n_centroids : number of centroids

    Returns
    -------
    list_offsets : int64 (n_centroids + 1,)
    list_docs : int32 (n_postings,), document rows; centroid ``c``'s list is
        ``list_docs[list_offsets[c]:list_offsets[c + 1]]``, ascending, each document once.
    """
    codes, doc_offsets = _checked_codes(codes, doc_offsets, n_centroids)
    return _build_lists(codes, doc_offsets, int(n_centroids))


def _checked_codes(codes, doc_offsets, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous ``codes`` and int64 ``doc_offsets``, checked: one code per token, each in range, and
    document rows that fit int32 list entries."""
    doc_offsets = np.ascontiguousarray(doc_offsets, dtype=np.int64)
    if doc_offsets.size - 1 > np.iinfo(np.int32).max:
        raise ValueError(f"{doc_offsets.size - 1} documents do not fit int32 list entries")
    codes = np.ascontiguousarray(codes)
    if codes.shape != (int(doc_offsets[-1]),):
        raise ValueError(f"codes must have shape ({int(doc_offsets[-1])},), got {codes.shape}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= n_centroids):
        raise ValueError(f"codes must lie in [0, {n_centroids})")
    return codes, doc_offsets


@njit(cache=True)
def _build_token_lists(codes, residuals, doc_offsets, n_centroids):
    n_docs = doc_offsets.size - 1
    m = residuals.shape[1]
    counts = np.zeros(n_centroids + 1, np.int64)
    for t in range(codes.size):
        counts[codes[t] + 1] += 1
    for c in range(n_centroids):
        counts[c + 1] += counts[c]
    docs = np.empty(codes.size, np.int32)
    res = np.empty((codes.size, m), np.uint8)
    pos = counts[:-1].copy()
    for d in range(n_docs):
        for t in range(doc_offsets[d], doc_offsets[d + 1]):
            c = codes[t]
            p = pos[c]
            docs[p] = d
            for u in range(m):
                res[p, u] = residuals[t, u]
            pos[c] = p + 1
    return counts, docs, res


def build_token_lists(codes: np.ndarray, residuals: np.ndarray, doc_offsets: np.ndarray,
                      n_centroids: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR inverted lists with one entry per token: its document and its residual code.

    Parameters
    ----------
    codes : (n_tokens,) integer array, the centroid of each stored token, in ``[0, n_centroids)``
    residuals : uint8 (n_tokens, m), each token's residual code (``m`` sub-quantiser indices)
    doc_offsets : int64 (n_docs + 1,) CSR offsets of the documents' tokens
    n_centroids : number of centroids

    Returns
    -------
    list_offsets : int64 (n_centroids + 1,)
    list_docs : int32 (n_tokens,), the document of each entry, ascending within a list
    list_residuals : uint8 (n_tokens, m), the residual code of each entry
    """
    codes, doc_offsets = _checked_codes(codes, doc_offsets, n_centroids)
    residuals = np.ascontiguousarray(residuals, dtype=np.uint8)
    if residuals.ndim != 2 or residuals.shape[0] != codes.size:
        raise ValueError(f"residuals must have shape ({codes.size}, m), got {residuals.shape}")
    return _build_token_lists(codes, residuals, doc_offsets, int(n_centroids))


@njit(parallel=True, cache=True, fastmath=True)
def _probe_cells(q, coarse, centroids, cells, n_cells, nprobe, out_top, out_scores):
    n, d = q.shape
    k1 = coarse.shape[0]
    for i in prange(n):
        cs = np.empty(k1, np.float32)
        for c in range(k1):
            acc = np.float32(0.0)
            for j in range(d):
                acc += q[i, j] * coarse[c, j]
            cs[c] = acc
        order = np.argsort(-cs, kind="mergesort")  # equal scores: the lower cell first
        best_s = np.full(nprobe, -np.inf, np.float32)
        best_c = np.full(nprobe, -1, np.int64)
        seen = 0
        for r in range(k1):
            if r >= n_cells and seen >= nprobe:
                break
            cell = order[r]
            for f in range(cells[cell], cells[cell + 1]):
                acc = np.float32(0.0)
                for j in range(d):
                    acc += q[i, j] * centroids[f, j]
                seen += 1
                last = nprobe - 1
                if best_c[last] < 0 or acc > best_s[last] or (acc == best_s[last] and f < best_c[last]):
                    # insertion into the sorted top list (descending; equal scores: lower id first)
                    k = last
                    while k > 0 and (best_c[k - 1] < 0 or best_s[k - 1] < acc
                                     or (best_s[k - 1] == acc and best_c[k - 1] > f)):
                        best_s[k] = best_s[k - 1]
                        best_c[k] = best_c[k - 1]
                        k -= 1
                    best_s[k] = acc
                    best_c[k] = f
        out_top[i] = best_c
        out_scores[i] = best_s


def probe_cells(q: np.ndarray, coarse: np.ndarray, centroids: np.ndarray, cells: np.ndarray, n_cells: int,
                nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query token, the ``nprobe`` best fine centroids among those of its ``n_cells`` best coarse
    cells (more cells when those hold fewer than ``nprobe`` centroids), best first (equal scores:
    lower id first).

    ``centroids`` are grouped by coarse cell: cell ``c`` holds rows ``cells[c]:cells[c + 1]``.
    Scoring every fine centroid costs a ``(query tokens, n_centroids)`` product (4.4 ms per query at
    65,536 centroids); the cells cut it ~7x, and a token was assigned within its nearest cell
    (``retriever.centroids``), so the lists worth probing are in the nearest cells.

    Returns (top int64 (n, nprobe), scores float32 (n, nprobe)).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not 1 <= nprobe <= centroids.shape[0]:
        raise ValueError(f"nprobe must be in [1, {centroids.shape[0]}], got {nprobe}")
    top = np.empty((q.shape[0], int(nprobe)), np.int64)
    scores = np.empty((q.shape[0], int(nprobe)), np.float32)
    if q.shape[0]:
        _probe_cells(q, np.ascontiguousarray(coarse, dtype=np.float32),
                     np.ascontiguousarray(centroids, dtype=np.float32), np.ascontiguousarray(cells, dtype=np.int64),
                     int(max(1, n_cells)), int(nprobe), top, scores)
    return top, scores


@njit(cache=True)
def _accumulate(top_scores, top, list_offsets, list_docs, allowed, use_mask, acc, mark, touched):
    """Scatter one query's centroid interaction into ``acc`` (docs in ``touched[:n]``); returns (n, base)."""
    n_q, nprobe = top.shape
    base = 0.0
    n = 0
    for i in range(n_q):
        miss = top_scores[i, nprobe - 1]
        base += miss
        for j in range(nprobe):
            c = top[i, j]
            gain = top_scores[i, j] - miss
            for p in range(list_offsets[c], list_offsets[c + 1]):
                d = list_docs[p]
                if use_mask and allowed[d] == 0:
                    continue
                m = mark[d]
                if m != i:  # the first (best) probed centroid of query token i that holds d
                    if m < 0:
                        touched[n] = d
                        n += 1
                        acc[d] = 0.0
                    mark[d] = i
                    acc[d] += gain
    return n, base


@njit(cache=True)
def _accumulate_refined(top_scores, top, lut, list_offsets, list_docs, list_res, allowed, use_mask, state, touched):
    """As :func:`_accumulate`, with per-token entries scored ``S[i, c] + sum_u lut[i, u * 256 + code_u]``.

    ``state[d]`` = (running sum, query token ``i``'s best entry of ``d`` so far, ``i + 1``; 0 = not seen),
    side by side so that an entry touches one cache line of per-document state (three separate arrays
    were 1.6x slower at 1M documents). Returns (n, base) as :func:`_accumulate`."""
    n_q, nprobe = top.shape
    m = list_res.shape[1]
    base = 0.0
    n = 0
    for i in range(n_q):
        miss = top_scores[i, nprobe - 1]
        base += miss
        li = lut[i]
        tag = np.float32(i + 1)
        for j in range(nprobe):
            c = top[i, j]
            s0 = top_scores[i, j] - miss
            for p in range(list_offsets[c], list_offsets[c + 1]):
                d = list_docs[p]
                if use_mask and allowed[d] == 0:
                    continue
                s = s0
                for u in range(m):
                    s += li[u * 256 + np.int64(list_res[p, u])]
                mk = state[d, 2]
                if mk != tag:  # the first entry of d for query token i
                    if mk == 0:
                        touched[n] = d
                        n += 1
                        state[d, 0] = 0.0
                    state[d, 2] = tag
                    state[d, 0] += s
                    state[d, 1] = s
                elif s > state[d, 1]:
                    state[d, 0] += s - state[d, 1]
                    state[d, 1] = s
    return n, base


@njit(cache=True)
def _select(acc, mark, touched, n, k, out_rows, out_scores, blank):
    """The ``k`` best touched documents (score desc, then row asc) into out_*; resets ``mark`` to ``blank``."""
    m = min(k, n)
    if m > 0:
        vals = np.empty(n, np.float32)
        for t in range(n):
            vals[t] = acc[touched[t]]
        thr = np.partition(vals, n - m)[n - m] if m < n else vals.min()  # the m-th highest score
        chosen = np.empty(m, np.int64)
        c = 0
        n_eq = 0
        for t in range(n):
            if vals[t] > thr:
                chosen[c] = touched[t]
                c += 1
            elif vals[t] == thr:
                n_eq += 1
        if c < m:  # ties at the threshold: the lowest rows
            eq = np.empty(n_eq, np.int64)
            e = 0
            for t in range(n):
                if vals[t] == thr:
                    eq[e] = touched[t]
                    e += 1
            eq.sort()
            for t in range(m - c):
                chosen[c + t] = eq[t]
        chosen.sort()  # rows ascending, then a stable sort by score descending
        neg = np.empty(m, np.float32)
        for t in range(m):
            neg[t] = -acc[chosen[t]]
        order = np.argsort(neg, kind="mergesort")
        for t in range(m):
            out_rows[t] = chosen[order[t]]
            out_scores[t] = -neg[order[t]]
    for t in range(m, k):
        out_rows[t] = -1
        out_scores[t] = -np.inf
    for t in range(n):
        mark[touched[t]] = blank


@njit(cache=True)
def _candidates_worker(w, top_scores, q_offsets, top, list_offsets, list_docs, allowed, use_mask, n_docs, k, n_threads,
                       lut, list_res, refined, out_rows, out_scores):
    """Worker ``w`` of ``n_threads``: queries w, w + n_threads, ... with its own scratch arrays (allocated per
    call: reusing them across calls was slower, 5.7 vs 4.6 ms at 1M documents; freshly written arrays are
    in cache when the scatter starts)."""
    n_queries = q_offsets.size - 1
    n_acc = 1 if refined else n_docs
    acc = np.zeros(n_acc, np.float32)
    mark = np.full(n_acc, -1, np.int32)
    state = np.zeros((n_docs if refined else 1, 3), np.float32)
    touched = np.empty(max(1, min(n_docs, list_docs.size)), np.int32)
    for q in range(w, n_queries, n_threads):
        a, b = q_offsets[q], q_offsets[q + 1]
        if refined:
            n, base = _accumulate_refined(top_scores[a:b], top[a:b], lut[a:b], list_offsets, list_docs, list_res,
                                          allowed, use_mask, state, touched)
            _select(state[:, 0], state[:, 2], touched, n, k, out_rows[q], out_scores[q], np.float32(0.0))
        else:
            n, base = _accumulate(top_scores[a:b], top[a:b], list_offsets, list_docs, allowed, use_mask, acc, mark,
                                  touched)
            _select(acc, mark, touched, n, k, out_rows[q], out_scores[q], np.int32(-1))
        for t in range(k):
            if out_rows[q, t] >= 0:
                out_scores[q, t] += base


@njit(parallel=True, cache=True)
def _candidates_parallel(top_scores, q_offsets, top, list_offsets, list_docs, allowed, use_mask, n_docs, k, n_threads,
                         lut, list_res, refined, out_rows, out_scores):
    for w in prange(n_threads):
        _candidates_worker(w, top_scores, q_offsets, top, list_offsets, list_docs, allowed, use_mask, n_docs, k,
                           n_threads, lut, list_res, refined, out_rows, out_scores)


def centroid_candidates(top_scores: np.ndarray, q_offsets: np.ndarray, top: np.ndarray, list_offsets: np.ndarray,
                        list_docs: np.ndarray, n_docs: int, k: int, allowed: np.ndarray | None = None,
                        n_threads: int = 1, lut: np.ndarray | None = None,
                        list_residuals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` documents of highest approximate (centroid interaction) score for each query.

    Parameters
    ----------
    top_scores : float32 (n_query_tokens, nprobe), the inner products of each query token with its
        probed centroids ``top``, descending along each row
    q_offsets : int64 (n_queries + 1,) CSR offsets of each query's tokens
    top : int64 (n_query_tokens, nprobe), the probed centroids (:func:`probe_cells`)
    list_offsets, list_docs : :func:`build_lists`, or :func:`build_token_lists` with ``list_residuals``
    n_docs : number of document rows
    k : candidates per query
    allowed : optional uint8 (n_docs,) mask; documents with 0 are never returned
    n_threads : queries are spread over this many workers (each holds three ``n_docs`` arrays; refined:
        ``n_docs`` x 12 bytes)
    lut : float32 (n_query_tokens, m * 256), with ``list_residuals``: ``lut[i, u * 256 + v]`` is the
        inner product of sub-vector ``u`` of query token ``i`` with residual codeword ``v`` of
        sub-quantiser ``u``; each token entry then scores its centroid's score plus its residual's
    list_residuals : uint8 (n_postings, m), the residual codes of token lists (:func:`build_token_lists`)

    Returns
    -------
    rows : int64 (n_queries, k), best first (equal scores: lower row first), -1 padded when fewer
        documents were found
    approx : float32 (n_queries, k), their approximate scores, -inf where padded
    """
    q_offsets = np.ascontiguousarray(q_offsets, dtype=np.int64)
    n_queries = q_offsets.size - 1
    out_rows = np.empty((n_queries, int(k)), np.int64)
    out_scores = np.empty((n_queries, int(k)), np.float32)
    use_mask = allowed is not None
    mask = np.ascontiguousarray(allowed, dtype=np.uint8) if use_mask else np.zeros(1, np.uint8)
    if use_mask and mask.shape != (n_docs,):
        raise ValueError(f"allowed must have shape ({n_docs},), got {mask.shape}")
    refined = list_residuals is not None
    if refined != (lut is not None):
        raise ValueError("lut and list_residuals go together")
    if refined:
        m = list_residuals.shape[1]
        lut = np.ascontiguousarray(lut, dtype=np.float32)
        if lut.shape != (int(q_offsets[-1]), 256 * m) or list_residuals.shape[0] != list_docs.size:
            raise ValueError(f"lut must have shape ({int(q_offsets[-1])}, {256 * m}) and list_residuals one row per "
                             f"list entry, got {lut.shape} and {list_residuals.shape}")
    else:
        lut, list_residuals = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.uint8)
    if n_queries:
        n_threads = max(1, min(int(n_threads), n_queries))
        args = (np.ascontiguousarray(top_scores, dtype=np.float32), q_offsets, np.ascontiguousarray(top), list_offsets,
                list_docs, mask, use_mask, int(n_docs), int(k), n_threads, lut, list_residuals, refined,
                out_rows, out_scores)
        if n_threads == 1:  # one worker (a single query): no thread pool to wake
            _candidates_worker(0, *args)
        else:
            _candidates_parallel(*args)
    return out_rows, out_scores

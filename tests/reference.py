"""Plain-numpy oracles for the numba kernels in ``kernels/retriever_kernels/`` (slow, obvious, float64).

* MaxSim is ``(q @ d.T).max(1).sum()`` per (query, document) pair, with the kernels'
  conventions for empty inputs: a query with no tokens scores 0, a document with no tokens
  scores ``-inf``, padding (``-1``) scores ``-inf``.
* Top-k is a stable ``argsort`` with the kernels' rules: descending score, ties by lower id,
  ``-inf``/NaN never returned, padding ``-1`` / ``-inf``.
* :func:`check_topk_with_ties` compares a top-k result against reference scores while
  tolerating reordering among (near-)ties, in the spirit of faiss
  ``check_ref_knn_with_draws``.
"""

from __future__ import annotations

import numpy as np

U32 = 2.0**-24  # unit roundoff of float32


def maxsim_ref(q: np.ndarray, d: np.ndarray) -> float:
    """MaxSim of one query (n_q, dim) and one document (n_d, dim), in float64."""
    if q.shape[0] == 0:
        return 0.0
    if d.shape[0] == 0:
        return -np.inf
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(1).sum())


def maxsim_tolerance(q: np.ndarray, d: np.ndarray) -> float:
    """A worst-case bound on the float32 error of one MaxSim value (dot products of ``dim``
    terms, then a sum of ``n_q`` maxima): ``(dim + n_q + 2) * u * sum_i max_t sum_k |q_ik d_tk|``."""
    if q.shape[0] == 0 or d.shape[0] == 0:
        return 0.0
    mag = (np.abs(q.astype(np.float64)) @ np.abs(d.astype(np.float64)).T).max(1).sum()
    return float((q.shape[1] + q.shape[0] + 2) * U32 * mag)


def split(vectors: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """CSR -> list of per-item arrays."""
    return [vectors[offsets[i] : offsets[i + 1]] for i in range(offsets.size - 1)]


def maxsim_pairs_ref(q_vectors, q_offsets, tokens, doc_offsets, candidates) -> tuple[np.ndarray, np.ndarray]:
    """Reference scores (float64) and tolerances for ``maxsim_scores_batch`` inputs."""
    queries, docs = split(q_vectors, q_offsets), split(tokens, doc_offsets)
    ref = np.full(candidates.shape, -np.inf)
    tol = np.zeros(candidates.shape)
    for i, row in enumerate(candidates):
        for j, d in enumerate(row):
            if d >= 0:
                ref[i, j] = maxsim_ref(queries[i], docs[d])
                tol[i, j] = maxsim_tolerance(queries[i], docs[d])
    return ref, tol


def maxsim_exhaustive_ref(q_vectors, q_offsets, tokens, doc_offsets, allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference scores (float64) and tolerances for every (query, document) pair."""
    n_docs = doc_offsets.size - 1
    cand = np.tile(np.arange(n_docs, dtype=np.int64), (q_offsets.size - 1, 1))
    if allowed is not None:
        cand[:, ~np.asarray(allowed, dtype=bool)] = -1
    return maxsim_pairs_ref(q_vectors, q_offsets, tokens, doc_offsets, cand)


def assert_scores_close(got: np.ndarray, ref: np.ndarray, tol: np.ndarray) -> None:
    """``got`` equals ``ref`` within ``tol`` where finite, and has the same infinities."""
    assert got.shape == ref.shape and got.dtype == np.float32
    inf = np.isinf(ref)
    np.testing.assert_array_equal(got[inf], ref[inf].astype(np.float32))
    err = np.abs(got[~inf].astype(np.float64) - ref[~inf])
    bad = err > tol[~inf] + 1e-30
    assert not bad.any(), f"{bad.sum()} scores off; worst error {err.max():.3g} vs tolerance {tol[~inf][bad].min():.3g}"


def topk_ref(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row by stable argsort. ``ids`` (same shape, -1 = padding) names the entries;
    an id that occurs twice in a row keeps its best score (the first such entry)."""
    n_rows, n = scores.shape
    if ids is None:
        ids = np.tile(np.arange(n, dtype=np.int64), (n_rows, 1))
    out_i = np.full((n_rows, k), -1, dtype=np.int64)
    out_s = np.full((n_rows, k), -np.inf, dtype=np.float32)
    for r in range(n_rows):
        # sort by id first so that, after the stable score sort, equal scores are in id order
        by_id = np.argsort(ids[r], kind="stable")
        s, i = scores[r][by_id], ids[r][by_id]
        order = np.argsort(-s.astype(np.float64), kind="stable")
        seen: set[int] = set()
        m = 0
        for j in order:
            if m == k:
                break
            if i[j] < 0 or not s[j] > -np.inf or int(i[j]) in seen:
                continue
            seen.add(int(i[j]))
            out_i[r, m], out_s[r, m] = i[j], s[j]
            m += 1
    return out_i, out_s


def check_topk_with_ties(ref_scores: np.ndarray, got_idx: np.ndarray, got_vals: np.ndarray, k: int, tol) -> None:
    """Check a top-k answer against full reference scores, allowing any order among near-ties.

    Parameters
    ----------
    ref_scores : ndarray, shape (n_q, n), float64
        Reference score of every entry (``-inf`` = not eligible).
    got_idx, got_vals : ndarray, shape (n_q, k)
        The answer under test, ``-1`` / ``-inf`` padded.
    tol : float or ndarray broadcastable to ``ref_scores``
        Scores closer than this are treated as tied.
    """
    n_q, n = ref_scores.shape
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), ref_scores.shape)
    assert got_idx.shape == got_vals.shape == (n_q, k)
    for r in range(n_q):
        eligible = np.flatnonzero(ref_scores[r] > -np.inf)
        n_hits = min(k, eligible.size)
        hits, vals = got_idx[r, :n_hits], got_vals[r, :n_hits].astype(np.float64)
        assert np.all(got_idx[r, n_hits:] == -1) and np.all(np.isneginf(got_vals[r, n_hits:])), f"row {r}: bad padding"
        assert np.all(hits >= 0) and np.unique(hits).size == n_hits, f"row {r}: invalid or repeated ids {hits}"
        assert np.all(np.diff(vals) <= 0), f"row {r}: scores not descending"
        # each returned score is the reference score of its id
        np.testing.assert_array_less(np.abs(vals - ref_scores[r, hits]), tol[r, hits] + 1e-30)
        if n_hits == 0:
            continue
        # everything clearly better than the k-th returned score must be present
        kth = ref_scores[r, hits[-1]]
        must = eligible[ref_scores[r, eligible] > kth + tol[r, eligible] + tol[r, hits[-1]]]
        missing = np.setdiff1d(must, hits)
        assert missing.size == 0, f"row {r}: missing ids {missing[:10]} that beat the k-th score {kth}"
        # and the returned scores match the sorted reference top scores within tolerance
        best = np.sort(ref_scores[r, eligible])[::-1][:n_hits]
        assert np.all(np.abs(vals - best) <= np.max(tol[r]) * 2 + 1e-30), f"row {r}: scores differ from reference top-{k}"


# -- token codecs (twins of kernels/retriever_kernels/codes.py) ---------------------------------------------------


def int8_encode_ref(x: np.ndarray) -> np.ndarray:
    """Int8 rows, one token at a time: values q + 128 with q = round(x / s), then float16 s = max|x| / 127."""
    x = np.asarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], x.shape[1] + 2), dtype=np.uint8)
    for i, v in enumerate(x):
        s = np.float16(np.abs(v).max() / np.float32(127.0))
        q = np.zeros_like(v) if float(s) == 0 else np.clip(np.rint(v / np.float32(s)), -127, 127)
        out[i, : x.shape[1]] = (q + 128).astype(np.uint8)
        out[i, x.shape[1] :] = np.frombuffer(np.float16(s).tobytes(), dtype=np.uint8)
    return out


def int8_decode_ref(rows: np.ndarray) -> np.ndarray:
    dim = rows.shape[1] - 2
    s = np.frombuffer(np.ascontiguousarray(rows[:, dim:]).tobytes(), dtype="<f2").astype(np.float32)
    return (rows[:, :dim].astype(np.float32) - 128.0) * s[:, None]


def residual_encode_ref(x, ids, centroids, cutoffs, nbits, id_bytes) -> np.ndarray:
    """Residual rows, bit by bit: id little-endian, then dimension k's bucket at bit k * nbits."""
    n, dim = x.shape
    out = np.zeros((n, id_bytes + dim * nbits // 8), dtype=np.uint8)
    for i in range(n):
        c = int(ids[i])
        for j in range(id_bytes):
            out[i, j] = (c >> (8 * j)) & 0xFF
        r = x[i].astype(np.float32) - centroids[c]
        for k in range(dim):
            b = int(np.sum(r[k] > cutoffs[k]))
            bit = k * nbits
            out[i, id_bytes + bit // 8] |= b << (bit % 8)
    return out


def residual_decode_ref(rows, centroids, weights, nbits) -> np.ndarray:
    """centroid + per-dimension bucket weight, read bit by bit, rescaled to unit length."""
    dim = centroids.shape[1]
    id_bytes = rows.shape[1] - dim * nbits // 8
    out = np.zeros((rows.shape[0], dim), dtype=np.float32)
    for i, row in enumerate(rows):
        c = sum(int(row[j]) << (8 * j) for j in range(id_bytes))
        for k in range(dim):
            bit = k * nbits
            b = (int(row[id_bytes + bit // 8]) >> (bit % 8)) & ((1 << nbits) - 1)
            out[i, k] = centroids[c, k] + weights[k, b]
        norm = np.sqrt(np.sum(out[i].astype(np.float64) ** 2))
        if norm > 0:
            out[i] = out[i] / norm
    return out


# -- metadata filters: an independent evaluation of MongoDB-style ``where`` documents -----------------

_MISSING = object()


def _values_at(meta: dict, path: str) -> list:
    """Every value at dotted ``path``: lists are walked element by element at each step (MongoDB)."""
    current = [meta]
    for part in path.split("."):
        nxt = []
        for v in current:
            if isinstance(v, dict):
                if part in v:
                    nxt.append(v[part])
            elif isinstance(v, list):
                nxt.extend(x[part] for x in v if isinstance(x, dict) and part in x)
        current = nxt
    return current


def _candidates(values: list) -> list:
    """The scalars a condition compares with: each value, and each element of a list value."""
    out = []
    for v in values:
        if isinstance(v, list):
            out.extend(x for x in v if not isinstance(x, (list, dict)))
        elif not isinstance(v, dict):
            out.append(v)
    return out


def _same_kind(a, b) -> bool:
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    return (num(a) and num(b)) or (isinstance(a, bool) and isinstance(b, bool)) or (
        isinstance(a, str) and isinstance(b, str)) or (a is None and b is None)


def _eq_ref(values: list, want) -> bool:
    if want is None:
        return not values or any(v is None for v in _candidates(values))
    return any(_same_kind(v, want) and v == want for v in _candidates(values))


def filter_matches(meta: dict, where: dict) -> bool:
    """Plain-Python twin of ``retriever.index.filters`` + the store's evaluation, for the tests."""
    for key, cond in where.items():
        if key == "$and":
            ok = all(filter_matches(meta, w) for w in cond)
        elif key == "$or":
            ok = any(filter_matches(meta, w) for w in cond)
        elif key == "$nor":
            ok = not any(filter_matches(meta, w) for w in cond)
        else:
            values = _values_at(meta, key)
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            ok = True
            for op, want in ops.items():
                if op == "$eq":
                    r = _eq_ref(values, want)
                elif op == "$ne":
                    r = not _eq_ref(values, want)
                elif op == "$in":
                    r = any(_eq_ref(values, w) for w in want)
                elif op == "$nin":
                    r = not any(_eq_ref(values, w) for w in want)
                elif op == "$exists":
                    r = bool(values) == want
                else:
                    cmp = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
                           "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}[op]
                    r = any(_same_kind(v, want) and not isinstance(v, bool) and cmp(v, want) for v in _candidates(values))
                ok = ok and r
        if not ok:
            return False
    return True

"""Hybrid scoring: late interaction fused with a single dense vector and BM25.

An index built from text can store, beside its token vectors, two more signals per document:

* ``"dense"``: the encoder backbone's pooled single vector (``ColBERTEncoder.encode_documents(...,
  return_pooled=True)``: the attention-masked mean of the last hidden states, from the same forward
  pass as the token vectors), stored float16 (``dense.npy``) and scanned exactly by
  ``kernels/retriever_kernels/dense.py``;
* ``"bm25"``: a BM25 inverted index over the words of the text (:mod:`retriever.hybrid.lexical`).

A hybrid search (:func:`score_union`, then :func:`rank_fused`) scores, per query, the union of

    U = the MaxSim top-``depth`` (the reranked candidates, or the exhaustive top-``depth``)
      + the dense top-``depth`` + the BM25 top-``depth``

with all three signals exactly (MaxSim over the stored tokens, the dense inner product, BM25), and
ranks U by their fusion:

* ``"zscore"`` (default): ``sum_s w_s * (score_s - mean_s) / std_s``, where ``mean_s`` and ``std_s`` are
  those of signal ``s``'s own top-``depth`` scores for this query (a signal whose top scores are all
  equal contributes 0);
* ``"rrf"``: reciprocal rank fusion, ``sum_s w_s / (rrf_k + rank_s)`` with ``rank_s`` the 1-based rank
  of the document in U by signal ``s`` (ties by row).

The fused score is what ``SearchResults.scores`` holds for a hybrid search. Weights, method and depth
are chosen on training / dev queries (``bench/beir/hybrid_tuning.py``) and recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from retriever_kernels.dense import dense_scores_rows, dense_topk
from retriever_kernels.maxsim import maxsim_scores_batch

from retriever.core.configs import check_keys
from retriever.hybrid.lexical import BM25Config, LexicalIndex
from retriever.store.tokens import TokenEmbeddings

__all__ = ["SIGNALS", "FusionConfig", "HybridConfig", "fuse", "score_union", "rank_fused"]

#: The signals an index can store beside its token vectors.
SIGNALS = ("dense", "bm25")


@dataclass(frozen=True)
class FusionConfig:
    """How a hybrid search ranks (persisted in the manifest; overridable per search).

    Parameters
    ----------
    method : "zscore" or "rrf"
    weights : (maxsim, dense, bm25) non-negative floats; a signal the index lacks is skipped.
    depth : each signal's top list that enters the union U and, for ``zscore``, sets its mean and
        spread (at least ``k`` is used).
    rrf_k : the RRF rank offset.
    long_weights, long_depth : the weights and depth used instead for a *long* query, one of more than
        ``long_query_tokens`` token vectors (the encoder's 64-token query length, markers included);
        ``long_weights=None`` treats every query alike. Default (0.5, 1, 1) at depth 400: on paragraph
        queries MaxSim over hundreds of query tokens is the weakest signal and the wider union finds
        more of what the dense and BM25 signals rank well. Chosen on the long-query tuning set
        (``bench/beir/long_query_set.py``: +0.029 nDCG@10 on its tune and check halves) with SciFact train
        and NFCorpus dev unchanged (their queries are short); see docs/hybrid.md.
    long_query_tokens : the query length (token vectors) above which ``long_weights`` apply.
    """

    method: str = "zscore"
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    depth: int = 100
    rrf_k: int = 60
    long_weights: tuple[float, float, float] | None = (0.5, 1.0, 1.0)
    long_depth: int = 400
    long_query_tokens: int = 64

    def __post_init__(self) -> None:
        if self.method not in ("zscore", "rrf"):
            raise ValueError(f"FusionConfig.method must be 'zscore' or 'rrf', got {self.method!r}")
        for name in ("weights", "long_weights"):
            w = getattr(self, name)
            if w is None and name == "long_weights":
                continue
            if isinstance(w, list):
                w = tuple(w)
            if (not isinstance(w, tuple) or len(w) != 3
                    or not all(not isinstance(x, bool) and isinstance(x, (int, float)) and np.isfinite(x) and x >= 0
                               for x in w)):
                raise ValueError(f"FusionConfig.{name} must be 3 finite numbers >= 0 (maxsim, dense, bm25), got {w!r}")
            if not any(w):
                raise ValueError(f"FusionConfig.{name} must not all be 0")
            object.__setattr__(self, name, tuple(float(x) for x in w))
        for name, lo in (("depth", 1), ("rrf_k", 0), ("long_depth", 1), ("long_query_tokens", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"FusionConfig.{name} must be an integer >= {lo}, got {v!r}")

    def to_dict(self) -> dict:
        return {"method": self.method, "weights": list(self.weights), "depth": int(self.depth), "rrf_k": int(self.rrf_k),
                "long_weights": None if self.long_weights is None else list(self.long_weights),
                "long_depth": int(self.long_depth), "long_query_tokens": int(self.long_query_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        """Inverse of :meth:`to_dict`; a manifest written before the long-query fields gets their defaults
        (they are query-side: an existing index ranks long queries the new way without a rebuild)."""
        check_keys(cls, d)
        return cls(**d)

    def for_length(self, n_tokens: int) -> "FusionConfig":
        """The plain fusion (no long-query rule) a query of ``n_tokens`` token vectors is ranked with."""
        if self.long_weights is not None and n_tokens > self.long_query_tokens:
            return dataclasses.replace(self, weights=self.long_weights, depth=self.long_depth, long_weights=None)
        return dataclasses.replace(self, long_weights=None)

    def groups(self, lengths) -> list[tuple["FusionConfig", np.ndarray]]:
        """The queries of a batch (their token counts ``lengths``) grouped by the plain fusion each is
        ranked with: ``[(fusion, query indices), ...]``, short queries first."""
        lengths = np.asarray(lengths)
        if self.long_weights is None:
            return [(self, np.arange(lengths.size))]
        long = lengths > self.long_query_tokens
        out = []
        for mask, n in ((~long, self.long_query_tokens), (long, self.long_query_tokens + 1)):
            idx = np.flatnonzero(mask)
            if idx.size:
                out.append((self.for_length(n), idx))
        return out


@dataclass(frozen=True)
class HybridConfig:
    """Which extra signals an index stores, and how searches fuse them (persisted in the manifest).

    Parameters
    ----------
    signals : tuple of "dense" and/or "bm25"; ``()`` = a plain late-interaction index.
        Text builds only (both need the text); the default ``IndexConfig.hybrid="auto"`` stores
        both when the index is built from text and none when it is built from token embeddings.
    bm25 : BM25Config
    fusion : FusionConfig
    """

    signals: tuple[str, ...] = SIGNALS
    bm25: BM25Config = field(default_factory=BM25Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self) -> None:
        s = self.signals
        if isinstance(s, (list, str)):
            s = (s,) if isinstance(s, str) else tuple(s)
            object.__setattr__(self, "signals", s)
        if not isinstance(s, tuple) or any(x not in SIGNALS for x in s) or len(set(s)) != len(s):
            raise ValueError(f"HybridConfig.signals must be distinct names from {SIGNALS}, got {self.signals!r}")
        object.__setattr__(self, "signals", tuple(x for x in SIGNALS if x in s))  # canonical order
        if not isinstance(self.bm25, BM25Config):
            raise TypeError(f"HybridConfig.bm25 must be a BM25Config, got {type(self.bm25).__name__}")
        if not isinstance(self.fusion, FusionConfig):
            raise TypeError(f"HybridConfig.fusion must be a FusionConfig, got {type(self.fusion).__name__}")

    @property
    def enabled(self) -> bool:
        return bool(self.signals)

    def to_dict(self) -> dict:
        return {"signals": list(self.signals), "bm25": self.bm25.to_dict(), "fusion": self.fusion.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "HybridConfig":
        check_keys(cls, d)
        kw = dict(d)
        if "bm25" in kw:
            kw["bm25"] = BM25Config.from_dict(kw["bm25"])
        if "fusion" in kw:
            kw["fusion"] = FusionConfig.from_dict(kw["fusion"])
        return cls(**kw)


NONE = HybridConfig(signals=())


# -- fusion ----------------------------------------------------------------------------------------


def _zscores(x: np.ndarray, top: np.ndarray) -> np.ndarray:
    if top.size < 2:
        return np.zeros_like(x)
    sd = float(top.std())
    if sd <= 1e-9 * max(1.0, abs(float(top.mean()))):
        return np.zeros_like(x)
    return ((x - float(top.mean())) / sd).astype(np.float32)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(x.size), -x))  # descending score, ties by position (= row order)
    r = np.empty(x.size, dtype=np.float64)
    r[order] = np.arange(1, x.size + 1)
    return r


def fuse(signals: dict[str, np.ndarray], tops: dict[str, np.ndarray], fusion: FusionConfig) -> np.ndarray:
    """Fused scores of one query's union U (rows ascending).

    ``signals[s]``: signal ``s``'s score of every document of U (float32 (|U|,));
    ``tops[s]``: signal ``s``'s own top-``depth`` scores (sets the z-score's mean and spread).
    Signals are ``"maxsim"``, ``"dense"``, ``"bm25"``; missing ones (or weight 0) are skipped.
    """
    w = dict(zip(("maxsim", "dense", "bm25"), fusion.weights))
    out = None
    for name, x in signals.items():
        if not w[name]:
            continue
        if fusion.method == "zscore":
            term = w[name] * _zscores(x.astype(np.float32), tops[name])
        else:
            term = w[name] / (fusion.rrf_k + _ranks(x))
        out = term.astype(np.float64) if out is None else out + term
    n = next(iter(signals.values())).size
    return (np.zeros(n) if out is None else out).astype(np.float32)


def score_union(
    queries: TokenEmbeddings,
    base: np.ndarray,
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    depth: int,
    dense: np.ndarray | None = None,
    q_pooled: np.ndarray | None = None,
    lexical: LexicalIndex | None = None,
    q_texts: list[str] | None = None,
    allowed: np.ndarray | None = None,
) -> list[tuple[np.ndarray, dict, dict]]:
    """Per query: (U rows ascending, {signal: scores over U}, {signal: its own top-``depth`` scores}).

    Parameters
    ----------
    base : int64 (n_q, N) the MaxSim side's rows, -1 padded: candidates (reranked here) or the
        exhaustive top rows.
    depth : each signal's top list that enters U.
    dense, q_pooled : the dense signal (both or neither): float16 (n_rows, d) document vectors and
        float32 (n_q, d) query vectors.
    lexical, q_texts : the BM25 signal (both or neither).
    allowed : uint8 (n_rows,) mask of rows that may be returned, or None.
    """
    n_q = base.shape[0]
    dense_top = dense_top_scores = None
    if dense is not None:
        dense_top, dense_top_scores = dense_topk(q_pooled, dense, depth, allowed)
    unions, bm_u, bm_tops = [], [], []
    for i in range(n_q):  # BM25 one query at a time: its score vector spans every row
        parts = [base[i]] + ([dense_top[i]] if dense_top is not None else [])
        if lexical is not None:
            bm_rows, bm_full = lexical.query(q_texts[i], depth, allowed)
            parts.append(bm_rows)
        u = np.unique(np.concatenate(parts))
        u = u[u >= 0]
        unions.append(u)
        if lexical is not None:
            bm_u.append(bm_full[u])
            full = bm_full if allowed is None else bm_full[allowed != 0]
            # the top-depth BM25 scores of every allowed row, zeros included when fewer match
            bm_tops.append(np.partition(full, full.size - depth)[-depth:] if full.size > depth else full)
    width = max(1, max(u.size for u in unions))
    cand = np.full((n_q, width), -1, dtype=np.int64)
    for i, u in enumerate(unions):
        cand[i, : u.size] = u
    ms = maxsim_scores_batch(queries.vectors, queries.offsets, tokens, doc_offsets, cand)
    de = dense_scores_rows(q_pooled, dense, cand) if dense is not None else None
    out = []
    for i, u in enumerate(unions):
        m = ms[i, : u.size]
        signals = {"maxsim": m}
        tops = {"maxsim": np.sort(m)[-depth:]}
        if de is not None:
            signals["dense"] = de[i, : u.size]
            tops["dense"] = dense_top_scores[i][dense_top[i] >= 0]
        if lexical is not None:
            signals["bm25"] = bm_u[i]
            tops["bm25"] = bm_tops[i]
        out.append((u, signals, tops))
    return out


def rank_fused(scored: list[tuple[np.ndarray, dict, dict]], k: int, fusion: FusionConfig):
    """Top-``k`` of each query's U by :func:`fuse`: (rows int64 (n_q, k), fused float32 (n_q, k)),
    padded with -1 / -inf; ties broken by row."""
    out_rows = np.full((len(scored), k), -1, dtype=np.int64)
    out_scores = np.full((len(scored), k), -np.inf, dtype=np.float32)
    for i, (u, signals, tops) in enumerate(scored):
        if u.size == 0:
            continue
        f = fuse(signals, tops, fusion)
        order = np.lexsort((u, -f))[:k]
        out_rows[i, : order.size] = u[order]
        out_scores[i, : order.size] = f[order]
    return out_rows, out_scores

"""Hybrid scoring: late interaction fused with a single dense vector and BM25.

An index built from text can store, beside its token vectors, two more signals per document:

* ``"dense"``: the encoder backbone's pooled single vector (``ColBERTEncoder.encode_documents(...,
  return_pooled=True)``: the attention-masked mean of the last hidden states, from the same forward
  pass as the token vectors), kept as float16 in a FAISS ``SQfp16`` inner-product index
  (``dense.faiss``);
* ``"bm25"``: a BM25 inverted index over the words of the text (:mod:`retriever.lexical`).

A hybrid search (:func:`search_hybrid`) scores, per query, the union of

    U = the MaxSim top-``depth`` (the reranked FDE candidates, or the exhaustive top-``depth``)
      + the dense top-``depth`` + the BM25 top-``depth``

with all three signals exactly (MaxSim over the stored tokens, the dense inner product, BM25), and
ranks U by their fusion:

* ``"zscore"`` (default): ``sum_s w_s * (score_s - mean_s) / std_s``, where ``mean_s`` and ``std_s`` are
  those of signal ``s``'s own top-``depth`` scores for this query (a signal whose top scores are all
  equal contributes 0);
* ``"rrf"``: reciprocal rank fusion, ``sum_s w_s / (rrf_k + rank_s)`` with ``rank_s`` the 1-based rank
  of the document in U by signal ``s`` (ties by row).

The fused score is what ``SearchResults.scores`` holds for a hybrid search. Weights, method and depth
are chosen on training / dev queries (``bench/hybrid.py``) and recorded in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

from kernels.maxsim import maxsim_scores_batch

from .ann import faiss_search
from .lexical import BM25Config, LexicalIndex
from .tokens import TokenEmbeddings

__all__ = ["SIGNALS", "FusionConfig", "HybridConfig", "make_dense_index", "dense_scores", "fuse", "search_hybrid"]

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
    """

    method: str = "zscore"
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    depth: int = 100
    rrf_k: int = 60

    def __post_init__(self) -> None:
        if self.method not in ("zscore", "rrf"):
            raise ValueError(f"FusionConfig.method must be 'zscore' or 'rrf', got {self.method!r}")
        w = self.weights
        if isinstance(w, list):
            object.__setattr__(self, "weights", w := tuple(w))
        if (not isinstance(w, tuple) or len(w) != 3
                or not all(not isinstance(x, bool) and isinstance(x, (int, float)) and np.isfinite(x) and x >= 0 for x in w)):
            raise ValueError(f"FusionConfig.weights must be 3 finite numbers >= 0 (maxsim, dense, bm25), got {w!r}")
        if not any(w):
            raise ValueError("FusionConfig.weights must not all be 0")
        object.__setattr__(self, "weights", tuple(float(x) for x in w))
        for name, lo in (("depth", 1), ("rrf_k", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"FusionConfig.{name} must be an integer >= {lo}, got {v!r}")

    def to_dict(self) -> dict:
        return {"method": self.method, "weights": list(self.weights), "depth": int(self.depth), "rrf_k": int(self.rrf_k)}

    @classmethod
    def from_dict(cls, d: dict) -> "FusionConfig":
        unknown = set(d) - {"method", "weights", "depth", "rrf_k"}
        if unknown:
            raise ValueError(f"unknown FusionConfig keys: {sorted(unknown)}")
        return cls(**d)


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
        unknown = set(d) - {"signals", "bm25", "fusion"}
        if unknown:
            raise ValueError(f"unknown HybridConfig keys: {sorted(unknown)}")
        kw = dict(d)
        if "bm25" in kw:
            kw["bm25"] = BM25Config.from_dict(kw["bm25"])
        if "fusion" in kw:
            kw["fusion"] = FusionConfig.from_dict(kw["fusion"])
        return cls(**kw)


NONE = HybridConfig(signals=())


# -- the dense signal ----------------------------------------------------------------------------


def make_dense_index(dim: int) -> faiss.Index:
    """An empty float16 inner-product FAISS index for pooled vectors (2 bytes per dimension)."""
    return faiss.IndexScalarQuantizer(int(dim), faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def dense_scores(index: faiss.Index, q_pooled: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Inner products of each query's pooled vector with its candidates' stored ones: float32
    (n_q, M), -inf where ``cand`` is -1."""
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    for i in range(cand.shape[0]):
        rows = cand[i][cand[i] >= 0]
        if rows.size:
            out[i, : rows.size] = index.reconstruct_batch(rows) @ q_pooled[i]
    return out


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


def search_hybrid(
    queries: TokenEmbeddings,
    base: np.ndarray,
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    k: int,
    fusion: FusionConfig,
    dense_index=None,
    q_pooled: np.ndarray | None = None,
    lexical: LexicalIndex | None = None,
    q_texts: list[str] | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused top-``k`` rows per query (see the module docstring).

    Parameters
    ----------
    base : int64 (n_q, N) the MaxSim side's rows, -1 padded: FDE candidates (reranked here) or the
        exhaustive top rows.
    dense_index, q_pooled : the dense signal (both or neither).
    lexical, q_texts : the BM25 signal (both or neither).
    allowed : uint8 (n_rows,) mask of rows that may be returned, or None.

    Returns (rows int64 (n_q, k), fused scores float32 (n_q, k)), padded with -1 / -inf.
    """
    n_q = base.shape[0]
    depth = max(int(fusion.depth), int(k))
    extra = []
    if dense_index is not None:
        extra.append(faiss_search(dense_index, q_pooled, depth, allowed=allowed))
    bm_full = None
    if lexical is not None:
        bm_rows, _, bm_full = lexical.search(q_texts, depth, allowed=allowed)
        extra.append(bm_rows)
    unions = []
    for i in range(n_q):
        u = np.unique(np.concatenate([base[i]] + [e[i] for e in extra]))
        unions.append(u[u >= 0])
    width = max(1, max(u.size for u in unions))
    cand = np.full((n_q, width), -1, dtype=np.int64)
    for i, u in enumerate(unions):
        cand[i, : u.size] = u
    ms = maxsim_scores_batch(queries.vectors, queries.offsets, tokens, doc_offsets, cand)
    de = dense_scores(dense_index, q_pooled, cand) if dense_index is not None else None
    out_rows = np.full((n_q, k), -1, dtype=np.int64)
    out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    for i, u in enumerate(unions):
        if u.size == 0:
            continue
        m = ms[i, : u.size]
        signals = {"maxsim": m}
        tops = {"maxsim": np.sort(m)[-depth:]}
        if de is not None:
            d = de[i, : u.size]
            signals["dense"] = d
            dense_top = extra[0][i]
            tops["dense"] = d[np.searchsorted(u, dense_top[dense_top >= 0])]
        if bm_full is not None:
            b = bm_full[i][u]
            signals["bm25"] = b
            full = bm_full[i] if allowed is None else bm_full[i][allowed != 0]
            tops["bm25"] = np.partition(full, full.size - depth)[-depth:] if full.size > depth else full
        f = fuse(signals, tops, fusion)
        order = np.lexsort((u, -f))[:k]
        out_rows[i, : order.size] = u[order]
        out_scores[i, : order.size] = f[order]
    return out_rows, out_scores

"""The token centroid stage: sub-linear candidates from per-token centroid ids (PLAID-style).

MUVERA FDEs give every document one vector; a FAISS scan of a million of them costs tens of
milliseconds per query even compressed, and their candidate recall falls as the corpus grows
(``bench/results/scale.md``: 16,000 candidates for Chamfer recall@10 0.96 at a million
documents). This stage works at the token level instead, as PLAID and WARP do:

* **build**: spherical k-means centroids over a bounded sample of the stored tokens, in two
  levels (``coarse`` cells, each split into fine centroids in proportion to its share of the
  sample), so that training and assigning tens of millions of tokens stays a few matrix
  products per token on a CPU; every stored token gets the id of its fine centroid within its
  nearest coarse cell (``codes``, 2 bytes per token up to 65,536 centroids);
* **load**: inverted lists ``centroid -> documents`` built from the codes (4 bytes per distinct
  (centroid, document) pair, ~0.8 per token; derived, never stored);
* **search**: each query token's inner products with the coarse centroids, then with the fine
  centroids of its ``probe_cells`` best cells; its ``nprobe`` best lists; the approximate
  late-interaction score of every document those lists hold (``retriever_kernels.centroids``); the best
  ``n_candidates`` are reranked by exact MaxSim over the stored tokens like FDE candidates.
* **residual codes** (``residual_pq``; by default 4 bytes per token for corpora of up to
  ``AUTO_PQ_MAX_TOKENS`` tokens): each token's residual from its centroid, product-quantised (256
  codewords per sub-vector, FAISS ``ProductQuantizer`` trained on the same sample). The lists then
  hold one entry per token with its code, and a token's term is its centroid's score plus its
  residual's, from a per-query lookup table (WARP scores residuals too). On tuning queries this
  raised Chamfer recall@10 at equal N by 0.006-0.014 on SciFact train and NFCorpus dev for
  0.03-0.05 ms per query; on 10 M tokens of real text by 0.011 for 2.5 ms, no better than a larger
  N at equal latency; on 68 M synthetic tokens by 0.002 for 6 ms and 40% of the batch throughput:
  the lists a query scans grow with the corpus, hence the size limit
  (``bench/results/centroids_tuning.md``).

Files of an index with the stage (``retriever.index.format``): ``ivf_centroids.npy`` (fine centroids,
grouped by coarse cell), ``ivf_coarse.npy``, ``ivf_cells.npy`` (CSR offsets of each coarse
cell's fine centroids), ``ivf_codes.npy`` (per stored token, aligned with ``tokens.npy``) and with
residual codes ``ivf_pq.npy`` (the codebooks, ``(m, 256, dim / m)``) and ``ivf_residuals.npy``
(``(n_tokens, m)`` uint8, aligned with ``tokens.npy``). Centroids and codebooks trained at build
are kept for later ``add``; ``compact(retrain=True)`` retrains them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import faiss
import numba
import numpy as np
from retriever_kernels.centroids import build_lists, build_token_lists, centroid_candidates, probe_cells

from retriever.core.configs import check_keys, is_int

log = logging.getLogger(__name__)

__all__ = ["CentroidConfig", "CentroidIndex", "auto_n_centroids", "auto_candidates", "probes_per_token", "residual_lut",
           "AUTO_MIN_DOCS", "AUTO_MAX_QUERY_TOKENS", "AUTO_LONG_QUERY_MAX_DOCS", "AUTO_PQ_BYTES", "AUTO_PQ_MAX_TOKENS", "AUTO_SCALE", "AUTO_FLOOR"]

#: ``CentroidConfig.enabled="auto"`` builds the stage for corpora of at least this many documents
#: (the size from which ``faiss_factory="auto"`` compresses FDEs). The stage beat the FDEs at every
#: size measured, on tuning queries: NFCorpus dev (3,633 documents) Chamfer recall@10 0.974 at 6.9x
#: exhaustive speed (N=400) where the FDEs need N=1,205 for 0.96 at 2.8x; SciFact train 0.985 at
#: 13x (N=200); the 100k / 1M synthetic corpora 0.982 at 3.9 ms / 0.971 at 13.5 ms against 0.95 at
#: 16.6 ms / 0.961 at 107 ms (bench/results/centroids_tuning.md).
AUTO_MIN_DOCS = 2048
#: ``CentroidConfig.residual_pq="auto"`` stores ``AUTO_PQ_BYTES`` of residual code per token for corpora of
#: at most ``AUTO_PQ_MAX_TOKENS`` stored tokens (~60,000 MS MARCO-length documents, SciFact and NFCorpus
#: three times over) and none above: the refinement was free and worth 0.006-0.014 recall at 1-1.5 M
#: tokens, neutral at equal latency at 10 M and a loss at 68 M (module docstring).
AUTO_PQ_BYTES = 4
AUTO_PQ_MAX_TOKENS = 1 << 22
#: ``CentroidConfig.max_query_tokens="auto"``: queries of more token vectors than ``AUTO_MAX_QUERY_TOKENS`` are searched
#: through the FDEs under ``mode="auto"`` in corpora of fewer than ``AUTO_LONG_QUERY_MAX_DOCS`` documents. The FDEs
#: won for long queries at 15,000 documents and lost at 100,000 (the class docstring); 40,000 is about the
#: geometric mean of the two, not a measured crossing.
AUTO_MAX_QUERY_TOKENS = 64
AUTO_LONG_QUERY_MAX_DOCS = 40_000
_KMEANS_ITERS = 10
_ASSIGN_ROWS = 1 << 16  # tokens assigned per step


@dataclass(frozen=True)
class CentroidConfig:
    """The token centroid candidate stage (persisted in the manifest).

    Attributes
    ----------
    enabled : True, False or "auto" (default)
        Build the stage. ``"auto"``: for corpora of at least ``AUTO_MIN_DOCS`` documents; the
        built index's config holds the decision.
    n_centroids : int or None
        Fine centroids; ``None`` = :func:`auto_n_centroids` of the corpus's token count.
    nprobe : int
        Lists probed per query token at search (default 16; ``search(nprobe=...)`` overrides).
    probe_cells : int
        Coarse cells whose fine centroids a query token is scored against (default 8 of 256 at
        65,536 centroids; more when they hold fewer than ``nprobe``). Scoring every centroid took
        4.4 ms per query at 1M documents against 0.6 ms, at the same recall (0.971 vs 0.974 on
        tuning queries, N=1,000): tokens are assigned within their nearest cell, so the lists
        worth probing are in the nearest cells.
    probe_budget : int
        Lists per query (default 256): a query of ``n`` tokens probes ``max(nprobe, probe_budget // n)``
        lists per token, so short queries look further at the cost of a 16-token query (the lists a
        query scans stay within ``max(n * nprobe, probe_budget)``). 0: ``nprobe`` for every query.
        ``search(nprobe=...)`` fixes the lists per token and bypasses the budget.
    residual_pq : int or "auto" (default)
        Bytes of residual code per token (sub-quantisers of 256 codewords; must divide the token
        dimension), 0 for centroid scores only. ``"auto"``: 4 for corpora of at most
        ``AUTO_PQ_MAX_TOKENS`` stored tokens, else 0; the built index's config holds the decision.
        Indexes built before this option existed read as 0.
    max_query_tokens : int, None or "auto" (default)
        ``search(mode="auto")`` sends queries of more token vectors than this to the FDE stage and
        keeps the shorter ones here; None keeps every query here (``mode="centroids"`` always does).
        ``"auto"``: ``AUTO_MAX_QUERY_TOKENS`` (64) for corpora of fewer than ``AUTO_LONG_QUERY_MAX_DOCS``
        (40,000) documents, else None; the built index's config holds the decision. Indexes built
        before this option existed read as None. Measured on tuning queries (``bench/beir/stage_rule.py``,
        ``bench/scale/scale.py --split longq-tune``; ``docs/scaling.md``): on the 15,000-document long-query
        set (queries of 64-398 vectors) the FDEs reached Chamfer recall@10 0.971 at N=1,600 where this
        stage needed N=3,200 for 0.961, and at k=100 0.963 against 0.817; on 100,000 synthetic documents
        the same queries went the other way (N=8,000: 0.919 here, 0.829 for the FDEs); short queries
        (SciFact train, NFCorpus dev) need 4-8x fewer candidates here.
    max_train_bytes : int
        Bound on the float32 sample tokens k-means trains on (default 256 MB).
    seed : int
        Sampling and k-means seed.
    """

    enabled: bool | str = "auto"
    n_centroids: int | None = None
    nprobe: int = 16
    probe_cells: int = 8
    probe_budget: int = 256
    residual_pq: int | str = "auto"
    max_query_tokens: int | str | None = "auto"
    max_train_bytes: int = 256 << 20
    seed: int = 1

    def __post_init__(self) -> None:
        if not (self.enabled == "auto" or isinstance(self.enabled, (bool, np.bool_))):
            raise ValueError(f"CentroidConfig.enabled must be True, False or 'auto', got {self.enabled!r}")
        if self.n_centroids is not None and (not is_int(self.n_centroids) or not 2 <= self.n_centroids <= 1 << 24):
            raise ValueError(f"CentroidConfig.n_centroids must be None or an integer in [2, 2**24], got {self.n_centroids!r}")
        if not is_int(self.nprobe) or not 1 <= self.nprobe <= 1 << 16:
            raise ValueError(f"CentroidConfig.nprobe must be an integer in [1, 65536], got {self.nprobe!r}")
        if not is_int(self.probe_cells) or not 1 <= self.probe_cells <= 1 << 24:
            raise ValueError(f"CentroidConfig.probe_cells must be an integer in [1, 2**24], got {self.probe_cells!r}")
        if not is_int(self.probe_budget) or not 0 <= self.probe_budget <= 1 << 24:
            raise ValueError(f"CentroidConfig.probe_budget must be an integer in [0, 2**24], got {self.probe_budget!r}")
        if self.residual_pq != "auto" and (not is_int(self.residual_pq) or not 0 <= self.residual_pq <= 256):
            raise ValueError(f"CentroidConfig.residual_pq must be 'auto' or an integer in [0, 256], "
                             f"got {self.residual_pq!r}")
        mq = self.max_query_tokens
        if mq is not None and mq != "auto" and (not is_int(mq) or mq < 1):
            raise ValueError(f"CentroidConfig.max_query_tokens must be None, 'auto' or a positive integer, got {mq!r}")
        if not is_int(self.max_train_bytes) or self.max_train_bytes < 1 << 16:
            raise ValueError(f"CentroidConfig.max_train_bytes must be an integer >= 65536, got {self.max_train_bytes!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"CentroidConfig.seed must be a non-negative integer, got {self.seed!r}")

    def resolved(self, n_docs: int, n_tokens: int) -> "CentroidConfig":
        """This config with its ``"auto"`` fields decided for a corpus of ``n_docs`` documents and
        ``n_tokens`` stored tokens."""
        from dataclasses import replace

        out = self
        if out.enabled == "auto":
            out = replace(out, enabled=bool(n_docs >= AUTO_MIN_DOCS))
        if out.residual_pq == "auto":
            out = replace(out, residual_pq=AUTO_PQ_BYTES if n_tokens <= AUTO_PQ_MAX_TOKENS else 0)
        if out.max_query_tokens == "auto":
            out = replace(out, max_query_tokens=self.query_token_limit(n_docs))
        return out

    def query_token_limit(self, n_docs: int) -> int | None:
        """``max_query_tokens`` with ``"auto"`` decided for ``n_docs`` documents."""
        if self.max_query_tokens != "auto":
            return self.max_query_tokens
        return AUTO_MAX_QUERY_TOKENS if n_docs < AUTO_LONG_QUERY_MAX_DOCS else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["enabled"] = self.enabled if self.enabled == "auto" else bool(self.enabled)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CentroidConfig":
        check_keys(cls, d)
        # manifests from before residual codes: none; from before the stage rule: every query here
        return cls(**{"residual_pq": 0, "max_query_tokens": None, **d})


def auto_n_centroids(n_tokens: int) -> int:
    """Fine centroids for ``n_tokens`` stored tokens: the power of two nearest ``6 * sqrt(n_tokens)``,
    at least 16,384 and at most 65,536, and at most ``n_tokens / 8`` (16,384 for SciFact's 1.5 M
    tokens and for 6.8 M tokens = 100,000 MS MARCO-length documents, 65,536 for 68 M).

    PLAID takes ``16 * sqrt(n)``. Measured on tuning queries (Chamfer recall@10 at equal N): more
    centroids helped the small collection (NFCorpus dev, 1.1 M tokens, N=400: 0.969 with 8,192,
    0.980 with 16,384, 0.981 with 32,768; SciFact train even: 0.996 / 0.995) and hurt the large
    ones (100k synthetic, N=500: 0.982 with 16,384, 0.972 with 32,768; real text 300k, N=1,170:
    0.966 / 0.963 / 0.958 with 16,384 / 32,768 / 65,536), though they make queries faster; hence
    the floor and the slower growth."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    c = max(1 << 14, 1 << max(0, round(math.log2(max(1.0, 6.0 * math.sqrt(n_tokens))))))
    return int(max(2, min(c, 1 << 16, max(16, n_tokens // 8))))


#: ``n_candidates="auto"`` with the centroid stage reranks ``AUTO_SCALE * n_docs ** 0.25`` documents,
#: at least ``AUTO_FLOOR`` and ``10 * k`` (at most every document). Tuned on tuning queries only
#: (nprobe 16): Chamfer recall@10 >= 0.98 needed N ~450 on NFCorpus dev (7-token queries), ~250 on
#: SciFact train, ~500 on the 100k synthetic corpus and ~1,500 on 1M; recall >= 0.95 on the real-text
#: corpus (300k) needed ~1,200 on average over held-out entries 200-999 and ~1,500 in its worst block
#: of 200 entries (0.946 at 1,170). The rule gives 505 / 552 / 1,156 / 2,055 and 1,521 for 300k
#: (bench/results/centroids_tuning.md).
AUTO_SCALE = 65.0
AUTO_FLOOR = 400


def auto_candidates(n_docs: int, k: int) -> int:
    """Documents the centroid stage hands to the exact rerank for ``n_docs`` searchable documents."""
    want = max(AUTO_FLOOR, 10 * int(k), round(AUTO_SCALE * float(max(n_docs, 1)) ** 0.25))
    return int(min(max(n_docs, 1), want))


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Unit-length spherical k-means centroids (k, dim) of float32 rows ``x`` (k <= len(x))."""
    if k >= x.shape[0]:
        c = x[:k].copy()
    else:
        km = faiss.Kmeans(x.shape[1], int(k), niter=_KMEANS_ITERS, seed=int(seed), spherical=True,
                          max_points_per_centroid=1 << 30, min_points_per_centroid=1, verbose=False)
        km.train(np.ascontiguousarray(x))
        c = np.array(km.centroids, dtype=np.float32)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return np.ascontiguousarray(c / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _split(k: int, sizes: np.ndarray) -> np.ndarray:
    """``k`` fine centroids shared among cells of ``sizes`` points (largest remainder), >= 1 per
    non-empty cell and at most its points."""
    sizes = np.asarray(sizes, dtype=np.int64)
    want = k * sizes / max(1, int(sizes.sum()))
    out = np.minimum(np.maximum(np.floor(want).astype(np.int64), (sizes > 0).astype(np.int64)), sizes)
    order = np.argsort(-(want - np.floor(want)), kind="stable")
    i = 0
    while out.sum() < k and (out < sizes).any():
        c = order[i % order.size]
        if out[c] < sizes[c]:
            out[c] += 1
        i += 1
    return out


class CentroidIndex:
    """Two-level token centroids, the per-token codes, and the inverted lists built from them."""

    def __init__(self, centroids: np.ndarray, coarse: np.ndarray, cells: np.ndarray, codes: np.ndarray | None = None,
                 doc_offsets: np.ndarray | None = None, pq: np.ndarray | None = None,
                 residuals: np.ndarray | None = None) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.coarse = np.ascontiguousarray(coarse, dtype=np.float32)
        self.cells = np.ascontiguousarray(cells, dtype=np.int64)
        k, k1 = self.centroids.shape[0], self.coarse.shape[0]
        if self.centroids.ndim != 2 or self.coarse.shape[1:] != self.centroids.shape[1:] or self.cells.shape != (k1 + 1,) \
                or self.cells[0] != 0 or self.cells[-1] != k or np.any(np.diff(self.cells) < 0):
            raise ValueError(f"centroid arrays have shapes {self.centroids.shape}, {self.coarse.shape}, {self.cells.shape}: "
                             f"expected (k, dim), (k1, dim) and CSR offsets (k1 + 1,) ending at k")
        self.pq = None if pq is None else np.ascontiguousarray(pq, dtype=np.float32)
        if self.pq is not None and (self.pq.ndim != 3 or self.pq.shape[1] != 256
                                    or self.pq.shape[0] * self.pq.shape[2] != self.centroids.shape[1]):
            raise ValueError(f"residual codebooks must have shape (m, 256, dim / m) for dim {self.centroids.shape[1]}, "
                             f"got {self.pq.shape}")
        self.codes = codes
        self.residuals = None
        self.list_offsets = self.list_docs = self.list_residuals = None
        self.n_docs = 0
        if codes is not None:
            self.set_codes(codes, doc_offsets, residuals)

    # -- training and assignment ---------------------------------------------------------------
    @classmethod
    def train(cls, sample: np.ndarray, n_tokens: int, config: CentroidConfig) -> "CentroidIndex":
        """Two-level spherical k-means on float32 sample tokens ``(n, dim)`` of a corpus of ``n_tokens``."""
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if sample.ndim != 2 or sample.shape[0] < 1:
            raise ValueError("cannot train token centroids on an empty sample")
        k = min(config.n_centroids or auto_n_centroids(n_tokens), sample.shape[0])
        k1 = max(1, min(k, 1 << round(math.log2(math.sqrt(k)))))
        coarse = _kmeans(sample, k1, config.seed)
        cell = _nearest(coarse, sample)
        order = np.argsort(cell, kind="stable")
        sizes = np.bincount(cell, minlength=k1)
        per_cell = _split(k, sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        fine = []
        for c in range(k1):
            if per_cell[c]:
                fine.append(_kmeans(sample[order[starts[c] : starts[c + 1]]], int(per_cell[c]), config.seed + 1 + c))
        cells = np.concatenate([[0], np.cumsum(per_cell)]).astype(np.int64)
        log.info("trained %d token centroids in %d coarse cells on %d sample tokens", int(cells[-1]), k1, sample.shape[0])
        out = cls(np.concatenate(fine), coarse, cells)
        mq = config.resolved(AUTO_MIN_DOCS, n_tokens).residual_pq
        if mq:
            out.pq = _train_pq(sample - out.centroids[out.assign(sample)], mq, config.seed)
        return out

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def residual_bytes(self) -> int:
        """Bytes of residual code per token (0 without residual codes)."""
        return 0 if self.pq is None else int(self.pq.shape[0])

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.n_centroids <= 1 << 16 else np.dtype(np.int32)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Codes (``code_dtype``) of float32 tokens ``x`` (n, dim): the best fine centroid of the nearest coarse cell."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(x.shape[0], dtype=self.code_dtype)
        for s in range(0, x.shape[0], _ASSIGN_ROWS):
            xb = x[s : s + _ASSIGN_ROWS]
            cell = _nearest(self.coarse, xb)
            order = np.argsort(cell, kind="stable")
            bounds = np.searchsorted(cell[order], np.arange(self.coarse.shape[0] + 1))
            res = np.empty(xb.shape[0], dtype=np.int64)
            for c in np.flatnonzero(np.diff(bounds)):
                rows = order[bounds[c] : bounds[c + 1]]
                a, b = self.cells[c], self.cells[c + 1]
                if b == a:  # a cell without fine centroids (empty in the sample): search them all
                    res[rows] = _nearest(self.centroids, xb[rows])
                else:
                    res[rows] = a + _nearest(self.centroids[a:b], xb[rows])
            out[s : s + xb.shape[0]] = res
        return out

    def encode_residuals(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """uint8 (n, m) residual codes of float32 tokens ``x`` (n, dim) assigned to centroids ``codes``:
        per sub-vector of ``x - centroid``, the nearest codeword (L2)."""
        if self.pq is None:
            raise RuntimeError("this centroid stage has no residual codebooks")
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self.residual_bytes), np.uint8)
        for s in range(0, x.shape[0], _ASSIGN_ROWS):
            r = x[s : s + _ASSIGN_ROWS] - self.centroids[np.asarray(codes[s : s + _ASSIGN_ROWS], dtype=np.int64)]
            out[s : s + r.shape[0]] = _pq_encode(self.pq, r)
        return out

    # -- lists -----------------------------------------------------------------------------------
    def set_codes(self, codes: np.ndarray, doc_offsets: np.ndarray, residuals: np.ndarray | None = None) -> None:
        """Attach the per-token codes (and residual codes) of a store with ``doc_offsets`` and build the
        inverted lists: one entry per (centroid, document), or per token with residual codes."""
        if doc_offsets is None:
            raise ValueError("set_codes needs the documents' offsets")
        if (residuals is None) != (self.pq is None):
            raise ValueError("residual codes and residual codebooks go together")
        self.codes = codes
        self.residuals = residuals
        if residuals is None:
            self.list_offsets, self.list_docs = build_lists(np.asarray(codes), np.asarray(doc_offsets), self.n_centroids)
            self.list_residuals = None
        else:
            if residuals.shape[1:] != (self.residual_bytes,):
                raise ValueError(f"residual codes must have shape (n_tokens, {self.residual_bytes}), got {residuals.shape}")
            self.list_offsets, self.list_docs, self.list_residuals = build_token_lists(
                np.asarray(codes), np.asarray(residuals), np.asarray(doc_offsets), self.n_centroids)
        self.n_docs = int(len(doc_offsets) - 1)

    def with_codes(self, codes: np.ndarray, doc_offsets: np.ndarray, residuals: np.ndarray | None = None) -> "CentroidIndex":
        """A stage with these centroids and codebooks over another store's codes."""
        return CentroidIndex(self.centroids, self.coarse, self.cells, codes=codes, doc_offsets=doc_offsets, pq=self.pq,
                             residuals=residuals)

    def candidates(self, q_vectors: np.ndarray, q_offsets: np.ndarray, n: int, nprobe: int, n_cells: int,
                   allowed: np.ndarray | None = None, probe_budget: int = 0) -> np.ndarray:
        """int64 (n_queries, n) candidate rows per query, best approximate score first, -1 padded.

        Each token of a query of ``n_q`` tokens probes its ``max(nprobe, probe_budget // n_q)`` best
        fine centroids within its ``n_cells`` best coarse cells (``CentroidConfig.probe_cells``);
        queries are scored in groups of equal probe counts."""
        if self.list_offsets is None:
            raise RuntimeError("the centroid stage has no codes attached")
        q_vectors = np.ascontiguousarray(q_vectors, dtype=np.float32)
        q_offsets = np.asarray(q_offsets, dtype=np.int64)
        per_query = probes_per_token(np.diff(q_offsets), nprobe, probe_budget, self.n_centroids)
        groups = np.unique(per_query)
        if groups.size == 1:
            return self._candidates(q_vectors, q_offsets, int(n), int(groups[0]), n_cells, allowed)
        rows = np.empty((q_offsets.size - 1, int(n)), np.int64)
        for p in groups:
            which = np.flatnonzero(per_query == p)
            lengths = q_offsets[which + 1] - q_offsets[which]
            tokens = np.concatenate([np.arange(q_offsets[i], q_offsets[i + 1]) for i in which])
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            rows[which] = self._candidates(q_vectors[tokens], offsets, int(n), int(p), n_cells, allowed)
        return rows

    def _candidates(self, q_vectors, q_offsets, n: int, nprobe: int, n_cells: int, allowed) -> np.ndarray:
        n_queries = q_offsets.size - 1
        top, top_scores = probe_cells(q_vectors, self.coarse, self.centroids, self.cells, int(n_cells), nprobe)
        n_threads = 1 if n_queries == 1 else max(1, min(4, numba.get_num_threads()))  # the kernel's pool
        lut = None if self.pq is None else residual_lut(self.pq, q_vectors)
        rows, _ = centroid_candidates(top_scores, q_offsets, top, self.list_offsets, self.list_docs, self.n_docs, n,
                                      allowed=allowed, n_threads=n_threads, lut=lut,
                                      list_residuals=self.list_residuals)
        return rows

    # -- persistence -------------------------------------------------------------------------------
    def arrays(self) -> dict:
        """The arrays to save (besides the per-token codes): {name: array}."""
        out = {"centroids": self.centroids, "coarse": self.coarse, "cells": self.cells}
        if self.pq is not None:
            out["pq"] = self.pq
        return out

    def nbytes_resident(self) -> int:
        lists = 0 if self.list_docs is None else self.list_docs.nbytes + self.list_offsets.nbytes
        if self.list_residuals is not None:
            lists += self.list_residuals.nbytes + self.pq.nbytes
        return int(self.centroids.nbytes + self.coarse.nbytes + self.cells.nbytes + lists)

    def __repr__(self) -> str:
        return (f"CentroidIndex(n_centroids={self.n_centroids}, coarse={self.coarse.shape[0]}, "
                f"residual_pq={self.residual_bytes}, n_docs={self.n_docs})")


def probes_per_token(lengths: np.ndarray, nprobe: int, probe_budget: int, n_centroids: int) -> np.ndarray:
    """int64 lists probed per token for queries of ``lengths`` tokens: ``max(nprobe, probe_budget // length)``,
    at most ``n_centroids``."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    return np.minimum(np.maximum(int(nprobe), int(probe_budget) // lengths), int(n_centroids))


def residual_lut(pq: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float32 (n, m * 256): ``[i, u * 256 + v]`` = sub-vector ``u`` of ``q[i]`` . codeword ``v`` of codebook ``u``."""
    m, _, ds = pq.shape
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, m, ds)
    return np.ascontiguousarray(np.einsum("ium,uvm->iuv", q, pq).reshape(q.shape[0], m * 256), dtype=np.float32)


def _train_pq(residuals: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Codebooks (m, 256, dim / m) of a product quantiser trained on float32 residuals (n, dim)."""
    dim = residuals.shape[1]
    if dim % m:
        raise ValueError(f"CentroidConfig.residual_pq={m} does not divide the token dimension {dim}")
    pq = faiss.ProductQuantizer(dim, m, 8)
    pq.cp.seed = int(seed)
    pq.cp.niter = _KMEANS_ITERS * 2
    pq.cp.min_points_per_centroid = 1  # small corpora: no warning; the codebooks are as good as their sample
    x = np.ascontiguousarray(residuals, dtype=np.float32)
    if x.shape[0] < 256:  # fewer points than codewords: repeat them (k-means needs k points)
        x = np.ascontiguousarray(np.resize(x, (256, dim)))
    pq.train(x)
    return np.ascontiguousarray(faiss.vector_to_array(pq.centroids).reshape(m, 256, dim // m), dtype=np.float32)


def _pq_encode(pq: np.ndarray, r: np.ndarray) -> np.ndarray:
    """uint8 (n, m): the nearest (L2) codeword of each sub-vector of float32 ``r`` (n, dim)."""
    m, _, ds = pq.shape
    out = np.empty((r.shape[0], m), np.uint8)
    for u in range(m):
        sub = r[:, u * ds : (u + 1) * ds]
        d = (pq[u] * pq[u]).sum(1)[None, :] - 2.0 * (sub @ pq[u].T)  # |sub|^2 is the same for every codeword
        out[:, u] = np.argmin(d, axis=1)
    return out


def _nearest(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row of the highest inner product in ``centroids`` for each row of ``x`` (int64)."""
    if x.shape[0] == 0:
        return np.zeros(0, np.int64)
    return np.argmax(x @ centroids.T, axis=1).astype(np.int64)

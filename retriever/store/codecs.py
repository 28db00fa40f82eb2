"""Token codecs: how an index stores its token vectors (float16, int8, residual codes).

A codec turns float32 token vectors into fixed-width rows of the token store
(``tokens.npy``) and gives the MaxSim kernels a store object that decodes them inside the
kernel (``retriever_kernels.codes``). Choose one with ``IndexConfig(codec=CodecConfig(...))``:

``float16``
    256 bytes per 128-d token; exact to float16 rounding. The reference.
``int8`` (default)
    ``dim + 2`` bytes per token (130 at 128-d, 2x smaller): per-token scale, no training. On
    SciFact and NFCorpus its exact top-10 holds 99.5% of float16's with the same nDCG@10, and
    decoding it in the MaxSim kernel costs less than converting float16 (bench/beir/codec_sweep.py,
    bench/kernels/maxsim.py), so it is the default.
``residual`` with ``nbits`` in {1, 2, 4}
    PLAID / ColBERTv2 residual compression: k-means centroids over a bounded sample of the
    corpus's tokens (FAISS k-means), each token stored as its nearest centroid's id plus
    ``nbits`` per dimension quantising the residual ``x - centroid``; decoded vectors are
    rescaled to unit length, so these codes are for L2-normalised token vectors (what ColBERT
    encoders produce; other inputs are refused with a clear error). Per dimension the
    ``2**nbits`` buckets are cut at the residual's quantiles and decode to the mean residual of
    their bucket (both learned on sample tokens held out from k-means, as PLAID does); PLAID
    shares one set of cut-offs across dimensions, per-dimension ones cost nothing at search.
    At 128-d: 2 + 16 / 32 / 64 bytes per token for 1 / 2 / 4 bits (14x / 7.5x / 3.9x smaller).

"Exact" search (``mode="exact"``) scores the stored representation, so it is exact over what
the index holds; the benchmarks also report agreement with float16. A trained codec is saved
with the index (``codec_*.npy``) and reused for later ``add``; ``compact(retrain=True)``
retrains it on the live tokens (re-encoding the decoded vectors: the original vectors are not
kept).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from retriever_kernels.codes import (
    Int8Rows,
    ResidualRows,
    decode_rows,
    int8_encode,
    residual_lanes,
    residual_pack,
    residual_table,
)

from retriever.core.configs import check_keys, is_int

log = logging.getLogger(__name__)

__all__ = ["CodecConfig", "TokenCodec", "auto_n_centroids", "CODEC_KINDS"]

CODEC_KINDS = ("float16", "int8", "residual")
_NBITS = (1, 2, 4)
_POINTS_PER_CENTROID = 64  # k-means sample per centroid (FAISS's own cap is 256)
_KMEANS_ITERS = 10
_HELD_OUT = 0.1  # share of the sample kept out of k-means for the residual statistics
_ASSIGN_ROWS = 1 << 15  # tokens assigned to centroids per FAISS call


@dataclass(frozen=True)
class CodecConfig:
    """How the token store is encoded (persisted in the manifest).

    Parameters
    ----------
    kind : "int8" (default) | "float16" | "residual"
    nbits : bits per dimension of the residual codes (1, 2 or 4); residual only
    n_centroids : k-means centroids (residual only); ``None`` = :func:`auto_n_centroids` of the
        corpus's token count, decided at build time and recorded in the saved codec
    max_train_bytes : most bytes of float32 sample tokens held for training (residual only)
    seed : k-means and sampling seed
    """

    kind: str = "int8"
    nbits: int = 2
    n_centroids: int | None = None
    max_train_bytes: int = 64 << 20
    seed: int = 1

    def __post_init__(self) -> None:
        if self.kind not in CODEC_KINDS:
            raise ValueError(f"CodecConfig.kind must be one of {CODEC_KINDS}, got {self.kind!r}")
        if not is_int(self.nbits) or self.nbits not in _NBITS:
            raise ValueError(f"CodecConfig.nbits must be one of {_NBITS}, got {self.nbits!r}")
        if self.n_centroids is not None and (not is_int(self.n_centroids) or not 1 <= self.n_centroids <= 1 << 24):
            raise ValueError(f"CodecConfig.n_centroids must be None or an integer in [1, 2**24], got {self.n_centroids!r}")
        if not is_int(self.max_train_bytes) or self.max_train_bytes < 1 << 16:
            raise ValueError(f"CodecConfig.max_train_bytes must be an integer >= 65536, got {self.max_train_bytes!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"CodecConfig.seed must be a non-negative integer, got {self.seed!r}")

    def check_dim(self, dim: int) -> None:
        """``ValueError`` unless token vectors of ``dim`` dimensions can be encoded."""
        per = 8 // self.nbits
        if self.kind == "residual" and dim % per:
            raise ValueError(f"residual codes of {self.nbits} bits need dim divisible by {per}, got {dim}")

    @property
    def name(self) -> str:
        """Short name: ``float16``, ``int8``, ``residual2`` ..."""
        return f"residual{self.nbits}" if self.kind == "residual" else self.kind

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        check_keys(cls, d)
        return cls(**d)

    @classmethod
    def parse(cls, name: str) -> "CodecConfig":
        """``"float16"``, ``"int8"``, ``"residual1"``, ``"residual2"`` or ``"residual4"``."""
        if name in ("float16", "int8"):
            return cls(kind=name)
        if name.startswith("residual") and name[len("residual"):] in ("1", "2", "4"):
            return cls(kind="residual", nbits=int(name[len("residual"):]))
        raise ValueError(f"unknown codec {name!r}; expected float16, int8, residual1, residual2 or residual4")


def auto_n_centroids(n_tokens: int) -> int:
    """Centroids for a corpus of ``n_tokens`` tokens: the power of two nearest ``sqrt(n_tokens) / 4``,
    clipped to [16, 4096] and to ``n_tokens`` (256 for SciFact's 1.48 M and NFCorpus's 1.07 M tokens,
    2,048 for a million 68-token documents).

    PLAID takes ``16 * sqrt(n)``. With per-dimension bucket weights and decoded vectors rescaled to
    unit length, the count matters little here. Exact top-10 agreement with float16 at 256 vs 2,048
    centroids: SciFact train 0.916 vs 0.921 (residual2), 0.969 vs 0.969 (residual4); NFCorpus dev
    0.872 vs 0.881, 0.940 vs 0.947; nDCG@10 within 0.002 either way; codec build time 2-7 s vs
    9-24 s, against an encoder budget of 10% (``bench/beir/codec_sweep.py --splits tune --configs
    residual2:c=256 residual2:c=2048 residual4:c=256 residual4:c=2048``, rows in
    ``bench/results/codecs_tuning.jsonl``). Rerank speed does not depend on the count.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    c = 1 << max(0, round(math.log2(max(1.0, math.sqrt(n_tokens) / 4.0))))
    return int(max(1, min(n_tokens, max(16, min(4096, c)))))


def _nearest(index, x: np.ndarray) -> np.ndarray:
    """Row of the nearest vector of a FAISS L2 index for each row of ``x``, int64 (n,)."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], _ASSIGN_ROWS):
        _, ids = index.search(np.ascontiguousarray(x[s : s + _ASSIGN_ROWS], dtype=np.float32), 1)
        out[s : s + _ASSIGN_ROWS] = ids[:, 0]
    return out


def _check_unit(x: np.ndarray) -> None:
    """Residual codes decode to unit vectors: refuse inputs that are not (zero vectors pass)."""
    norms = np.linalg.norm(x, axis=1)
    bad = (np.abs(norms - 1.0) > 1e-2) & (norms > 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"residual codes store L2-normalised token vectors, but token {i} has norm {norms[i]:.4g} "
            f"({int(bad.sum())} of {x.shape[0]} are not unit length): normalise them, or use codec int8 or float16"
        )


class TokenCodec:
    """A (trained) codec: encodes float32 tokens into store rows and wraps rows for the kernels.

    Create with :meth:`train` (or :meth:`untrained` for the kinds that need no training) and
    :meth:`from_arrays` when loading. ``row_dtype`` / ``row_width`` describe a row of the store.
    """

    def __init__(self, config: CodecConfig, dim: int, centroids=None, cutoffs=None, weights=None) -> None:
        self.config = config
        self.dim = int(dim)
        self.centroids = centroids
        self.cutoffs = cutoffs
        self.weights = weights
        self._table = None
        self._lanes = None
        self._assigner = None
        if config.kind == "residual":
            if centroids is None or cutoffs is None or weights is None:
                raise ValueError("a residual codec needs centroids, cutoffs and weights (train it first)")
            config.check_dim(self.dim)
            b = 1 << config.nbits
            if centroids.shape[1:] != (self.dim,) or cutoffs.shape != (self.dim, b - 1) or weights.shape != (self.dim, b):
                raise ValueError(
                    f"residual codec arrays have shapes {centroids.shape}, {cutoffs.shape}, {weights.shape}; expected "
                    f"(n_centroids, {self.dim}), ({self.dim}, {b - 1}), ({self.dim}, {b})"
                )
            self._table = residual_table(weights)
            self._lanes = residual_lanes(self._table)

    # -- description ---------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def row_dtype(self) -> np.dtype:
        return np.dtype(np.float16) if self.kind == "float16" else np.dtype(np.uint8)

    @property
    def id_bytes(self) -> int:
        return 2 if self.centroids.shape[0] <= 1 << 16 else 4

    @property
    def row_width(self) -> int:
        """Columns of a store row (float16 values for float16, bytes otherwise)."""
        if self.kind == "float16":
            return self.dim
        if self.kind == "int8":
            return self.dim + 2
        return self.id_bytes + self.dim * self.config.nbits // 8

    @property
    def bytes_per_token(self) -> int:
        return self.row_width * self.row_dtype.itemsize

    @property
    def needs_training(self) -> bool:
        return self.kind == "residual"

    def describe(self) -> dict:
        """Manifest entry: the config with the decided ``n_centroids``, and the row layout."""
        d = {"config": self.config.to_dict(), "name": self.config.name, "row_dtype": self.row_dtype.name,
             "row_width": self.row_width, "bytes_per_token": self.bytes_per_token}
        if self.kind == "residual":
            d["n_centroids"] = int(self.centroids.shape[0])
        return d

    # -- construction --------------------------------------------------------------------
    @classmethod
    def untrained(cls, config: CodecConfig, dim: int) -> "TokenCodec":
        if config.kind == "residual":
            raise ValueError("the residual codec must be trained (TokenCodec.train)")
        return cls(config, dim)

    @classmethod
    def train(cls, config: CodecConfig, sample: np.ndarray, n_tokens: int) -> "TokenCodec":
        """Train on float32 sample tokens ``(n, dim)`` from a corpus of ``n_tokens`` tokens."""
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        dim = sample.shape[1]
        if config.kind != "residual":
            return cls(config, dim)
        config.check_dim(dim)
        _check_unit(sample)
        if sample.shape[0] < 1:
            raise ValueError("cannot train a residual codec on an empty sample")
        n_cent = config.n_centroids or auto_n_centroids(n_tokens)
        n_cent = min(n_cent, sample.shape[0])
        rng = np.random.default_rng(config.seed)
        perm = rng.permutation(sample.shape[0])
        n_held = int(sample.shape[0] * _HELD_OUT)
        if n_held < 1024:  # small samples: statistics on all of it
            fit, held = sample[perm], sample
        else:
            fit, held = sample[perm[n_held:]], sample[perm[:n_held]]
        fit = fit[: max(n_cent, _POINTS_PER_CENTROID * n_cent)]
        km = faiss.Kmeans(dim, n_cent, niter=_KMEANS_ITERS, seed=config.seed, max_points_per_centroid=1 << 30,
                          min_points_per_centroid=1, verbose=False)
        km.train(np.ascontiguousarray(fit))
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        resid = held - centroids[_nearest(km.index, held)]  # km.index: a flat L2 index of the centroids
        b = 1 << config.nbits
        cutoffs = np.quantile(resid, np.arange(1, b) / b, axis=0).T.astype(np.float32)  # (dim, b-1)
        cutoffs = np.ascontiguousarray(np.maximum.accumulate(cutoffs, axis=1))
        weights = np.empty((dim, b), dtype=np.float32)
        buckets = (resid[:, :, None] > cutoffs[None, :, :]).sum(axis=2)
        mids = np.quantile(resid, (np.arange(b) + 0.5) / b, axis=0).T  # fallback for an empty bucket
        for j in range(b):
            sel = buckets == j
            cnt = sel.sum(axis=0)
            tot = np.where(sel, resid, 0.0).sum(axis=0)
            weights[:, j] = np.where(cnt > 0, tot / np.maximum(cnt, 1), mids[:, j])
        log.info("trained %s codec: %d centroids on %d sample tokens (%d held out for the residual statistics)",
                 config.name, n_cent, fit.shape[0], held.shape[0])
        return cls(config, dim, centroids, cutoffs, weights)

    @classmethod
    def from_arrays(cls, config: CodecConfig, dim: int, arrays: dict) -> "TokenCodec":
        if config.kind != "residual":
            return cls(config, dim)
        return cls(config, dim, arrays["centroids"], arrays["cutoffs"], arrays["weights"])

    def arrays(self) -> dict:
        """The trained parameters to save: {name: array} (empty for float16 / int8)."""
        if self.kind != "residual":
            return {}
        return {"centroids": self.centroids, "cutoffs": self.cutoffs, "weights": self.weights}

    # -- encode / decode -------------------------------------------------------------------
    def _assign(self, x: np.ndarray) -> np.ndarray:
        if self._assigner is None:
            self._assigner = faiss.IndexFlatL2(self.dim)
            self._assigner.add(self.centroids)
        return _nearest(self._assigner, x)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Store rows ``(n, row_width)`` of ``row_dtype`` for float32 tokens ``x`` ``(n, dim)``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"tokens to encode must have shape (n, {self.dim}), got {x.shape}")
        if self.kind == "float16":
            return x.astype(np.float16)
        # codes are computed from the float16-rounded vectors (what a float16 store holds), so a
        # build (which may spool float16 until the codec is trained) and a later add agree exactly
        x = x.astype(np.float16).astype(np.float32)
        if self.kind == "int8":
            return int8_encode(x)
        _check_unit(x)
        return residual_pack(x, self._assign(x), self.centroids, self.cutoffs, self.config.nbits, self.id_bytes)

    def store(self, rows: np.ndarray):
        """What the MaxSim kernels take for these rows: the array itself, or a compressed store."""
        if self.kind == "float16":
            return rows
        if self.kind == "int8":
            return Int8Rows(rows)
        return ResidualRows(rows, self.centroids, self._table, self._lanes)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``(n, dim)`` vectors of store rows (what search scores against)."""
        if self.kind == "float16":
            return np.asarray(rows, dtype=np.float32)
        return decode_rows(self.store(np.ascontiguousarray(rows)), 0, rows.shape[0])

    def __repr__(self) -> str:
        extra = f", n_centroids={self.centroids.shape[0]}" if self.kind == "residual" else ""
        return f"TokenCodec({self.config.name}, dim={self.dim}, {self.bytes_per_token} B/token{extra})"

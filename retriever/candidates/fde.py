"""MUVERA fixed dimensional encodings (FDE): one vector per multi-vector set.

MUVERA (Dhulipala, Hadian, Jayaram, Lee, Mirrokni, NeurIPS 2024, arXiv 2405.19504) maps a
set of token vectors to a single vector so that the inner product of a query FDE with a
document FDE approximates the Chamfer / MaxSim similarity
``sum_q max_d <q, d>``. Per repetition, ``k`` random Gaussian hyperplanes (SimHash) cut
space into ``B = 2**k`` partitions; each token is projected to ``P`` dimensions and
added to its partition's block. A query block holds the SUM of its tokens, a document
block the AVERAGE; empty document blocks can be filled with the document token whose
SimHash code is nearest to the partition. Repetitions are concatenated
(``R * B * P`` dimensions), optionally followed by a count-sketch to a final dimension.

The semantics follow Google's reference encoder (google/graph-mining,
``sketching/point_cloud/fixed_dimensional_encoding.cc``): Gray-code partition ids,
Hamming-nearest fill, the sparse count-sketch "AMS sketch" inner projection and the
count-sketch final projection. The random matrices are drawn from PCG64 streams, not the
reference's ``std::mt19937``, so outputs are equal in distribution to the reference,
not bit-for-bit.

Encoding is batched: one numba kernel (:func:`retriever_kernels.fde.fde_encode`), parallel over
items, computes the SimHash products, sums the raw tokens of each partition and projects
each partition sum (the projections are linear, so this equals summing projected tokens,
at a fraction of the cost; the count-sketch runs sparse). Queries and documents share
this one code path; only the aggregation (sum or average) and the fill differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from numbers import Integral

import numpy as np
from retriever_kernels.fde import (
    PROJ_DENSE,
    PROJ_IDENTITY,
    PROJ_SPARSE,
    count_sketch_rows,
    count_sketch_rows_serial,
    fde_encode,
    fde_encode_serial,
)

from retriever.store.tokens import TokenEmbeddings, as_token_embeddings

__all__ = ["FDEConfig", "FDEEncoder", "PROJECTION_TYPES"]

PROJECTION_TYPES = ("identity", "dense", "ams_sketch")
MAX_SIMHASH_PROJECTIONS = 30

# Tokens per kernel call: bounds the float32 copy of float16 inputs (32 MB at dim 128).
_CHUNK_TOKENS = 65536
# Below this many tokens a call runs on the calling thread: waking the worker threads
# costs more than the work (one 32-token query: 0.1 ms serial, ~11 ms in parallel when
# another process holds a core).
_PARALLEL_MIN_TOKENS = 4096
# Bound on the (n_items, R*B*P) float32 scratch used before a final projection.
_SCRATCH_BYTES = 64 << 20

# Purpose tags mixed into the seed of each random stream, so that the SimHash
# hyperplanes, inner projections and final projection are independent of each other
# (in the reference the SimHash and AMS matrices of a repetition share one seed).
_SIMHASH, _PROJECTION, _FINAL = 0, 1, 2


def _check_int(label: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as a Python int, or a TypeError / ValueError naming ``label`` and the value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise TypeError(f"{label} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    if lo is not None and value < lo or hi is not None and value > hi:
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{label} must be {rng}, got {value}")
    return value


@dataclass(frozen=True)
class FDEConfig:
    """Settings of a MUVERA fixed dimensional encoding.

    Field names are those of the reference ``fixed_dimensional_encoding_config.proto``
    (google/graph-mining). The input dimension is not part of the config; it is given to
    :class:`FDEEncoder`.

    Parameters
    ----------
    num_repetitions : int, default 20
        ``R``, independent repetitions concatenated. Reference default: 1.
    num_simhash_projections : int in [0, 30], default 5
        ``k``, SimHash hyperplanes per repetition (``2**k`` partitions). Reference
        default: unset (0).
    projection_type : {"identity", "dense", "ams_sketch"}, default "ams_sketch"
        Inner projection of each token before it is added to its partition block.
        ``"identity"`` keeps the input vector; ``"dense"`` is the paper's dense random
        matrix with entries ``+-1/sqrt(projection_dimension)``; ``"ams_sketch"`` is the
        reference's sparse count-sketch (each input coordinate goes, with a random
        sign and no scaling, to one random output coordinate). Reference default:
        identity. Default chosen by measurement (``bench/beir/fde_projection_choice.py``,
        SciFact MiniLM tokens mapped to 128-d, label-free "Chamfer recall@10 at N"): on
        1,000 documents and 200 train queries over 20 seeds the two are tied (N=50:
        0.852 vs 0.850 at (20, 5, 16), 0.791 vs 0.790 at (20, 5, 8); seed std ~0.008),
        as theory suggests (for one inner product, the count-sketch and a +-1 matrix
        give estimates of equal variance). On the whole corpus with the 300 test queries
        (3 seeds) they tie at (20, 5, 16) (N=100: 0.870 vs 0.874) and "dense" leads by
        ~0.01 at P=8. The tie goes to the reference's sketch: it is cheaper (one
        nonzero per input coordinate instead of ``P``; ~20% less encoding time) and
        reproduces the reference encoder's numbers (N=100: 0.870 here and there).
    projection_dimension : int >= 1 or None, default 16
        ``P``, the dimension of projected tokens. Must be None with ``"identity"`` (the
        block then has the input dimension) and an int otherwise. Reference default:
        unset.
    fill_empty_partitions : bool, default True
        Fill each empty document partition with the projected document token whose
        SimHash code is nearest in Hamming distance to the partition's bit pattern
        (ties: the earliest token). Queries are never filled. Reference default: False.
    final_projection_dimension : int >= 1 or None, default None
        If set, count-sketch the concatenated FDE down to this dimension (as the
        reference does). Same default as the reference (unset).
    seed : int >= 0, default 1
        Seed of every random matrix. Same default as the reference. Queries and
        documents must be encoded with the same seed.

    Examples
    --------
    >>> cfg = FDEConfig(num_repetitions=2, num_simhash_projections=3, projection_dimension=4)
    >>> cfg.output_dim(128)
    64
    >>> FDEConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    num_repetitions: int = 20
    num_simhash_projections: int = 5
    projection_type: str = "ams_sketch"
    projection_dimension: int | None = 16
    fill_empty_partitions: bool = True
    final_projection_dimension: int | None = None
    seed: int = 1

    def __post_init__(self) -> None:
        set_ = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731 (frozen)
        set_("num_repetitions", _check_int("FDEConfig.num_repetitions", self.num_repetitions, lo=1))
        set_(
            "num_simhash_projections",
            _check_int(
                "FDEConfig.num_simhash_projections", self.num_simhash_projections, lo=0, hi=MAX_SIMHASH_PROJECTIONS
            ),
        )
        if not isinstance(self.projection_type, str) or self.projection_type not in PROJECTION_TYPES:
            raise ValueError(
                f"FDEConfig.projection_type must be one of {PROJECTION_TYPES}, got {self.projection_type!r}"
            )
        if self.projection_type == "identity":
            if self.projection_dimension is not None:
                raise ValueError(
                    f"FDEConfig.projection_dimension must be None with projection_type='identity' "
                    f"(identity keeps the input dimension), got {self.projection_dimension!r}"
                )
        elif self.projection_dimension is None:
            raise ValueError(
                f"FDEConfig.projection_dimension must be an int >= 1 with "
                f"projection_type={self.projection_type!r}, got None"
            )
        else:
            set_("projection_dimension", _check_int("FDEConfig.projection_dimension", self.projection_dimension, lo=1))
        if not isinstance(self.fill_empty_partitions, (bool, np.bool_)):
            raise TypeError(
                f"FDEConfig.fill_empty_partitions must be a bool, got {self.fill_empty_partitions!r}"
            )
        set_("fill_empty_partitions", bool(self.fill_empty_partitions))
        if self.final_projection_dimension is not None:
            set_(
                "final_projection_dimension",
                _check_int("FDEConfig.final_projection_dimension", self.final_projection_dimension, lo=1),
            )
        set_("seed", _check_int("FDEConfig.seed", self.seed, lo=0))

    @property
    def num_partitions(self) -> int:
        """``B = 2**num_simhash_projections``."""
        return 1 << self.num_simhash_projections

    def block_dim(self, input_dim: int) -> int:
        """Dimension ``P`` of one partition block for inputs of dimension ``input_dim``."""
        return int(input_dim) if self.projection_dimension is None else self.projection_dimension

    def output_dim(self, input_dim: int) -> int:
        """Dimension of the FDE of ``input_dim``-dimensional token vectors.

        ``final_projection_dimension`` if set, else ``R * 2**k * P``.
        """
        input_dim = _check_int("FDEConfig.output_dim: input_dim", input_dim, lo=1)
        if self.final_projection_dimension is not None:
            return self.final_projection_dimension
        return self.num_repetitions * self.num_partitions * self.block_dim(input_dim)

    def to_dict(self) -> dict:
        """The constructor kwargs, JSON-able: ``FDEConfig(**cfg.to_dict()) == cfg``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FDEConfig":
        """Inverse of :meth:`to_dict`. Missing keys take the defaults; unknown keys raise
        ``ValueError`` naming them."""
        if not isinstance(d, dict):
            raise TypeError(f"FDEConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"FDEConfig.from_dict: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**d)


# -- deterministic random streams ---------------------------------------------------------
# Built from the raw PCG64 output (whose stream is fixed by numpy's bit-generator
# stability guarantee) rather than Generator.normal/integers, whose algorithms numpy may
# change between versions: an index saved today must give the same query FDEs after an
# upgrade.


def _bitgen(seed: int, dim: int, purpose: int, rep: int) -> np.random.PCG64:
    return np.random.PCG64(np.random.SeedSequence([seed, dim, purpose, rep]))


def _uniform(bg: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` float64 uniforms in [0, 1) from the top 53 bits of raw draws."""
    return (bg.random_raw(n) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _gaussian(bg: np.random.PCG64, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normals (Box-Muller, cosine branch), float32."""
    n = int(np.prod(shape))
    u1 = 1.0 - _uniform(bg, n)  # (0, 1]
    u2 = _uniform(bg, n)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z.astype(np.float32).reshape(shape)


def _signs(bg: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` independent +-1 values, float32."""
    bits = (bg.random_raw(n) >> np.uint64(63)).astype(np.float32)
    return 2.0 * bits - 1.0


def _indices(bg: np.random.PCG64, n: int, m: int) -> np.ndarray:
    """``n`` uniform integers in [0, m), int64."""
    return np.minimum((_uniform(bg, n) * m).astype(np.int64), m - 1)


def readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class FDEEncoder:
    """Batch MUVERA encoder for one config and one input dimension.

    The constructor does no I/O; every random matrix is derived from
    ``(config.seed, dim)`` alone, so two encoders built with the same arguments (in any
    process) give identical encodings.

    Parameters
    ----------
    config : FDEConfig
    dim : int
        Dimension of the input token vectors.

    Attributes
    ----------
    config : FDEConfig
    dim : int
    output_dim : int
        Dimension of every FDE, ``config.output_dim(dim)``.
    simhash_matrices : ndarray, shape (R, dim, k), float32
        Gaussian hyperplanes of each repetition (read-only).
    projection_matrices : ndarray, shape (R, dim, P), float32, or None
        Inner projection of each repetition as a dense matrix (None for identity):
        ``tokens @ projection_matrices[r]`` are the projected tokens (read-only).
    final_indices : ndarray, shape (R * B * P,), int64, or None
    final_signs : ndarray, shape (R * B * P,), float32, or None
        The final count-sketch: coordinate ``j`` of the concatenated FDE is added, times
        ``final_signs[j]``, to output coordinate ``final_indices[j]`` (read-only).

    Examples
    --------
    >>> enc = FDEEncoder(FDEConfig(num_repetitions=2, num_simhash_projections=2,
    ...                            projection_dimension=4), dim=8)
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((5, 8)), rng.standard_normal((3, 8))]
    >>> enc.encode_documents(docs).shape
    (2, 32)
    >>> enc.encode_queries(rng.standard_normal((4, 8))).shape  # one query = batch of one
    (1, 32)
    """

    def __init__(self, config: FDEConfig, dim: int):
        if not isinstance(config, FDEConfig):
            raise TypeError(f"config must be an FDEConfig, got {type(config).__name__}")
        self.config = config
        self.dim = _check_int("FDEEncoder: dim", dim, lo=1)
        R, k = config.num_repetitions, config.num_simhash_projections
        P = config.block_dim(self.dim)
        self._P = P
        self.output_dim = config.output_dim(self.dim)
        self._inner_dim = R * config.num_partitions * P

        seed = config.seed
        self.simhash_matrices = readonly(
            np.stack([_gaussian(_bitgen(seed, self.dim, _SIMHASH, r), (self.dim, k)) for r in range(R)])
        )
        # Kernel operands: all hyperplanes side by side, and the projection in the form the
        # kernel runs (a dense matrix, or (index, sign) per input coordinate for the
        # count-sketch).
        self._hyperplanes = np.ascontiguousarray(self.simhash_matrices.transpose(1, 0, 2).reshape(self.dim, R * k))
        self._dense = np.zeros((0, 0, 0), dtype=np.float32)
        self._sk_index = np.zeros((0, 0), dtype=np.int64)
        self._sk_sign = np.zeros((0, 0), dtype=np.float32)
        if config.projection_type == "identity":
            self._proj_kind = PROJ_IDENTITY
            self.projection_matrices = None
        elif config.projection_type == "dense":
            self._proj_kind = PROJ_DENSE
            mats = np.stack(
                [_signs(_bitgen(seed, self.dim, _PROJECTION, r), self.dim * P).reshape(self.dim, P) for r in range(R)]
            ) / np.float32(np.sqrt(P))
            self._dense = np.ascontiguousarray(mats, dtype=np.float32)
            self.projection_matrices = readonly(self._dense.copy())
        else:  # ams_sketch: input coordinate d goes, times a random sign, to one random output coordinate
            self._proj_kind = PROJ_SPARSE
            self._sk_index = np.zeros((R, self.dim), dtype=np.int64)
            self._sk_sign = np.zeros((R, self.dim), dtype=np.float32)
            for r in range(R):
                bg = _bitgen(seed, self.dim, _PROJECTION, r)
                self._sk_index[r] = _indices(bg, self.dim, P)
                self._sk_sign[r] = _signs(bg, self.dim)
            mats = np.zeros((R, self.dim, P), dtype=np.float32)
            for r in range(R):
                mats[r, np.arange(self.dim), self._sk_index[r]] = self._sk_sign[r]
            self.projection_matrices = readonly(mats)
        if config.final_projection_dimension is not None:
            bg = _bitgen(seed, self.dim, _FINAL, 0)
            self.final_indices = readonly(_indices(bg, self._inner_dim, config.final_projection_dimension))
            self.final_signs = readonly(_signs(bg, self._inner_dim))
        else:
            self.final_indices = self.final_signs = None

    def __repr__(self) -> str:
        return f"FDEEncoder({self.config!r}, dim={self.dim}, output_dim={self.output_dim})"

    # -- public API ------------------------------------------------------------------------
    def encode_queries(self, queries) -> np.ndarray:
        """Query FDEs: each partition block is the SUM of the item's projected tokens.

        Parameters
        ----------
        queries : TokenEmbeddings, list of (n_i, dim) arrays, or one (n, dim) array
            One 2-D array is a batch of one query. float16 or float32 (torch tensors are
            accepted too).

        Returns
        -------
        ndarray, shape (n_queries, output_dim), float32
        """
        return self._encode(queries, average=False, fill=False)

    def encode_documents(self, documents) -> np.ndarray:
        """Document FDEs: each partition block is the AVERAGE of the item's projected
        tokens; empty blocks are filled when ``config.fill_empty_partitions``.

        Parameters
        ----------
        documents : TokenEmbeddings, list of (n_i, dim) arrays, or one (n, dim) array
            One 2-D array is a batch of one document. A document with no tokens gets an
            all-zero FDE.

        Returns
        -------
        ndarray, shape (n_documents, output_dim), float32
        """
        return self._encode(documents, average=True, fill=self.config.fill_empty_partitions)

    # -- shared query/document path --------------------------------------------------------
    def _encode(self, items, *, average: bool, fill: bool) -> np.ndarray:
        # A TokenEmbeddings is used as is (float16 stays float16 until each chunk is
        # converted), so encoding a large memory-mapped store needs no full fp32 copy.
        te = items if isinstance(items, TokenEmbeddings) else as_token_embeddings(items)
        if te.dim != self.dim:
            raise ValueError(f"token vectors have dim {te.dim}, but this FDEEncoder was built for dim {self.dim}")
        n_items = len(te)
        out = np.zeros((n_items, self.output_dim), dtype=np.float32)
        offsets = te.offsets
        final = self.final_indices is not None
        max_items = max(1, _SCRATCH_BYTES // (4 * self._inner_dim)) if final else n_items
        i0 = 0
        while i0 < n_items:
            i1 = int(np.searchsorted(offsets, offsets[i0] + _CHUNK_TOKENS, side="right")) - 1
            i1 = min(max(i1, i0 + 1), i0 + max_items, n_items)
            if final:
                scratch = np.zeros((i1 - i0, self._inner_dim), dtype=np.float32)
                self._encode_chunk(te, i0, i1, average, fill, scratch)
                sketch = count_sketch_rows if i1 - i0 > 1 and self._parallel(te, i0, i1) else count_sketch_rows_serial
                sketch(scratch, self.final_indices, self.final_signs, out[i0:i1])
            else:
                self._encode_chunk(te, i0, i1, average, fill, out[i0:i1])
            i0 = i1
        return out

    @staticmethod
    def _parallel(te: TokenEmbeddings, i0: int, i1: int) -> bool:
        return int(te.offsets[i1] - te.offsets[i0]) >= _PARALLEL_MIN_TOKENS

    def _encode_chunk(self, te: TokenEmbeddings, i0: int, i1: int, average: bool, fill: bool, out) -> None:
        """Encode items ``[i0, i1)`` into ``out`` (shape ``(i1 - i0, R * B * P)``, zero-filled)."""
        cfg = self.config
        t0, t1 = int(te.offsets[i0]), int(te.offsets[i1])
        x = np.ascontiguousarray(te.vectors[t0:t1], dtype=np.float32)
        local_offsets = np.ascontiguousarray(te.offsets[i0 : i1 + 1] - t0)
        kernel = fde_encode if i1 - i0 > 1 and self._parallel(te, i0, i1) else fde_encode_serial
        kernel(
            x,
            local_offsets,
            self._hyperplanes,
            cfg.num_repetitions,
            cfg.num_simhash_projections,
            self._P,
            self._proj_kind,
            self._dense,
            self._sk_index,
            self._sk_sign,
            average,
            fill,
            out,
        )

"""Ragged token-embedding sets in CSR form: one ``(n_tokens, dim)`` array plus offsets.

Every set of multi-vector embeddings in the engine (a batch of queries, a batch of
documents, the on-disk token store) uses this layout, the same as FAISS range-search
``lims`` and fast-plaid ``doclens``: the tokens of item ``i`` are
``vectors[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["TokenEmbeddings", "as_token_embeddings"]


@dataclass(frozen=True)
class TokenEmbeddings:
    """A batch of variable-length token-embedding sets.

    Parameters
    ----------
    vectors : ndarray, shape (n_tokens, dim), float16 or float32
        All token vectors, item after item.
    offsets : ndarray, shape (n_items + 1,), int64
        ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == n_tokens``.
    """

    vectors: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        v, o = self.vectors, self.offsets
        if not isinstance(v, np.ndarray) or v.ndim != 2:
            raise ValueError(f"vectors must be a 2-D array (n_tokens, dim), got {getattr(v, 'shape', type(v))}")
        if v.dtype not in (np.float16, np.float32):
            raise TypeError(f"vectors must be float16 or float32, got dtype {v.dtype}")
        if not isinstance(o, np.ndarray) or o.ndim != 1 or o.dtype != np.int64:
            raise TypeError("offsets must be a 1-D int64 array")
        if o.size < 1 or o[0] != 0 or o[-1] != v.shape[0]:
            raise ValueError(
                f"offsets must start at 0 and end at n_tokens={v.shape[0]}, got "
                f"{o[:1].tolist()}...{o[-1:].tolist()}"
            )
        if o.size > 1 and np.any(np.diff(o) < 0):
            raise ValueError("offsets must be non-decreasing")

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_list(cls, arrays: Sequence[np.ndarray], dtype=np.float32) -> "TokenEmbeddings":
        """Stack a list of ``(n_i, dim)`` arrays (numpy or torch) into CSR form."""
        mats = [_as_2d(a, i) for i, a in enumerate(arrays)]
        if not mats:
            raise ValueError("no token-embedding sets given (empty list)")
        dims = {m.shape[1] for m in mats}
        if len(dims) != 1:
            raise ValueError(f"all token-embedding sets must have the same dim, got dims {sorted(dims)}")
        lengths = np.fromiter((m.shape[0] for m in mats), dtype=np.int64, count=len(mats))
        offsets = np.zeros(len(mats) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        vectors = np.concatenate(mats, axis=0).astype(dtype, copy=False)
        return cls(np.ascontiguousarray(vectors), offsets)

    # -- views ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"item {i} out of range for {n} items")
        i %= n
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per item, shape (n_items,), int64."""
        return np.diff(self.offsets)

    def select(self, rows: Sequence[int] | np.ndarray) -> "TokenEmbeddings":
        """The items at ``rows`` (in that order), as a new contiguous batch."""
        rows = np.asarray(rows, dtype=np.int64)
        return TokenEmbeddings.from_list([self[int(r)] for r in rows], dtype=self.vectors.dtype)

    def check_finite(self, what: str = "embeddings") -> None:
        """Raise ``ValueError`` naming the first item that holds NaN or inf."""
        bad = ~np.isfinite(self.vectors).all(axis=1)
        if bad.any():
            tok = int(np.flatnonzero(bad)[0])
            item = int(np.searchsorted(self.offsets, tok, side="right") - 1)
            raise ValueError(f"{what}: item {item} holds a NaN or inf value (token {tok - self.offsets[item]})")


def _as_2d(a, i: int) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, without importing torch here
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"token-embedding set {i} must be 2-D (n_tokens, dim), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"token-embedding set {i} must be floating point, got dtype {a.dtype}")
    return a


def as_token_embeddings(x, dtype=np.float32) -> TokenEmbeddings:
    """Accept a ``TokenEmbeddings``, one ``(n, dim)`` array (a single item), or a list of arrays."""
    if isinstance(x, TokenEmbeddings):
        if x.vectors.dtype != dtype:
            return TokenEmbeddings(x.vectors.astype(dtype), x.offsets)
        return x
    if isinstance(x, np.ndarray) or hasattr(x, "detach"):
        arr = _as_2d(x, 0) if getattr(x, "ndim", 0) == 2 else None
        if arr is not None:
            return TokenEmbeddings.from_list([arr], dtype=dtype)
        if getattr(x, "ndim", 0) == 3:  # (n_items, n_tokens, dim), equal lengths
            return TokenEmbeddings.from_list(list(x), dtype=dtype)
        raise ValueError(f"token embeddings must be 2-D or 3-D, got shape {tuple(x.shape)}")
    if isinstance(x, Iterable) and not isinstance(x, (str, bytes)):
        return TokenEmbeddings.from_list(list(x), dtype=dtype)
    raise TypeError(f"cannot interpret {type(x).__name__} as token embeddings")

"""Independent, plain per-item numpy reference of MUVERA FDE (the oracle for retriever.candidates.fde).

Written directly from the reference C++ (google/graph-mining,
``sketching/point_cloud/fixed_dimensional_encoding.cc``), one item and one repetition at
a time, without sharing code with ``retriever/fde.py`` or ``kernels/retriever_kernels/fde.py``. It takes
the random matrices as arguments (drawing them is tested separately), so the batch
encoder can be compared with it exactly.
"""

from __future__ import annotations

import numpy as np


def append_to_gray_code(gray_code: int, bit: bool) -> int:
    """The reference's ``AppendToGrayCode``."""
    return (gray_code << 1) + (int(bit) ^ (gray_code & 1))


def simhash_partition_index(sketch_row: np.ndarray) -> int:
    """The reference's ``SimHashPartitionIndex``: hyperplane 0 is the most significant bit."""
    index = 0
    for value in sketch_row:
        index = append_to_gray_code(index, value > 0)
    return index


def distance_to_partition(sketch_row: np.ndarray, index: int) -> int:
    """The reference's ``DistanceToSimHashPartition``: Hamming distance between the
    token's bits and the bit pattern ``index ^ (index >> 1)`` of partition ``index``."""
    pattern = index ^ (index >> 1)
    distance = 0
    for i in range(len(sketch_row) - 1, -1, -1):
        distance += int((1 if sketch_row[i] > 0 else 0) != (pattern & 1))
        pattern >>= 1
    return distance


def partition_indices(sketch: np.ndarray) -> np.ndarray:
    """``simhash_partition_index`` of every row of ``sketch`` (n, k), vectorised over rows."""
    index = np.zeros(sketch.shape[0], dtype=np.int64)
    for i in range(sketch.shape[1]):
        bit = (sketch[:, i] > 0).astype(np.int64)
        index = (index << 1) + (bit ^ (index & 1))
    return index


def distances_to_partition(sketch: np.ndarray, index: int) -> np.ndarray:
    """``distance_to_partition`` of every row of ``sketch`` (n, k) to partition ``index``."""
    k = sketch.shape[1]
    pattern = index ^ (index >> 1)
    pattern_bits = np.array([(pattern >> (k - 1 - i)) & 1 for i in range(k)], dtype=bool)
    return ((sketch > 0) != pattern_bits).sum(axis=1)


def fde_reference(
    points: np.ndarray,
    simhash_matrices: np.ndarray,
    projection_matrices: np.ndarray | None,
    *,
    average: bool,
    fill_empty_partitions: bool,
    final_indices: np.ndarray | None = None,
    final_signs: np.ndarray | None = None,
    final_dim: int | None = None,
) -> np.ndarray:
    """FDE of one point cloud.

    Parameters
    ----------
    points : ndarray, shape (n, dim)
    simhash_matrices : ndarray, shape (R, dim, k)
    projection_matrices : ndarray, shape (R, dim, P), or None for identity
    average : bool
        True for documents (AVERAGE), False for queries (SUM).
    fill_empty_partitions : bool
        Only honoured when ``average`` (the reference rejects it for queries).
    final_indices, final_signs, final_dim
        Optional count-sketch to ``final_dim``.

    Returns
    -------
    ndarray, shape (R * 2**k * P,) or (final_dim,), float64
    """
    points = np.asarray(points, dtype=np.float64)
    n, dim = points.shape
    R, _, k = simhash_matrices.shape
    P = dim if projection_matrices is None else projection_matrices.shape[2]
    B = 2**k
    out = np.zeros((R, B, P), dtype=np.float64)
    for r in range(R):
        sketch = points @ simhash_matrices[r].astype(np.float64)
        if projection_matrices is None:
            projected = points
        else:
            projected = points @ projection_matrices[r].astype(np.float64)
        parts = partition_indices(sketch)
        np.add.at(out[r], parts, projected)
        if not average:
            continue
        sizes = np.bincount(parts, minlength=B)
        nonempty = sizes > 0
        out[r, nonempty] /= sizes[nonempty, None]
        if k > 0 and fill_empty_partitions and n > 0:
            for p in np.flatnonzero(~nonempty):
                # first of the minima, like the reference's strict '<'
                out[r, p] = projected[int(np.argmin(distances_to_partition(sketch, int(p))))]
    out = out.reshape(-1)
    if final_dim is not None:
        final = np.zeros(final_dim)
        np.add.at(final, final_indices, final_signs.astype(np.float64) * out)
        return final
    return out


def fde_reference_encoder(encoder, items, *, documents: bool) -> np.ndarray:
    """Encode a list of ``(n_i, dim)`` arrays with ``encoder``'s matrices and config,
    one item at a time. Returns float64, shape (n_items, encoder.output_dim)."""
    cfg = encoder.config
    return np.stack(
        [
            fde_reference(
                pts,
                encoder.simhash_matrices,
                encoder.projection_matrices,
                average=documents,
                fill_empty_partitions=documents and cfg.fill_empty_partitions,
                final_indices=encoder.final_indices,
                final_signs=encoder.final_signs,
                final_dim=cfg.final_projection_dimension,
            )
            for pts in items
        ]
    )

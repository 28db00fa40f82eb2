"""Batch rerank with pairs grouped by document (one decode per shared document) against query by query.

Usage::

    .venv/bin/python bench/kernels/batch_rerank.py INDEX_DIR N QUERIES.npz

Takes the first 300 queries of ``QUERIES.npz`` (``vectors``, ``offsets``; e.g. ``index_data/scale/queries-report.npz``
written by ``bench/scale/scale.py``), fetches N FDE candidates per query from INDEX_DIR's FAISS index, checks that the
grouped kernel (what ``maxsim_scores_batch`` runs for a batch) and the per-pair kernel (what it runs for one query)
give bit-identical scores, and prints the seconds of three interleaved runs of each.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

import common  # noqa: E402,F401  (puts the repository root on sys.path)
import retriever_kernels.maxsim as km  # noqa: E402
from retriever import Retriever  # noqa: E402
from retriever.candidates.ann import faiss_search  # noqa: E402
from retriever.store.tokens import TokenEmbeddings  # noqa: E402


def per_pair(q_vectors, q_offsets, store, offsets, candidates) -> np.ndarray:
    """The batch scored pair by pair (the kernel single queries use)."""
    out = np.empty(candidates.shape, dtype=np.float32)
    qp, q_chunks, q_ntok, max_chunks = km._pack_per_query(q_vectors, q_offsets)
    km._pairs_kernel(qp, q_chunks, q_ntok, store, offsets, km.readonly(candidates), max_chunks, out)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(argv) != 3:
        raise SystemExit(__doc__)
    path, n_cand, qfile = argv[0], int(argv[1]), argv[2]
    r = Retriever.load(path)
    with np.load(qfile) as z:
        o = z["offsets"]
        n = min(300, o.size - 1)
        q = TokenEmbeddings(np.ascontiguousarray(z["vectors"][: o[n]], dtype=np.float32), o[: n + 1])
    cand = faiss_search(r.faiss_index, r.fde_encoder.encode_queries(q), n_cand)
    print(f"{cand.size} pairs over {np.unique(cand[cand >= 0]).size} distinct documents")
    args = (q.vectors, q.offsets, r.store, r.doc_offsets, cand)
    grouped = km._score_pairs(*args)
    assert np.array_equal(grouped, per_pair(*args)), "the two kernels disagree"
    print("bit-identical: yes")
    for _ in range(3):
        for name, f in (("per pair", per_pair), ("grouped", km._score_pairs)):
            t = time.perf_counter()
            f(*args)
            print(f"{name}: {time.perf_counter() - t:.3f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

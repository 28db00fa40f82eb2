"""Does the centroid stage's residual refinement pay? The same index, centroids and queries, with and without it.

Usage::

    # a BEIR collection (index built by `retriever index` / cached by `retriever bench`), its dev/train queries
    .venv/bin/python bench/scale/centroid_residuals.py --index PATH --beir ../shared/beir/nfcorpus --split dev \
        --n-candidates 200 300 400 600
    # the scale corpora: their cached query embeddings and ground truth (bench/scale/scale.py, bench/scale/realtext.py)
    .venv/bin/python bench/scale/centroid_residuals.py --index index_data/realtext/index-int8 \
        --queries index_data/realtext/queries.npz --q0 200 --gt index_data/realtext/index-int8.gt-heldout-tune-200-400.npy

The index is loaded once. Without residual codes in it, its stage is rebuilt in memory with
``residual_pq=4`` (the same seed, so the same centroids); the "centroid scores only" variant is that
stage without its residual codes (same centroids and token codes, inverted lists of distinct
(centroid, document) pairs). Per variant and N: Chamfer recall@10 against exact MaxSim over the same
stored tokens (``--gt``, else computed here with ``mode="exact"``), single-query p50 / p99 (one query
per call after a warm-up) and batch QPS (every query in one call, both cores), with the variant order
alternated per N so that neither always runs on a warmer machine. Rows are printed and appended to
``bench/results/centroid_residuals.jsonl`` with the 1-minute load average (``load_1min``) and the common
envelope (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, append_rows  # noqa: E402  (also puts the repository root on sys.path)
from scale import measure_search  # noqa: E402  (this script's folder)

from retriever import Retriever  # noqa: E402
from retriever.candidates.centroids import CentroidIndex  # noqa: E402
from retriever.index.retriever import _warmup  # noqa: E402
from retriever.store.tokens import TokenEmbeddings  # noqa: E402

log = logging.getLogger("bench.centroid_residuals")
RESULTS = RESULTS_DIR / "centroid_residuals.jsonl"


def beir_queries(directory: Path, split: str, r: Retriever) -> TokenEmbeddings:
    from retriever.core.beir import read_qrels, read_queries
    from retriever.encoders.colbert import ColBERTEncoder

    q = read_queries(directory / "queries.jsonl")
    rel = read_qrels(directory / "qrels" / f"{split}.tsv")
    enc = r.encoder if r.encoder is not None else ColBERTEncoder.from_pretrained("default")
    return enc.encode_queries([q[i] for i in rel if i in q])


def measure(r: Retriever, queries: TokenEmbeddings, gt: np.ndarray, n: int, nprobe: int | None) -> dict:
    singles = [queries.select([i]) for i in range(len(queries))]
    return {"n_candidates": n, **measure_search(r, queries, gt, queries, singles, k=10, n_candidates=n,
                                                mode="centroids", nprobe=nprobe)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, type=Path)
    ap.add_argument("--beir", type=Path, help="BEIR collection whose --split queries to encode")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--queries", type=Path, help="cached query embeddings (.npz with vectors, offsets)")
    ap.add_argument("--q0", type=int, default=0, help="first query of --queries to use")
    ap.add_argument("--gt", type=Path, help="cached exact top-10 rows of those queries (.npy)")
    ap.add_argument("--max-queries", type=int, default=400)
    ap.add_argument("--n-candidates", type=int, nargs="+", default=[400, 1000])
    ap.add_argument("--nprobe", type=int, default=None, help="lists per query token (default: the index's setting)")
    ap.add_argument("--probe-budget", type=int, default=None,
                    help="lists per query when --nprobe is not given (default: the index's setting)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if (args.beir is None) == (args.queries is None):
        ap.error("give exactly one of --beir and --queries")
    r = Retriever.load(args.index)
    _warmup(r.config.codec.kind)
    if args.beir is not None:
        q = beir_queries(args.beir, args.split, r)
        name = f"{args.beir.name}/{args.split}"
    else:
        with np.load(args.queries) as z:
            q = TokenEmbeddings(z["vectors"], z["offsets"])
        name = f"{args.queries}[{args.q0}:]"
    gt = np.load(args.gt) if args.gt is not None else None
    n_q = min(len(q) - args.q0, args.max_queries, len(gt) if gt is not None else 1 << 30)
    q = q.select(range(args.q0, args.q0 + n_q))
    if gt is None:
        t = time.perf_counter()
        gt = r.search(q, k=10, mode="exact").rows
        log.info("exact top-10 of %d queries: %.1f s", n_q, time.perf_counter() - t)
    gt = gt[:n_q]
    if args.probe_budget is not None:
        r.config = dataclasses.replace(r.config, centroids=dataclasses.replace(r.config.centroids,
                                                                               probe_budget=args.probe_budget))
    stage = r.centroid_stage
    if stage is None or stage.pq is None:
        n_cent = stage.n_centroids if stage is not None else None
        r.rebuild_centroids(dataclasses.replace(r.config.centroids, enabled=True, n_centroids=n_cent, residual_pq=4))
        stage = r.centroid_stage
    variants = {"residual_pq": stage,
                "centroid_scores": CentroidIndex(stage.centroids, stage.coarse, stage.cells,
                                                 codes=np.asarray(stage.codes), doc_offsets=r.doc_offsets)}
    for i, n in enumerate(args.n_candidates):
        order = list(variants) if i % 2 == 0 else list(variants)[::-1]
        for v in order:
            r.centroid_stage = variants[v]
            row = {"queries": name, "index": str(args.index), "n_docs": r.n_docs, "n_tokens": r.n_tokens,
                   "n_centroids": stage.n_centroids, "variant": v,
                   "residual_bytes": stage.residual_bytes if v == "residual_pq" else 0,
                   "stage_bytes_per_doc": round(variants[v].nbytes_resident() / r.n_docs),
                   "nprobe": args.nprobe or r.config.centroids.nprobe,
                   "probe_budget": 0 if args.nprobe else r.config.centroids.probe_budget, "n_queries": n_q,
                   **measure(r, q, gt, n, args.nprobe),
                   "load_1min": round(os.getloadavg()[0], 2)}
            print(json.dumps(row), flush=True)
            append_rows(RESULTS, [row], bench="scale/centroid_residuals")
    return 0


if __name__ == "__main__":
    sys.exit(main())

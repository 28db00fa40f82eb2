"""Recall-vs-latency sweep: n_candidates x FDE settings on SciFact and NFCorpus, baselines included.

Usage::

    .venv/bin/python bench/beir/sweep.py                   # report splits (test) -> results.jsonl
    .venv/bin/python bench/beir/sweep.py --splits tune     # train/dev -> tuning.jsonl (choose defaults here)
    .venv/bin/python bench/beir/report.py                  # -> results.md + tradeoff.png

For each collection and split, one :func:`retriever.evaluation.benchmark.run_benchmark` call: the corpus is
encoded once (the first FDE setting's index is built from text, or loaded from the cache); every
other FDE setting's index is built from that index's token store, so only the FDE and FAISS steps
run again. The queries are encoded once; the exact MaxSim top-k is computed once and cached.
Baselines (exhaustive MaxSim, single-vector, BM25) run on the report split; on the tune split only
exhaustive MaxSim runs (its quality is the reference the defaults are chosen against).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import COLLECTIONS, RESULTS_DIR, ROOT, collection_dir  # noqa: E402

from retriever.evaluation.benchmark import BASELINES, BenchSettings, run_benchmark, summary  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.candidates.fde import FDEConfig  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402

N_CANDIDATES = (50, 100, 200, 500, 1000, 2000)
FDE_SETTINGS = ("20,5,16", "20,5,8", "20,4,8")  # (num_repetitions, num_simhash_projections, projection_dimension)


def fde_config(spec: str) -> IndexConfig:
    """``"R,k,P"`` -> an IndexConfig with that FDE (default projection type, fill, seed)."""
    try:
        reps, ksim, proj = (int(x) for x in spec.split(","))
    except ValueError:
        raise SystemExit(f"error: FDE setting {spec!r} is not 'R,k,P' (three integers)") from None
    # float16 store: the FDE settings were tuned, and are compared, over the unquantised tokens
    return IndexConfig(fde=FDEConfig(num_repetitions=reps, num_simhash_projections=ksim, projection_dimension=proj),
                       codec="float16")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    p.add_argument("--splits", nargs="+", default=["report"], choices=["report", "tune"])
    p.add_argument("--n-candidates", type=int, nargs="+", default=list(N_CANDIDATES))
    p.add_argument("--fde", nargs="+", default=list(FDE_SETTINGS), help="FDE settings 'R,k,P'; the first is built from text")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--timing-queries", type=int, default=None, help="time single queries on this many (default: all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--results", type=Path, default=RESULTS_DIR / "results.jsonl")
    p.add_argument("--tune-results", type=Path, default=RESULTS_DIR / "tuning.jsonl")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "index_data" / "bench")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    configs = [fde_config(s) for s in args.fde]
    encoder = ColBERTEncoder.from_pretrained("default")
    for name in args.datasets:
        for which in args.splits:
            split = COLLECTIONS[name][which]
            settings = BenchSettings(k=args.k, n_candidates=tuple(args.n_candidates), threads=args.threads,
                                     timing_queries=args.timing_queries,
                                     baselines=BASELINES if which == "report" else ("exhaustive",))
            rows = run_benchmark(collection_dir(name), split=split, index_configs=configs, encoder=encoder,
                                 settings=settings, results=args.results if which == "report" else args.tune_results,
                                 cache_dir=args.cache_dir, show_progress=True)
            for row in rows:
                print(json.dumps(summary(row)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

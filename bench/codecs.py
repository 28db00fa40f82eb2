"""Token codecs x pooling on SciFact and NFCorpus: quality, store size, build and rerank cost.

Usage::

    .venv/bin/python bench/codecs.py --splits tune                       # train/dev -> codecs_tuning.jsonl
    .venv/bin/python bench/codecs.py                                     # test -> codecs.jsonl
    .venv/bin/python bench/codecs.py --configs residual2 residual2:c=4096 --splits tune
    .venv/bin/python bench/report.py                                     # tables + plot

A config is ``CODEC[:c=N_CENTROIDS][+poolF]`` with CODEC in float16, int8, residual1, residual2,
residual4, e.g. ``residual2+pool2`` or ``float16+pool3``. For each collection and split, one
:func:`retriever.benchmark.run_benchmark` call: the float16 index (built from text, or the cached
one) comes first and defines the exact MaxSim top-k every Chamfer recall is measured against;
every other config is built from its token store (pooling and codec training/encoding run, the
encoder does not). Each compressed config gets two rows: ``exhaustive`` (exact MaxSim over what
that index stores: the codec's own loss) and ``fde`` (the default pipeline, FDE candidates +
rerank over the codes). Build timings (``codec_s``, ``pool_s``) are in each row's ``build``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import COLLECTIONS, ROOT, collection_dir  # noqa: E402

from retriever.benchmark import BenchSettings, run_benchmark, summary  # noqa: E402
from retriever.codecs import CodecConfig  # noqa: E402
from retriever.encoder import ColBERTEncoder  # noqa: E402
from retriever.index import IndexConfig  # noqa: E402

CONFIGS = ("int8", "residual4", "residual2", "residual1", "float16+pool2", "residual2+pool2", "residual2+pool3",
           "residual4+pool2")


def parse_config(spec: str) -> IndexConfig:
    """``CODEC[:c=N][+poolF]`` -> IndexConfig (default FDE and FAISS settings)."""
    m = re.fullmatch(r"(float16|int8|residual[124])(?::c=(\d+))?(?:\+pool(\d+))?", spec)
    if not m:
        raise SystemExit(f"error: config {spec!r} is not CODEC[:c=N][+poolF]")
    codec = CodecConfig.parse(m.group(1))
    if m.group(2):
        codec = CodecConfig(kind=codec.kind, nbits=codec.nbits, n_centroids=int(m.group(2)))
    return IndexConfig(codec=codec, pool_factor=int(m.group(3) or 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    p.add_argument("--splits", nargs="+", default=["report"], choices=["report", "tune"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="CODEC[:c=N][+poolF] (float16 always runs first)")
    p.add_argument("--n-candidates", type=int, nargs="+", default=[1500])
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--timing-queries", type=int, default=200, help="time single queries on this many")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "codecs.jsonl")
    p.add_argument("--tune-results", type=Path, default=ROOT / "bench" / "results" / "codecs_tuning.jsonl")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "index_data" / "bench")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    configs = [IndexConfig()] + [parse_config(s) for s in args.configs if s != "float16"]
    encoder = ColBERTEncoder.from_pretrained("default")
    for name in args.datasets:
        for which in args.splits:
            settings = BenchSettings(k=args.k, n_candidates=tuple(args.n_candidates), threads=args.threads,
                                     timing_queries=args.timing_queries, baselines=("exhaustive",))
            rows = run_benchmark(collection_dir(name), split=COLLECTIONS[name][which], index_configs=configs,
                                 encoder=encoder, settings=settings,
                                 results=args.results if which == "report" else args.tune_results,
                                 cache_dir=args.cache_dir, show_progress=True)
            for row in rows:
                print(json.dumps({**summary(row), "codec": row.get("codec"), "pool": row.get("pool_factor"),
                                  "B/token": row.get("token_bytes_per_token"),
                                  "store_B/doc": row.get("store_bytes_per_doc")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

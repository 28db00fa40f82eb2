"""``retriever bench``: the command line of the BEIR benchmark harness (``retriever.evaluation.benchmark``)."""

from __future__ import annotations

import argparse
import json
import logging

from retriever.cli.args import (
    add_encoder_args,
    add_index_config_args,
    auto_or_int,
    encoder_from_args,
    index_config_from_args,
    n_candidates_help,
)
from retriever.evaluation.benchmark import (
    BASELINES,
    DEFAULT_CACHE_DIR,
    DEFAULT_RESULTS,
    BenchSettings,
    run_benchmark,
    summary,
)

log = logging.getLogger(__name__)

def add_bench_parser(subparsers) -> None:
    """Register ``retriever bench`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("bench", help="benchmark on a BEIR collection; appends JSON rows to a results file")
    p.add_argument("--data", required=True, help="BEIR collection directory (e.g. ../shared/beir/scifact)")
    p.add_argument("--split", default="test", help="qrels split whose queries are run (default: test)")
    p.add_argument("--k", type=int, default=100, help="results per query (default: 100)")
    p.add_argument("--n-candidates", type=auto_or_int, nargs="+", default=["auto"],
                   help=f"candidates reranked per query, or 'auto' ({n_candidates_help()}); one row each "
                        "(default: auto)")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="JSONL file to append rows to")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="cached indexes and exact results")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"comma-separated subset of {','.join(BASELINES)}, or 'none'")
    p.add_argument("--threads", type=int, default=None, help="threads for numba, FAISS and torch")
    p.add_argument("--timing-queries", type=_count_or_all, default=200,
                   help="latencies and QPS are timed on this many queries, drawn with a fixed seed (default: 200); "
                        "'all' times every query. Quality always covers every query, from one batched pass")

    add_encoder_args(p, "default")
    add_index_config_args(p)
    p.set_defaults(func=cmd_bench)


def _count_or_all(text: str) -> int | None:
    """``--timing-queries``: a positive int, or ``"all"`` (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return n


def cmd_bench(args) -> int:
    """Run :func:`run_benchmark` from parsed arguments; prints one summary line per row."""

    baselines = () if args.baselines.strip() == "none" else tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    settings = BenchSettings(k=args.k, n_candidates=tuple(args.n_candidates), baselines=baselines,
                             threads=args.threads, timing_queries=args.timing_queries)
    encoder = encoder_from_args(args)
    config = index_config_from_args(args)
    configs = [config]
    if not config.exact_store:
        # the float16 store first: the exact top-k that codec / pooling rows are compared with
        from dataclasses import replace

        from retriever.store.codecs import CodecConfig

        configs = [replace(config, codec=CodecConfig(kind="float16"), pool_factor=1, word_pooling=False), config]
    rows = run_benchmark(args.data, split=args.split, index_configs=configs, encoder=encoder, settings=settings,
                         results=args.results, cache_dir=args.cache_dir, show_progress=not args.quiet)
    for x in rows:
        print(json.dumps(summary(x)))
    log.info("appended %d rows to %s", len(rows), args.results)
    return 0

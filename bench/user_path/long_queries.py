"""What keeping long queries whole costs: ``long_queries="extend"`` against ColBERT's truncation.

The default encoder keeps a query's tokens up to ``document_length`` (512) instead of cutting it at
``query_length`` (64). MaxSim costs grow with the number of query tokens, so long queries cost more to
encode and to search. On the real-text corpus of ``bench/scale/realtext.py`` (300,000 documents; its 1,000
held-out queries, 12.6% of them longer than 64 tokens), in one run: query tokens, encoder time and
search time (default pipeline, MaxSim only) for both settings, over all queries and over the long ones.

    .venv/bin/python bench/user_path/long_queries.py --index index_data/realtext/index-int8 \
        --queries index_data/realtext/queries.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows  # noqa: E402  (also puts the repository root on sys.path)

from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.index.retriever import Retriever  # noqa: E402

log = logging.getLogger("bench.long_queries")


def _p50(fn, items) -> float:
    t = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        t.append(time.perf_counter() - t0)
    return round(float(np.median(t)) * 1e3, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=str(ROOT / "index_data" / "realtext" / "index-int8"))
    ap.add_argument("--queries", default=str(ROOT / "index_data" / "realtext" / "queries.jsonl"))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--results", default=str(RESULTS_DIR / "long_queries.jsonl"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    texts = [json.loads(x)["text"] for x in Path(args.queries).read_text().splitlines()]
    r = Retriever.load(args.index)
    rows = []
    enc = {mode: ColBERTEncoder.from_pretrained("default", long_queries=mode) for mode in ("truncate", "extend")}
    q = {mode: e.encode_queries(texts) for mode, e in enc.items()}
    long_ix = np.flatnonzero(q["extend"].lengths > q["truncate"].lengths)
    for mode, e in enc.items():
        qs = q[mode]
        singles = [qs.select([i]) for i in range(len(texts))]
        for i in range(5):
            r.search(singles[i], k=args.k, hybrid=False)
        row = {"long_queries": mode, "n_queries": len(texts), "n_long": int(long_ix.size),
               "mean_tokens": round(float(qs.lengths.mean()), 2), "max_tokens": int(qs.lengths.max()),
               "mean_tokens_long": round(float(qs.lengths[long_ix].mean()), 2) if long_ix.size else None,
               "encode_p50_ms": _p50(lambda t: e.encode_queries([t]), texts),
               "search_p50_ms": _p50(lambda s: r.search(s, k=args.k, hybrid=False), singles),
               "search_p50_ms_long": _p50(lambda s: r.search(s, k=args.k, hybrid=False), [singles[i] for i in long_ix]),
               "encode_p50_ms_long": _p50(lambda t: e.encode_queries([t]), [texts[i] for i in long_ix]),
               "n_docs": r.n_docs, "load_avg_1m": round(os.getloadavg()[0], 2),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rows.append(row)
        print(json.dumps(row))
    append_rows(args.results, rows, bench="user_path/long_queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())

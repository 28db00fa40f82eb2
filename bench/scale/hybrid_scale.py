"""What the hybrid signals cost at scale: BM25 over the real-text corpus, the dense scan at 100k-1M.

A hybrid search adds to the MaxSim pipeline (``retriever.hybrid.fusion``): the BM25 top-``depth`` (an
inverted-index pass over the query terms' postings), the dense top-``depth`` (an exact scan of the
float16 pooled vectors, ``kernels/retriever_kernels/dense.py``), and the exact MaxSim of up to ``2 * depth`` more
documents. This script measures the first two where they grow with the corpus:

* BM25 on the 300,000-document real-text corpus of ``bench/scale/realtext.py`` (its 1,000 held-out queries):
  index build seconds, postings and bytes per document, single-query p50 / p99 of the top-100;
* the dense scan over seeded random unit vectors of the default backbone's width (384) at each size:
  bytes per document, single-query p50 / p99 of the top-100.

Numbers are absolute milliseconds on this machine (the load average is printed with them); compare
them with the pipeline's latency at the same size in ``bench/results/scale.md``.

    .venv/bin/python bench/scale/hybrid_scale.py --realtext index_data/realtext --sizes 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows  # noqa: E402  (also puts the repository root on sys.path)
from retriever.core.beir import doc_text  # noqa: E402
from retriever_kernels.dense import dense_topk  # noqa: E402
from retriever.hybrid.lexical import BM25Config, LexicalAppender, LexicalIndex  # noqa: E402

log = logging.getLogger("bench.hybrid_scale")


def _timed_queries(fn, n: int, warm: int = 5) -> dict:
    for i in range(warm):
        fn(i)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return {"p50_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def bench_bm25(realtext: Path, n_queries: int, depth: int) -> dict:
    app = LexicalAppender(LexicalIndex.empty(BM25Config()))
    t0 = time.perf_counter()
    batch = []
    with gzip.open(realtext / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh, \
            tqdm(desc="BM25 index", unit="doc") as bar:
        for line in fh:
            batch.append(doc_text(json.loads(line)))
            if len(batch) == 4096:
                app.add(batch)
                bar.update(len(batch))
                batch = []
        app.add(batch)
        bar.update(len(batch))
    lex = app.finish()
    build_s = time.perf_counter() - t0
    queries = [json.loads(x)["text"] for x in (realtext / "queries.jsonl").read_text().splitlines()][:n_queries]
    lat = _timed_queries(lambda i: lex.search([queries[i % len(queries)]], depth), len(queries))
    n_post = int(lex.post_rows.size)
    nbytes = sum(a.nbytes for a in lex.arrays().values())
    return {"stage": "bm25", "n_docs": lex.n_rows, "n_terms": lex.n_terms, "postings": n_post,
            "postings_per_doc": round(n_post / lex.n_rows, 2), "bytes_per_doc": round(nbytes / lex.n_rows, 1),
            "build_s": round(build_s, 2), "depth": depth, "n_queries": len(queries), **lat}


def bench_dense(n: int, dim: int, n_queries: int, depth: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    store = np.empty((n, dim), dtype=np.float16)
    step = 65536
    for s in tqdm(range(0, n, step), desc=f"dense vectors ({n:,})", unit="block"):
        x = rng.standard_normal((min(step, n - s), dim)).astype(np.float32)
        store[s : s + x.shape[0]] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((n_queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lat = _timed_queries(lambda i: dense_topk(q[i : i + 1], store, depth), n_queries)
    return {"stage": "dense", "n_docs": n, "dim": dim, "bytes_per_doc": 2 * dim, "depth": depth,
            "n_queries": n_queries, **lat}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realtext", default=str(ROOT / "index_data" / "realtext"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--results", default=str(RESULTS_DIR / "hybrid_scale.jsonl"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows = []
    if (Path(args.realtext) / "corpus.jsonl.gz").is_file():
        rows.append(bench_bm25(Path(args.realtext), args.queries, args.depth))
    else:
        log.warning("%s has no corpus.jsonl.gz (run bench/scale/realtext.py first): BM25 skipped", args.realtext)
    for n in args.sizes:
        rows.append(bench_dense(n, args.dim, args.queries, args.depth))
    append_rows(args.results, rows, bench="scale/hybrid_scale")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sharded against single index on a BEIR collection: quality and latency at 1, 2 and 4 shards (local backend).

The shards are built from the token store, texts and pooled vectors of ``retriever bench``'s cached default
index (no re-encoding), in this run. Per shard count: nDCG@10 of the default search (hybrid fusion on text
queries) and of MaxSim alone (exhaustive and the FDE pipeline), single-query p50 of the search (queries
encoded beforehand, like ``retriever bench``), and the shard sizes.

    .venv/bin/python bench/cluster/shards.py --data ../shared/beir/scifact --split test --shards 1 2 4
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

from common import RESULTS_DIR, append_rows  # noqa: E402  (also puts the repository root on sys.path)

from retriever.core.beir import doc_text, load_beir  # noqa: E402
from retriever.evaluation.benchmark import DEFAULT_CACHE_DIR, open_index  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.evaluation.metrics import evaluate, run_from_arrays  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402
from retriever.cluster.shards import ShardedRetriever  # noqa: E402
from retriever.store.tokens import TokenEmbeddings  # noqa: E402

log = logging.getLogger("bench.shards")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--timing-queries", type=int, default=100)
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    ap.add_argument("--results", default=str(RESULTS_DIR / "shards.jsonl"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    encoder = ColBERTEncoder.from_pretrained("default")
    data = load_beir(args.data, split=args.split)
    r, emb, ids, texts, pooled = cached_parts(args.data, data.corpus, encoder, args.cache_dir)
    qids, qtexts = list(data.queries), list(data.queries.values())
    q, qp = encoder.encode_queries(qtexts, return_pooled=True)
    timed = np.linspace(0, len(qids) - 1, min(len(qids), args.timing_queries)).round().astype(int)
    rows = []
    for n in args.shards:
        t0 = time.perf_counter()
        sr = ShardedRetriever.build(emb, ids, n_shards=n, config=IndexConfig(codec=r.config.codec), encoder=encoder,
                                    texts=texts, pooled=pooled, show_progress=False)
        build_s = time.perf_counter() - t0
        row = {"dataset": data.name, "split": args.split, "n_shards": n, "shard_docs": [s.n_docs for s in sr.shards],
               "build_from_tokens_s": round(build_s, 2)}
        for name, kw in (("default (hybrid)", {"query_texts": qtexts, "query_pooled": qp}),
                         ("maxsim pipeline", {"hybrid": False}), ("maxsim exhaustive", {"hybrid": False, "mode": "exact"})):
            res = sr.search(q, k=100, **kw)
            row[f"ndcg@10 {name}"] = round(evaluate(run_from_arrays(qids, res.ids, res.scores), data.qrels,
                                                    ["ndcg@10"])["ndcg@10"], 5)
            times = []
            for i in timed:
                kwi = {k: ([v[i]] if k == "query_texts" else v[i : i + 1]) if k.startswith("query_") else v
                       for k, v in kw.items()}
                t1 = time.perf_counter()
                sr.search(q.select([int(i)]), k=100, **kwi)
                times.append(time.perf_counter() - t1)
            row[f"p50_ms {name}"] = round(float(np.median(times)) * 1e3, 2)
        row["load_avg_1m"] = round(os.getloadavg()[0], 2)
        rows.append(row)
        print(json.dumps(row))
    append_rows(args.results, rows, bench="cluster/shards")
    return 0


def cached_parts(data_dir, corpus: dict, encoder, cache_dir):
    """``retriever bench``'s cached default index of a collection (built if missing) and what rebuilding
    it needs without re-encoding: (index, decoded token embeddings, ids, texts, pooled vectors or None)."""
    r, _ = open_index(data_dir, corpus, IndexConfig(), encoder, cache_dir)
    emb = TokenEmbeddings(np.asarray(r.codec.decode(np.asarray(r.tokens))), r.doc_offsets)
    ids = r.doc_ids.tolist()
    texts = [doc_text({"_id": i, **corpus[i]}) for i in ids]
    pooled = np.asarray(r.dense, dtype=np.float32) if r.dense is not None else None
    return r, emb, ids, texts, pooled


if __name__ == "__main__":
    sys.exit(main())

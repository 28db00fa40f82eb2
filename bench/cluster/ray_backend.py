"""Sharded search on the local backend against the Ray backend: the cost of the Ray hop, 1 / 2 / 4 shards.

The sharded indexes are built once (cached under ``index_data/shards/``) from the token store, texts and
pooled vectors of ``retriever bench``'s cached default index of the collection (no re-encoding). Per shard
count, in one run: single-query p50 / p99 and batch QPS of the default search (hybrid; queries encoded
beforehand) on the local backend and on Ray (one actor per shard, one numba thread each), and the Ray
hop's p50 overhead. Ray runs locally on 127.0.0.1 only.

    .venv/bin/python bench/cluster/ray_backend.py --data ../shared/beir/scifact --shards 1 2 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows  # noqa: E402  (also puts the repository root on sys.path)

from retriever.core.beir import load_beir  # noqa: E402
from retriever.evaluation.benchmark import DEFAULT_CACHE_DIR  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.cluster.distributed import RayShardedRetriever  # noqa: E402
from retriever.cluster.shards import ShardedRetriever, is_sharded  # noqa: E402

from shards import cached_parts  # noqa: E402  (this script's folder)

log = logging.getLogger("bench.ray_backend")


def _timings(search, n_q: int, singles, texts, qp, k: int) -> dict:
    for i in range(3):
        search(singles[i], query_texts=[texts[i]], query_pooled=qp[i : i + 1], k=k)
    t = []
    for i in range(n_q):
        t0 = time.perf_counter()
        search(singles[i], query_texts=[texts[i]], query_pooled=qp[i : i + 1], k=k)
        t.append(time.perf_counter() - t0)
    t = np.array(t) * 1e3
    return {"p50_ms": round(float(np.median(t)), 2), "p99_ms": round(float(np.percentile(t, 99)), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    ap.add_argument("--out-dir", default=str(ROOT / "index_data" / "shards"))
    ap.add_argument("--results", default=str(RESULTS_DIR / "distributed.jsonl"))
    ap.add_argument("--build-docs", type=int, default=0,
                    help="also time a Ray build of this many documents with 1 and with 2 encoder workers "
                         "(one torch thread each): per-worker throughput and the driver's share")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import ray

    encoder = ColBERTEncoder.from_pretrained("default")
    data = load_beir(args.data, split=args.split)
    qtexts = list(data.queries.values())[: args.queries]
    q, qp = encoder.encode_queries(qtexts, return_pooled=True)
    singles = [q.select([i]) for i in range(len(qtexts))]
    base = None
    rows = []
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    nodes = {n["NodeManagerAddress"] for n in ray.nodes()}
    if nodes != {"127.0.0.1"}:
        ray.shutdown()
        raise SystemExit(f"Ray is not on loopback only ({sorted(nodes)}): stopping")
    try:
        for n in args.shards:
            path = Path(args.out_dir) / f"{data.name}-{n}"
            if not is_sharded(path):
                if base is None:
                    base = cached_parts(args.data, data.corpus, encoder, args.cache_dir)
                _, emb, ids, texts, pooled = base
                ShardedRetriever.build(emb, ids, n_shards=n, encoder=encoder, path=path, texts=texts, pooled=pooled,
                                       show_progress=False)
            local = ShardedRetriever.load(path, encoder=encoder)
            remote = RayShardedRetriever.load(path, encoder=encoder)
            row = {"dataset": data.name, "n_shards": n, "n_queries": len(qtexts), "k": args.k}
            for name, sr in (("local", local), ("ray", remote)):
                row[name] = _timings(sr.search, len(qtexts), singles, qtexts, qp, args.k)
                t0 = time.perf_counter()
                sr.search(q, k=args.k, query_texts=qtexts, query_pooled=qp)
                row[name]["batch_qps"] = round(len(qtexts) / (time.perf_counter() - t0), 1)
            a = local.search(q, k=args.k, query_texts=qtexts, query_pooled=qp)
            b = remote.search(q, k=args.k, query_texts=qtexts, query_pooled=qp)
            row["same_answers"] = bool(np.array_equal(a.ids, b.ids))
            row["ray_overhead_p50_ms"] = round(row["ray"]["p50_ms"] - row["local"]["p50_ms"], 2)
            row["load_avg_1m"] = round(os.getloadavg()[0], 2)
            remote.close()
            rows.append(row)
            print(json.dumps(row))
        if args.build_docs:
            from retriever.cluster.distributed import build_sharded_on_ray

            docs = [{"_id": i, **d} for i, d in list(data.corpus.items())[: args.build_docs]]
            base_rate = None
            for w in (1, 2):
                out = Path(args.out_dir) / f"{data.name}-build-w{w}"
                import shutil

                shutil.rmtree(out, ignore_errors=True)
                sr = build_sharded_on_ray(docs, out, n_shards=2, workers=w, chunk_docs=64, encoder=encoder,
                                          threads_per_worker=1, show_progress=False)
                t = sr.build_timings
                rate = t["encoded_docs"] / t["encode_s"]
                base_rate = base_rate or rate
                row = {"dataset": data.name, "build_docs": len(docs), "workers": w,
                       "encode_docs_per_s": round(rate, 2), "per_worker_vs_one": round(rate / w / base_rate, 3),
                       "driver_share": round((t["plan_s"] + t["finish_s"]) / t["total_s"], 4),
                       **{k: round(v, 2) for k, v in t.items()}, "load_avg_1m": round(os.getloadavg()[0], 2)}
                rows.append(row)
                print(json.dumps(row))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        ray.shutdown()
    append_rows(args.results, rows, bench="cluster/ray_backend")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which candidate stage ``mode="auto"`` should use, by corpus size, query length and k (tuning queries only).

Usage::

    .venv/bin/python bench/beir/stage_rule.py                        # the three tuning sets below
    .venv/bin/python bench/beir/stage_rule.py --sets longq --k 10 100 --n-candidates 100 200 400 800 1600

For each set (an index cached by ``retriever bench`` / ``bench/beir/long_query_set.py`` and its *tuning*
queries: SciFact train, NFCorpus dev, the long-query set's ``tune`` half), the same queries are searched
with each candidate stage (``mode="centroids"``, ``mode="fde"``) at each N and each k, MaxSim only, and
compared with exhaustive MaxSim (``mode="exact"``) on the same stored tokens:

- Chamfer recall@k (share of the exact top-k found), overall and per query-length bucket
  (``--buckets``, query token vectors);
- single-query p50 latency over ``--timed`` queries (one call each, after a warm-up) and the exhaustive
  p50 of the same queries, so each row carries its speed-up over exhaustive from the same run.

An index without the centroid stage gets one built in memory with its default config (the cached index
on disk is not changed). Rows go to ``bench/results/stage_rule.jsonl`` (common envelope: CPU model,
load average); ``--report`` prints, per set, k and length bucket, the cheapest setting of each stage
reaching ``--target`` recall.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows, collection_dir, single_latencies_ms  # noqa: E402

from retriever import Retriever  # noqa: E402
from retriever.core.beir import read_qrels, read_queries  # noqa: E402
from retriever.evaluation.metrics import chamfer_recall  # noqa: E402

log = logging.getLogger("bench.stage_rule")
RESULTS = RESULTS_DIR / "stage_rule.jsonl"
BENCH = ROOT / "index_data" / "bench"
#: set name -> (cached index directory, queries file, tuning qrels)
SETS = {
    "scifact": (BENCH / "scifact-053c3ff1fa70", "scifact", "train"),
    "nfcorpus": (BENCH / "nfcorpus-9bf9871a8330", "nfcorpus", "dev"),
    "longq": (BENCH / "set-30920688af84", ROOT / "index_data" / "longq" / "set", "tune"),
}


def tuning_queries(source, split: str) -> list[str]:
    data = source if isinstance(source, Path) else collection_dir(source)
    texts, qrels = read_queries(data / "queries.jsonl"), read_qrels(data / "qrels" / f"{split}.tsv")
    return [texts[i] for i in texts if i in qrels]


def p50_ms(r, singles, **kw) -> float:
    return round(float(np.median(single_latencies_ms(lambda one: r.search(one, **kw), singles, warmup=5))), 2)


def measure(name: str, args) -> list[dict]:
    index_dir, source, split = SETS[name]
    r = Retriever.load(index_dir)
    if r.centroid_stage is None:
        r.rebuild_centroids()  # in memory only
    q = r.encoder.encode_queries(tuning_queries(source, split))
    lengths = np.asarray(q.lengths)
    edges = [0, *args.buckets, int(1e9)]
    bucket = np.searchsorted(np.asarray(args.buckets), lengths, side="left")
    timed = np.random.default_rng(0).permutation(len(q))[: args.timed]
    singles = [q.select([int(i)]) for i in timed]
    base = {"set": name, "split": split, "n_docs": r.n_docs, "n_tokens": r.n_tokens, "codec": r.codec.config.name,
            "queries": len(q), "query_tokens_mean": round(float(lengths.mean()), 1),
            "n_centroids": r.centroid_stage.n_centroids, "faiss_factory": r.config.faiss_factory}
    rows = []
    for k in args.k:
        exact = r.search(q, k=k, mode="exact").rows
        ex_ms = p50_ms(r, singles, k=k, mode="exact")
        for stage in ("centroids", "fde"):
            for n in args.n_candidates:
                if n < k or n >= r.n_docs:
                    continue
                res = r.search(q, k=k, mode=stage, n_candidates=n).rows
                per = {}
                for b in range(len(edges) - 1):
                    sel = bucket == b
                    if sel.any():
                        per[f"{edges[b] + 1}-{edges[b + 1] if edges[b + 1] < 1e9 else 'max'}"] = {
                            "queries": int(sel.sum()), "chamfer": round(chamfer_recall(res[sel], exact[sel], k), 4)}
                ms = p50_ms(r, singles, k=k, mode=stage, n_candidates=n)
                rows.append(dict(base, k=k, stage=stage, n_candidates=n,
                                 chamfer_recall=round(chamfer_recall(res, exact, k), 4), by_query_tokens=per,
                                 p50_ms=ms, exact_p50_ms=ex_ms, speedup=round(ex_ms / ms, 2), timed=len(singles)))
                log.info("%s k=%d %s N=%d: recall %.4f p50 %.2f ms (exact %.2f) %s", name, k, stage, n,
                         rows[-1]["chamfer_recall"], ms, ex_ms, per)
    return rows


def report(path: Path, target: float) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    latest = {}
    for r in rows:
        latest[(r["set"], r["k"], r["stage"], r["n_candidates"])] = r
    print(f"| set | k | query tokens | stage | smallest N with Chamfer >= {target} | recall | p50 ms | x exhaustive |")
    print("|---|---|---|---|---|---|---|---|")
    for (s, k) in sorted({(a, b) for a, b, _, _ in latest}):
        buckets = sorted({bk for r in latest.values() if r["set"] == s for bk in r["by_query_tokens"]},
                         key=lambda x: int(x.split("-")[0]))
        for bk in ["all", *buckets]:
            for stage in ("centroids", "fde"):
                cands = sorted((r for (a, b, st, _), r in latest.items() if a == s and b == k and st == stage),
                               key=lambda r: r["n_candidates"])
                hit = None
                for r in cands:
                    rec = r["chamfer_recall"] if bk == "all" else (r["by_query_tokens"].get(bk) or {}).get("chamfer")
                    if rec is not None and rec >= target:
                        hit = (r, rec)
                        break
                if hit is None:
                    best = max(cands, key=lambda r: r["n_candidates"]) if cands else None
                    rec = None if best is None else (best["chamfer_recall"] if bk == "all"
                                                     else (best["by_query_tokens"].get(bk) or {}).get("chamfer"))
                    print(f"| {s} | {k} | {bk} | {stage} | > {best['n_candidates'] if best else '-'} | {rec} | - | - |")
                else:
                    r, rec = hit
                    print(f"| {s} | {k} | {bk} | {stage} | {r['n_candidates']:,} | {rec:.3f} | {r['p50_ms']} | "
                          f"{r['speedup']} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["scifact", "nfcorpus", "longq"])
    p.add_argument("--k", type=int, nargs="+", default=[10, 100])
    p.add_argument("--n-candidates", type=int, nargs="+", default=[100, 200, 400, 800, 1600, 3200])
    p.add_argument("--buckets", type=int, nargs="+", default=[32, 64, 128],
                   help="upper edges of the query-length buckets (token vectors)")
    p.add_argument("--timed", type=int, default=100)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.report:
        report(args.results, args.target)
        return 0
    for name in args.sets:
        append_rows(args.results, measure(name, args), bench="beir/stage_rule")
    report(args.results, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

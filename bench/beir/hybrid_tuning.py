"""Choose the hybrid fusion (method and weights) on training / dev queries, report it on test.

For each collection, the default index of ``retriever bench`` (cached in ``index_data/bench``; built
from text, so it stores the dense and BM25 signals) scores every query's union U once
(``retriever.hybrid.fusion.score_union`` over the exact MaxSim top-``depth``), then every fusion of a grid
is ranked from those scores (``rank_fused``) and evaluated (nDCG@10):

* methods: z-score linear fusion and reciprocal rank fusion;
* weights (maxsim, dense, bm25) with maxsim fixed at 1 and dense, bm25 in {0, .25, .5, .75, 1, 1.5}.

Selection protocol (never a test split): per collection, the grid point with the best mean gain over
MaxSim alone on its tuning splits; and leave-one-collection-out: the point chosen on the *other*
collections' tuning splits, reported on this collection's test split (what a user with no labels
of their own gets). Writes JSONL rows and a markdown summary.

    .venv/bin/python bench/beir/hybrid_tuning.py --data ../shared/beir/scifact ../shared/beir/nfcorpus \
        --tune-splits train dev --report-split test
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, append_rows  # noqa: E402  (also puts the repository root on sys.path)
from retriever.evaluation.benchmark import DEFAULT_CACHE_DIR, open_index  # noqa: E402
from retriever.core.beir import load_beir  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.evaluation.metrics import evaluate, run_from_arrays  # noqa: E402
from retriever.hybrid.fusion import FusionConfig, rank_fused, score_union  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402

log = logging.getLogger("hybrid_tuning")
GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]


def fusions(depth: int) -> list[FusionConfig]:
    out = []
    for method in ("zscore", "rrf"):
        for wd, wb in itertools.product(GRID, GRID):
            out.append(FusionConfig(method=method, weights=(1.0, wd, wb), depth=depth))
    return out


def key(f: FusionConfig) -> str:
    return f"{f.method} {f.weights[1]:g}/{f.weights[2]:g}"


def evaluate_split(r, encoder, data_dir: Path, split: str, depth: int, grid: list[FusionConfig]) -> dict | None:
    qrels_file = data_dir / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        return None
    data = load_beir(data_dir, split=split)
    qids, texts = list(data.queries), list(data.queries.values())
    t0 = time.perf_counter()
    q, qp = encoder.encode_queries(texts, return_pooled=True)
    base = r.search(q, k=depth, mode="exact", hybrid=False).rows  # the exact MaxSim top-depth
    scored = score_union(q, base, r.store, r.doc_offsets, depth=depth, dense=r.dense, q_pooled=qp,
                         lexical=r.lexical, q_texts=texts, allowed=(r.deleted == 0).astype(np.uint8))
    log.info("%s/%s: %d queries scored in %.1f s", data.name, split, len(qids), time.perf_counter() - t0)
    out = {}
    for f in grid:
        rows, scores = rank_fused(scored, 100, f)
        ids = np.where(rows >= 0, r.doc_ids[np.maximum(rows, 0)], None).astype(object)
        out[key(f)] = evaluate(run_from_arrays(qids, ids, scores), data.qrels, ["ndcg@10"])["ndcg@10"]
    # MaxSim alone: the first grid point (zscore, weights 1/0/0) ranks by MaxSim
    out["maxsim"] = out[key(FusionConfig(weights=(1.0, 0.0, 0.0), depth=depth))]
    return {"dataset": data.name, "split": split, "n_queries": len(qids), "ndcg@10": out}


def best(rows: list[dict], points: list[str]) -> str:
    """The point with the best mean gain over MaxSim alone across ``rows`` (ties: the earlier point)."""
    gains = {p: float(np.mean([x["ndcg@10"][p] - x["ndcg@10"]["maxsim"] for x in rows])) for p in points}
    return max(points, key=lambda p: (gains[p], -points.index(p)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True, help="BEIR collection directories")
    ap.add_argument("--tune-splits", nargs="+", default=["train", "dev"])
    ap.add_argument("--report-split", default="test")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    ap.add_argument("--results", default=str(RESULTS_DIR / "hybrid_tuning.jsonl"))
    ap.add_argument("--md", default=str(RESULTS_DIR / "hybrid_tuning.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    encoder = ColBERTEncoder.from_pretrained("default")
    grid = fusions(args.depth)
    points = [key(f) for f in grid]
    rows = []
    for d in args.data:
        d = Path(d)
        corpus = load_beir(d, split=None).corpus
        r, info = open_index(d, corpus, IndexConfig(), encoder, args.cache_dir, show_progress=True)
        if not r.config.hybrid.enabled:
            raise SystemExit(f"{info['path']} stores no hybrid signals")
        for split in [*args.tune_splits, args.report_split]:
            row = evaluate_split(r, encoder, d, split, args.depth, grid)
            if row is not None:
                row.update(role="report" if split == args.report_split else "tune", index=info["name"],
                           timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                rows.append(row)
    append_rows(args.results, rows, bench="beir/hybrid_tuning")
    names = sorted({x["dataset"] for x in rows})
    tune = [x for x in rows if x["role"] == "tune"]
    chosen_all = best(tune, points)
    eq = key(FusionConfig(depth=args.depth))
    lines = ["| collection | chosen on | fusion (dense/bm25 weights) | test nDCG@10 | MaxSim alone | gain |",
             "|---|---|---|---|---|---|"]
    for name in names:
        test = next((x for x in rows if x["dataset"] == name and x["role"] == "report"), None)
        if test is None:
            continue
        own = [x for x in tune if x["dataset"] == name]
        others = [x for x in tune if x["dataset"] != name]
        for label, chosen in (("its own train/dev", best(own, points) if own else None),
                              ("the other collections' train/dev", best(others, points) if others else None),
                              ("all train/dev", chosen_all), ("a priori: equal weights", eq)):
            if chosen is None:
                continue
            v, m = test["ndcg@10"][chosen], test["ndcg@10"]["maxsim"]
            lines.append(f"| {name} | {label} | {chosen} | {v:.4f} | {m:.4f} | {v - m:+.4f} |")
    tune_lines = ["| collection | split | MaxSim | equal weights | best z-score | best RRF |", "|---|---|---|---|---|---|"]
    for x in rows:
        n = x["ndcg@10"]
        bz = max((p for p in points if p.startswith("zscore")), key=lambda p: n[p])
        br = max((p for p in points if p.startswith("rrf")), key=lambda p: n[p])
        tune_lines.append(f"| {x['dataset']} | {x['split']} ({x['role']}) | {n['maxsim']:.4f} | {n[eq]:.4f} | "
                          f"{n[bz]:.4f} ({bz}) | {n[br]:.4f} ({br}) |")
    text = ("# Hybrid fusion tuning\n\nGenerated by `bench/beir/hybrid_tuning.py` (depth "
            f"{args.depth}; exact MaxSim top-{args.depth} as the MaxSim side).\n\n## Selection\n\n"
            + "\n".join(lines) + "\n\n## Every split\n\n" + "\n".join(tune_lines) + "\n")
    Path(args.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

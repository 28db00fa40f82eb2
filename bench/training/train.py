"""Train / adapt heads for the bundled encoder and measure them on BEIR test splits.

Runs (each writes a checkpoint under ``index_data/train/<run>`` with ``retriever.training.trainer`` and
appends one JSON row per evaluation to ``bench/results/train.jsonl``):

* ``scifact-head``: ``retriever train --beir scifact --split train`` (validation: 10% of the training
  queries), evaluated on SciFact test (in domain) and NFCorpus test (a collection it has no labels of);
* ``nfcorpus-head``: the same on NFCorpus train (validation: NFCorpus dev), evaluated on both;
* ``scifact-adapt`` / ``nfcorpus-adapt``: ``retriever adapt`` on the collection's corpus alone
  (inverse-cloze pseudo-pairs, no labels), evaluated on that collection's test split.

Tuning happens only on training / dev queries (early stopping on the validation split); test
splits are only reported. Each evaluation is ``retriever bench``'s: the default index (int8 store,
hybrid signals) built with the trained encoder, exhaustive MaxSim and the default pipeline (FDE
candidates + rerank, hybrid fusion on).

    .venv/bin/python bench/training/train.py --runs scifact-head nfcorpus-head scifact-adapt nfcorpus-adapt
    .venv/bin/python bench/training/train.py --report  # bench/results/train.md from the JSONL
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows, beir_root  # noqa: E402  (also puts the repository root on sys.path)

from retriever.evaluation.benchmark import BenchSettings, run_benchmark  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402
from retriever.training.pairs import beir_pairs, inverse_cloze_pairs  # noqa: E402
from retriever.training.trainer import TrainConfig, train  # noqa: E402

log = logging.getLogger("bench.train")
BEIR = beir_root()
RESULTS = RESULTS_DIR / "train.jsonl"
CKPT = ROOT / "index_data" / "train"
CACHE = ROOT / "index_data" / "bench-train"

RUNS = {
    "scifact-head": {"data": ("beir", "scifact", {"split": "train"}), "eval": ("scifact", "nfcorpus")},
    "nfcorpus-head": {"data": ("beir", "nfcorpus", {"split": "train", "val_split": "dev"}),
                      "eval": ("nfcorpus", "scifact")},
    "scifact-adapt": {"data": ("adapt", "scifact", {}), "eval": ("scifact",)},
    "nfcorpus-adapt": {"data": ("adapt", "nfcorpus", {}), "eval": ("nfcorpus",)},
}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def run(name: str, config: TrainConfig, threads: int | None) -> None:
    spec = RUNS[name]
    kind, coll, kw = spec["data"]
    data = (beir_pairs(BEIR / coll, seed=config.seed, **kw) if kind == "beir"
            else inverse_cloze_pairs(BEIR / coll, seed=config.seed, **kw))
    out = CKPT / name
    t0 = time.perf_counter()
    res = train("default", data, out, config, overwrite=True, show_progress=True)
    train_s = time.perf_counter() - t0
    log.info("%s: validation %.4f -> %.4f (epoch %d) in %.0f s", name, res.base_metric, res.best_metric,
             res.best_epoch, train_s)
    enc = ColBERTEncoder.from_pretrained(str(out))
    for target in spec["eval"]:
        rows = run_benchmark(BEIR / target, split="test", index_configs=[IndexConfig()], encoder=enc,
                             settings=BenchSettings(k=100, baselines=("exhaustive",), threads=threads,
                                                    timing_queries=100),
                             results=None, cache_dir=CACHE, show_progress=True)
        by = {r["method"]: r for r in rows}
        row = {"run": name, "trained_on": data.source, "evaluated_on": f"{target} test",
               "config": config.to_dict(), "train_seconds": round(train_s, 1),
               "stage_seconds": {k: round(v, 1) for k, v in res.seconds.items()},
               "validation": {"metric": config.metric, "graded": bool(data.grades),
                              "base": round(res.base_metric, 4), "best": round(res.best_metric, 4),
                              "best_epoch": res.best_epoch},
               "history": res.history, "load_avg_1m": load_avg(),
               "ndcg@10": {m: by[m]["ndcg@10"] for m in ("exhaustive", "fde", "hybrid") if m in by},
               "recall@100": {m: by[m]["recall@100"] for m in ("exhaustive", "fde", "hybrid") if m in by},
               "search_p50_ms": {m: by[m]["search"]["latency"]["p50_ms"] for m in ("exhaustive", "fde", "hybrid")
                                 if m in by}}
        append_rows(RESULTS, [row], bench="training/train")
        print(json.dumps({k: row[k] for k in ("run", "evaluated_on", "ndcg@10", "recall@100", "train_seconds")}),
              flush=True)


def _settings(config: dict) -> str:
    """The TrainConfig fields a row changed from the defaults, e.g. ``lr 0.03, positives 4``."""
    default = TrainConfig().to_dict()
    changed = [f"{k} {v}" for k, v in config.items() if k in default and default[k] != v]
    return ", ".join(changed) or "defaults"


def report() -> None:
    rows = [json.loads(x) for x in open(RESULTS)]
    lines = ["| run | settings | trained on | evaluated on | train s | validation (base -> best, epoch) | exhaustive "
             "MaxSim nDCG@10 | pipeline | hybrid pipeline (default) | hybrid R@100 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r["validation"]
        n = r["ndcg@10"]
        graded = " graded" if v.get("graded") else ""  # rows before graded validation have no such field
        lines.append(f"| {r['run']} | {_settings(r['config'])} | {r['trained_on']} | {r['evaluated_on']} | "
                     f"{r['train_seconds']:.0f} | {v['base']:.4f} -> {v['best']:.4f} ({v['best_epoch']}){graded} | "
                     f"{n.get('exhaustive', float('nan')):.4f} "
                     f"| {n.get('fde', float('nan')):.4f} | {n.get('hybrid', float('nan')):.4f} | "
                     f"{r['recall@100'].get('hybrid', float('nan')):.3f} |")
    out = RESULTS.with_suffix(".md")
    out.write_text("# Trained heads (bench/training/train.py)\n\n" + "\n".join(lines) + "\n")
    print(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=[])
    p.add_argument("--config", default="{}", help="TrainConfig fields as JSON (default: TrainConfig())")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    config = TrainConfig.from_dict(json.loads(args.config))
    for name in args.runs:
        run(name, config, args.threads)
    if args.report:
        report()


if __name__ == "__main__":
    main()

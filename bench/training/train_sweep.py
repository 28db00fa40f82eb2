"""Compare trainer settings on a BEIR collection's dev split, features computed once (tuning only).

Each TrainConfig (JSON) trains the bundled encoder's head on the training split with the dev split as
validation, exactly as ``retriever train`` does (``retriever.training.trainer._fit``), and prints the dev
validation history and the best dev score: exact MaxSim's nDCG@10 over the dev qrels' grades, as
BEIR's test metric is computed. ``retriever train`` would encode the collection again for every
setting; this script encodes it once.

    .venv/bin/python bench/training/train_sweep.py '{}' '{"lr": 0.03}' '{"lr": 0.03, "positives": 4}'
    .venv/bin/python bench/training/train_sweep.py --beir ../shared/beir/nfcorpus '{"lr": 0.01}'

Rows are appended to ``bench/results/train_sweep.jsonl``.
"""

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, append_rows, beir_root  # noqa: E402  (also puts the repository root on sys.path)
from retriever.training import trainer as T  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.training.pairs import beir_pairs  # noqa: E402

RESULTS = RESULTS_DIR / "train_sweep.jsonl"
args = sys.argv[1:]
if not args or args[0] in ("-h", "--help"):
    print(__doc__)
    sys.exit(0 if args else 2)
BEIR = str(beir_root() / "nfcorpus")
if args[:1] == ["--beir"]:
    BEIR, args = args[1], args[2:]
logging.basicConfig(level=logging.WARNING)
data = beir_pairs(BEIR, split="train", val_split="dev", seed=0)
enc = ColBERTEncoder.from_pretrained("default")
t0 = time.time()
docs = T._Features(enc, data.doc_texts, False, False, False)
queries = T._Features(enc, data.queries, True, False, False)
print("features", round(time.time() - t0), "s", flush=True)
w0 = T._initial_head(enc, T.TrainConfig())
for spec in args:
    cfg = T.TrainConfig.from_dict(json.loads(spec))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = T._head_module(w0)
    t0 = time.time()
    base, best, hist = T._fit(enc, head, docs, queries, data, cfg, "cpu", rng, {}, False)
    row = {"collection": Path(BEIR).name, "cfg": json.loads(spec), "validation": "graded", "dev_base": round(base, 4),
           "dev_best": round(best[0], 4), "best_epoch": best[1],
           "hist": [(h["epoch"], round(h["metric"], 4)) for h in hist], "s": round(time.time() - t0)}
    append_rows(RESULTS, [row], bench="training/train_sweep")
    print(json.dumps(row), flush=True)

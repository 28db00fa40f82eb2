"""Compare trainer settings on a BEIR collection's dev split, features computed once (tuning only).

Each TrainConfig (JSON) trains the bundled encoder's head on the training split with the dev split as
validation, exactly as ``retriever train`` does (``retriever.trainer._fit``), and prints the dev
validation history and the graded nDCG@10 of exact MaxSim with the kept weights (the trainer's own
validation counts every judged document as relevant; BEIR's test metric uses the grades).

    .venv/bin/python bench/train_sweep.py '{}' '{"lr": 0.03}' '{"lr": 0.03, "positives": 4}'
    .venv/bin/python bench/train_sweep.py --beir ../shared/beir/nfcorpus '{"lr": 0.01}'
"""

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retriever import trainer as T  # noqa: E402
from retriever.beir import read_qrels, read_queries  # noqa: E402
from retriever.encoder import ColBERTEncoder  # noqa: E402
from retriever.eval import evaluate  # noqa: E402
from retriever.pairs import beir_pairs  # noqa: E402

args = sys.argv[1:]
BEIR = str(ROOT.parent / "shared" / "beir" / "nfcorpus")
if args[:1] == ["--beir"]:
    BEIR, args = args[1], args[2:]
logging.basicConfig(level=logging.WARNING)
data = beir_pairs(BEIR, split='train', val_split='dev', seed=0)
enc = ColBERTEncoder.from_pretrained('default')
t0=time.time()
docs = T._Features(enc, data.doc_texts, False, False, False)
queries = T._Features(enc, data.queries, True, False, False)
print('features', time.time()-t0, flush=True)
dev_qrels = read_qrels(f'{BEIR}/qrels/dev.tsv')
allq = read_queries(BEIR)
val_q = np.flatnonzero(np.asarray(data.val))
# map val query index -> qid via text
text2qid = {}
for qid in dev_qrels:
    if qid in allq: text2qid.setdefault(allq[qid], qid)
def graded(head):
    q_emb = queries.project_all(head, 'cpu', False); d_emb = docs.project_all(head, 'cpu', False)
    ranked = T._ranked(q_emb.select(val_q), d_emb, 100)
    run, qrels = {}, {}
    for q, row in zip(val_q, ranked):
        qid = text2qid[data.queries[q]]
        run[qid] = {data.doc_ids[int(d)]: float(100 - i) for i, d in enumerate(row) if d >= 0}
        qrels[qid] = dev_qrels[qid]
    return evaluate(run, qrels, ['ndcg@10'])['ndcg@10']
w0 = T._initial_head(enc, T.TrainConfig())
print("base graded dev", round(graded(T._head_module(w0)),4), flush=True)
for spec in args:
    cfg = T.TrainConfig.from_dict(json.loads(spec))
    torch.manual_seed(cfg.seed); rng = np.random.default_rng(cfg.seed)
    head = T._head_module(w0); secs = {}
    t0=time.time()
    base, best, hist = T._fit(enc, head, docs, queries, data, cfg, 'cpu', rng, secs, False)
    with torch.no_grad(): head.weight.copy_(best[2])
    g = graded(head)
    print(json.dumps({'cfg': spec, 'binary_dev': [round(base,4), round(best[0],4), best[1]], 'graded_dev_best': round(g,4),
        'hist': [(h['epoch'], round(h['metric'],4)) for h in hist], 's': round(time.time()-t0)}), flush=True)

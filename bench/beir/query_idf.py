"""Probe: does weighting query tokens by IDF help the default encoder? (A measured negative result.)

MaxSim sums every query token's best match, stop words included. Scaling query token ``i`` by
``w_i >= 0`` gives ``sum_i w_i max_j <q_i, d_j>``, so IDF weights need no kernel change. This
script measures it on the *tune* splits (SciFact train, NFCorpus dev) with weights
``max(idf, 0.05) ** alpha`` (BM25's idf of the wordpiece over the collection's documents), for exact
MaxSim, the FDE pipeline, and both with the default hybrid fusion (MaxSim + dense + BM25):

    .venv/bin/python bench/beir/query_idf.py       # builds (once) the default index of each collection

Rows go to ``bench/results/query_idf.jsonl``. Indexes are cached under ``index_data/query_idf``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import COLLECTIONS, RESULTS_DIR, ROOT, append_rows, collection_dir  # noqa: E402

from retriever.core.beir import doc_text, iter_corpus, read_qrels, read_queries  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.evaluation.metrics import evaluate  # noqa: E402
from retriever.index.retriever import Retriever  # noqa: E402
from retriever.store.tokens import TokenEmbeddings  # noqa: E402

ALPHAS = (0.0, 0.25, 0.5)
MODES = {"exact": {"mode": "exact", "hybrid": False}, "pipeline": {"hybrid": False},
         "hybrid_exact": {"mode": "exact", "hybrid": True}, "hybrid_pipeline": {"hybrid": True}}
RESULTS = RESULTS_DIR / "query_idf.jsonl"
CACHE = ROOT / "index_data" / "query_idf"
log = logging.getLogger("bench.query_idf")


def wordpiece_idf(enc: ColBERTEncoder, texts: list[str]) -> np.ndarray:
    """BM25 idf ``log((N - df + 0.5) / (df + 0.5) + 1)`` of every vocabulary id over ``texts``."""
    df = np.zeros(len(enc.tokenizer), dtype=np.int64)
    for ids in enc.tokenize(texts, is_query=False):
        df[np.unique(ids)] += 1
    n = len(texts)
    return np.log((n - df + 0.5) / (df + 0.5) + 1.0)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    enc = ColBERTEncoder.from_pretrained("default")
    for name, splits in COLLECTIONS.items():
        root, split = collection_dir(name), splits["tune"]
        docs = list(iter_corpus(root))
        path = CACHE / name
        if not (path / "manifest.json").is_file():
            log.info("%s: building the default index at %s", name, path)
            Retriever.build(docs, encoder=enc, path=path)
        r = Retriever.load(path, encoder=enc)
        text = {d["_id"]: doc_text(d) for d in docs}
        idf = wordpiece_idf(enc, [text[str(i)] for i in r.doc_ids])
        qrels, queries = read_qrels(root / "qrels" / f"{split}.tsv"), read_queries(root)
        qids = [q for q in qrels if q in queries]
        q_texts = [queries[q] for q in qids]
        emb, pooled = enc.encode_queries(q_texts, return_pooled=True)
        ids = np.concatenate(enc.tokenize(q_texts, is_query=True))
        if ids.size != emb.vectors.shape[0]:
            raise RuntimeError("query vectors and input ids do not line up (query expansion or a skip-list?)")
        for alpha in ALPHAS:
            w = (np.maximum(idf[ids], 0.05) ** alpha).astype(np.float32)
            q = TokenEmbeddings(np.ascontiguousarray(emb.vectors * w[:, None]), emb.offsets)
            row = {"collection": name, "split": split, "alpha": alpha, "load_avg_1m": round(os.getloadavg()[0], 2)}
            for label, kw in MODES.items():
                extra = {"query_texts": q_texts, "query_pooled": pooled} if kw["hybrid"] else {}
                res = r.search(q, 100, **kw, **extra)
                run = {qid: {str(d): float(s) for d, s in zip(ids_, sc) if np.isfinite(s)}
                       for qid, ids_, sc in zip(qids, res.ids, res.scores)}
                row[label] = round(evaluate(run, {qid: qrels[qid] for qid in qids}, ["ndcg@10"])["ndcg@10"], 4)
            append_rows(RESULTS, [row], bench="beir/query_idf")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

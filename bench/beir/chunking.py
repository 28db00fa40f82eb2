"""Long documents split into passages (``IndexConfig.chunk_tokens``) against truncation, on BEIR.

For SciFact and NFCorpus (test splits, read in place from ``../shared/beir``) this builds one index per
setting with the bundled default encoder and measures nDCG@10 of the default search (hybrid: MaxSim,
dense and BM25 fused; documents ranked by their best passage), nDCG@10 of MaxSim alone (``hybrid=False``)
and recall@100, with the build's wall time, its passages and tokens, and how many documents exceed the
encoder's budget (``document_length`` less special tokens: those an unchunked build truncates).

Settings (``--settings``; default all):

* ``dl512``: the default build, one row per document, truncated at ``document_length=512``;
* ``dl512-c510``: the same encoder, documents split into passages of 510 tokens (overlap 128): only the
  documents past 512 tokens change;
* ``dl512-c256``, ``dl512-c128``: passages of 256 (overlap 64) and 128 (overlap 32) tokens;
* ``dl128``: the encoder reading documents at ``document_length=128``, truncating nearly every document:
  the informative comparison with ``dl512-c128`` (the same passage length, nothing truncated).

    nice -n 10 .venv/bin/python bench/beir/chunking.py [--collections scifact nfcorpus] [--settings dl512 dl128]

Each setting encodes the collection anew (several minutes each on 2 cores). Rows go to
``bench/results/chunking.jsonl``; ``--report`` prints them as the Markdown table of docs/documents.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import COLLECTIONS, RESULTS_DIR, append_rows, collection_dir  # noqa: E402  (also puts the repository root on sys.path)
from retriever.core.beir import iter_corpus, read_qrels, read_queries  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.evaluation.metrics import evaluate  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402
from retriever.index.passages import record_source  # noqa: E402
from retriever.index.inputs import text_items  # noqa: E402
from retriever.index.retriever import Retriever  # noqa: E402

log = logging.getLogger("bench.chunking")
RESULTS = RESULTS_DIR / "chunking.jsonl"
#: setting -> (document_length, chunk_tokens, chunk_overlap)
SETTINGS = {
    "dl512": (512, None, 0),
    "dl512-c510": (512, 510, 128),
    "dl512-c256": (512, 256, 64),
    "dl512-c128": (512, 128, 32),
    "dl128": (128, None, 0),
}
K = 100
STEP = 64  # queries per search call (as the CLI batches a query file)


def over_budget(encoder: ColBERTEncoder, texts: list[str]) -> int:
    """Documents with more content tokens than the encoder keeps (those an unchunked build truncates)."""
    n = 0
    for s in range(0, len(texts), 512):
        enc = encoder.tokenizer([t.strip() for t in texts[s : s + 512]], add_special_tokens=False, truncation=False,
                                verbose=False)
        n += sum(len(x) > encoder.document_budget for x in enc["input_ids"])
    return n


def run_setting(name: str, collection: str, setting: str) -> dict:
    dl, chunk, overlap = SETTINGS[setting]
    root = collection_dir(collection)
    split = COLLECTIONS[collection]["report"]
    docs = list(iter_corpus(root))
    encoder = ColBERTEncoder.from_pretrained("default", document_length=dl)
    n_over = over_budget(encoder, [record_source(rec) for rec in text_items(docs, None)])
    config = IndexConfig(chunk_tokens=chunk, chunk_overlap=overlap)
    workdir = Path(tempfile.mkdtemp(prefix="bench-chunking-"))
    try:
        load = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        r = Retriever.build(docs, encoder=encoder, config=config, path=workdir / "index", show_progress=False)
        build_s = time.perf_counter() - t0
        index_bytes = sum(f.stat().st_size for f in (workdir / "index").iterdir() if f.is_file())
        qrels = read_qrels(root / "qrels" / f"{split}.tsv")
        queries = read_queries(root / "queries.jsonl")
        qids = [q for q in qrels if q in queries]
        texts = [queries[q] for q in qids]
        out = {}
        for label, kw in (("default", {}), ("maxsim", {"hybrid": False})):
            t0 = time.perf_counter()
            ids, scores = [], []
            for s in range(0, len(texts), STEP):
                res = r.search(texts[s : s + STEP], k=K, **kw)
                ids.extend(res.ids.tolist())
                scores.extend(res.scores.tolist())
            search_s = time.perf_counter() - t0
            run = {q: {str(d): float(sc) for d, sc in zip(i_, s_) if d is not None and np.isfinite(sc)}
                   for q, i_, s_ in zip(qids, ids, scores)}
            m = evaluate(run, {q: qrels[q] for q in qids}, ["ndcg@10", "recall@100"])
            out[label] = (m, search_s)
        row = {
            "collection": collection, "split": split, "setting": setting, "document_length": dl,
            "chunk_tokens": chunk, "chunk_overlap": overlap, "n_docs": r.n_docs, "n_passages": r.n_live_rows,
            "n_tokens": r.n_tokens, "docs_over_budget": n_over, "document_budget": encoder.document_budget,
            "build_s": round(build_s, 1), "build_timings_s": {k: round(v, 1) for k, v in r.build_timings.items()},
            "index_bytes": index_bytes, "n_queries": len(qids), "k": K,
            "ndcg@10": round(float(out["default"][0]["ndcg@10"]), 4),
            "recall@100": round(float(out["default"][0]["recall@100"]), 4),
            "ndcg@10_maxsim": round(float(out["maxsim"][0]["ndcg@10"]), 4),
            "recall@100_maxsim": round(float(out["maxsim"][0]["recall@100"]), 4),
            "search_ms_per_query": round(out["default"][1] / len(qids) * 1e3, 2),
            "search_ms_per_query_maxsim": round(out["maxsim"][1] / len(qids) * 1e3, 2),
            "load_avg_1m": load, "command": name,
        }
        r.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("%s %s: nDCG@10 %.4f (MaxSim %.4f), %d passages, build %.0f s, %d documents over the budget",
             collection, setting, row["ndcg@10"], row["ndcg@10_maxsim"], row["n_passages"], row["build_s"], n_over)
    return row


def report(path: Path = RESULTS) -> str:
    """The latest row of each (collection, setting) as a Markdown table."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        rows[(r["collection"], r["setting"])] = r
    out = ["| collection | setting | documents over budget | passages | build s | nDCG@10 default | nDCG@10 MaxSim | "
           "recall@100 | search ms/query |", "|---|---|---|---|---|---|---|---|---|"]
    for (c, s), r in rows.items():
        setting = f"document_length={r['document_length']}" + (
            f", chunk {r['chunk_tokens']}/{r['chunk_overlap']}" if r["chunk_tokens"] else "")
        out.append(f"| {c} | {setting} | {r['docs_over_budget']:,} of {r['n_docs']:,} | {r['n_passages']:,} | "
                   f"{r['build_s']:.0f} | {r['ndcg@10']:.3f} | {r['ndcg@10_maxsim']:.3f} | {r['recall@100']:.3f} | "
                   f"{r['search_ms_per_query']:.1f} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--report", action="store_true", help="print the rows as a Markdown table and exit")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if args.report:
        print(report())
        return 0
    command = " ".join(["bench/beir/chunking.py", *sys.argv[1:]])
    for collection in args.collections:
        for setting in args.settings:
            append_rows(RESULTS, [run_setting(command, collection, setting)], bench="beir/chunking")
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())

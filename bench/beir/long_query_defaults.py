"""The long-query fusion default checked through the library: nDCG@10 of the default hybrid search
(FusionConfig with its long-query rule) against the same search without it (the default before), on the
long-query tuning set's tune and check halves and on SciFact / NFCorpus (tune and test splits).

The indexes are the default text builds of ``long_query_levers.py`` (``index_data/longq/index-*``); the
search is the default pipeline (``mode="auto"``, k=10). Queries are encoded once per collection and the
two settings rank the same embeddings (``query_texts=`` / ``query_pooled=``).

    .venv/bin/python bench/beir/long_query_defaults.py
    .venv/bin/python bench/beir/long_query_defaults.py --compare stage --sets longq

``--compare stage``: the candidate-stage rule instead (``CentroidConfig.max_query_tokens``: 64, what a build of
these indexes records now, against None, what their manifests read), with the default fusion and with MaxSim
alone; Chamfer recall@10 of MaxSim alone against exhaustive MaxSim too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows, beir_root  # noqa: E402  (also puts the repository root on sys.path)
from retriever.core.beir import read_qrels, read_queries  # noqa: E402
from retriever.evaluation.metrics import evaluate  # noqa: E402
from retriever.hybrid.fusion import FusionConfig  # noqa: E402
from retriever.index.retriever import Retriever  # noqa: E402

log = logging.getLogger("bench.long_query_defaults")
BEIR = beir_root()
SETS = {"longq": (ROOT / "index_data" / "longq" / "set", ("tune", "check")),
        "scifact": (BEIR / "scifact", ("train", "test")),
        "nfcorpus": (BEIR / "nfcorpus", ("dev", "test"))}
RESULTS = RESULTS_DIR / "long_query_defaults.jsonl"


def ndcg_at_10(res, qids: list[str], qrels: dict) -> float:
    """nDCG@10 of search results ``res`` (one row per query of ``qids``) against ``qrels``."""
    run = {q: {str(d): float(s) for d, s in pairs} for q, pairs in zip(qids, res.to_list())}
    return round(float(evaluate(run, {q: qrels[q] for q in qids}, ["ndcg@10"])["ndcg@10"]), 4)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", choices=["fusion", "stage"], default="fusion")
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.compare == "stage":
        append_rows(RESULTS, compare_stage_rule(args.sets), bench="beir/long_query_defaults")
        return 0
    rows = []
    for name, (data, splits) in SETS.items():
        if name not in args.sets:
            continue
        r = Retriever.load(ROOT / "index_data" / "longq" / f"index-{name}")
        new = r.config.hybrid.fusion
        old = FusionConfig(method=new.method, weights=new.weights, depth=new.depth, rrf_k=new.rrf_k, long_weights=None)
        queries = read_queries(data / "queries.jsonl")
        for split in splits:
            qrels = read_qrels(data / "qrels" / f"{split}.tsv")
            qids = [q for q in qrels if q in queries]
            texts = [queries[q] for q in qids]
            t0 = time.perf_counter()
            emb, pooled = r.encoder.encode_queries(texts, return_pooled=True)
            enc_s = time.perf_counter() - t0
            n_long = int((emb.lengths > new.long_query_tokens).sum())
            for label, fusion in (("default", new), ("before", old)):
                t0 = time.perf_counter()
                res = r.search(emb, k=10, hybrid=fusion, query_texts=texts, query_pooled=pooled)
                search_s = time.perf_counter() - t0
                row = {"collection": name, "split": split, "setting": label,
                       "fusion": fusion.to_dict(), "n_queries": len(qids), "n_long": n_long,
                       "ndcg@10": ndcg_at_10(res, qids, qrels), "encode_s": round(enc_s, 2),
                       "search_ms_per_query": round(search_s / len(qids) * 1e3, 2)}
                rows.append(row)
                log.info("%s %s %s: nDCG@10 %.4f (%d of %d queries long)", name, split, label, row["ndcg@10"],
                         n_long, len(qids))
    append_rows(RESULTS, rows, bench="beir/long_query_defaults")
    return 0


def compare_stage_rule(sets) -> list[dict]:
    """nDCG@10 (default fusion, MaxSim alone) and Chamfer recall@10 (MaxSim alone) with the stage rule's
    ``max_query_tokens`` at 64 and at None, on the same index and query embeddings."""
    import dataclasses

    from retriever.evaluation.metrics import chamfer_recall

    rows = []
    for name in sets:
        data, splits = SETS[name]
        r = Retriever.load(ROOT / "index_data" / "longq" / f"index-{name}")
        queries = read_queries(data / "queries.jsonl")
        for split in splits:
            qrels = read_qrels(data / "qrels" / f"{split}.tsv")
            qids = [q for q in qrels if q in queries]
            texts = [queries[q] for q in qids]
            emb, pooled = r.encoder.encode_queries(texts, return_pooled=True)
            exact = r.search(emb, k=10, mode="exact", hybrid=False).rows
            for limit in (64, None):
                r.config = dataclasses.replace(r.config, centroids=dataclasses.replace(r.config.centroids,
                                                                                       max_query_tokens=limit))
                for label, kw in (("hybrid", dict(query_texts=texts, query_pooled=pooled)), ("maxsim", dict(hybrid=False))):
                    t0 = time.perf_counter()
                    res = r.search(emb, k=10, **kw)
                    search_s = time.perf_counter() - t0
                    row = {"collection": name, "split": split, "compare": "stage", "max_query_tokens": limit,
                           "search": label, "n_queries": len(qids), "n_docs": r.n_docs,
                           "n_long": int((emb.lengths > 64).sum()), "ndcg@10": ndcg_at_10(res, qids, qrels),
                           "search_ms_per_query": round(search_s / len(qids) * 1e3, 2)}
                    if label == "maxsim":
                        row["chamfer_recall@10"] = round(chamfer_recall(res.rows, exact, 10), 4)
                    rows.append(row)
                    log.info("%s %s max_query_tokens=%s %s: nDCG@10 %.4f %s", name, split, limit, label,
                             row["ndcg@10"], row.get("chamfer_recall@10", ""))
    return rows


if __name__ == "__main__":
    sys.exit(main())

"""Filtered search against unfiltered search on a 100k-document index, at 1%, 10% and 50% selectivity.

The corpus is clustered random token vectors (dim 128, 8-200 tokens per document, mean ~68: the
lengths of ``bench/scale/synthetic.py``, whose real-vector sources need the cached SciFact / NFCorpus token
stores) with one metadata object per document: ``bucket`` = the document's row modulo 100 (an integer
field), ``lang`` = one of ten strings, ``tags`` = a list. Filters ``{"bucket": {"$lt": s}}`` select
``s`` % of the documents. Per filter, in one process, on the same seeded queries:

- latency p50 / p99 of single-query searches (default pipeline, k=10) with the filter seen for the
  first time in the process ("cold": the store runs its SQL), and again ("warm": the filter's row set
  is cached), against the unfiltered search timed in the same loop (ratios from the same run);
- recall@10 of the filtered search against exact MaxSim over the documents the filter allows
  (``mode="exact"``, the brute-force filter of the exact ranking), and whether they are equal;
- the build's store time and the store's size on disk beside the text and metadata it holds.

    .venv/bin/python bench/scale/filters.py                                # 100,000 documents, 200 queries
    .venv/bin/python bench/scale/filters.py --n-docs 20000 --queries 50   # a quick run

Rows go to ``bench/results/filters.jsonl`` (``load_avg_1m``: before the timed searches); the index is cached
under ``index_data/filters-<n>``.
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

from common import RESULTS_DIR, ROOT, append_rows  # noqa: E402  (also puts the repository root on sys.path)
from retriever.index.config import IndexConfig  # noqa: E402
from retriever.index.documents import DOCUMENTS  # noqa: E402
from retriever.index.retriever import Retriever  # noqa: E402
from retriever.store.tokens import TokenEmbeddings  # noqa: E402

log = logging.getLogger("bench.filters")
DIM = 128
LANGS = ["en", "de", "fr", "es", "it", "nl", "pt", "sv", "pl", "cs"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def corpus_block(start: int, n: int, seed: int = 0) -> tuple[TokenEmbeddings, list[str], list[dict]]:
    """Documents ``start .. start + n - 1``: token vectors near 64 topic centres, texts and metadata."""
    centres = _unit(np.random.default_rng(1234).standard_normal((64, DIM)))
    rng = np.random.default_rng((seed, start))
    lengths = np.clip(np.round(rng.gamma(4.0, 17.0, size=n)), 8, 200).astype(np.int64)
    vecs = []
    for length in lengths:
        topics = rng.choice(64, size=3, replace=False)
        vecs.append(_unit(centres[rng.choice(topics, size=int(length))] + 0.35 * rng.standard_normal((length, DIM))))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = range(start, start + n)
    texts = [f"synthetic document {i} " + " ".join(f"w{(i * 7 + j) % 5000}" for j in range(12)) for i in rows]
    metas = [{"bucket": i % 100, "lang": LANGS[(i // 100) % 10], "tags": [f"t{i % 7}", f"t{i % 11}"]} for i in rows]
    return TokenEmbeddings(np.concatenate(vecs), offsets), texts, metas


def build(path: Path, n_docs: int) -> dict:
    embs, texts, metas = [], [], []
    for start in range(0, n_docs, 10_000):
        e, t, m = corpus_block(start, min(10_000, n_docs - start))
        embs.append(e)
        texts += t
        metas += m
    offsets = [np.zeros(1, dtype=np.int64)]
    for e in embs:
        offsets.append(e.offsets[1:] + offsets[-1][-1])
    emb = TokenEmbeddings(np.concatenate([e.vectors for e in embs]), np.concatenate(offsets))
    t0 = time.perf_counter()
    r = Retriever.build(emb, doc_ids=[f"d{i}" for i in range(n_docs)], texts=texts, metadata=metas,
                        config=IndexConfig(), path=path, show_progress=True)
    wall = time.perf_counter() - t0
    r.close()
    payload = sum(len(t.encode()) + len(json.dumps(m, separators=(",", ":"))) + len(f"d{i}")
                  for i, (t, m) in enumerate(zip(texts, metas)))
    return {"build_s": round(wall, 1), "store_s": round(r.build_timings.get("store_s", 0.0), 2),
            "store_bytes": (path / DOCUMENTS).stat().st_size, "text_and_metadata_bytes": payload}


def _queries(r: Retriever, n: int) -> list[np.ndarray]:
    """Queries of 8-32 token vectors taken from random documents of the index, with noise (each has a
    document it is about, as a real query has; clustered random vectors alone give near-ties only)."""
    rng = np.random.default_rng(99)
    out = []
    for row in rng.choice(r.n_docs, size=n, replace=False):
        a, b = int(r.doc_offsets[row]), int(r.doc_offsets[row + 1])
        toks = r.codec.decode(np.asarray(r.tokens[a:b])).astype(np.float32)
        pick = toks[rng.choice(b - a, size=min(b - a, int(rng.integers(8, 33))), replace=False)]
        out.append(_unit(pick + 0.1 / np.sqrt(DIM) * rng.standard_normal(pick.shape)))
    return out


def _timed(fn, items) -> np.ndarray:
    out = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-docs", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--results", default=str(RESULTS_DIR / "filters.jsonl"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = ROOT / "index_data" / f"filters-{args.n_docs}"
    info = {}
    if not (path / "manifest.json").is_file():
        info = build(path, args.n_docs)
        log.info("built %s: %s", path, info)
    r = Retriever.load(path)
    r.warmup()
    qs = _queries(r, args.queries)
    for q in qs[:5]:
        r.search(q, k=10)
    rows = []
    base = {"n_docs": r.n_docs, "n_queries": len(qs), "k": 10, "load_avg_1m": round(os.getloadavg()[0], 2), **info}
    for pct in (1, 10, 50):
        where = {"bucket": {"$lt": pct}}
        # cold: a filter this process has not seen (the store runs its SQL): per query another bound that
        # selects the same buckets 0 .. pct-1
        bounds = iter(pct - 0.5 + 1e-7 * np.arange(1, len(qs) + 1))
        cold = _timed(lambda q: r.search(q, k=10, where={"bucket": {"$lt": float(next(bounds))}}), qs)
        unfiltered = _timed(lambda q: r.search(q, k=10), qs)
        warm = _timed(lambda q: r.search(q, k=10, where=where), qs)
        unfiltered2 = _timed(lambda q: r.search(q, k=10), qs)
        ref = np.concatenate([unfiltered, unfiltered2])
        got = r.search(qs, k=10, where=where)
        exact = r.search(qs, k=10, where=where, mode="exact")
        recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got.ids, exact.ids)])
        plain, plain_exact = r.search(qs, k=10), r.search(qs, k=10, mode="exact")
        recall_plain = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(plain.ids, plain_exact.ids)])
        row = {**base, "selectivity_pct": pct, "allowed_docs": int(r.documents.select(where).sum()),
               "p50_ms": {"unfiltered": round(float(np.median(ref)), 3), "filtered_warm": round(float(np.median(warm)), 3),
                          "filtered_cold": round(float(np.median(cold)), 3)},
               "p99_ms": {"unfiltered": round(float(np.percentile(ref, 99)), 3),
                          "filtered_warm": round(float(np.percentile(warm, 99)), 3),
                          "filtered_cold": round(float(np.percentile(cold, 99)), 3)},
               "ratio_p50": {"warm": round(float(np.median(warm) / np.median(ref)), 3),
                             "cold": round(float(np.median(cold) / np.median(ref)), 3)},
               "recall_at_10_vs_exact_filtered": round(float(recall), 4),
               "recall_at_10_unfiltered_vs_exact": round(float(recall_plain), 4),
               "equal_to_exact_filtered": bool(np.array_equal(got.ids, exact.ids))}
        rows.append(row)
        log.info("%d%%: %s", pct, json.dumps({k: row[k] for k in ("p50_ms", "ratio_p50", "recall_at_10_vs_exact_filtered",
                                                                  "recall_at_10_unfiltered_vs_exact")}))
    append_rows(args.results, rows, bench="scale/filters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

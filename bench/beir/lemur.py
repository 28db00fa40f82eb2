"""A learned single vector (LEMUR-style) beside MUVERA FDEs as the candidate stage, at equal N.

Usage::

    .venv/bin/python bench/beir/lemur.py                          # SciFact and NFCorpus test queries
    .venv/bin/python bench/beir/lemur.py --datasets scifact --dim 1024 --n-candidates 100 1000

The reduction (after LEMUR, ICML 2026): a query token ``t``'s best match in document ``d``,
``max_j <t, d_j>``, is predicted as ``<phi(t), w_d>`` with ``phi`` a small MLP shared by all documents
and ``w_d`` one vector per document; summed over the query tokens, MaxSim(Q, d) ~ ``<sum_i phi(q_i), w_d>``,
a maximum-inner-product search over the ``w_d``. Nothing here uses labels or queries:

1. **train** ``phi`` (128 -> hidden -> ``dim``, GELU) with a trainable ``w_d`` for each of ``--train-docs``
   sampled documents, on ``--train-tokens`` tokens sampled from the corpus itself as pseudo-query tokens,
   to regress their exact per-document best-match scores (mean squared error, AdamW);
2. **fit** ``w_d`` for every document in closed form (ridge regression of the exact best-match scores of
   ``--fit-tokens`` other sampled corpus tokens on their features ``phi(t)``), as a new document would be;
3. **search**: one FAISS ``IndexFlatIP`` over the ``w_d`` (float32), query vector ``sum_i phi(q_i)``; the
   top N go to the exact MaxSim rerank (the engine's kernel) like the FDE candidates do.

Beside it, on the same cached float16 index (``retriever bench --data ... --codec float16`` caches one:
the synthetic-corpus sources) and the same queries: the index's own FDE stage (``mode="fde"``, its
FAISS index as built, ``IVF1,PQ2560x4fs`` for these sizes) reranked at the same N, and both single
vectors alone (N = 10, no rerank, the LEMUR paper's single-vector nDCG@10), and the engine's default candidate
stage for corpora of 2,048 documents or more, the token centroid stage (``mode="centroids"``, built in memory
with its default config when the cached index has none), at the same N. ``--methods`` picks which of
``lemur``, ``fde`` and ``centroids`` run (the centroid rows need no training). Quality is nDCG@10 against
the qrels and Chamfer recall@10 against exhaustive MaxSim. Rows go to ``bench/results/lemur.jsonl``
(common envelope: CPU model, load average).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scale"))  # for synthetic.find_sources

from common import RESULTS_DIR, ROOT, append_rows, collection_dir  # noqa: E402

import retriever  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)
import faiss  # noqa: E402
import torch  # noqa: E402

from retriever import Retriever  # noqa: E402
from retriever.core.beir import read_qrels, read_queries  # noqa: E402
from retriever.evaluation.metrics import chamfer_recall, evaluate, run_from_arrays  # noqa: E402
from retriever.index.search import search_candidates  # noqa: E402

log = logging.getLogger("bench.lemur")
RESULTS = RESULTS_DIR / "lemur.jsonl"


def best_match(tokens: np.ndarray, probes: np.ndarray, doc_offsets: np.ndarray, docs: np.ndarray,
               block_bytes: int = 256 << 20) -> np.ndarray:
    """float32 (n_probes, len(docs)): ``max_j <probe, d_j>`` over each document's tokens (exact, float32).

    Documents go through in blocks whose score matrix (probes x block tokens) stays under ``block_bytes``.
    """
    out = np.empty((probes.shape[0], docs.size), np.float32)
    block_tokens = max(1, block_bytes // (4 * max(1, probes.shape[0])))
    p = torch.from_numpy(np.ascontiguousarray(probes, np.float32))
    i = 0
    while i < docs.size:
        j, n = i, 0  # documents i..j-1 hold at most block_tokens tokens (at least one document)
        while j < docs.size and (j == i or n + doc_offsets[docs[j] + 1] - doc_offsets[docs[j]] <= block_tokens):
            n += doc_offsets[docs[j] + 1] - doc_offsets[docs[j]]
            j += 1
        rows = np.concatenate([np.arange(doc_offsets[d], doc_offsets[d + 1]) for d in docs[i:j]])
        lens = np.array([doc_offsets[d + 1] - doc_offsets[d] for d in docs[i:j]])
        block = torch.from_numpy(np.asarray(tokens[rows], np.float32))
        s = (p @ block.T).numpy()
        out[:, i:j] = np.maximum.reduceat(s, np.concatenate([[0], np.cumsum(lens)[:-1]]), axis=1)
        i = j
    return out


class Phi(torch.nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


def features(phi: Phi, x: np.ndarray, batch: int = 1 << 14) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            out.append(phi(torch.from_numpy(np.asarray(x[i:i + batch], np.float32))).numpy())
    return np.concatenate(out) if out else np.zeros((0, phi.net[-1].out_features), np.float32)


def train_lemur(tokens, doc_offsets, args, rng) -> tuple[Phi, np.ndarray, dict]:
    n_docs, n_tok = doc_offsets.size - 1, tokens.shape[0]
    t0 = time.perf_counter()
    docs = np.sort(rng.choice(n_docs, size=min(args.train_docs, n_docs), replace=False))
    train_t = np.asarray(tokens[np.sort(rng.choice(n_tok, size=args.train_tokens, replace=False))], np.float32)
    y = best_match(tokens, train_t, doc_offsets, docs)
    targets_s = time.perf_counter() - t0
    torch.manual_seed(args.seed)
    phi = Phi(tokens.shape[1], args.hidden, args.dim)
    w = torch.nn.Parameter(torch.randn(docs.size, args.dim) * args.dim ** -0.5)
    opt = torch.optim.AdamW(list(phi.parameters()) + [w], lr=args.lr, weight_decay=0.0)
    x_t, y_t = torch.from_numpy(train_t), torch.from_numpy(y)
    t1 = time.perf_counter()
    n = x_t.shape[0]
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        total = 0.0
        for b in range(0, n, args.batch):
            idx = perm[b:b + args.batch]
            loss = torch.mean((phi(x_t[idx]) @ w.T - y_t[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        log.info("epoch %d: train MSE %.5f (targets' variance %.5f)", epoch + 1, total / n, float(y_t.var()))
    return phi.eval(), docs, {"targets_s": round(targets_s, 1), "train_s": round(time.perf_counter() - t1, 1),
                              "train_mse": round(total / n, 6), "target_var": round(float(y_t.var()), 6)}


def fit_documents(phi: Phi, tokens, doc_offsets, args, rng) -> tuple[np.ndarray, dict]:
    """w_d for every document: ridge regression of exact best-match scores of fresh sampled tokens on phi."""
    n_docs = doc_offsets.size - 1
    t0 = time.perf_counter()
    probes = np.asarray(tokens[np.sort(rng.choice(tokens.shape[0], size=args.fit_tokens, replace=False))], np.float32)
    f = features(phi, probes).astype(np.float64)  # (n_fit, dim)
    gram = f.T @ f
    gram[np.diag_indices_from(gram)] += args.ridge * np.trace(gram) / gram.shape[0]
    a = np.linalg.solve(gram, f.T).astype(np.float32)  # (dim, n_fit)
    w = np.empty((n_docs, args.dim), np.float32)
    step = 512
    for i in range(0, n_docs, step):
        docs = np.arange(i, min(n_docs, i + step))
        w[docs] = best_match(tokens, probes, doc_offsets, docs).T @ a.T
    return w, {"fit_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    from synthetic import find_sources

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    p.add_argument("--split", default="test")
    p.add_argument("--dim", type=int, default=2048, help="single-vector width (LEMUR-2048 in the paper)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--train-docs", type=int, default=1024)
    p.add_argument("--train-tokens", type=int, default=16384)
    p.add_argument("--fit-tokens", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ridge", type=float, default=1e-3, help="ridge strength, relative to the mean eigenvalue")
    p.add_argument("--n-candidates", type=int, nargs="+", default=[10, 100, 200, 500, 1000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="lemur,fde,centroids",
                   help="comma-separated candidate stages to measure: lemur, fde, centroids")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    methods = set(args.methods.split(","))
    if not methods or methods - {"lemur", "fde", "centroids"}:
        p.error(f"--methods takes lemur, fde and centroids, got {args.methods!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    for name, index_dir in zip(args.datasets, find_sources(ROOT / "index_data" / "bench", tuple(args.datasets))):
        rng = np.random.default_rng(args.seed)
        r = Retriever.load(index_dir)
        tokens = r.tokens.view(np.float16) if r.tokens.dtype == np.uint16 else r.tokens
        doc_offsets = np.asarray(r.doc_offsets, np.int64)
        data = collection_dir(name)
        qrels = read_qrels(data / "qrels" / f"{args.split}.tsv")
        texts = read_queries(data / "queries.jsonl")
        qids = [q for q in texts if q in qrels]
        q = r.encoder.encode_queries([texts[i] for i in qids])
        exact = r.search(q, k=10, mode="exact")
        base = {"dataset": name, "split": args.split, "n_docs": r.n_docs, "n_tokens": r.n_tokens, "queries": len(qids),
                "index": index_dir.name}

        def quality(rows, scores) -> dict:
            run = run_from_arrays(qids, rows, scores, r.doc_ids)
            return {"ndcg_at_10": round(evaluate(run, qrels, ["ndcg@10"])["ndcg@10"], 4),
                    "chamfer_recall_at_10": round(chamfer_recall(rows, exact.rows, 10), 4)}

        rows_out = [dict(base, method="exhaustive", n_candidates=r.n_docs, **quality(exact.rows, exact.scores))]
        if "lemur" in methods:
            phi, train_docs, t_train = train_lemur(tokens, doc_offsets, args, rng)
            w, t_fit = fit_documents(phi, tokens, doc_offsets, args, rng)
            index = faiss.IndexFlatIP(args.dim)
            index.add(w)
            qv = np.stack([features(phi, q.vectors[q.offsets[i]:q.offsets[i + 1]]).sum(0) for i in range(len(q))])
            info = dict(dim=args.dim, hidden=args.hidden, train_docs=args.train_docs, train_tokens=args.train_tokens,
                        fit_tokens=args.fit_tokens, epochs=args.epochs, bytes_per_doc=args.dim * 4, **t_train, **t_fit)
        if "centroids" in methods and r.centroid_stage is None:
            t = time.perf_counter()
            r.rebuild_centroids()  # in memory: the cached index on disk is not changed
            centroid_info = {"centroids_build_s": round(time.perf_counter() - t, 1),
                             "n_centroids": r.centroid_stage.n_centroids,
                             "bytes_per_doc": round(r.centroid_stage.nbytes_resident() / r.n_docs)}
        elif "centroids" in methods:
            centroid_info = {"n_centroids": r.centroid_stage.n_centroids,
                             "bytes_per_doc": round(r.centroid_stage.nbytes_resident() / r.n_docs)}
        for n in args.n_candidates:
            if "lemur" in methods:
                t = time.perf_counter()
                sv, cand = index.search(qv, n)
                lemur_s = time.perf_counter() - t
                if n == 10:  # the single vector alone
                    rows_out.append(dict(base, method="lemur", n_candidates=10, rerank=False, **info,
                                         **quality(cand, sv)))
                top, sc = search_candidates(q, np.ascontiguousarray(cand, np.int64), r.store, doc_offsets, k=10)  # the engine's rerank
                rows_out.append(dict(base, method="lemur", n_candidates=n, rerank=True, **info,
                                     candidates_ms_per_query=round(lemur_s * 1e3 / len(q), 3), **quality(top, sc)))
            if "fde" in methods:
                if n == 10:
                    fde_q = r.fde_encoder.encode_queries(q)
                    fs, fc = r.faiss_index.search(fde_q, 10)
                    rows_out.append(dict(base, method="fde", n_candidates=10, rerank=False,
                                         faiss_factory=r.config.faiss_factory, bytes_per_doc=r.faiss_index.sa_code_size(),
                                         **quality(fc, fs)))
                res = r.search(q, k=10, mode="fde", n_candidates=n)
                rows_out.append(dict(base, method="fde", n_candidates=n, rerank=True, faiss_factory=r.config.faiss_factory,
                                     bytes_per_doc=r.faiss_index.sa_code_size(), **quality(res.rows, res.scores)))
            if "centroids" in methods:
                res = r.search(q, k=10, mode="centroids", n_candidates=n)
                rows_out.append(dict(base, method="centroids", n_candidates=n, rerank=True, **centroid_info,
                                     **quality(res.rows, res.scores)))
        for row in append_rows(args.results, rows_out, bench="beir/lemur"):
            log.info("%s", json.dumps({k: row.get(k) for k in ("dataset", "method", "n_candidates", "rerank",
                                                                "ndcg_at_10", "chamfer_recall_at_10")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

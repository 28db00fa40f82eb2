"""Cost of changing an index in place (add / delete / compact / upsert) against a full rebuild.

Usage::

    .venv/bin/python bench/user_path/lifecycle.py               # 3,000 docs x ~180 tokens x 128-d, Flat
    .venv/bin/python bench/user_path/lifecycle.py --n-docs 2000 --repeat 3 --faiss-factory IVF64,Flat

Synthetic unit token vectors (128-d, ~180 tokens per document, lengths 60..300) and the
default FDE config. Every operation is timed on a fresh copy of the same starting index, so
repeats are comparable, and the full rebuild from the same embeddings is measured in the same
run. Medians over ``--repeat`` runs; times per 1,000 documents changed and as a ratio to the
rebuild. Operations:

* rebuild       ``Retriever.build`` of all N documents (no path: token store in a temp dir)
* add/built     ``add`` of 1,000 documents to an unsaved build of N-1,000 (appends in place)
* add/loaded    the same on an index loaded with ``mmap=True`` (first add copies the store)
* add/loaded2   a second 1,000 on that object (appends in place)
* add/in-memory the same on an index loaded with ``mmap=False`` (concatenates in memory)
* upsert        ``upsert`` of 1,000 existing ids on a loaded index
* delete        ``delete`` of 1,000 ids
* compact       ``compact`` after deleting 1,000 (Flat/HNSW: reuses stored FDEs; others re-encode)
* save          ``save`` of the N-document index (what makes any change durable)

``--drift`` instead measures when a trained FAISS index (IVF) wants retraining: it is trained on
documents of one half of the topics, then documents of the other half are added with the old
training; recall@10 against exact MaxSim (fixed n_candidates and nprobe) is reported for queries
of both halves, before and after ``compact(retrain=True)``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

import common  # noqa: E402,F401  (puts the repository root on sys.path)
from retriever.candidates.fde import FDEConfig  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402
from retriever.index.retriever import Retriever  # noqa: E402


def make_docs(n: int, dim: int, mean_len: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(mean_len, mean_len / 4, size=n), mean_len // 3, 5 * mean_len // 3).astype(int)
    docs = []
    for n_tok in lengths:
        x = rng.standard_normal((n_tok, dim), dtype=np.float32)
        docs.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return docs


def topic_docs(n: int, dim: int, mean_len: int, topics: np.ndarray, centres: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        n_tok = int(np.clip(rng.normal(mean_len, mean_len / 4), 8, 3 * mean_len))
        t = centres[rng.choice(rng.choice(topics, size=3, replace=False), size=n_tok)]
        x = t + 0.25 * rng.standard_normal(t.shape).astype(np.float32)
        docs.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return docs


def drift(args) -> int:
    """Search quality of an IVF index trained on one half of the topics after the other half is added."""
    rng = np.random.default_rng(7)
    n_topics = 256
    centres = rng.standard_normal((n_topics, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    half_a, half_b = np.arange(n_topics // 2), np.arange(n_topics // 2, n_topics)
    n = args.n_docs // 2
    docs_a = topic_docs(n, args.dim, args.mean_len, half_a, centres, seed=1)
    docs_b = topic_docs(n, args.dim, args.mean_len, half_b, centres, seed=2)
    # queries: 16 noisy tokens of an indexed document of each half
    queries, sources = {}, {}
    for name, docs, first_id in (("A", docs_a, 0), ("B", docs_b, n)):
        qs, src = [], []
        for d in rng.choice(len(docs), size=200, replace=False):
            x = docs[d][rng.integers(0, docs[d].shape[0], size=16)] + 0.3 * rng.standard_normal((16, args.dim))
            qs.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
            src.append(first_id + int(d))
        queries[name], sources[name] = qs, src
    factory = args.faiss_factory if args.faiss_factory != "Flat" else "IVF64,Flat"
    config = IndexConfig(fde=FDEConfig(), faiss_factory=factory)
    r = Retriever.build(docs_a, config=config, show_progress=False)
    r.add(docs_b)
    kw = {"k": 10, "n_candidates": args.drift_candidates, "nprobe": args.drift_nprobe}

    def recalls(index, **knobs) -> dict:
        """Share of queries whose source document is in the top 10."""
        return {name: float(np.mean([s in row for s, row in zip(sources[name], index.search(q, **knobs).ids.tolist())]))
                for name, q in queries.items()}

    flat = Retriever.build(docs_a + docs_b, config=IndexConfig(fde=FDEConfig()), show_progress=False)
    exact = recalls(flat, k=10, mode="exact")
    reference = recalls(flat, k=10, n_candidates=args.drift_candidates)
    def imbalance(index) -> float:
        """Largest IVF list over the mean list size: search cost at a fixed nprobe grows with it."""
        import faiss

        ivf = faiss.extract_index_ivf(index.faiss_index)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
        return float(sizes.max() / sizes.mean())

    before, imb_before = recalls(r, **kw), imbalance(r)
    t = timed(r.compact, retrain=True)
    after, imb_after = recalls(r, **kw), imbalance(r)
    print(f"FAISS {factory}, {n} docs of topics A (trained on) + {n} of topics B added with that training; "
          f"n_candidates={args.drift_candidates}, nprobe={args.drift_nprobe}")
    print("share of queries (16 noisy tokens of an indexed document) that find their document in the top 10")
    print(f"{'':<28} {'topics A':>12} {'topics B':>12} {'max/mean IVF list':>18}")
    print(f"{'exhaustive MaxSim':<28} {exact['A']:>12.3f} {exact['B']:>12.3f}")
    print(f"{'Flat FDE candidates':<28} {reference['A']:>12.3f} {reference['B']:>12.3f}")
    print(f"{'added with old training':<28} {before['A']:>12.3f} {before['B']:>12.3f} {imb_before:>18.2f}")
    print(f"{'after compact(retrain=True)':<28} {after['A']:>12.3f} {after['B']:>12.3f} {imb_after:>18.2f}   "
          f"(retrain {t:.2f} s)")
    return 0


def timed(fn, *args, **kwargs) -> float:
    """Seconds of ``fn(*args, **kwargs)``. The bound method is passed, not a closure over the index
    variable, so an index can be deleted (its memory and maps released) before the next one loads."""
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-docs", type=int, default=3000)
    p.add_argument("--batch", type=int, default=1000, help="documents added / deleted per operation")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--mean-len", type=int, default=180)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--faiss-factory", default="Flat")
    p.add_argument("--json", action="store_true", help="also print one JSON row")
    p.add_argument("--drift", action="store_true", help="measure recall of a trained index after adding other data")
    p.add_argument("--drift-candidates", type=int, default=100)
    p.add_argument("--drift-nprobe", type=int, default=4)
    args = p.parse_args(argv)
    if args.drift:
        return drift(args)
    if args.batch >= args.n_docs:
        p.error("--batch must be smaller than --n-docs")

    n, b = args.n_docs, args.batch
    config = IndexConfig(fde=FDEConfig(), faiss_factory=args.faiss_factory)
    docs = make_docs(n, args.dim, args.mean_len, seed=0)
    extra = make_docs(2 * b, args.dim, args.mean_len, seed=1)
    ids = [f"d{i}" for i in range(n)]
    n_tokens = sum(d.shape[0] for d in docs)
    print(f"{n} docs, {n_tokens} tokens ({n_tokens / n:.0f}/doc), dim {args.dim}, FDE dim "
          f"{config.fde.output_dim(args.dim)}, FAISS {args.faiss_factory}, batch {b}, {args.repeat} repeats")

    root = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    def build(d, i):
        return Retriever.build(d, doc_ids=i, config=config, show_progress=False)

    try:
        # warm-up: JIT caches, FAISS, page cache
        w = build(docs[:300], ids[:300])  # enough to train small IVF/PQ factories too
        w.add(extra[:5], [f"w{i}" for i in range(5)])
        w.search(docs[0], k=5)
        del w
        base_dir = root / "base"
        build(docs[: n - b], ids[: n - b]).save(base_dir)
        full_dir = root / "full"
        build(docs, ids).save(full_dir)
        new_ids = [f"x{i}" for i in range(2 * b)]
        for rep in range(args.repeat):
            record("rebuild", timed(build, docs, ids))
            r = build(docs[: n - b], ids[: n - b])
            record("add/built", timed(r.add, extra[:b], new_ids[:b]))
            del r
            r = Retriever.load(base_dir, mmap=True)
            record("add/loaded", timed(r.add, extra[:b], new_ids[:b]))
            record("add/loaded2", timed(r.add, extra[b:], new_ids[b:]))
            del r
            r = Retriever.load(base_dir, mmap=False)
            record("add/in-memory", timed(r.add, extra[:b], new_ids[:b]))
            del r
            r = Retriever.load(full_dir, mmap=True)
            record("upsert", timed(r.upsert, extra[:b], ids[:b]))
            del r
            r = Retriever.load(full_dir, mmap=True)
            gone = ids[rep :: max(1, n // b)][:b]
            record("delete", timed(r.delete, gone))
            record("compact", timed(r.compact))
            r2 = Retriever.load(full_dir, mmap=True)
            out = root / f"save{rep}"
            record("save", timed(r2.save, out))
            shutil.rmtree(out)
            del r, r2
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    rebuild = med["rebuild"]
    print(f"\n{'operation':<14} {'median s':>9} {'s per 1k docs':>14} {'x rebuild':>10}")
    per = {"rebuild": n, "add/built": b, "add/loaded": b, "add/loaded2": b, "add/in-memory": b, "upsert": b,
           "delete": b, "compact": b, "save": n}
    for name in ("rebuild", "add/built", "add/loaded", "add/loaded2", "add/in-memory", "upsert", "delete",
                 "compact", "save"):
        print(f"{name:<14} {med[name]:>9.3f} {1000 * med[name] / per[name]:>14.3f} {med[name] / rebuild:>10.3f}")
    print(f"\n'x rebuild' = median time of the operation / median time of Retriever.build over all {n} documents "
          f"(same run); 'per 1k docs' divides by the documents changed ({b}) or, for rebuild/save, by {n}.")
    if args.json:
        print(json.dumps({"n_docs": n, "batch": b, "dim": args.dim, "n_tokens": n_tokens,
                          "faiss_factory": args.faiss_factory, "median_s": med, "runs_s": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

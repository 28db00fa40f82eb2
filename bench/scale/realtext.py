"""A real-text corpus of 300,000+ short documents from two public dictionaries packaged by Debian.

Usage::

    .venv/bin/python bench/scale/realtext.py prepare  # download the pinned .debs, check sha256, write corpus + queries
    .venv/bin/python bench/scale/realtext.py build    # encode with the default encoder and build (the long run)
    .venv/bin/retriever centroids index_data/realtext/index-int8   # an index built before the centroid stage: add it
    .venv/bin/python bench/scale/realtext.py measure  # same measurements as bench/scale/scale.py, rows -> scale.jsonl
    .venv/bin/python bench/scale/realtext.py tune --entries 200 1000 --n-candidates 1170 1521 2000  # tuning entries only

Sources (``apt-get download``, versions pinned and checked against the sha256 in ``bench/common.py``):

- ``dict-gcide`` 0.48.5+nmu2: the GNU Collaborative International Dictionary of English (Webster 1913 and
  additions), dictd format. One document per distinct definition block (several headwords may share one).
- ``dict-wn`` 1:3.0-37: WordNet 3.0 in dictd format. One document per sense (the numbered parts of an
  entry; an entry without numbers is one document).

Documents are ``{"_id", "title", "text"}`` (title = headword). After a seeded shuffle, the first 1,000
documents are held out of the corpus and their texts become the queries (what they are relevant to does not
matter here: the measurement is Chamfer recall against exhaustive MaxSim over the same index). Entries
0-199 are the reported queries (``measure``); entries 200-999 are for tuning (``tune``: Chamfer recall@10 of
the default search per N, overall and per block of 200 entries, ground truth cached per block); the next
``--n-docs`` (default 300,000) documents are the corpus. Files go to ``index_data/realtext/``; nothing is
downloaded by tests, and nothing but these two package files is fetched.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import (  # noqa: E402  (also puts the repository root on sys.path)
    DICTIONARY_PACKAGES, ROOT, WN_SENSE, append_rows, clean_text, dictionary_entries, fetch_dictionaries,
)

log = logging.getLogger("bench.realtext")

OUT = ROOT / "index_data" / "realtext"
PACKAGES = DICTIONARY_PACKAGES
N_QUERIES = 1000
fetch, _entries, _clean, _WN_SENSE = fetch_dictionaries, dictionary_entries, clean_text, WN_SENSE


def documents(dictd: Path):
    for word, text in _entries(dictd, "gcide"):
        body = text.split("\n", 1)[1] if "\n" in text else text
        if len(body.split()) >= 3:
            yield {"title": word, "text": _clean(body)}
    for word, text in _entries(dictd, "wn"):
        body = text.split("\n", 1)[1] if "\n" in text else text
        senses = [s for s in _WN_SENSE.split("\n" + body) if s.strip()] or [body]
        for s in senses:
            if len(s.split()) >= 3:
                yield {"title": word, "text": _clean(s)}


def prepare(args) -> None:
    dictd = fetch(OUT / "debs")
    docs = list(documents(dictd))
    log.info("%d documents from gcide + wn", len(docs))
    random.Random(args.seed).shuffle(docs)
    if len(docs) < N_QUERIES + args.n_docs:
        raise SystemExit(f"error: only {len(docs)} documents, {N_QUERIES} + {args.n_docs} asked for")
    with open(OUT / "queries.jsonl", "w") as fh:
        for i, d in enumerate(docs[:N_QUERIES]):
            fh.write(json.dumps({"_id": f"q{i}", "text": d["text"]}) + "\n")
    with gzip.open(OUT / "corpus.jsonl.gz", "wt") as fh:
        for i, d in enumerate(docs[N_QUERIES : N_QUERIES + args.n_docs]):
            fh.write(json.dumps({"_id": f"d{i}", "title": d["title"], "text": d["text"]}) + "\n")
    log.info("wrote %d queries and %d documents to %s", N_QUERIES, args.n_docs, OUT)


def build(args) -> None:
    from retriever import IndexConfig, Retriever
    from retriever.core.beir import iter_corpus

    path = OUT / f"index-{args.codec}"
    t0 = time.perf_counter()
    r = Retriever.build(iter_corpus(OUT / "corpus.jsonl.gz"), config=IndexConfig(codec=args.codec), path=path,
                        show_progress=True)
    import resource

    wall = time.perf_counter() - t0
    row = {"stage": "build", "corpus": "realtext", "n_docs": r.n_docs, "n_tokens": r.n_tokens,
           "faiss_factory": r.config.faiss_factory, "codec": args.codec, "wall_s": round(wall, 1),
           "timings": {k: round(v, 1) for k, v in r.build_timings.items()},
           "build_s_excl_gen": round(wall - r.build_timings["encode_s"], 1),  # excluding the encoder
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
           "disk_bytes_per_doc": round(sum(f.stat().st_size for f in path.iterdir()) / r.n_docs),
           "faiss_bytes_per_doc": round((path / "fde.faiss").stat().st_size / r.n_docs),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (OUT / f"build-{args.codec}.json").write_text(json.dumps(row))
    import scale

    append_rows(scale.RESULTS, [row], bench="scale/realtext")
    print(json.dumps(row))


def encode_queries(args) -> Path:
    import numpy as np

    from retriever.core.beir import read_queries
    from retriever.encoders.colbert import ColBERTEncoder

    path = OUT / "queries.npz"
    if not path.is_file():
        q = read_queries(OUT / "queries.jsonl")
        e = ColBERTEncoder.from_pretrained("default").encode_queries(list(q.values()))
        np.savez(path, vectors=e.vectors.astype(np.float32), offsets=e.offsets)
    return path


TUNE_BLOCK = 200


def tune(args) -> None:
    """Chamfer recall@10 of the default search on held-out entries ``[a, b)`` (tuning queries: a >= 200)."""
    import numpy as np

    from retriever import Retriever
    from retriever.store.tokens import TokenEmbeddings

    a, b = args.entries
    if not (TUNE_BLOCK <= a < b <= N_QUERIES and a % TUNE_BLOCK == 0 and b % TUNE_BLOCK == 0):
        raise SystemExit(f"--entries must be multiples of {TUNE_BLOCK} within [{TUNE_BLOCK}, {N_QUERIES}] "
                         f"(entries 0-{TUNE_BLOCK - 1} are the reported queries), got {a} {b}")
    path = OUT / f"index-{args.codec}"
    r = Retriever.load(path)
    with np.load(encode_queries(args)) as z:
        q_all = TokenEmbeddings(z["vectors"], z["offsets"])
    gts = []
    for s in range(a, b, TUNE_BLOCK):  # exact top-10 per block of entries, cached beside the index
        f = OUT / f"{path.name}.gt-heldout-tune-{s}-{s + TUNE_BLOCK}.npy"
        if not f.is_file():
            t = time.perf_counter()
            np.save(f, r.search(q_all.select(range(s, s + TUNE_BLOCK)), k=10, mode="exact").rows)
            log.info("exact top-10 of entries %d-%d: %.1f s", s, s + TUNE_BLOCK - 1, time.perf_counter() - t)
        gts.append(np.load(f))
    gt = np.concatenate(gts)
    q = q_all.select(range(a, b))
    for n in args.n_candidates:
        kw = {"k": 10, "mode": "centroids"} | ({} if n == "auto" else {"n_candidates": int(n)})
        rows = r.search(q, **kw).rows
        rec = np.array([len(set(x) & set(y)) / 10 for x, y in zip(rows.tolist(), gt.tolist())])
        blocks = [round(float(rec[i : i + TUNE_BLOCK].mean()), 4) for i in range(0, rec.size, TUNE_BLOCK)]
        print(json.dumps({"entries": [a, b], "n_candidates": n, "chamfer_recall_at_10": round(float(rec.mean()), 4),
                          "per_block": blocks}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["prepare", "build", "measure", "tune"])
    ap.add_argument("--entries", type=int, nargs=2, default=[200, 1000], help="tune: held-out entries [a, b)")
    ap.add_argument("--n-docs", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codec", default="int8")
    ap.add_argument("--n-candidates", nargs="+", default=["auto", 1000, 2000, 4000])
    ap.add_argument("--gt-queries", type=int, default=200)
    ap.add_argument("--timed", type=int, default=300)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    if args.step == "prepare":
        prepare(args)
    elif args.step == "build":
        build(args)
    elif args.step == "tune":
        tune(args)
    else:
        import scale

        qfile = encode_queries(args)
        return scale.main(["--index-dir", str(OUT / f"index-{args.codec}"), "--queries-file", str(qfile),
                           "--codec", args.codec, "--gt-queries", str(args.gt_queries), "--timed", str(args.timed),
                           "--n-candidates", *map(str, args.n_candidates), "--corpus-name", "realtext"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

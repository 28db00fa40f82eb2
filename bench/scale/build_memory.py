"""Peak memory of a streaming text build against the size of the token store it writes.

    .venv/bin/python bench/scale/build_memory.py --data ../shared/beir/nfcorpus
    .venv/bin/python bench/scale/build_memory.py --data ../shared/beir/nfcorpus --copies 2
    .venv/bin/python bench/scale/build_memory.py --data ../shared/beir/nfcorpus --copies 2 --faiss-factory IVF64,SQ8

Samples the process's resident memory (VmRSS) every 20 ms while ``Retriever.build`` streams the
corpus through the encoder into ``--out`` and prints the peak next to the bytes of ``tokens.npy``
and ``fde.faiss``, above two baselines:

- ``loaded``: after loading the encoder, encoding a few short texts and compiling the numba
  kernels (code, not data). Everything the build allocates counts, including the encoder's
  per-shape kernels and allocator pools that the first long batches create.
- ``warmed``: after also encoding one batch of every padded width the corpus can produce, so
  those fixed, corpus-size-independent encoder costs are in the baseline; what is left is what
  streaming the corpus through encoder, FDE and FAISS adds.

``--encode-only`` streams the corpus through the encoder in the build's 128-document steps and
discards the vectors: the encoder's own share of the peak, for comparison.

``--copies N`` streams the corpus N times (ids suffixed ``#k``): the token store grows N-fold while
the encoder's share of the peak stays flat; what grows is the in-RAM FAISS index. A JSON row is printed and appended to ``--results``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows, beir_root  # noqa: E402  (also puts the repository root on sys.path)


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak, self._halt = interval, 0, threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, rss_bytes())


def warm_every_width(enc) -> list[int]:
    """Encode one full batch at every padded width documents can have (16, 32, ..., document_length);
    returns the widths covered."""
    from retriever.encoders.colbert import _WIDTH_STEP, _padded_width

    cfg = enc.config
    special = len(enc.tokenize([""], is_query=False)[0])
    covered = set()
    for w in range(_WIDTH_STEP, cfg.document_length + _WIDTH_STEP, _WIDTH_STEP):
        text = "the " * max(0, min(w, cfg.document_length) - special)
        width = _padded_width(len(enc.tokenize([text], is_query=False)[0]), cfg.document_length, False)
        enc.encode_documents([text] * max(1, min(cfg.batch_size, cfg.batch_tokens // width)))
        covered.add(width)
    return sorted(covered)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(beir_root() / "nfcorpus"))
    ap.add_argument("--out", default=str(ROOT / "index_data" / "bench-build-memory"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--copies", type=int, default=1, help="stream the corpus this many times")
    ap.add_argument("--faiss-factory", default="Flat", help="FAISS factory string of the candidate index")
    ap.add_argument("--encode-only", action="store_true",
                    help="stream the corpus through the encoder in the build's steps and discard the vectors: "
                         "the encoder's own share of the peak")
    ap.add_argument("--results", default=str(RESULTS_DIR / "build_memory.jsonl"))
    args = ap.parse_args()

    from retriever_kernels.maxsim import warmup
    from retriever.core.beir import doc_text, iter_corpus
    from retriever.encoders.colbert import ColBERTEncoder
    from retriever.index.config import IndexConfig
    from retriever.index.retriever import Retriever

    enc = ColBERTEncoder.from_pretrained(args.model)
    enc.encode_documents(["warm-up text"] * 4)
    warmup()
    loaded = rss_bytes()
    widths = warm_every_width(enc)
    warmed = rss_bytes()

    def corpus():
        for k in range(args.copies):
            for d in iter_corpus(args.data):
                yield d if k == 0 else {**d, "_id": f"{d['_id']}#{k}"}

    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    if args.encode_only:
        from retriever.index import builder as builder_mod
        from retriever.core.memory import release_freed_memory

        n_docs = n_tokens = 0
        it = corpus()
        while chunk := list(itertools.islice(it, builder_mod._TEXT_BATCH)):
            emb = enc.encode_documents([doc_text(d) for d in chunk])
            n_docs, n_tokens = n_docs + len(emb), n_tokens + emb.n_tokens
            del emb
            release_freed_memory()
        timings = {}
    else:
        r = Retriever.build(corpus(), encoder=enc, path=args.out, config=IndexConfig(faiss_factory=args.faiss_factory),
                            show_progress=False)
        n_docs, n_tokens, timings = r.n_docs, r.n_tokens, r.build_timings
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    out = Path(args.out)
    # what the index would hold: float16 tokens (+ .npy header), measured files when built
    tokens_b = n_tokens * enc.dim * 2 if args.encode_only else (out / "tokens.npy").stat().st_size
    faiss_b = 0 if args.encode_only else (out / "fde.faiss").stat().st_size
    mb = 2**20
    row = {
        "mode": "encode_only" if args.encode_only else "build",
        "data": args.data,
        "copies": args.copies,
        "faiss_factory": None if args.encode_only else args.faiss_factory,
        "n_docs": n_docs,
        "n_tokens": n_tokens,
        "dim": enc.dim,
        "encoder": {k: enc.config.to_dict()[k] for k in ("document_length", "batch_size", "batch_tokens", "dtype")},
        "warm_widths": len(widths),
        "build_s": round(wall, 1),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "loaded_rss_mb": round(loaded / mb, 1),
        "warmed_rss_mb": round(warmed / mb, 1),
        "peak_rss_mb": round(peak / mb, 1),
        "peak_above_loaded_mb": round((peak - loaded) / mb, 1),
        "peak_above_warmed_mb": round((peak - warmed) / mb, 1),
        "tokens_npy_mb": round(tokens_b / mb, 1),
        "fde_faiss_mb": round(faiss_b / mb, 1),
        "peak_above_loaded_over_token_store": round((peak - loaded) / tokens_b, 3),
        "peak_above_warmed_over_token_store": round((peak - warmed) / tokens_b, 3),
    }
    if args.results:
        row = append_rows(args.results, [row], bench="scale/build_memory")[0]
    print(json.dumps(row, indent=2))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

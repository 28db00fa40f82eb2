"""Peak memory of a streaming text build against the size of the token store it writes.

    .venv/bin/python bench/bench_build_memory.py --data ../shared/beir/nfcorpus

Samples the process's resident memory (VmRSS) every 20 ms while ``Retriever.build`` streams the
corpus through the encoder into ``--out``, and prints the peak above the baseline measured after
the encoder is loaded and warmed, next to the bytes of ``tokens.npy`` and ``fde.faiss``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/beir/nfcorpus")
    ap.add_argument("--out", default="index_data/bench-build-memory")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    from retriever.beir import iter_corpus
    from retriever.encoder import ColBERTEncoder
    from retriever.index import Retriever

    enc = ColBERTEncoder.from_pretrained(args.model)
    enc.encode_documents(["warm-up text " * 50] * 64)  # allocator and autocast caches settle
    from kernels.maxsim import warmup

    warmup()
    base = rss_bytes()
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    r = Retriever.build(iter_corpus(args.data), encoder=enc, path=args.out, show_progress=False)
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    out = Path(args.out)
    tokens_b = (out / "tokens.npy").stat().st_size
    faiss_b = (out / "fde.faiss").stat().st_size
    row = {
        "data": args.data,
        "n_docs": r.n_docs,
        "n_tokens": r.n_tokens,
        "dim": r.dim,
        "build_s": round(wall, 1),
        "timings_s": {k: round(v, 2) for k, v in r.build_timings.items()},
        "baseline_rss_mb": round(base / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "peak_above_baseline_mb": round((peak - base) / 2**20, 1),
        "tokens_npy_mb": round(tokens_b / 2**20, 1),
        "fde_faiss_mb": round(faiss_b / 2**20, 1),
        "peak_above_baseline_over_token_store": round((peak - base) / tokens_b, 3),
    }
    print(json.dumps(row, indent=2))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

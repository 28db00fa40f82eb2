"""Throughput of the batch MUVERA FDE encoder against the plain per-document numpy reference.

Usage::

    .venv/bin/python bench/kernels/fde.py [--n-docs 4000] [--tokens 180] [--dim 128] [--repeats 5]

Random unit-norm token vectors, documents of ``--tokens`` tokens each. Both encoders run in
the same process, interleaved in every repeat (so load from other processes hits both);
prints the median documents/s of each (wall clock) and the ratio, plus the batch
encoder's CPU time per document (all threads; less sensitive to other processes than
wall time) and the share of the machine's CPU time that was idle during the run (from
``/proc/stat``; low values mean other processes competed for the cores). JIT
compilation is excluded (a warm-up call precedes the timing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import ROOT  # noqa: E402  (also puts the repository root on sys.path)

if str(ROOT / "tests") not in sys.path:  # the plain numpy reference encoder of the tests
    sys.path.insert(0, str(ROOT / "tests"))

from fde_reference import fde_reference_encoder  # noqa: E402

from retriever.candidates.fde import FDEConfig, FDEEncoder  # noqa: E402
from retriever.store.tokens import TokenEmbeddings  # noqa: E402


def _idle_ticks() -> tuple[int, int] | None:
    """(idle, total) CPU ticks since boot, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except OSError:
        return None
    return v[3] + v[4], sum(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-docs", type=int, default=4000, help="documents per batch-encoder call")
    ap.add_argument("--ref-docs", type=int, default=200, help="documents per reference call")
    ap.add_argument("--tokens", type=int, default=180)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num-repetitions", type=int, default=20)
    ap.add_argument("--num-simhash-projections", type=int, default=5)
    ap.add_argument("--projection-dimension", type=int, default=16)
    ap.add_argument("--projection-type", default="ams_sketch")
    ap.add_argument("--float16", action="store_true", help="store the token vectors as float16")
    args = ap.parse_args()

    import numba

    cfg = FDEConfig(
        num_repetitions=args.num_repetitions,
        num_simhash_projections=args.num_simhash_projections,
        projection_type=args.projection_type,
        projection_dimension=None if args.projection_type == "identity" else args.projection_dimension,
    )
    enc = FDEEncoder(cfg, args.dim)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n_docs * args.tokens, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if args.float16:
        x = x.astype(np.float16)
    offsets = np.arange(0, args.n_docs + 1, dtype=np.int64) * args.tokens
    docs = TokenEmbeddings(x, offsets)
    ref_docs = [docs[i].astype(np.float32) for i in range(min(args.ref_docs, args.n_docs))]

    print(f"config: {cfg.to_dict()}  dim={args.dim}  output_dim={enc.output_dim}")
    print(
        f"docs: {args.n_docs} x {args.tokens} tokens ({x.dtype}); cpus={os.cpu_count()} "
        f"numba threads={numba.get_num_threads()}; reference on {len(ref_docs)} docs per repeat"
    )
    enc.encode_documents(TokenEmbeddings(x[: args.tokens], offsets[:2]))  # JIT warm-up
    ours, ref, cpu = [], [], []
    ticks0 = _idle_ticks()
    for rep in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        enc.encode_documents(docs)
        ours.append(args.n_docs / (time.perf_counter() - t))
        cpu.append((time.process_time() - c) / args.n_docs * 1e3)
        t = time.perf_counter()
        fde_reference_encoder(enc, ref_docs, documents=True)
        ref.append(len(ref_docs) / (time.perf_counter() - t))
        print(f"  repeat {rep}: batch {ours[-1]:9.0f} docs/s ({cpu[-1]:.3f} CPU ms/doc)   "
              f"reference {ref[-1]:7.0f} docs/s")
    ticks1 = _idle_ticks()
    mo, mr = statistics.median(ours), statistics.median(ref)
    print(f"median batch encoder      : {mo:9.0f} docs/s")
    print(f"median per-doc reference  : {mr:9.0f} docs/s")
    print(f"ratio (batch / reference) : {mo / mr:9.1f}x")
    print(f"batch encoder CPU time    : {statistics.median(cpu):9.3f} ms/doc (all threads)")
    if ticks0 and ticks1:
        idle = (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1])
        print(f"machine idle during run   : {idle:9.0%} of all CPU time (others' load lowers it)")


if __name__ == "__main__":
    main()

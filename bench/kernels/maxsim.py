"""Benchmark the exact MaxSim kernels against numpy (and torch, when installed).

Usage::

    .venv/bin/python bench/kernels/maxsim.py          # defaults from the issue
    .venv/bin/python bench/kernels/maxsim.py --threads 2 --repeat 31

Case 1 (rerank): one query (32 x 128) against 1,000 candidates of 180 tokens, float16
store; ``maxsim_scores`` vs numpy (one float32 GEMM + max + sum) vs torch float32.
Case 2 (exhaustive): 64 queries against 5,000 documents of 240 tokens;
``maxsim_exhaustive_topk`` vs numpy GEMM + max + sum + argpartition, per query.
Case 3 (codes): case 1's rerank over the same tokens stored by each token codec (int8, residual
1/2/4 bits; ``retriever.store.codecs``), decoded inside the kernel; ratio to the float16 store timed in
the same run, rounds interleaved (``--skip-codecs`` to leave it out).

All timings are medians after warm-up; ratios compare timings taken in the same run.
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

import common  # noqa: E402,F401  (puts the repository root on sys.path)
from retriever_kernels.maxsim import maxsim_exhaustive_topk, maxsim_scores, warmup  # noqa: E402


def median_ms(fn, repeat: int, warm: int = 2) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def make_store(rng, n_docs: int, doc_len: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.standard_normal((n_docs * doc_len, dim), dtype=np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    offsets = np.arange(n_docs + 1, dtype=np.int64) * doc_len
    return tokens.astype(np.float16), offsets


def make_queries(rng, n_q: int, q_len: int, dim: int) -> np.ndarray:
    q = rng.standard_normal((n_q * q_len, dim), dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def bench_rerank(args, rng) -> None:
    tokens, offsets = make_store(rng, args.n_cand, args.doc_len, args.dim)
    query = make_queries(rng, 1, args.q_len, args.dim)
    cand = rng.permutation(args.n_cand).astype(np.int64)
    docs32 = tokens.astype(np.float32).reshape(args.n_cand, args.doc_len, args.dim)

    def numpy_fp32():
        # the candidates' tokens are gathered in float32 beforehand (not timed): a pure GEMM+max+sum
        return (docs32 @ query.T).max(axis=1).sum(axis=1)

    ours = maxsim_scores(query, tokens, offsets, cand)
    ref = numpy_fp32()[cand]
    err = float(np.max(np.abs(ours - ref)))

    rows = [("maxsim_scores (float16 store)", median_ms(lambda: maxsim_scores(query, tokens, offsets, cand), args.repeat))]
    t_np = median_ms(numpy_fp32, args.repeat)
    rows.append(("numpy fp32 GEMM+max+sum", t_np))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        dt, qt = torch.from_numpy(docs32), torch.from_numpy(query)

        def torch_fp32():
            with torch.inference_mode():
                return (dt @ qt.T).amax(dim=1).sum(dim=1)

        rows.append((f"torch {torch.__version__} fp32", median_ms(torch_fp32, args.repeat)))
    rows.append(("maxsim_scores again (same run)", median_ms(lambda: maxsim_scores(query, tokens, offsets, cand), args.repeat)))

    gflop = 2 * args.q_len * args.dim * args.doc_len * args.n_cand / 1e9
    print(f"\n== rerank: 1 query {args.q_len}x{args.dim} vs {args.n_cand} docs x {args.doc_len} tokens "
          f"({gflop:.2f} GFLOP), {args.threads} threads, median of {args.repeat} ==")
    for name, ms in rows:
        print(f"{name:34s} {ms:8.2f} ms   {t_np / ms:5.2f}x numpy   {gflop / ms * 1e3:6.1f} GFLOP/s")
    print(f"max |ours - numpy| = {err:.2e}")


def bench_exhaustive(args, rng) -> None:
    tokens, offsets = make_store(rng, args.ex_docs, args.ex_doc_len, args.dim)
    q = make_queries(rng, args.ex_queries, args.q_len, args.dim)
    q_offsets = np.arange(args.ex_queries + 1, dtype=np.int64) * args.q_len
    k = args.k
    docs32 = tokens.astype(np.float32)

    def ours():
        return maxsim_exhaustive_topk(q, q_offsets, tokens, offsets, k)

    def numpy_one(i, block=500):
        qi = q[q_offsets[i]:q_offsets[i + 1]]
        scores = np.empty(args.ex_docs, dtype=np.float32)
        for d0 in range(0, args.ex_docs, block):  # blocks keep the temporaries in memory
            d1 = min(args.ex_docs, d0 + block)
            sims = docs32[offsets[d0]:offsets[d1]] @ qi.T
            scores[d0:d1] = sims.reshape(d1 - d0, args.ex_doc_len, -1).max(axis=1).sum(axis=1)
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top], kind="stable")], scores

    idx, _ = ours()
    agree = np.mean([len(set(idx[i]) & set(numpy_one(i)[0])) / k for i in range(min(4, args.ex_queries))])
    n_np = min(args.np_queries, args.ex_queries)
    t_ours = median_ms(ours, max(3, args.repeat // 5), warm=1) / args.ex_queries
    t_np = median_ms(lambda: [numpy_one(i) for i in range(n_np)], max(3, args.repeat // 5), warm=1) / n_np
    print(f"\n== exhaustive top-{k}: {args.ex_queries} queries {args.q_len}x{args.dim} vs {args.ex_docs} docs x "
          f"{args.ex_doc_len} tokens (float16 store), per query, median ==")
    print(f"{'maxsim_exhaustive_topk':34s} {t_ours:8.2f} ms/query   {t_np / t_ours:5.2f}x numpy")
    print(f"{'numpy fp32 GEMM+max+sum+topk':34s} {t_np:8.2f} ms/query   (timed on {n_np} queries)")
    print(f"top-{k} overlap with numpy on the first queries: {agree:.3f}")


def bench_codecs(args, rng) -> None:
    from retriever.store.codecs import CodecConfig, TokenCodec

    tokens, offsets = make_store(rng, args.n_cand, args.doc_len, args.dim)
    query = make_queries(rng, 1, args.q_len, args.dim)
    cand = rng.permutation(args.n_cand).astype(np.int64)
    x = tokens.astype(np.float32)
    stores = {"float16": tokens}
    for name in ("int8", "residual4", "residual2", "residual1"):
        codec = TokenCodec.train(CodecConfig.parse(name), x[:: max(1, x.shape[0] // 65536)], x.shape[0])
        stores[f"{name} ({codec.bytes_per_token} B/token)"] = codec.store(codec.encode(x))
    times: dict[str, list[float]] = {k: [] for k in stores}
    for _ in range(max(3, args.repeat // 3)):  # interleaved rounds: load drifts hit every store alike
        for name, st in stores.items():
            times[name].append(median_ms(lambda: maxsim_scores(query, st, offsets, cand), 3, warm=1))
    base = statistics.median(times["float16"])
    print(f"\n== rerank over codes: 1 query {args.q_len}x{args.dim} vs {args.n_cand} docs x {args.doc_len} tokens, "
          f"median of {len(times['float16'])} interleaved rounds ==")
    for name, ts in times.items():
        ms = statistics.median(ts)
        print(f"{name:34s} {ms:8.2f} ms   {ms / base:5.2f}x the float16 time")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=21)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--q-len", type=int, default=32)
    p.add_argument("--n-cand", type=int, default=1000)
    p.add_argument("--doc-len", type=int, default=180)
    p.add_argument("--ex-queries", type=int, default=64)
    p.add_argument("--ex-docs", type=int, default=5000)
    p.add_argument("--ex-doc-len", type=int, default=240)
    p.add_argument("--np-queries", type=int, default=8, help="queries timed for the (slow) numpy exhaustive baseline")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-exhaustive", action="store_true")
    p.add_argument("--skip-codecs", action="store_true")
    args = p.parse_args(argv)

    import numba

    numba.set_num_threads(args.threads)
    print(f"numpy {np.__version__}, numba {numba.__version__}, {os.cpu_count()} CPUs, threads={args.threads}, "
          f"load average {os.getloadavg()[0]:.2f} (other processes share these CPUs)")
    t0 = time.perf_counter()
    warmup(("float16", "float32", "int8", "residual"))
    print(f"warmup (compile or load cache): {time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(args.seed)
    bench_rerank(args, rng)
    if not args.skip_exhaustive:
        bench_exhaustive(args, rng)
    if not args.skip_codecs:
        bench_codecs(args, rng)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

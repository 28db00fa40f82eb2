"""Encoder throughput vs the backbone's raw forward pass, measured in the same run.

``raw``: ``AutoModel`` forward (same dtype setting) over the same pre-tokenised, length-sorted,
padded batches the encoder builds (``batch_size`` texts / ``batch_tokens`` tokens at most) -- the
floor any encoder on this backbone pays with those batches.
``encoder``: ``ColBERTEncoder.encode_documents`` end to end (tokenisation, batching, forward,
head, skip-list, normalisation, CSR assembly). The two alternate for ``--repeats`` rounds after a
warm-up, interleaved chunk by chunk (64 texts); the sum over chunks of each chunk's fastest
round is reported (the shared CPU only ever adds time), with the median round beside it, and the
ratio encoder/raw (target >= 0.90).

Usage::

    python bench/user_path/encoder_throughput.py        # 512 SciFact documents, default encoder
    python bench/user_path/encoder_throughput.py --n-docs 256 --dtype float32 --queries
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import beir_root  # noqa: E402  (also puts the repository root on sys.path)

from retriever.core.beir import doc_text, load_beir  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402


def padded_batches(enc: ColBERTEncoder, texts: list[str], is_query: bool):
    """The encoder's own forward-pass inputs for ``texts`` (``ColBERTEncoder._padded_batches``)."""
    seqs, _ = enc._tokenize(texts, is_query)
    keeps = [enc._keep_mask(s, is_query) for s in seqs]
    return [(torch.from_numpy(ids), torch.from_numpy(att))
            for _, ids, att, _ in enc._padded_batches(seqs, keeps, is_query, enc.config.batch_size)]


def raw_forward(enc: ColBERTEncoder, batches) -> None:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if enc.config.dtype == "bfloat16" else torch.no_grad()
    with torch.inference_mode(), ctx:
        for ids, att in batches:
            enc.backbone(input_ids=ids, attention_mask=att).last_hidden_state


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-docs", type=int, default=512)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--queries", action="store_true", help="also time the 300 SciFact test queries")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_beir(beir_root() / "scifact", split="test")
    docs = [doc_text(d) for d in list(ds.corpus.values())[: args.n_docs]]
    enc = ColBERTEncoder.from_pretrained(args.model, dtype=args.dtype, batch_size=args.batch_size,
                                         batch_tokens=args.batch_tokens)
    print(f"# {platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, dtype {args.dtype}, batch {args.batch_size} texts / "
          f"{args.batch_tokens} tokens, dim {enc.dim}")
    sides = [("documents", docs, False)]
    if args.queries:
        sides.append(("queries", list(ds.queries.values()), True))
    for what, texts, is_query in sides:
        # Interleave the two paths chunk by chunk (chunk = 2 batches), so load from other processes
        # hits both alike; per chunk keep the fastest of the rounds (contention only adds time).
        chunk = 2 * args.batch_size
        pieces = [texts[i:i + chunk] for i in range(0, len(texts), chunk)]
        batches = [padded_batches(enc, p, is_query) for p in pieces]
        n_tok = sum(int(a.sum()) for bs in batches for _, a in bs)
        encode = enc.encode_queries if is_query else enc.encode_documents
        raw_forward(enc, batches[-1][-1:])  # warm-up
        encode(texts[:8])
        raw_t = np.zeros((args.repeats, len(pieces)))
        enc_t = np.zeros((args.repeats, len(pieces)))
        for r in range(args.repeats):
            for j, (p, b) in enumerate(zip(pieces, batches)):
                first, second = (0, 1) if (r + j) % 2 == 0 else (1, 0)  # alternate who goes first
                for which in (first, second):
                    if which == 0:
                        raw_t[r, j] = timed(lambda: raw_forward(enc, b))
                    else:
                        enc_t[r, j] = timed(lambda: encode(p))
        raw_best, enc_best = raw_t.min(0).sum(), enc_t.min(0).sum()
        raw_med, enc_med = np.median(raw_t.sum(1)), np.median(enc_t.sum(1))
        print(f"{what}: {len(texts)} texts, {n_tok / len(texts):.0f} tokens/text, {args.repeats} rounds, "
              f"chunks of {chunk}")
        print(f"  raw AutoModel forward : {len(texts) / raw_best:8.1f} {what}/s best-of-rounds "
              f"({len(texts) / raw_med:.1f} median round)")
        print(f"  ColBERTEncoder.encode : {len(texts) / enc_best:8.1f} {what}/s best-of-rounds "
              f"({len(texts) / enc_med:.1f} median round)")
        print(f"  ratio encoder/raw     : {raw_best / enc_best:.3f} best-of-rounds, {raw_med / enc_med:.3f} median "
              f"round; per-round: {', '.join(f'{a / b:.3f}' for a, b in zip(raw_t.sum(1), enc_t.sum(1)))}")

if __name__ == "__main__":
    main()

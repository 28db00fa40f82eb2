"""Encoder precision on the CPU: document throughput and fidelity to float32 for each way to run it.

Usage::

    .venv/bin/python bench/user_path/encoder_precision.py            # 256 SciFact documents, 64 queries
    .venv/bin/python bench/user_path/encoder_precision.py --docs 512 --variants float32,bfloat16

Variants (the bundled default encoder, in this process, one after the other):

- ``float32``: the reference;
- ``bfloat16``: ``torch.autocast`` bf16 (``EncoderConfig.dtype="bfloat16"``, the default): matrix
  products in bf16, normalisations and softmax in float32;
- ``bf16-weights``: the whole backbone cast to bf16 (layer norms too);
- ``int8``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (per-tensor weight
  scales, one dynamic activation scale per batch: fbgemm's VNNI kernels);
- ``int8-per-channel``: the same with per-output-channel weight scales;
- ``int8-ffn``: per-channel int8 for the feed-forward layers only, attention in float32.

Each row: documents/s (documents sorted by length and batched as the encoder does), and against
float32 on the same documents and queries: the largest and mean relative change of the exact MaxSim
score over every (query, document) pair, and the mean overlap of each query's top 10. A variant whose
top-10 overlap is far below 1 cannot keep nDCG@10 within 0.003 and is not worth a full BEIR run.
Rows are appended to ``bench/results/encoder_precision.jsonl`` with the common envelope (``bench/common.py``:
the CPU model and ISA flags under ``machine``; rows before it held those fields at the top level).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows  # noqa: E402  (also puts the repository root on sys.path)

import retriever  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)
import torch  # noqa: E402

from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402

log = logging.getLogger("bench.encoder_precision")
BEIR = Path(os.environ.get("RETRIEVER_TEST_BEIR", ROOT.parent / "shared" / "beir"))
RESULTS = RESULTS_DIR / "encoder_precision.jsonl"
VARIANTS = ("float32", "bfloat16", "bf16-weights", "int8", "int8-per-channel", "int8-ffn")


def load_encoder(variant: str) -> ColBERTEncoder:
    enc = ColBERTEncoder.from_pretrained(dtype="bfloat16" if variant == "bfloat16" else "float32")
    if variant == "bf16-weights":
        enc.backbone = enc.backbone.to(torch.bfloat16)
    elif variant.startswith("int8"):
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        if variant == "int8":
            spec = {torch.nn.Linear: default_dynamic_qconfig}
        elif variant == "int8-per-channel":
            spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        else:
            spec = {n: per_channel_dynamic_qconfig for n, m in enc.backbone.named_modules()
                    if isinstance(m, torch.nn.Linear) and "attention" not in n}
        enc.backbone = quantize_dynamic(enc.backbone, spec, dtype=torch.qint8)
    return enc


def split(e) -> list[np.ndarray]:
    return [e.vectors[e.offsets[i]:e.offsets[i + 1]] for i in range(len(e.offsets) - 1)]


def maxsim(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    return np.array([[float((q @ d.T).max(1).sum()) for d in docs] for q in queries])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    variants = [v for v in args.variants.split(",") if v]
    bad = sorted(set(variants) - set(VARIANTS))
    if bad:
        raise SystemExit(f"error: unknown variants {bad}; choose from {VARIANTS}")
    if variants[0] != "float32":
        variants.insert(0, "float32")  # the reference comes first
    data = BEIR / args.dataset
    corpus = data / "corpus.jsonl.gz" if (data / "corpus.jsonl.gz").is_file() else data / "corpus.jsonl"
    docs = []
    with (gzip.open(corpus, "rt", encoding="utf-8") if corpus.suffix == ".gz" else open(corpus, encoding="utf-8")) as fh:
        for line in fh:
            d = json.loads(line)
            docs.append((d.get("title", "") + " " + d["text"]).strip())
            if len(docs) >= args.docs:
                break
    with open(data / "queries.jsonl", encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for _, line in zip(range(args.queries), fh)]
    ref, ref_rate = None, None
    for variant in variants:
        enc = load_encoder(variant)
        enc.encode_documents(docs[:16])  # warm-up: first forward pass, allocator
        t = time.perf_counter()
        d = enc.encode_documents(docs)
        seconds = time.perf_counter() - t
        scores = maxsim(split(enc.encode_queries(queries)), split(d))
        row = {"dataset": args.dataset, "variant": variant, "docs": len(docs),
               "queries": len(queries), "docs_per_s": len(docs) / seconds, "threads": torch.get_num_threads()}
        if ref is None:
            ref = scores
        else:
            rel = np.abs(scores - ref) / np.abs(ref)
            top_ref, top = np.argsort(-ref, 1)[:, :10], np.argsort(-scores, 1)[:, :10]
            row.update(maxsim_max_rel_change=float(rel.max()), maxsim_mean_rel_change=float(rel.mean()),
                       top10_overlap=float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top)])))
        ref_rate = ref_rate or row["docs_per_s"]
        row["speedup_vs_float32"] = row["docs_per_s"] / ref_rate
        append_rows(args.results, [row], bench="user_path/encoder_precision")
        log.info("%s", json.dumps({k: row[k] for k in row if k in ("variant", "docs_per_s", "maxsim_max_rel_change",
                                                                      "top10_overlap")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
- ``int8-ffn``: per-channel int8 for the feed-forward layers only, attention in float32;
- ``int8-per-token``: W8A8 with a scale per activation row (token) and per weight output channel,
  int8 x int8 -> int32 products by ``torch._int_mm`` (VNNI through oneDNN), the rest float32;
- ``int8-per-token-bf16``: the same linear layers, the rest under bf16 autocast.

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
VARIANTS = ("float32", "bfloat16", "bf16-weights", "int8", "int8-per-channel", "int8-ffn", "int8-per-token",
            "int8-per-token-bf16")


class PerTokenInt8Linear(torch.nn.Module):
    """``nn.Linear`` as W8A8: per-output-channel int8 weights, each input row quantised with its own scale.

    torch's dynamic quantisation takes one activation scale per batch, which MiniLM's outlier
    dimensions stretch; a scale per token confines an outlier to its own row.
    """

    def __init__(self, lin: torch.nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        self.w_scale = w.abs().amax(1).clamp_min(1e-8) / 127.0
        self.w_q = torch.round(w / self.w_scale[:, None]).to(torch.int8).T.contiguous()  # (in, out)
        self.bias = None if lin.bias is None else lin.bias.detach().float()
        self.out_features = w.shape[0]

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        x_scale = x2.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127.0
        x_q = torch.round(x2 / x_scale).to(torch.int8)
        m = x_q.shape[0]
        if m <= 16:  # torch._int_mm wants more than 16 rows
            x_q = torch.cat([x_q, x_q.new_zeros(17 - m, x_q.shape[1])])
        out = torch._int_mm(x_q, self.w_q)[:m].float() * x_scale * self.w_scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def per_token_int8(model: torch.nn.Module) -> torch.nn.Module:
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(mod, name, PerTokenInt8Linear(child))
    return model


def load_encoder(variant: str) -> ColBERTEncoder:
    bf16 = variant in ("bfloat16", "int8-per-token-bf16")
    enc = ColBERTEncoder.from_pretrained(dtype="bfloat16" if bf16 else "float32")
    if variant.startswith("int8-per-token"):
        per_token_int8(enc.backbone)
    elif variant == "bf16-weights":
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

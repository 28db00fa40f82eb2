"""Synthetic MS MARCO-length corpora made of real token vectors, generated as a stream.

Every document is 2-4 windows of consecutive token vectors, each window cut from a different real
encoded document (the cached float16 SciFact and NFCorpus token stores of ``bench/``), with seeded
Gaussian noise added to every vector, which is then renormalised to unit length:

- length: ``clip(round(Gamma(shape=4, scale=17)), 8, 200)`` tokens (mean ~68, MS MARCO v1's mean
  passage length in ColBERT tokens);
- windows: ``w ~ U{2, 3, 4}``, lengths from ``w - 1`` uniform cut points of the document length
  (each window >= 1 token), sources drawn uniformly without replacement among the source documents
  long enough for the window, start uniform within the source;
- noise: i.i.d. ``N(0, sigma^2)`` per coordinate with ``sigma = noise / sqrt(dim)`` (default
  ``noise=0.25``: the noisy vector keeps cosine ~0.97 with its source token), so two documents that
  share a source window are near, not equal.

Documents are produced in blocks of ``block`` documents; block ``b`` draws from its own PCG64 stream
seeded ``(seed, b)``, so a corpus is reproducible, any block can be regenerated alone, and nothing
holds more than one block. Document ``i`` is the same in a corpus of any size: a 100k corpus is the
first 100k documents of the 1M one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

import common  # noqa: E402,F401  (puts the repository root on sys.path)
from retriever.store.tokens import TokenEmbeddings  # noqa: E402

MEAN_SHAPE, MEAN_SCALE = 4.0, 17.0
MIN_LEN, MAX_LEN = 8, 200


class TokenSources:
    """The real token vectors windows are cut from: float16 stores of cached bench indexes (mmap)."""

    def __init__(self, index_dirs: list[Path]):
        if not index_dirs:
            raise ValueError("no source indexes given")
        self.stores, self.offsets = [], []
        for d in index_dirs:
            m = json.loads((d / "manifest.json").read_text())
            codec = (m["config"].get("codec") or {"kind": "float16"})["kind"]
            if codec != "float16" or m["config"].get("pool_factor", 1) != 1:
                raise ValueError(f"{d} is not an unpooled float16 index (codec {codec})")
            self.stores.append(np.load(d / "tokens.npy", mmap_mode="r"))
            self.offsets.append(np.load(d / "doc_offsets.npy"))
        self.dim = int(self.stores[0].shape[1])
        # global document table: (store, start, length)
        self.store_of = np.concatenate([np.full(o.size - 1, s, np.int32) for s, o in enumerate(self.offsets)])
        self.start = np.concatenate([o[:-1] for o in self.offsets]).astype(np.int64)
        self.length = np.concatenate([np.diff(o) for o in self.offsets]).astype(np.int64)
        self.n_tokens = int(self.length.sum())

    def __len__(self) -> int:
        return int(self.length.size)


def find_sources(bench_dir: Path, names=("scifact", "nfcorpus")) -> list[Path]:
    """The encoded (not derived) float16 indexes of ``names`` cached under ``bench_dir``."""
    out = []
    for name in names:
        found = None
        for meta in sorted(bench_dir.glob(f"{name}-*.bench.json")):
            info = json.loads(meta.read_text())
            cfg = info.get("index_config") or {}
            codec = (cfg.get("codec") or {"kind": "float16"}).get("kind")
            if (info.get("build") or {}).get("tokens_from") is None and codec == "float16" \
                    and cfg.get("pool_factor", 1) == 1 and not cfg.get("word_pooling") \
                    and (bench_dir / meta.name.replace(".bench.json", "")).is_dir():
                found = bench_dir / meta.name.replace(".bench.json", "")
                break
        if found is None:
            raise FileNotFoundError(f"no cached float16 {name} index under {bench_dir}: run "
                                    f"`retriever bench --data ../shared/beir/{name}` once (it encodes and caches it)")
        out.append(found)
    return out


def _block(src: TokenSources, b: int, n: int, seed: int, noise: float) -> TokenEmbeddings:
    rng = np.random.default_rng([seed, b])
    lengths = np.clip(np.rint(rng.gamma(MEAN_SHAPE, MEAN_SCALE, n)), MIN_LEN, MAX_LEN).astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = np.empty((int(offsets[-1]), src.dim), np.float32)
    for i in range(n):
        L = int(lengths[i])
        w = int(rng.integers(2, 5))
        cuts = np.sort(rng.choice(np.arange(1, L), size=w - 1, replace=False))
        sizes = np.diff(np.concatenate([[0], cuts, [L]]))
        at = int(offsets[i])
        used: set[int] = set()
        for size in sizes:
            size = int(size)
            while True:  # a source long enough and not used by this document (few retries: most are long)
                j = int(rng.integers(len(src)))
                if src.length[j] >= size and j not in used:
                    break
            used.add(j)
            s0 = int(src.start[j]) + int(rng.integers(0, src.length[j] - size + 1))
            out[at : at + size] = src.stores[src.store_of[j]][s0 : s0 + size]
            at += size
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise / np.sqrt(src.dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return TokenEmbeddings(out, offsets)


def synthetic_batches(src: TokenSources, n_docs: int, *, seed: int = 0, noise: float = 0.25,
                      block: int = 4096) -> Iterator[tuple[TokenEmbeddings, list[int]]]:
    """``(TokenEmbeddings, ids)`` blocks of the first ``n_docs`` documents (ids 0..n_docs-1)."""
    for b, d0 in enumerate(range(0, n_docs, block)):
        n = min(block, n_docs - d0)
        emb = _block(src, b, block, seed, noise)
        if n < block:  # the last block of a smaller corpus: the same first n documents
            emb = TokenEmbeddings(emb.vectors[: int(emb.offsets[n])], emb.offsets[: n + 1])
        yield emb, list(range(d0, d0 + n))

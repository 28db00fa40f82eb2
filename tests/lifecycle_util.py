"""Helpers shared by the lifecycle, crash, property and concurrency tests (and crash_worker.py).

Nothing here imports pytest, so the crash worker subprocess can use it too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np

from retriever.candidates.fde import FDEConfig
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever

DIM = 32
SMALL_FDE = FDEConfig(num_repetitions=4, num_simhash_projections=3, projection_dimension=8, projection_type="ams_sketch")
CFG = IndexConfig(fde=SMALL_FDE, codec="float16")  # the oracles below compare float16-rounded vectors


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_docs(n_docs: int, seed: int, dim: int = DIM, n_topics: int = 12, max_len: int = 30) -> list[np.ndarray]:
    """Clustered unit token vectors (1..max_len tokens per document), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    centres = unit(np.random.default_rng(12345).standard_normal((n_topics, dim)))
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(1, max_len + 1))
        topics = rng.choice(n_topics, size=3, replace=False)
        docs.append(unit(centres[rng.choice(topics, size=n)] + 0.35 * rng.standard_normal((n, dim))))
    return docs


def make_queries(n_queries: int, seed: int, dim: int = DIM) -> list[np.ndarray]:
    """Queries of 1..8 tokens near the shared topic centres."""
    rng = np.random.default_rng(seed)
    centres = unit(np.random.default_rng(12345).standard_normal((12, dim)))
    return [unit(centres[rng.integers(0, 12, size=int(rng.integers(1, 9)))] + 0.3 * rng.standard_normal((1, dim)))
            for _ in range(n_queries)]


def build(docs, ids, config: IndexConfig = CFG, **kw) -> Retriever:
    return Retriever.build(docs, doc_ids=list(ids), config=config, show_progress=False, **kw)


def exact_oracle(queries, docs_by_id: dict, k: int):
    """Brute-force MaxSim in float64 over float16-rounded documents: (ids list per query, scores array)."""
    ids = list(docs_by_id)
    mats = [np.asarray(docs_by_id[i], dtype=np.float16).astype(np.float64) for i in ids]
    out_ids, out_scores = [], []
    for q in queries:
        q64 = np.asarray(q, dtype=np.float64)
        s = np.array([(q64 @ d.T).max(axis=1).sum() for d in mats])
        order = np.argsort(-s, kind="stable")[:k]
        out_ids.append([ids[j] for j in order])
        out_scores.append(s[order])
    return out_ids, out_scores


def state_of(r: Retriever) -> dict:
    """Everything a mutation could change, as comparable plain values."""
    tok = np.asarray(r.tokens)
    fi = r.faiss_index
    return {
        "tokens": (tok.shape, hashlib.sha256(np.ascontiguousarray(tok).tobytes()).hexdigest()),
        "offsets": r.doc_offsets.tolist(),
        "ids": list(r.doc_ids.tolist()),
        "id_type": r.id_type,
        "deleted": r.deleted.tolist(),
        "ntotal": fi.ntotal,
        "faiss": hashlib.sha256(faiss.serialize_index(fi).tobytes()).hexdigest(),
        "workdir": str(r.workdir),
        "workdir_files": _dir_files(r.workdir) if r.workdir is not None else None,
        "n_docs": r.n_docs,
        "centroid_codes": None if r.centroid_stage is None else
        hashlib.sha256(np.ascontiguousarray(r.centroid_stage.codes).tobytes()).hexdigest(),
    }


def _dir_files(d: Path) -> dict:
    return {p.name: p.stat().st_size for p in sorted(Path(d).iterdir())}


def dir_state(path: Path) -> dict:
    """sha256 of every file of an index directory, plus the entries of its parent."""
    path = Path(path)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}
    return {"files": files, "parent": sorted(p.name for p in path.parent.iterdir())}


def results_of(r: Retriever, queries, k: int = 5, **kw) -> tuple:
    res = r.search(queries, k=k, **kw)
    return res.ids.tolist(), res.scores.tolist()


def damaged_copy(src: Path, dst: Path, name: str, pos: float, byte: int, cut: bool) -> bool:
    """Copy the index directory ``src`` to the new directory ``dst``, then change file ``name``: cut it at
    fraction ``pos`` of its length (``cut``) or set the byte there to ``byte``. Returns whether the
    bytes changed (setting a byte to its own value does not)."""
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    data = bytearray((dst / name).read_bytes())
    i = min(int(pos * len(data)), len(data) - 1)
    changed = data[i] != byte or cut
    data = data[:i] if cut else data
    if not cut:
        data[i] = byte
    (dst / name).write_bytes(bytes(data))
    return changed

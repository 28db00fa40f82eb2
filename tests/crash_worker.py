"""Subprocess for tests/test_crash.py: mutates and saves an index until it is killed with SIGKILL.

Usage: ``python tests/crash_worker.py INDEX_DIR PROGRESS_FILE FIRST_GEN LAST_GEN``

Loads ``INDEX_DIR`` (which holds generation ``FIRST_GEN - 1``), then for each generation ``g`` applies
``apply_op(r, g)`` and saves over ``INDEX_DIR``. Progress markers go to ``PROGRESS_FILE`` with one
``write()`` each, so they survive the kill: ``READY t``, ``OP g``, ``SAVING g``, ``SAVED g``, ``DONE t``
(``t``: CLOCK_MONOTONIC, shared by all processes), and
around the commit point of a save ``EXCHANGING``/``EXCHANGED`` (renameat2) or
``RENAMING a -> b``/``RENAMED a -> b`` (the rename fallback).

Environment:
  CRASH_AT=stage.hook<:n or stage.hook>:n
                        SIGKILL itself just before (<) or after (>) the n-th call of ``hook`` (see
                        HOOKS) during ``stage`` ("op": the add/delete/upsert/compact, "save");
                        ``KILL ...`` is written first
  CRASH_NO_EXCHANGE=1   pretend renameat2(RENAME_EXCHANGE) is unsupported (rename-aside fallback)
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import numpy as np

from lifecycle_util import CFG, make_docs
from retriever.candidates.centroids import CentroidConfig
from retriever.hybrid.fusion import HybridConfig

N0 = 150  # documents of generation 0
# with the token centroid stage (auto would leave it out at this size), so kills cover its files too
# and a document store (texts given to the build; no BM25 signal, so that later adds need none), so kills
# cover documents.sqlite too
CRASH_CFG = dataclasses.replace(CFG, centroids=CentroidConfig(enabled=True, n_centroids=32),
                                hybrid=HybridConfig(signals=()))
OPS = ("add", "delete", "upsert", "compact", "readd", "add_many", "delete")


def gen0_index():
    from retriever.index.retriever import Retriever

    return Retriever.build(make_docs(N0, seed=0), doc_ids=[f"g0-{j}" for j in range(N0)], config=CRASH_CFG,
                           texts=[f"text of g0-{j}" for j in range(N0)], show_progress=False)


def op_name(g: int) -> str:
    return OPS[(g - 1) % len(OPS)]


def apply_op(r, g: int) -> None:
    """The deterministic change that turns generation g-1 into generation g."""
    op = op_name(g)
    rng = np.random.default_rng(1000 + g)
    live = sorted(r.doc_ids[r.deleted == 0].tolist())
    if op in ("add", "add_many"):
        n = 12 if op == "add" else 60
        r.add(make_docs(n, seed=g), [f"g{g}-{j}" for j in range(n)])
    elif op == "delete":
        r.delete(list(rng.choice(live, size=min(10, len(live) - 20), replace=False)))
    elif op == "upsert":
        old = list(rng.choice(live, size=4, replace=False))
        r.upsert(make_docs(6, seed=g), old + [f"g{g}-u0", f"g{g}-u1"])
    elif op == "compact":
        r.compact()
    elif op == "readd":
        dead = sorted(set(r.doc_ids[r.deleted == 1].tolist()) - set(live))
        back = dead[:3] if dead else []
        r.add(make_docs(len(back) + 1, seed=g), back + [f"g{g}-r"])
    else:  # pragma: no cover
        raise ValueError(op)


HOOKS = ("append", "npyclose", "npsave", "sha", "faisswrite", "storewrite", "manifest", "fsyncdir", "exchange", "rename",
         "rmtree")


def main(argv: list[str]) -> int:
    index_dir, progress, first, last = argv[0], argv[1], int(argv[2]), int(argv[3])
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def mark(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    import shutil

    import faiss

    from retriever.index import format as fmt
    from retriever.index import retriever as index_mod
    from retriever.core import storage
    from retriever.index.retriever import Retriever

    index_mod._warmup = lambda *kind: None  # this process never searches: skip the kernels' JIT-cache load
    r = Retriever.load(index_dir)  # before the hooks: an interrupted swap is recovered here, unhooked

    kill_phase, kill_n = None, 0
    if os.environ.get("CRASH_AT"):
        kill_phase, n = os.environ["CRASH_AT"].rsplit(":", 1)
        kill_n = int(n)
    counts: dict[str, int] = {}
    ctx = ["op"]  # hook names are prefixed with the stage: "op." (add/compact...) or "save."

    def hit(name: str) -> None:
        name = f"{ctx[0]}.{name}"
        counts[name] = counts.get(name, 0) + 1
        if name == kill_phase and counts[name] == kill_n:
            mark(f"KILL {name} {kill_n}")
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, attr: str, name: str, before=None, after=None) -> None:
        orig = getattr(owner, attr)

        def wrapper(*a, **kw):
            hit(name + "<")
            if before:
                before(*a)
            out = orig(*a, **kw)
            if after:
                after(out, *a)
            hit(name + ">")
            return out

        setattr(owner, attr, wrapper)

    wrap(storage.NpyAppender, "append", "append")
    wrap(storage.NpyAppender, "close", "npyclose")
    wrap(np, "save", "npsave")
    wrap(fmt, "file_sha256", "sha")
    wrap(faiss, "write_index", "faisswrite")
    from retriever.index.documents import DocumentStore

    wrap(DocumentStore, "write_to", "storewrite")
    wrap(fmt, "write_manifest", "manifest")
    wrap(storage, "fsync_dir", "fsyncdir")
    wrap(shutil, "rmtree", "rmtree")
    if os.environ.get("CRASH_NO_EXCHANGE"):
        storage._renameat2_exchange = lambda a, b: False
    else:
        wrap(storage, "_renameat2_exchange", "exchange", before=lambda *a: mark("EXCHANGING"),
             after=lambda ok, *a: mark("EXCHANGED" if ok else "NO-EXCHANGE"))
    wrap(os, "rename", "rename", before=lambda a, b: mark(f"RENAMING {os.path.basename(a)} -> {os.path.basename(b)}"),
         after=lambda _, a, b: mark(f"RENAMED {os.path.basename(a)} -> {os.path.basename(b)}"))

    from retriever.store.tokens import TokenEmbeddings

    r.fde_encoder.encode_documents(TokenEmbeddings.from_list(make_docs(2, seed=0)))  # JIT warm-up before READY
    mark(f"READY {time.monotonic()}")
    for g in range(first, last + 1):
        mark(f"OP {g}")
        ctx[0] = "op"
        apply_op(r, g)
        mark(f"SAVING {g}")
        ctx[0] = "save"
        r.save(index_dir)
        mark(f"SAVED {g}")
    mark(f"DONE {time.monotonic()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

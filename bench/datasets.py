"""The BEIR collections the benchmarks use, where they live, and which split is for what.

Defaults (``n_candidates`` and the like) are chosen on the *tune* split and reported on the
*report* split, so the reported numbers are not selected on the queries they are measured on.
Both splits query the same corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: collection -> {"report": split the README quotes, "tune": split defaults are chosen on}
COLLECTIONS = {
    "scifact": {"report": "test", "tune": "train"},
    "nfcorpus": {"report": "test", "tune": "dev"},
}


def beir_root() -> Path:
    """``$RETRIEVER_BEIR`` or ``../shared/beir`` beside the checkout (read-only; never copied)."""
    return Path(os.environ.get("RETRIEVER_BEIR", ROOT.parent / "shared" / "beir"))


def collection_dir(name: str) -> Path:
    """The directory of collection ``name``; ``FileNotFoundError`` naming it when absent."""
    path = beir_root() / name
    if not path.is_dir():
        raise FileNotFoundError(f"BEIR collection {name!r} not found at {path} (set RETRIEVER_BEIR)")
    return path

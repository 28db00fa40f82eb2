"""What every benchmark script shares: the repository root, the BEIR collections and their splits, and
one row format for results.

A script in ``bench/<group>/`` imports this module after putting ``bench/`` on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common
    from common import ROOT, append_rows  # noqa: E402  (also puts the repository root on sys.path)

Importing it puts the repository root on ``sys.path``, so ``retriever`` and ``retriever_kernels`` are
imported from this checkout. Scripts of one group may import each other (a script's own folder is on
``sys.path`` when it runs); what several groups need lives here.

Defaults (``n_candidates`` and the like) are chosen on the *tune* split and reported on the
*report* split, so the reported numbers are not selected on the queries they are measured on.
Both splits query the same corpus.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

#: the repository (this file is bench/common.py)
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS_DIR = BENCH / "results"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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


def envelope(bench: str) -> dict:
    """The fields every result row carries: ``bench`` (``group/script``), ``timestamp`` (UTC, ISO 8601),
    ``git`` (HEAD of this checkout, ``+dirty`` when tracked files differ), ``machine`` (CPU model, ISA
    flags, cores, OS, Python) and ``load_avg_1m`` (others' load skews timings)."""
    from retriever.evaluation.benchmark import git_revision, machine_info

    return {"bench": bench, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git": git_revision(), "machine": machine_info(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def append_rows(path: str | Path, rows: Iterable[dict], *, bench: str) -> list[dict]:
    """Append ``rows`` to the JSON-lines file ``path`` (its folder is created), each with the
    :func:`envelope` fields it does not already have; returns the rows as written."""
    rows = list(rows)
    if not rows:
        return []
    env = envelope(bench)
    out = [{**row, **{k: v for k, v in env.items() if k not in row}} for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in out:
            fh.write(json.dumps(row) + "\n")
    return out


# -- real text: two public dictionaries packaged by Debian (scale/realtext.py, beir/long_query_set.py) --

#: name=version -> (file name, sha256) of the pinned packages (``apt-get download``)
DICTIONARY_PACKAGES = {
    "dict-gcide=0.48.5+nmu2": ("dict-gcide_0.48.5+nmu2_all.deb",
                               "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f"),
    "dict-wn=1:3.0-37": ("dict-wn_1%3a3.0-37_all.deb",
                         "ed99e0bf162815dc1cc69de3727eedd7112ddf170badf83dbde26209e0724a8c"),
}
#: where a WordNet entry's numbered senses start
WN_SENSE = re.compile(r"\n\s+(?:(?:n|v|adj|adv)\s+)?\d+:\s")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def single_latencies_ms(call, items, warmup: int) -> list[float]:
    """Milliseconds of ``call(item)`` for each of ``items``, one call at a time, after ``call`` on the first
    ``warmup`` items (untimed): single-query latency as a user's loop sees it."""
    for item in items[:warmup]:
        call(item)
    out = []
    for item in items:
        t = time.perf_counter()
        call(item)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _b64(s: str) -> int:
    v = 0
    for c in s:
        v = v * 64 + _B64.index(c)
    return v


def fetch_dictionaries(debs: Path) -> Path:
    """Download (once) and unpack the pinned packages into ``debs``; returns the unpacked dictd folder."""
    from retriever.core.storage import file_sha256

    debs.mkdir(parents=True, exist_ok=True)
    tree = debs / "x"
    for spec, (fname, sha) in DICTIONARY_PACKAGES.items():
        path = debs / fname
        if not path.is_file():
            subprocess.run(["apt-get", "download", spec], cwd=debs, check=True)
        got = file_sha256(path)
        if got != sha:
            raise SystemExit(f"error: {path} has sha256 {got}, expected {sha}")
        subprocess.run(["dpkg-deb", "-x", str(path), str(tree)], check=True)
    return tree / "usr" / "share" / "dictd"


def dictionary_entries(dictd: Path, name: str) -> Iterator[tuple[str, str]]:
    """(headword, definition text) per distinct (offset, length) of a dictd index (``gcide``, ``wn``)."""
    data = gzip.open(dictd / f"{name}.dict.dz").read()
    seen = set()
    for line in open(dictd / f"{name}.index", encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        key = (parts[1], parts[2])
        if key in seen:
            continue
        seen.add(key)
        off, n = _b64(parts[1]), _b64(parts[2])
        yield parts[0], data[off : off + n].decode("utf-8", errors="replace")


def clean_text(text: str) -> str:
    """Markup braces dropped, whitespace collapsed."""
    return re.sub(r"\s+", " ", text.replace("{", "").replace("}", "")).strip()

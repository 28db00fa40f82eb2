"""One benchmark run: a BEIR collection and split -> JSON rows appended to a results file.

The same as ``retriever bench`` (it takes the same arguments); prints one summary line a row::

    .venv/bin/python bench/beir/run.py --data ../shared/beir/scifact --split test --k 100 \
        --n-candidates 1000 --results bench/results/results.jsonl

Rows hold the configs, nDCG@10, Recall@10/100/1000, MRR@10, MAP@100, Chamfer recall@10/@100, query
encoding and search latency (p50/p99 over single queries, warm-up excluded) and QPS (batch), build
time split into encode / FDE / FAISS / write, index bytes, peak RSS, machine, git revision (the
library writes the rows: they carry the common envelope's fields but ``bench``). The
exhaustive-MaxSim, single-vector and BM25 baselines are rows of the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

import common  # noqa: E402,F401  (puts the repository root on sys.path)
from retriever.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

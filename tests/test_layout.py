"""The package layout: layers import one way, no import circles, private names stay in their module.

Walks the source with ``ast`` (nothing is imported): every ``import`` / ``from ... import`` in
``retriever`` and ``retriever_kernels``, at module level or inside a function, counts; only imports under
``if TYPE_CHECKING:`` (never run) are left out.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"retriever": ROOT / "retriever", "retriever_kernels": ROOT / "kernels" / "retriever_kernels"}

#: lowest layer first; a module may import its own layer and the ones before it, never a later one
LAYERS = ["retriever_kernels", "retriever.core", "retriever.store", "retriever.candidates", "retriever.hybrid",
          "retriever.encoders", "retriever.index", "retriever.evaluation", "retriever.training", "retriever.cluster",
          "retriever.service", "retriever.cli", "retriever.__main__"]


def _modules() -> dict[str, Path]:
    out = {}
    for top, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([top, *parts])] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _ours(name: str) -> str | None:
    """The longest module of ours that ``name`` starts with (``retriever.index.search.x`` -> ``retriever.index.search``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module of ours, names taken from it, line) for every runtime import of ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _ours(a.name)
                if target:
                    out.append((target, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:  # ``from retriever.index import format``: the submodule itself
                    out.append((sub, [], node.lineno))
                elif _ours(base):
                    out.append((_ours(base), [a.name], node.lineno))
    return out


def _layer(module: str) -> int | None:
    best = None
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            best = i
    return best


def test_every_module_is_in_a_layer():
    loose = [m for m in MODULES if m != "retriever" and _layer(m) is None and not m.startswith("retriever.assets")]
    assert not loose, f"modules outside every layer of LAYERS: {loose}"


def test_layers_import_one_way():
    bad = []
    for module, path in MODULES.items():
        if module == "retriever":
            continue  # the root re-exports the public API
        mine = _layer(module)
        for target, _, line in _imports(module, path):
            if target == "retriever":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the root package `retriever` (import the module itself)")
            elif (theirs := _layer(target)) is not None and mine is not None and theirs > mine:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[mine]}) imports {target} ({LAYERS[theirs]}), a later layer")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    graph = {m: sorted({t for t, _, _ in _imports(m, p) if t != m}) for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_private_names_stay_in_their_module():
    bad = []
    for module, path in MODULES.items():
        for target, names, line in _imports(module, path):
            for n in names:
                if _private(n):
                    bad.append(f"{path.relative_to(ROOT)}:{line} takes {n} from {target}")
        # attributes: ``x._name`` where ``x`` is not self / cls and ``_name`` is not defined in this module
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                defined.add(node.attr)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in defined
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                src = ast.unparse(node.value)
                if src.split(".")[0] in ("np", "numpy", "os", "sys", "torch", "faiss", "numba", "importlib", "ray", "threading"):
                    continue  # third-party privates we rely on are outside this rule (each has a comment where used)
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {src}.{node.attr}, a private name of another module")
    assert not bad, "\n".join(bad)


def test_kernels_import_no_retriever():
    for module, path in MODULES.items():
        if module.startswith("retriever_kernels"):
            for target, _, line in _imports(module, path):
                assert not target.startswith("retriever.") and target != "retriever", f"{path}:{line} imports {target}"


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {m for m, p in MODULES.items() if p.name == "__init__.py"} | {"retriever.assets"}
    assert listed == found, f"pyproject packages {sorted(listed ^ found)} differ from the package folders"


@pytest.mark.parametrize("old,new", [("retriever.encoder", "retriever.encoders.colbert"),
                                     ("retriever.beir", "retriever.core.beir"),
                                     ("retriever.search", "retriever.index.search"),
                                     ("retriever.shards", "retriever.cluster.shards"),
                                     ("retriever.distributed", "retriever.cluster.distributed")])
def test_old_module_paths_name_the_same_module(old, new):
    import importlib

    import retriever  # noqa: F401  installs the old paths

    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_names_of_packages_reexport():
    from retriever.hybrid import FusionConfig, HybridConfig  # noqa: F401
    from retriever.index import IndexConfig, Retriever  # noqa: F401
    from retriever.lexical import LexicalIndex  # noqa: F401

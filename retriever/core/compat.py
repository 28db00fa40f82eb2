"""The module paths of releases before the subpackages (``retriever.encoder``, ``retriever.tokens``, ...).

Until 0.1.0 the package was flat; scripts that import ``retriever.encoder`` or
``retriever.beir`` keep working: each old path names the same module object as its new home
(``import retriever.encoder`` gives ``retriever.encoders.colbert`` itself, so monkeypatching either
changes both). Old names that are now packages (``retriever.index``, ``retriever.hybrid``,
``retriever.cli``) re-export what their old module offered publicly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

#: old flat module -> its module now
OLD_MODULE_PATHS = {
    "retriever.configs": "retriever.core.configs",
    "retriever.storage": "retriever.core.storage",
    "retriever.memory": "retriever.core.memory",
    "retriever.beir": "retriever.core.beir",
    "retriever.tokens": "retriever.store.tokens",
    "retriever.codecs": "retriever.store.codecs",
    "retriever.fde": "retriever.candidates.fde",
    "retriever.ann": "retriever.candidates.ann",
    "retriever.centroids": "retriever.candidates.centroids",
    "retriever.lexical": "retriever.hybrid.lexical",
    "retriever.encoder": "retriever.encoders.colbert",
    "retriever.builder": "retriever.index.builder",
    "retriever.lifecycle": "retriever.index.lifecycle",
    "retriever.format": "retriever.index.format",
    "retriever.search": "retriever.index.search",
    "retriever.eval": "retriever.evaluation.metrics",
    "retriever.benchmark": "retriever.evaluation.benchmark",
    "retriever.trainer": "retriever.training.trainer",
    "retriever.pairs": "retriever.training.pairs",
    "retriever.shards": "retriever.cluster.shards",
    "retriever.distributed": "retriever.cluster.distributed",
    "retriever.server": "retriever.service.server",
    "retriever.cli_args": "retriever.cli.args",
}


class OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new path (imported on first use)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in OLD_MODULE_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(OLD_MODULE_PATHS[spec.name])

    def exec_module(self, module) -> None:
        """Nothing to run: the module was imported at its new path."""


def install_old_module_paths() -> None:
    """Put :class:`OldPathFinder` on ``sys.meta_path`` once (idempotent)."""
    if not any(isinstance(f, OldPathFinder) for f in sys.meta_path):
        sys.meta_path.append(OldPathFinder())

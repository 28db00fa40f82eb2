"""The index: ``Retriever`` (the facade: build, search, save, load, add / delete / compact), its
``IndexConfig``, the streaming build (``builder``), changes to a built index (``lifecycle``), the
on-disk format (``format``), the search pipeline over candidate stages (``search``), long documents
as passages (``passages``) and the checks on what callers pass (``inputs``).

May import: ``retriever.core``, ``store``, ``candidates``, ``hybrid``, ``encoders``, ``retriever_kernels``.
"""

from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever
from retriever.index.search import SearchResults

__all__ = ["IndexConfig", "Retriever", "SearchResults"]

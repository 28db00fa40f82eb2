"""retriever: multi-vector (ColBERT-style) dense retrieval with MUVERA fixed dimensional encodings.

Pipeline: token embeddings -> candidates (the token centroid stage, PLAID-style, from 2,048
documents; or MUVERA FDEs, one vector per document, in a FAISS inner-product index) -> exact MaxSim
(late interaction) rerank in numba kernels.

Subpackages, lowest layer first (a module imports only from its own layer and the ones before it;
``tests/test_layout.py`` checks it): ``core``, ``store``, ``candidates``, ``hybrid``, ``encoders``,
``index``, ``evaluation``, ``training``, ``cluster``, ``service``, ``cli``; the numba kernels are the
separate package ``retriever_kernels``, below all of them. See ``docs/architecture.md``.

The text encoder (``retriever.encoders``, transformers) is imported only when used; torch itself is
imported with the kernels, before any numba kernel runs (see ``kernels/retriever_kernels/__init__.py``).
"""

import retriever_kernels  # noqa: F401  first: sets the OpenMP wait policy before faiss/torch load theirs

from retriever.candidates import CentroidConfig, FDEConfig, FDEEncoder  # noqa: E402
from retriever.cluster import ShardedRetriever  # noqa: E402
from retriever.core.compat import install_old_module_paths  # noqa: E402
from retriever.core.version import __version__  # noqa: E402
from retriever.index import IndexConfig, Retriever, SearchResults  # noqa: E402
from retriever.store import CodecConfig, TokenEmbeddings  # noqa: E402

install_old_module_paths()

__all__ = ["CentroidConfig", "CodecConfig", "FDEConfig", "FDEEncoder", "IndexConfig", "Retriever", "SearchResults",
           "ShardedRetriever", "TokenEmbeddings", "__version__"]

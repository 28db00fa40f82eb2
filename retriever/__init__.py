"""retriever: multi-vector (ColBERT-style) dense retrieval with MUVERA fixed dimensional encodings.

Pipeline: token embeddings -> candidates (the token centroid stage, PLAID-style, from 2,048
documents; or MUVERA FDEs, one vector per document, in a FAISS inner-product index) -> exact MaxSim
(late interaction) rerank in numba kernels.

The text encoder (``retriever.encoder``, transformers) is imported only when used; torch itself is
imported with the kernels, before any numba kernel runs (see ``kernels/retriever_kernels/__init__.py``).
"""

__version__ = "0.1.0"

import retriever_kernels  # noqa: E402,F401  first: sets the OpenMP wait policy before faiss/torch load theirs

from .centroids import CentroidConfig  # noqa: E402
from .codecs import CodecConfig  # noqa: E402
from .fde import FDEConfig, FDEEncoder  # noqa: E402
from .index import IndexConfig, Retriever  # noqa: E402
from .search import SearchResults  # noqa: E402
from .shards import ShardedRetriever  # noqa: E402
from .tokens import TokenEmbeddings  # noqa: E402

__all__ = ["CentroidConfig", "CodecConfig", "FDEConfig", "FDEEncoder", "IndexConfig", "Retriever", "SearchResults", "ShardedRetriever",
           "TokenEmbeddings", "__version__"]

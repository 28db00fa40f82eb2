"""retriever: multi-vector (ColBERT-style) dense retrieval with MUVERA fixed dimensional encodings.

Pipeline: token embeddings -> FDE (one vector per document) -> FAISS inner-product candidates
-> exact MaxSim (late interaction) rerank in numba kernels.
"""

from .tokens import TokenEmbeddings

__version__ = "0.1.0"

__all__ = ["TokenEmbeddings", "__version__"]

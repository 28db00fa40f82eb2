"""Candidate stages: MUVERA fixed dimensional encodings (``fde``), the FAISS index over them (``ann``)
and the PLAID / WARP-style token centroid stage (``centroids``). Each turns a query into a short list
of document rows for the exact rerank.

May import: ``retriever.core``, ``retriever.store``, ``retriever_kernels``.
"""

from retriever.candidates.centroids import CentroidConfig, CentroidIndex
from retriever.candidates.fde import FDEConfig, FDEEncoder

__all__ = ["CentroidConfig", "CentroidIndex", "FDEConfig", "FDEEncoder"]

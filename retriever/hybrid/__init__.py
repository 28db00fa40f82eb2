"""Hybrid signals beside MaxSim: the built-in BM25 index (``lexical``) and the fusion of MaxSim,
the dense single vector and BM25 (``fusion``).

May import: ``retriever.core``, ``retriever.store``, ``retriever_kernels``.
"""

from retriever.hybrid.fusion import FusionConfig, HybridConfig, fuse, rank_fused, score_union
from retriever.hybrid.lexical import BM25Config, LexicalIndex

__all__ = ["BM25Config", "FusionConfig", "HybridConfig", "LexicalIndex", "fuse", "rank_fused", "score_union"]

"""``IndexConfig``: the build-time settings of an index, persisted in its manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from retriever.candidates.centroids import CentroidConfig
from retriever.candidates.fde import FDEConfig
from retriever.core.configs import check_keys, is_int
from retriever.hybrid.fusion import NONE as NO_HYBRID
from retriever.hybrid.fusion import FusionConfig, HybridConfig
from retriever.store.codecs import CodecConfig

__all__ = ["IndexConfig"]


@dataclass(frozen=True)
class IndexConfig:
    """Build-time settings of an index (persisted in the manifest).

    Parameters
    ----------
    fde : FDEConfig
        MUVERA encoding of each document's token set into one vector.
    faiss_factory : str
        FAISS factory string of the candidate index, always inner product. ``"auto"`` (default)
        picks a measured configuration from the corpus size when the index is built (see
        :func:`retriever.candidates.ann.auto_factory`); the built index's config holds the choice. Any
        factory string works: ``"Flat"`` (exact, 4 bytes per FDE dimension per document),
        ``"PQ2560x4fs"`` (4-bit fast-scan product quantisation), ``"IVF{nlist},PQ{m}x4fs"``, ...
    codec : CodecConfig
        How token vectors are stored: ``int8`` (default: 2x smaller than ``float16`` at the
        same answers), ``float16``, or ``residual`` codes of 1, 2 or 4 bits per dimension (see
        ``retriever.store.codecs``). Accepts a name too (``"residual2"``).
    pool_factor : int
        Token pooling at index time (Clavie et al. 2024): each document's token vectors are
        clustered (Ward) into ``max(1, n // pool_factor)`` groups whose renormalised means are
        stored. 1 (default) stores every token. Queries are untouched. Assumes L2-normalised
        token vectors (as every ColBERT encoder produces).
    word_pooling : bool
        Text builds only: one vector per whole word (the mean of its sub-word tokens,
        renormalised; ColBERTer's bag of whole-words) before ``pool_factor`` applies. Token
        embeddings given to ``build`` are refused with it; those given to ``add`` are stored as
        they are (taken as already pooled).
    hybrid : HybridConfig or "auto"
        Signals stored beside the token vectors for hybrid scoring (``retriever.hybrid.fusion``): the
        backbone's pooled single vector (``"dense"``) and BM25 (``"bm25"``), both computed from the
        text, and how searches fuse them with MaxSim. ``"auto"`` (default): both for text builds,
        none for builds from token embeddings; the built index's config holds the choice.
        ``HybridConfig(signals=())`` builds a plain late-interaction index from text.
    centroids : CentroidConfig or bool or "auto"
        The token centroid candidate stage (``retriever.candidates.centroids``, PLAID-style inverted lists
        of documents per token centroid): sub-linear candidates for large corpora, used in place
        of the FDE scan by ``search(mode="auto")``. ``"auto"`` (default): built for corpora of at
        least ``retriever.candidates.centroids.AUTO_MIN_DOCS`` documents; True / False force it. The built
        index's config holds the decision.
    store_text : bool
        Keep every document's id, title, text and metadata in the index's document store
        (``documents.sqlite``, ``retriever.index.documents``): hits carry their document and searches
        take metadata filters (``where=``). True (default) for builds that have the texts (text
        builds, or token embeddings with ``texts=``); False stores none (``--no-store-text``).
    chunk_tokens : int or None
        Split every document into passages of at most this many tokens (``retriever.index.passages``):
        each passage is a row of the token store (with its own FDE, centroid lists, dense vector and
        BM25 postings), searches return documents ranked by their best passage (MaxP) or, with
        ``search(..., passages=True)``, passages. Text builds only, and at most the encoder's
        ``document_budget`` (``document_length`` less special tokens): a chunked build truncates
        nothing. None (default): one row per document, truncated at ``document_length`` (as before).
    chunk_overlap : int
        Tokens shared by consecutive passages of a document (windows start every
        ``chunk_tokens - chunk_overlap`` tokens); in ``[0, chunk_tokens)``, 0 without ``chunk_tokens``.
    """

    fde: FDEConfig = field(default_factory=FDEConfig)
    faiss_factory: str = "auto"
    codec: CodecConfig = field(default_factory=CodecConfig)
    pool_factor: int = 1
    word_pooling: bool = False
    hybrid: HybridConfig | str = "auto"
    centroids: CentroidConfig = field(default_factory=CentroidConfig)
    store_text: bool = True
    chunk_tokens: int | None = None
    chunk_overlap: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.centroids, (bool, np.bool_, str)):
            object.__setattr__(self, "centroids", CentroidConfig(enabled=self.centroids))
        if not isinstance(self.centroids, CentroidConfig):
            raise TypeError(f"IndexConfig.centroids must be a CentroidConfig, a bool or 'auto', got "
                            f"{type(self.centroids).__name__}")
        if not isinstance(self.fde, FDEConfig):
            raise TypeError(f"IndexConfig.fde must be an FDEConfig, got {type(self.fde).__name__}")
        if not isinstance(self.faiss_factory, str) or not self.faiss_factory.strip():
            raise ValueError(f"IndexConfig.faiss_factory must be a non-empty string, got {self.faiss_factory!r}")
        if isinstance(self.codec, str):
            object.__setattr__(self, "codec", CodecConfig.parse(self.codec))
        if not isinstance(self.codec, CodecConfig):
            raise TypeError(f"IndexConfig.codec must be a CodecConfig or a codec name, got {type(self.codec).__name__}")
        pf = self.pool_factor
        if isinstance(pf, (bool, np.bool_)) or not isinstance(pf, (int, np.integer)) or not 1 <= pf <= 64:
            raise ValueError(f"IndexConfig.pool_factor must be an integer in [1, 64], got {pf!r}")
        if not isinstance(self.word_pooling, (bool, np.bool_)):
            raise ValueError(f"IndexConfig.word_pooling must be a bool, got {self.word_pooling!r}")
        if not isinstance(self.store_text, (bool, np.bool_)):
            raise ValueError(f"IndexConfig.store_text must be a bool, got {self.store_text!r}")
        if not (isinstance(self.hybrid, HybridConfig) or self.hybrid == "auto"):
            raise ValueError(f"IndexConfig.hybrid must be a HybridConfig or 'auto', got {self.hybrid!r}")
        ct, co = self.chunk_tokens, self.chunk_overlap
        if ct is not None and (not is_int(ct) or ct < 1):
            raise ValueError(f"IndexConfig.chunk_tokens must be None or a positive integer, got {ct!r}")
        if not is_int(co) or co < 0:
            raise ValueError(f"IndexConfig.chunk_overlap must be a non-negative integer, got {co!r}")
        if ct is None and co:
            raise ValueError(f"IndexConfig.chunk_overlap={co!r} needs chunk_tokens (passages to overlap)")
        if ct is not None and co >= ct:
            raise ValueError(f"IndexConfig.chunk_overlap must be smaller than chunk_tokens={ct}, got {co!r}")
        if ct is not None:
            object.__setattr__(self, "chunk_tokens", int(ct))
        object.__setattr__(self, "chunk_overlap", int(co))

    @property
    def chunked(self) -> bool:
        """True when documents are split into passages (``chunk_tokens`` is set)."""
        return self.chunk_tokens is not None

    def resolved(self, texts: bool, pooled: bool, fusion: dict | None = None) -> "IndexConfig":
        """This config with ``hybrid="auto"`` decided for a build that has the documents' texts
        (for BM25) and / or their pooled vectors (for the dense signal): each signal it can compute,
        fused as ``fusion`` (a ``FusionConfig`` dict: the encoder's ``recommended_fusion``) if given."""
        if self.hybrid == "auto":
            signals = tuple(s for s, ok in (("dense", pooled), ("bm25", texts)) if ok)
            if fusion is None:
                return dataclasses.replace(self, hybrid=HybridConfig(signals=signals))
            return dataclasses.replace(self, hybrid=HybridConfig(signals=signals, fusion=FusionConfig.from_dict(fusion)))
        if "dense" in self.hybrid.signals and not pooled:
            raise ValueError("IndexConfig.hybrid has the 'dense' signal, which needs the documents' pooled vectors: "
                             "build from text, or pass pooled= with token embeddings")
        if "bm25" in self.hybrid.signals and not texts:
            raise ValueError("IndexConfig.hybrid has the 'bm25' signal, which needs the documents' texts: "
                             "build from text, or pass texts= with token embeddings")
        return self

    @property
    def exact_store(self) -> bool:
        """True when the token store holds the encoded vectors as float16, unpooled (the reference
        that compressed or pooled stores are measured against)."""
        return self.codec.kind == "float16" and self.pool_factor == 1 and not self.word_pooling

    def to_dict(self) -> dict:
        return {"fde": self.fde.to_dict(), "faiss_factory": self.faiss_factory, "codec": self.codec.to_dict(),
                "pool_factor": int(self.pool_factor), "word_pooling": bool(self.word_pooling),
                "hybrid": self.hybrid if isinstance(self.hybrid, str) else self.hybrid.to_dict(),
                "centroids": self.centroids.to_dict(), "store_text": bool(self.store_text),
                "chunk_tokens": self.chunk_tokens, "chunk_overlap": int(self.chunk_overlap)}

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        """Inverse of :meth:`to_dict`; ``codec``, the pooling fields, ``hybrid`` and the chunking fields default
        as before they existed."""
        check_keys(cls, d)
        kw = dict(d)
        if "fde" in kw:
            kw["fde"] = FDEConfig.from_dict(kw["fde"])
        if isinstance(kw.get("codec"), dict):
            kw["codec"] = CodecConfig.from_dict(kw["codec"])
        elif "codec" not in kw:
            kw["codec"] = CodecConfig(kind="float16")  # written before codecs existed: a float16 store
        if isinstance(kw.get("hybrid"), dict):
            kw["hybrid"] = HybridConfig.from_dict(kw["hybrid"])
        elif "hybrid" not in kw:
            kw["hybrid"] = NO_HYBRID  # written before hybrid scoring existed
        if isinstance(kw.get("centroids"), dict):
            kw["centroids"] = CentroidConfig.from_dict(kw["centroids"])
        elif "centroids" not in kw:
            kw["centroids"] = CentroidConfig(enabled=False)  # written before the centroid stage existed
        kw.setdefault("store_text", False)  # written before the document store existed
        kw.setdefault("chunk_tokens", None)  # written before chunked builds existed: one row per document
        kw.setdefault("chunk_overlap", 0)
        return cls(**kw)

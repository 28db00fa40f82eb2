"""Text encoders: ``ColBERTEncoder`` (torch + transformers) turns texts into L2-normalised token
vectors and a pooled single vector; reads Stanford ColBERT, PyLate and plain backbone checkpoints.

May import: ``retriever.core``, ``retriever.store``, ``retriever.hybrid``.
"""

from retriever.encoders.colbert import ColBERTEncoder, EncoderConfig

__all__ = ["ColBERTEncoder", "EncoderConfig"]

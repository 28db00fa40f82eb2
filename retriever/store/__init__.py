"""The token store: ``TokenEmbeddings`` (token vectors of many texts as one CSR array) and the token
codecs (int8, float16, residual) that decide how stored tokens are written and decoded.

May import: ``retriever.core``, ``retriever_kernels``.
"""

from retriever.store.codecs import CodecConfig, TokenCodec
from retriever.store.tokens import TokenEmbeddings, as_token_embeddings

__all__ = ["CodecConfig", "TokenCodec", "TokenEmbeddings", "as_token_embeddings"]

"""The HTTP service (``retriever serve``): FastAPI app over a loaded index, bound to 127.0.0.1 by default.

May import: every layer up to ``retriever.cluster``.
"""

"""Training the encoder's projection head (and optionally the backbone) from (query, positive,
negatives) data mined from a BEIR collection (``pairs``, ``trainer``).

May import: every layer up to ``retriever.evaluation``.
"""

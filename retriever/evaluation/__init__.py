"""Evaluation: ranking metrics, TREC run files and Chamfer recall (``metrics``), and the BEIR
benchmark harness behind ``retriever bench`` (``benchmark``).

May import: every layer up to ``retriever.index``.
"""

"""Shared basics every layer may use: config checks, atomic files, memory release, the corpus formats
(BEIR JSONL, TSV), the version. Imports nothing from ``retriever``; the lowest layer.
"""

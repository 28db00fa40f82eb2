"""Training data for ``retriever.training.trainer``: labelled pairs (BEIR qrels, a JSONL file) and label-free
pseudo-pairs made from a corpus alone (inverse cloze).

Everything becomes one :class:`TrainingData`: a table of documents (ids and texts) and a list of
queries, each with the document rows that answer it (``positives``), optional given negatives, and
rows that must be neither a negative nor ranked when the query is validated (``exclude``: for a
pseudo-query, the unmodified document its sentence was cut from). ``val`` marks the queries held
out for validation (early stopping); they are never trained on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from retriever.core.beir import doc_text, iter_corpus, load_beir, read_qrels, read_queries

__all__ = ["TrainingData", "beir_pairs", "jsonl_pairs", "inverse_cloze_pairs", "read_corpus_texts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """Queries, the documents they are matched against, and which answer which.

    Attributes
    ----------
    doc_ids, doc_texts : tuple of str
        The document table (hard negatives are mined from it; validation ranks it).
    queries : tuple of str
    positives : tuple of tuple of int
        Per query, the document rows that answer it (at least one).
    negatives : tuple of tuple of int
        Per query, given hard negatives (may be empty; mined ones are added by the trainer).
    exclude : tuple of tuple of int
        Per query, rows that are never negatives and are left out of its validation ranking.
    val : tuple of bool
        Per query, True when it is held out for validation.
    source : str
        Where the data came from (recorded in the checkpoint's training record).
    grades : tuple of tuple of int
        Per query, the relevance grade (>= 1) of each of its ``positives``, in the same order;
        validation scores graded nDCG with them, as BEIR's test metric does. Empty (the
        default) means grade 1 for every positive.
    """

    doc_ids: tuple
    doc_texts: tuple
    queries: tuple
    positives: tuple
    negatives: tuple
    exclude: tuple
    val: tuple
    source: str
    grades: tuple = ()

    def __post_init__(self) -> None:
        n_docs, n_q = len(self.doc_texts), len(self.queries)
        if len(self.doc_ids) != n_docs:
            raise ValueError(f"doc_ids has {len(self.doc_ids)} entries for {n_docs} doc_texts")
        if n_docs == 0 or n_q == 0:
            raise ValueError(f"training data needs documents and queries, got {n_docs} documents and {n_q} queries")
        for name in ("positives", "negatives", "exclude", "val"):
            if len(getattr(self, name)) != n_q:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n_q} queries")
        for name in ("positives", "negatives", "exclude"):
            for i, rows in enumerate(getattr(self, name)):
                if any(not 0 <= r < n_docs for r in rows):
                    raise ValueError(f"{name}[{i}] refers to a document row outside 0..{n_docs - 1}")
        empty = [i for i, p in enumerate(self.positives) if not p]
        if empty:
            raise ValueError(f"every query needs at least one positive document: positives[{empty[0]}] is empty")
        if all(self.val):
            raise ValueError("every query is held out for validation: nothing is left to train on")
        if self.grades:
            if len(self.grades) != n_q:
                raise ValueError(f"grades has {len(self.grades)} entries for {n_q} queries")
            for i, (g, p) in enumerate(zip(self.grades, self.positives)):
                if len(g) != len(p):
                    raise ValueError(f"grades[{i}] has {len(g)} grades for {len(p)} positives")
                if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in g):
                    raise ValueError(f"grades[{i}] must hold ints >= 1, got {g!r}")

    def grade_of(self, q: int) -> dict[int, int]:
        """Document row -> relevance grade of query ``q``'s positives."""
        g = self.grades[q] if self.grades else (1,) * len(self.positives[q])
        return {int(d): int(x) for d, x in zip(self.positives[q], g)}

    @property
    def n_train(self) -> int:
        return sum(not v for v in self.val)

    def summary(self) -> str:
        return (f"{len(self.doc_texts)} documents, {self.n_train} training and {sum(self.val)} validation queries "
                f"({self.source})")


def _split_val(n: int, fraction: float, seed: int) -> tuple[bool, ...]:
    """Seeded choice of round(n * fraction) validation queries (at least one when fraction > 0, n > 1)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")
    n_val = int(round(n * fraction))
    if fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)
    val = np.zeros(n, dtype=bool)
    val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return tuple(bool(v) for v in val)


def beir_pairs(path: str | os.PathLike, split: str = "train", *, val_split: str | None = None,
               val_fraction: float = 0.1, seed: int = 0) -> TrainingData:
    """Labelled pairs from a BEIR collection's qrels (grade > 0 counts as positive; the grades are
    kept for graded validation).

    Validation queries are the ``val_split`` qrels (e.g. ``"dev"``) when given, else a seeded
    ``val_fraction`` of the ``split`` queries. The document table is the whole corpus.
    """
    ds = load_beir(path, split=split)
    doc_ids = tuple(ds.corpus)
    row = {d: i for i, d in enumerate(doc_ids)}
    texts = tuple(doc_text(ds.corpus[d]) for d in doc_ids)
    queries, positives, grades = [], [], []

    def add(qs: dict, qrels: dict) -> int:
        n = 0
        for qid, judged in qrels.items():
            graded = sorted((row[d], int(g)) for d, g in judged.items() if g > 0 and d in row)
            if qid in qs and graded:
                queries.append(qs[qid])
                positives.append(tuple(r for r, _ in graded))
                grades.append(tuple(g for _, g in graded))
                n += 1
        return n

    n_train = add(ds.queries, ds.qrels)
    if n_train == 0:
        raise ValueError(f"{path}: split {split!r} has no query with a relevant document in the corpus")
    if val_split is not None:
        if val_split == split:
            raise ValueError(f"val_split={val_split!r} is the training split: choose another split or val_fraction")
        root = Path(path)
        qrels_file = root / "qrels" / f"{val_split}.tsv"
        if not qrels_file.is_file():
            raise FileNotFoundError(f"{path}: no qrels for val_split={val_split!r} ({qrels_file})")
        trained = set(ds.queries)  # a query judged in both splits stays a training query only
        n_val = add({q: t for q, t in read_queries(root).items() if q not in trained}, read_qrels(qrels_file))
        if n_val == 0:
            raise ValueError(f"{path}: val_split {val_split!r} has no query with a relevant document")
        val = (False,) * n_train + (True,) * n_val
    else:
        val = _split_val(n_train, val_fraction, seed)
    n = len(queries)
    return TrainingData(doc_ids, texts, tuple(queries), tuple(positives), ((),) * n, ((),) * n, val,
                        f"BEIR {Path(path).name} {split}" + (f" (validation: {val_split})" if val_split else ""),
                        tuple(grades))


def jsonl_pairs(path: str | os.PathLike, *, corpus: str | os.PathLike | None = None, val_fraction: float = 0.1,
                seed: int = 0) -> TrainingData:
    """Pairs from a JSON-lines file, one object per line::

        {"query": "...", "positive": "..." | ["...", ...], "negatives": ["...", ...]}

    ``negatives`` is optional; a query on several lines is one query with the positives and
    negatives of all of them (a text that is a positive is never its negative). The document table
    is every distinct text of the file, plus the
    documents of ``corpus`` (a BEIR ``corpus.jsonl``, or a folder holding one) when given, so that
    hard negatives can be mined from a larger collection.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    doc_ids: list[str] = []
    texts: list[str] = []
    row: dict[str, int] = {}

    def doc(text: str, did: str | None = None) -> int:
        r = row.get(text)
        if r is None:
            r = row[text] = len(texts)
            texts.append(text)
            doc_ids.append(did if did is not None else f"pair-doc-{r}")
        return r

    if corpus is not None:
        for did, text in read_corpus_texts(corpus):
            doc(text, did)
    queries: list[str] = []
    positives: list[dict] = []  # per query: positive rows (dicts keep first-seen order)
    negatives: list[dict] = []
    q_row: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            q, pos, neg = obj.get("query"), obj.get("positive"), obj.get("negatives", [])
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"{where}: field 'query' must be a non-empty string")
            pos = [pos] if isinstance(pos, str) else pos
            if not isinstance(pos, list) or not pos or not all(isinstance(p, str) and p.strip() for p in pos):
                raise ValueError(f"{where}: field 'positive' must be a non-empty string or list of strings")
            if not isinstance(neg, list) or not all(isinstance(n, str) and n.strip() for n in neg):
                raise ValueError(f"{where}: field 'negatives' must be a list of non-empty strings")
            i = q_row.get(q)
            if i is None:  # a query on several lines is one query with all their positives
                i = q_row[q] = len(queries)
                queries.append(q)
                positives.append({})
                negatives.append({})
            positives[i].update(dict.fromkeys(doc(p) for p in pos))
            negatives[i].update(dict.fromkeys(doc(n) for n in neg))
    if not queries:
        raise ValueError(f"{path}: no pairs")
    n = len(queries)
    pos_t = tuple(tuple(sorted(p)) for p in positives)
    neg_t = tuple(tuple(r for r in ng if r not in p) for ng, p in zip(negatives, positives))
    return TrainingData(tuple(doc_ids), tuple(texts), tuple(queries), pos_t, neg_t,
                        ((),) * n, _split_val(n, val_fraction, seed), f"pairs {path.name}")


def read_corpus_texts(corpus: str | os.PathLike) -> Iterable[tuple[str, str]]:
    """(id, text) of a BEIR corpus file, or of the ``corpus.jsonl`` in a folder."""
    for d in iter_corpus(corpus):
        yield d["_id"], doc_text(d)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def inverse_cloze_pairs(corpus: str | os.PathLike, *, max_pairs: int = 2000, min_words: int = 6,
                        val_fraction: float = 0.1, seed: int = 0, max_docs: int | None = None) -> TrainingData:
    """Label-free pseudo-pairs from a corpus: the inverse cloze task (Lee et al. 2019).

    For up to ``max_pairs`` documents with at least two sentences (chosen at random, seeded), one
    sentence of at least ``min_words`` words becomes the query and the document without that
    sentence (title kept) its positive. The unmodified document stays in the table (it is what a
    search would return) but is excluded for that query: it contains the sentence verbatim, so it is
    neither a fair negative nor a fair validation target. A document's title is used as the query
    instead, with the whole text as positive, when the document has a title of ``min_words`` words
    or more but no sentence of ``min_words`` words with another sentence beside it.

    ``max_docs`` caps the corpus documents in the table (a seeded sample, every pseudo-pair's
    source kept; the pseudo-positives come on top), since the trainer encodes the whole table once.
    """
    for name, v in (("max_pairs", max_pairs), ("min_words", min_words), ("max_docs", max_docs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    rng = np.random.default_rng(seed)
    docs = [(d["_id"], d["title"], d["text"]) for d in iter_corpus(corpus)]
    if not docs:
        raise ValueError(f"{corpus}: empty corpus")
    order = rng.permutation(len(docs))
    picked: list[tuple[int, str, str]] = []  # (source row, query, positive text)
    for i in order:
        if len(picked) >= max_pairs:
            break
        _, title, text = docs[i]
        sents = _sentences(text)
        long_enough = [j for j, s in enumerate(sents) if len(s.split()) >= min_words]
        if len(sents) >= 2 and long_enough:
            j = int(long_enough[rng.integers(len(long_enough))])
            rest = " ".join(s for k, s in enumerate(sents) if k != j)
            picked.append((int(i), sents[j], f"{title} {rest}".strip() if title else rest))
        elif len(title.split()) >= min_words and text.strip():
            picked.append((int(i), title, text.strip()))
    if not picked:
        raise ValueError(f"{corpus}: no document has two sentences (or a title of {min_words}+ words and a text) "
                         "to make a pseudo-query from")
    keep = np.arange(len(docs))
    if max_docs is not None and len(docs) > max_docs:
        sources = np.unique([s for s, _, _ in picked])
        others = np.setdiff1d(keep, sources)
        n_more = max(0, max_docs - sources.size)
        keep = np.sort(np.concatenate([sources, rng.choice(others, size=min(n_more, others.size), replace=False)]))
    row_of = {int(d): r for r, d in enumerate(keep)}
    doc_ids = [docs[d][0] for d in keep]
    texts = [f"{docs[d][1]} {docs[d][2]}".strip() if docs[d][1] else docs[d][2] for d in keep]
    queries, positives, exclude = [], [], []
    for src, query, positive in picked:
        exclude.append((row_of[src],))
        positives.append((len(texts),))
        doc_ids.append(f"{docs[src][0]}#cloze")
        texts.append(positive)
        queries.append(query)
    n = len(queries)
    logger.info("inverse cloze: %d pseudo-pairs from %d documents", n, len(docs))
    return TrainingData(tuple(doc_ids), tuple(texts), tuple(queries), tuple(positives), ((),) * n,
                        tuple(exclude), _split_val(n, val_fraction, seed), f"inverse cloze {Path(corpus).name}")

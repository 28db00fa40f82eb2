"""Long documents split into passages (``IndexConfig.chunk_tokens``): the passage map and MaxP.

A chunked index stores one row per *passage*: every per-row structure (token store, FDEs, centroid
lists, dense vectors, BM25 postings, deleted flags) is per passage, and ``doc_ids.txt`` repeats the
document's own id on each of its rows. A document's passages are consecutive rows, numbered from 0;
the row of passage 0 is the document's *head* row, where the document store keeps its title, text
and metadata once. The map from rows to passages is one plain file::

    passages.npy   (n_rows, 3) int64: passage number within its document, start and end character
                   of the passage in the document's source text (see :func:`passage_source`)

so a row's document is ``row - number[row]`` and a document's rows run from its head to the next
head. Searches rank passages and, by default, return documents scored by their best passage
(MaxP, Dai & Callan 2019): :func:`collapse_to_documents` keeps each document's first (best)
passage of a passage ranking, and the search deepens that ranking until it names ``k`` documents.

This module holds the map, the passage split, the MaxP rules and the document ranking over a passage
search; ``retriever.index.retriever``, ``builder`` and ``lifecycle`` use it (it imports none of them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from retriever_kernels.maxsim import maxsim_scores_batch

from retriever.index import format as fmt
from retriever.index.documents import DocumentRecord
from retriever.index.format import IndexFormatError

if TYPE_CHECKING:  # the facade imports this module; this one never imports it
    from retriever.index.retriever import Retriever
    from retriever.store.tokens import TokenEmbeddings

__all__ = ["PassageMap", "passage_source", "record_source", "split_records", "check_chunking", "embeddings_refused",
           "first_depth", "collapse_to_documents", "best_passages", "rank_documents", "load_passage_map",
           "PassageBatch"]

#: How much deeper each retry of a document search ranks passages (see :func:`first_depth`).
DEPTH_GROWTH = 4


def passage_source(title: str | None, text: str) -> str:
    """The text a chunked index splits into passages, from a document's stored ``title`` and ``text``:
    ``title + " " + text`` when it has a title, else ``text`` as stored. Passage spans index this
    string (``source[start:end]`` is the passage); it encodes to the same tokens as the text an
    unchunked build encodes (``retriever.core.beir.doc_text``: the same words, whitespace aside).

    >>> passage_source("Aspirin", "reduces fever.")
    'Aspirin reduces fever.'
    >>> passage_source(None, "No title.")
    'No title.'
    """
    return f"{title} {text}" if title else text


def record_source(rec: DocumentRecord) -> str:
    """:func:`passage_source` of a document as the document store will keep it."""
    return passage_source(rec.title, rec.body if rec.body is not None else rec.text)


@dataclass(frozen=True)
class PassageBatch:
    """The passages of a batch of documents, row by row (what a chunked build encodes and stores)."""

    texts: list  # passage texts, one per row
    ids: list  # the document's id on each of its rows
    numbers: np.ndarray  # int64 (n_rows,) passage number within its document
    spans: np.ndarray  # int64 (n_rows, 2) start and end character in the document's source
    records: list  # the document record on its head row, None on the others (the store keeps it once)


def _fitted(encoder, text: str, n: int, budget: int, overlap: int) -> list[tuple[int, int]]:
    """Spans that split ``text`` (``n`` tokens, more than ``budget``) into pieces of at most ``budget``
    tokens each: windows shrunk by the excess until every piece fits."""
    tokens, excess = budget, n - budget
    while True:
        tokens = max(1, tokens - max(1, excess))
        spans = encoder.passage_spans([text], tokens, min(overlap, tokens - 1))[0]
        worst = max(encoder.content_lengths([text[a:b] for a, b in spans]))
        if worst <= budget or tokens == 1:
            return spans
        excess = worst - budget  # the worst piece's excess shrinks the next windows


def split_records(records: list[DocumentRecord], encoder, chunk_tokens: int, chunk_overlap: int) -> PassageBatch:
    """Split documents into passages of at most ``chunk_tokens`` tokens with ``chunk_overlap`` shared,
    by the encoder's tokenizer (:meth:`ColBERTEncoder.passage_spans`).

    A window cut inside a word can tokenize to a few more tokens as a passage than it spans in the
    document (``"aspirin"`` is ``as ##pi ##rin``; a passage starting at ``rin`` reads ``ri ##n``). A
    passage that would then exceed the encoder's ``document_budget`` (possible when ``chunk_tokens`` is
    within a few tokens of it) is split again with smaller windows, so that no passage is ever truncated."""
    sources = [record_source(rec) for rec in records]
    spans = encoder.passage_spans(sources, chunk_tokens, chunk_overlap)
    budget = encoder.document_budget
    flat = [src[a:b] for src, sp in zip(sources, spans) for a, b in sp]
    counts = iter(encoder.content_lengths(flat))  # one fast tokenizer pass over every passage
    for d, (src, sp) in enumerate(zip(sources, spans)):
        n_tok = [next(counts) for _ in sp]
        if max(n_tok, default=0) <= budget:
            continue
        fitted = []
        for (a, b), n in zip(sp, n_tok):
            fitted.extend([(a, b)] if n <= budget else
                          [(a + x, a + y) for x, y in _fitted(encoder, src[a:b], n, budget, chunk_overlap)])
        spans[d] = fitted
    texts, ids, numbers, out_spans, rows = [], [], [], [], []
    for rec, src, sp in zip(records, sources, spans):
        for j, (a, b) in enumerate(sp):
            texts.append(src[a:b])
            ids.append(rec.id)
            numbers.append(j)
            out_spans.append((a, b))
            rows.append(rec if j == 0 else None)
    return PassageBatch(texts, ids, np.asarray(numbers, dtype=np.int64),
                        np.asarray(out_spans, dtype=np.int64).reshape(-1, 2), rows)


def check_chunking(config, encoder) -> None:
    """``ValueError`` naming ``chunk_tokens`` when ``encoder`` cannot split documents into passages of
    that size without truncating them (its ``document_budget``), or cannot split at all."""
    if not config.chunked:
        return
    budget = getattr(encoder, "document_budget", None)
    if budget is None or not hasattr(encoder, "passage_spans"):
        raise ValueError(f"IndexConfig.chunk_tokens={config.chunk_tokens} needs an encoder that splits texts into "
                         f"passages (ColBERTEncoder.passage_spans); {type(encoder).__name__} does not")
    if config.chunk_tokens > budget:
        raise ValueError(f"IndexConfig.chunk_tokens={config.chunk_tokens} exceeds the encoder's document budget of "
                         f"{budget} tokens (document_length={encoder.config.document_length} less special tokens): "
                         f"passages that long would be truncated")


def embeddings_refused(config, what: str) -> ValueError:
    """The error for token embeddings given to a chunked build or index (passages are cut from text)."""
    return ValueError(f"IndexConfig.chunk_tokens={config.chunk_tokens} splits documents' texts into passages; {what} "
                      f"token embeddings, which cannot be split: give texts (or build without chunk_tokens)")


class PassageMap:
    """Row -> (passage number, character span) of a chunked index; see the module docstring.

    Parameters
    ----------
    numbers : int64 (n_rows,) passage number of each row within its document (0 at its head row)
    spans : int64 (n_rows, 2) start and end character of each passage in its document's source text
    """

    def __init__(self, numbers: np.ndarray, spans: np.ndarray) -> None:
        self.numbers = np.ascontiguousarray(numbers, dtype=np.int64).reshape(-1)
        self.spans = np.ascontiguousarray(spans, dtype=np.int64).reshape(-1, 2)
        if self.spans.shape[0] != self.numbers.size:
            raise ValueError(f"{self.numbers.size} passage numbers for {self.spans.shape[0]} spans")
        self.heads = np.flatnonzero(self.numbers == 0)  # the head row of every document, ascending
        self.row_heads = np.arange(self.numbers.size, dtype=np.int64) - self.numbers

    # -- files -------------------------------------------------------------------------------
    def array(self) -> np.ndarray:
        """The ``passages.npy`` content: int64 (n_rows, 3) = number, start, end."""
        return np.column_stack([self.numbers, self.spans]).astype(np.int64)

    @classmethod
    def from_array(cls, arr: np.ndarray) -> "PassageMap":
        return cls(arr[:, 0], arr[:, 1:3])

    @property
    def n_rows(self) -> int:
        return int(self.numbers.size)

    # -- rows and documents ------------------------------------------------------------------
    def heads_of(self, rows: np.ndarray) -> np.ndarray:
        """The head row of each row's document (-1 padding kept)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(rows.shape, -1, dtype=np.int64)
        hit = rows >= 0
        out[hit] = self.row_heads[rows[hit]]
        return out

    def counts(self, heads: np.ndarray) -> np.ndarray:
        """Passages of the documents whose head rows are ``heads``."""
        heads = np.asarray(heads, dtype=np.int64)
        pos = np.searchsorted(self.heads, heads)
        ends = np.append(self.heads[1:], self.n_rows)
        return ends[pos] - heads

    def expand(self, heads: np.ndarray) -> np.ndarray:
        """Every row of the documents whose head rows are ``heads`` (documents in the given order)."""
        heads = np.asarray(heads, dtype=np.int64).reshape(-1)
        if heads.size == 0:
            return heads
        n = self.counts(heads)
        starts = np.repeat(heads, n)
        within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        return starts + within

    def extended(self, numbers: np.ndarray, spans: np.ndarray) -> "PassageMap":
        """This map with rows appended (an add)."""
        return PassageMap(np.concatenate([self.numbers, numbers]), np.concatenate([self.spans, spans]))

    def select(self, rows: np.ndarray) -> "PassageMap":
        """The map of ``rows`` only, renumbered 0.. (a compaction keeps whole documents)."""
        return PassageMap(self.numbers[rows], self.spans[rows])

    def doc_mask(self, head_mask: np.ndarray) -> np.ndarray:
        """A per-row mask from a mask whose values count at head rows only (a filter on stored metadata)."""
        return np.asarray(head_mask)[self.row_heads]

    def info(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(passage numbers int64 ``rows.shape``, spans int64 ``rows.shape + (2,)``) of passage rows,
        -1 where ``rows`` is -1."""
        rows = np.asarray(rows, dtype=np.int64)
        numbers = np.full(rows.shape, -1, dtype=np.int64)
        spans = np.full(rows.shape + (2,), -1, dtype=np.int64)
        hit = rows >= 0
        numbers[hit] = self.numbers[rows[hit]]
        spans[hit] = self.spans[rows[hit]]
        return numbers, spans

    def n_live_documents(self, deleted: np.ndarray) -> int:
        return int((np.asarray(deleted)[self.heads] == 0).sum())

    # -- checks ------------------------------------------------------------------------------
    def check(self, where, doc_ids: np.ndarray, deleted: np.ndarray | None = None) -> None:
        """``IndexFormatError`` naming ``where`` unless the map is consistent with the rows' ids: numbers
        count 0, 1, 2, ... over consecutive rows of one id, spans are ordered character ranges, and (with
        ``deleted``) a document's passages are all deleted or all live."""
        num, sp = self.numbers, self.spans
        n = num.size
        if n != len(doc_ids):
            raise IndexFormatError(f"{where} maps {n} rows, the index has {len(doc_ids)}")
        if n == 0:
            return
        if num[0] != 0 or num.min() < 0:
            raise IndexFormatError(f"{where}: row {0 if num[0] != 0 else int(np.argmin(num))} has passage number "
                                   f"{int(num[0] if num[0] != 0 else num.min())}; a document starts at passage 0")
        cont = num[1:] != 0
        bad = np.flatnonzero(cont & (num[1:] != num[:-1] + 1))
        if bad.size:
            r = int(bad[0]) + 1
            raise IndexFormatError(f"{where}: row {r} is passage {int(num[r])} after passage {int(num[r - 1])}")
        ids = np.asarray(doc_ids)
        same = ids[1:] == ids[:-1]
        bad = np.flatnonzero(cont & ~same)
        if bad.size:
            r = int(bad[0]) + 1
            raise IndexFormatError(f"{where}: row {r} continues the document of row {r - 1} ({ids[r - 1]!r}) under "
                                   f"another id ({ids[r]!r})")
        bad = np.flatnonzero((sp[:, 0] < 0) | (sp[:, 1] < sp[:, 0]))
        if bad.size:
            r = int(bad[0])
            raise IndexFormatError(f"{where}: row {r} has the span {sp[r].tolist()}, not a range of characters")
        if deleted is not None:
            d = np.asarray(deleted)
            bad = np.flatnonzero(cont & (d[1:] != d[:-1]))
            if bad.size:
                r = int(bad[0]) + 1
                raise IndexFormatError(f"{where}: rows {r - 1} and {r} are passages of document {ids[r]!r}, and one "
                                       f"is deleted, the other not")


# -- MaxP over a passage ranking -----------------------------------------------------------------


def first_depth(k: int, n_rows: int, n_docs: int, cap: int) -> int:
    """Passages a document search ranks first to name ``k`` documents: twice ``k`` times the mean
    passages per document (``n_rows`` / ``n_docs`` live), at least ``k``, at most ``cap`` (the
    searchable rows). A query whose best passages crowd into few documents ranks
    ``DEPTH_GROWTH`` times deeper, until it has ``k`` documents or every row is ranked."""
    ratio = n_rows / max(n_docs, 1)
    return int(max(1, min(cap, max(int(k), math.ceil(2.0 * k * ratio)))))


def collapse_to_documents(rows: np.ndarray, scores: np.ndarray, heads: np.ndarray, k: int):
    """Documents from per-query passage rankings (best first): each document's first passage.

    Parameters
    ----------
    rows : int64 (n_q, depth) passage rows, best first, -1 padded
    scores : float32 (n_q, depth) their scores
    heads : int64 (n_q, depth) the head row of each passage's document (-1 padded)
    k : documents kept per query

    Returns
    -------
    (doc_heads int64 (n_q, k), doc_scores float32 (n_q, k), best_rows int64 (n_q, k), found int64 (n_q,)):
    padded with -1 / -inf; ``found`` counts the distinct documents the ranking named (up to ``k``).
    """
    n_q = rows.shape[0]
    out_heads = np.full((n_q, k), -1, dtype=np.int64)
    out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_rows = np.full((n_q, k), -1, dtype=np.int64)
    found = np.zeros(n_q, dtype=np.int64)
    for i in range(n_q):
        valid = np.flatnonzero(rows[i] >= 0)
        if valid.size == 0:
            continue
        _, first = np.unique(heads[i, valid], return_index=True)
        keep = valid[np.sort(first)[:k]]
        m = keep.size
        out_heads[i, :m] = heads[i, keep]
        out_scores[i, :m] = scores[i, keep]
        out_rows[i, :m] = rows[i, keep]
        found[i] = m
    return out_heads, out_scores, out_rows, found


def best_passages(scores: np.ndarray, cand: np.ndarray, heads: np.ndarray, k: int):
    """Each document's best passage from exact scores of all its passages, documents ranked by it.

    ``cand`` int64 (n_q, M): every passage row of each query's documents (-1 padded), ``scores``
    float32 (n_q, M) their scores, ``heads`` int64 (n_q, M) their documents' head rows. Returns
    (doc_heads, doc_scores, best_rows), each (n_q, k), ranked by score descending then head row.
    """
    n_q = cand.shape[0]
    out_heads = np.full((n_q, k), -1, dtype=np.int64)
    out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_rows = np.full((n_q, k), -1, dtype=np.int64)
    for i in range(n_q):
        valid = np.flatnonzero(cand[i] >= 0)
        if valid.size == 0:
            continue
        h, s, r = heads[i, valid], scores[i, valid], cand[i, valid]
        order = np.lexsort((r, -s, h))  # by document, best passage first (ties: lower row)
        first = order[np.r_[True, h[order][1:] != h[order][:-1]]]
        rank = first[np.lexsort((h[first], -s[first]))][:k]
        m = rank.size
        out_heads[i, :m], out_scores[i, :m], out_rows[i, :m] = h[rank], s[rank], r[rank]
    return out_heads, out_scores, out_rows


def timed_split(records, encoder, config, timings: dict) -> PassageBatch:
    """:func:`split_records` of a build or an add, its time counted in ``timings["split_s"]``."""
    t0 = time.perf_counter()
    batch = split_records(records, encoder, config.chunk_tokens, config.chunk_overlap)
    timings["split_s"] = timings.get("split_s", 0.0) + time.perf_counter() - t0
    return batch


def rank_documents(r: Retriever, q: TokenEmbeddings, k: int, rank, fused: bool, n_allowed: int):
    """Documents of a chunked index ``r`` by their best passage (MaxP) for the queries ``q``.

    ``rank(query_indices or None, depth, whole_union)`` is the index's passage search: (rows, scores,
    exhaustive) of each query's top ``depth`` passages among the ``n_allowed`` allowed rows (a hybrid
    search: with ``whole_union``, its whole fused union). Passages are ranked :func:`first_depth` deep (a
    hybrid search: the union of a passage search of ``k``) and each document kept at its first passage; a
    query whose ranking names fewer than ``k`` documents is ranked ``DEPTH_GROWTH`` times deeper until it
    names ``k`` or ranks every allowed row. MaxSim documents found from candidates are then scored
    exactly over all their passages, so each score is the document's MaxP.

    Returns (head rows int64 (n_q, k), scores float32 (n_q, k), best passage rows int64 (n_q, k)), padded
    with -1 / -inf.
    """
    pm = r.passages
    n_q = len(q)
    heads = np.full((n_q, k), -1, dtype=np.int64)
    scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    best = np.full((n_q, k), -1, dtype=np.int64)
    exact = np.zeros(n_q, dtype=bool)
    cap = max(int(n_allowed), 1)
    depth = k if fused else first_depth(k, r.n_live_rows, pm.n_live_documents(r.deleted), cap)
    todo = np.arange(n_q)
    while todo.size:
        rows_p, scores_p, exhaustive = rank(None if todo.size == n_q else todo, depth, fused)
        h, s, b, found = collapse_to_documents(rows_p, scores_p, pm.heads_of(rows_p), k)
        done = (found >= k) | ((rows_p >= 0).sum(axis=1) < depth) | (depth >= n_allowed)
        idx = todo[done]
        heads[idx], scores[idx], best[idx] = h[done], s[done], b[done]
        exact[idx] = exhaustive
        todo = todo[~done]
        depth = min(cap, depth * DEPTH_GROWTH)
    redo = np.flatnonzero(~exact)
    if not fused and redo.size:  # the best passage of each document found, over all its passages
        sub = q if redo.size == n_q else q.select(redo)
        per_q = [pm.expand(heads[i][heads[i] >= 0]) for i in redo]
        cand = np.full((redo.size, max([1] + [x.size for x in per_q])), -1, dtype=np.int64)
        for j, x in enumerate(per_q):
            cand[j, : x.size] = x
        sc = maxsim_scores_batch(sub.vectors, sub.offsets, r.store, r.doc_offsets, cand)
        heads[redo], scores[redo], best[redo] = best_passages(sc, cand, pm.heads_of(cand), k)
    return heads, scores, best


def load_passage_map(path: Path, m: dict, config, ids: np.ndarray, deleted) -> PassageMap | None:
    """The passage map of an index directory with manifest ``m`` (checked against its ids and deleted
    flags), None for an index that is not chunked; ``IndexFormatError`` naming what is wrong."""
    listed = fmt.PASSAGES in m["files"]
    if not config.chunked:
        if listed:
            raise IndexFormatError(f"{path / fmt.MANIFEST}: lists {fmt.PASSAGES!r}, but config.chunk_tokens is null")
        return None
    if not listed:
        raise IndexFormatError(f"{path / fmt.MANIFEST}: config.chunk_tokens={config.chunk_tokens} needs "
                               f"{fmt.PASSAGES!r}, which is not listed")
    pm = PassageMap.from_array(fmt.load_array(path, fmt.PASSAGES, False, np.int64, (len(ids), 3)))
    pm.check(path / fmt.PASSAGES, ids, deleted)
    return pm

"""The search pipeline over arrays: candidates (FDEs in FAISS, or the token centroid stage of
``retriever.candidates.centroids``), then exact MaxSim rerank.

``Retriever.search`` validates inputs and calls :func:`search_fde` or :func:`search_exact`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from retriever_kernels.maxsim import LANES, maxsim_exhaustive_topk, maxsim_scores_batch
from retriever_kernels.topk import topk_candidates

from retriever.candidates.ann import faiss_search
from retriever.candidates.centroids import auto_candidates
from retriever.index.passages import passage_source
from retriever.store.tokens import TokenEmbeddings

__all__ = ["SearchResults", "search_in_groups", "concat_results", "search_fde", "search_candidates", "search_exact",
           "auto_n_candidates", "AUTO_N_SCALE",
           "exhaustive_is_cheaper", "candidate_stage", "stage_groups", "merge_query_groups", "auto_rule"]

#: ``n_candidates="auto"`` fetches ``AUTO_N_SCALE * sqrt(n_docs)`` documents (at least ``10 * k``, at
#: most every document). FDE candidate recall falls as the corpus grows, so N must grow, but
#: much slower than the corpus. Chosen on tuning queries only (never test queries), as the constant
#: that keeps Chamfer recall@10 near 0.97 across sizes: NFCorpus dev needs N=1,500 of 3,633 docs
#: (25 sqrt(n)) for 0.986 and 1,000 (17 sqrt(n)) for 0.970; SciFact train N=700 of 5,183 (10 sqrt(n))
#: for 0.986 (bench/results/tuning.md); the 100k synthetic corpus (bench/scale/scale.py --split tune) 0.935 at
#: N=4,000 (13 sqrt(n)) and 0.969 at 8,000 (25 sqrt(n)). 20 sqrt(n): 1,205 / 1,440 / 6,325 documents.
AUTO_N_SCALE = 20.0


def auto_n_candidates(n_docs: int, k: int) -> int:
    """The number of FDE candidates ``n_candidates="auto"`` reranks for ``n_docs`` searchable documents."""
    return int(min(max(n_docs, 1), max(10 * int(k), round(AUTO_N_SCALE * float(n_docs) ** 0.5))))


def candidate_stage(has_centroids: bool, mode: str) -> str:
    """The candidate stage a search in ``mode`` uses: ``"centroids"`` when the index (every shard) has
    the token centroid stage and ``mode`` is "auto" or "centroids", else ``"fde"``."""
    return "centroids" if has_centroids and mode in ("auto", "centroids") else "fde"


def stage_groups(lengths, has_centroids: bool, mode: str, max_query_tokens: int | None) -> list[tuple[str, np.ndarray]]:
    """The queries of a batch (their token counts ``lengths``) grouped by the candidate stage each uses:
    ``[(stage, query indices), ...]``, short queries first. ``mode="auto"`` on an index with the centroid
    stage sends queries of more than ``max_query_tokens`` vectors (``CentroidConfig.max_query_tokens``;
    None: none) to the FDEs, where long queries find more of their exact top-k per candidate
    (``bench/beir/stage_rule.py``); every other case is :func:`candidate_stage`'s one stage."""
    lengths = np.asarray(lengths)
    stage = candidate_stage(has_centroids, mode)
    if stage != "centroids" or mode != "auto" or max_query_tokens is None:
        return [(stage, np.arange(lengths.size))]
    long = lengths > int(max_query_tokens)
    out = [(st, np.flatnonzero(m)) for st, m in (("centroids", ~long), ("fde", long)) if m.any()]
    return out or [(stage, np.arange(lengths.size))]


def auto_rule(stage: str):
    """The ``n_candidates="auto"`` rule ``(n_docs, k) -> N`` of a candidate stage: the centroid stage's
    :func:`retriever.candidates.centroids.auto_candidates` or the FDEs' :func:`auto_n_candidates`."""
    return auto_candidates if stage == "centroids" else auto_n_candidates


def exhaustive_is_cheaper(query_lengths: np.ndarray, n_candidates: int, n_docs: int, margin: float = 1.25) -> bool:
    """Whether exhaustive MaxSim over ``n_docs`` documents costs less than reranking ``n_candidates`` per query.

    Cost model of the two kernels (``retriever_kernels.maxsim``), in "document token x 32-lane chunk" steps, with
    converting a token to float32 counted as one step (int8: ~17 ns against ~20 ns for 32 lanes x 128
    dims): the rerank runs ``ceil(len_q / 32)`` chunks per (query, candidate) pair and converts each
    distinct candidate document once for the batch (at most ``n_docs``, at most ``N * n_queries``); the
    exhaustive kernel converts every document once and runs ``ceil(sum(len_q) / 32)`` chunks on it
    (queries packed lane after lane). For one query this is the plain ``n_candidates >= n_docs`` rule;
    for a batch of short queries on a small corpus the exhaustive pass is cheaper, and exact. ``margin``:
    exhaustive is chosen only when estimated that many times cheaper (the FAISS stage is left out).
    Measured (BEIR test batches, int8, batch rerank grouped by document): NFCorpus, 323 queries of 7
    tokens on average, N=1,205 of 3,633 documents: pipeline 1.98 s, exhaustive 1.23 s (the model: 1.5x
    cheaper); SciFact, 300 queries of 23 tokens, N=1,440 of 5,183: pipeline 2.5 s, exhaustive 5.1 s (the
    model: 0.39x as cheap). Since 2026-12-06 the batch rerank packs the queries that share a document lane
    after lane, so a short query no longer pays a whole chunk per candidate: the model now overstates the
    rerank of short-query batches and picks the (exact) exhaustive pass in some cases the rerank would win
    (NFCorpus test, centroid stage N=505, MaxSim: pipeline 0.63 s, exhaustive 2.8 s; the model already
    chose the pipeline there).
    """
    lengths = np.asarray(query_lengths, dtype=np.int64)
    if lengths.size == 0:
        return False
    chunks = (lengths + LANES - 1) // LANES
    pairs = float(n_candidates) * float(chunks.sum()) + float(min(n_docs, n_candidates * lengths.size))
    whole = float(n_docs) * float((int(lengths.sum()) + LANES - 1) // LANES + 1)
    return margin * whole <= pairs


@dataclass(frozen=True)
class SearchResults:
    """Top-k results for a batch of queries; row i answers query i.

    Attributes
    ----------
    ids : ndarray (n_queries, k)
        External document ids, best first. int64 padded with -1 for integer ids;
        object (str) padded with None for string ids. Passage hits (``passage_hits``) repeat the id
        of a document for each of its passages.
    scores : float32 ndarray (n_queries, k)
        MaxSim (late-interaction) similarities, descending; -inf where padded. An index of passages
        (``IndexConfig.chunk_tokens``) scores a document by its best passage (MaxP).
    rows : int64 ndarray (n_queries, k)
        Internal rows of the index, -1 where padded: the document's row (for a chunked index, the
        row of its first passage), or with ``passage_hits`` the passage's row.
    shards : int64 ndarray (n_queries, k) or None
        For a sharded index (``retriever.cluster.shards``): the shard of each hit (``rows`` are rows
        within it), -1 where padded. None for a single index.
    missing_shards : tuple of int
        Shards that did not answer a search made with ``allow_partial=True`` (Ray backend): the
        results then cover the other shards only. Empty when complete.
    documents : callable or None
        ``(rows, shards) -> [dict or None]``: the index's document store, read by :meth:`hits`
        (None: the index stores no documents). Not compared, not shown.
    passages : int64 ndarray (n_queries, k) or None
        Chunked indexes: the passage number of each hit within its document (document results: the
        best passage, whose score is the document's), -1 where padded. None for other indexes.
    spans : int64 ndarray (n_queries, k, 2) or None
        Chunked indexes: the passage's start and end character in its document's source text
        (``title + " " + text`` when the document has a title, else ``text``; see
        ``retriever.index.passages.passage_source``), -1 where padded.
    passage_hits : bool
        True when the hits are passages (``search(..., passages=True)``), False for documents.
    """

    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    shards: np.ndarray | None = None
    missing_shards: tuple = ()
    documents: object = field(default=None, repr=False, compare=False)
    passages: np.ndarray | None = None
    spans: np.ndarray | None = None
    passage_hits: bool = False

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_list(self) -> list[list[tuple[object, float]]]:
        """Per query, the list of (id, score) pairs without padding (passage hits: the passage's
        document id, repeated for each passage of a document)."""
        out = []
        for ids, scores, rows in zip(self.ids, self.scores, self.rows):
            keep = rows >= 0
            out.append([(_py(i), float(s)) for i, s in zip(ids[keep], scores[keep])])
        return out

    def hits(self) -> list[list[dict]]:
        """Per query, one dict per hit (best first, padding left out): ``id`` and ``score``, and, when the
        index stores documents, ``title``, ``text`` and ``metadata`` (one store read for the whole batch).

        A chunked index adds ``passage`` (number) and ``span`` (``[start, end]`` characters): for document
        hits those of the best passage, the ``text`` being the whole document's; for passage hits
        (``passage_hits``) those of the passage, the ``text`` being the passage's own."""
        keep = self.rows >= 0
        doc_rows = self.rows
        if self.passage_hits and self.passages is not None:  # a passage's document sits at its first row
            doc_rows = np.where(keep, self.rows - self.passages, -1)
        stored = None
        if self.documents is not None:
            stored = iter(self.documents(doc_rows[keep], None if self.shards is None else self.shards[keep]))
        out = []
        for q in range(self.rows.shape[0]):
            hits = []
            for j in np.flatnonzero(keep[q]):
                hit = {"id": _py(self.ids[q, j]), "score": float(self.scores[q, j])}
                if self.passages is not None:
                    hit["passage"] = int(self.passages[q, j])
                    hit["span"] = [int(x) for x in self.spans[q, j]]
                if stored is not None:
                    doc = next(stored)
                    if doc is not None:
                        hit.update(doc)
                        if self.passage_hits:
                            a, b = hit["span"]
                            hit["text"] = passage_source(doc["title"], doc["text"])[a:b]
                hits.append(hit)
            out.append(hits)
        return out


def _py(x):
    return x.item() if isinstance(x, np.generic) else x


def search_in_groups(groups, queries: TokenEmbeddings, texts: list[str] | None, pooled, search) -> SearchResults:
    """A batch searched group by group and merged back in query order: ``groups`` = [(key, query indices),
    ...] (``FusionConfig.groups``: keys are fusions; :func:`stage_groups`: candidate stages);
    ``search(key, queries, texts, pooled)`` runs on each group's slice of the queries, their texts and pooled
    vectors (None when there are none). One group is searched as the whole batch."""
    if len(groups) == 1:
        return search(groups[0][0], queries, texts, pooled)
    parts = [(idx, search(key, queries.select(idx), None if texts is None else [texts[i] for i in idx],
                          None if pooled is None else np.asarray(pooled)[idx]))
             for key, idx in groups]
    return merge_query_groups(parts, len(queries))


def merge_query_groups(parts: list[tuple[np.ndarray, SearchResults]], n_queries: int) -> SearchResults:
    """One result for a batch searched as groups of queries: ``parts`` = [(the group's query indices, its
    results), ...] covering ``0 .. n_queries - 1``."""
    first = parts[0][1]
    k = first.ids.shape[1]
    ids = np.empty((n_queries, k), dtype=first.ids.dtype)
    scores = np.empty((n_queries, k), dtype=first.scores.dtype)
    rows = np.empty((n_queries, k), dtype=first.rows.dtype)
    shards = None if first.shards is None else np.empty((n_queries, k), dtype=first.shards.dtype)
    numbers = None if first.passages is None else np.empty((n_queries, k), dtype=np.int64)
    spans = None if first.spans is None else np.empty((n_queries, k, 2), dtype=np.int64)
    missing: set = set()
    for idx, res in parts:
        ids[idx], scores[idx], rows[idx] = res.ids, res.scores, res.rows
        if shards is not None:
            shards[idx] = res.shards
        if numbers is not None:
            numbers[idx] = res.passages
        if spans is not None:
            spans[idx] = res.spans
        missing.update(res.missing_shards)
    return SearchResults(ids=ids, scores=scores, rows=rows, shards=shards, missing_shards=tuple(sorted(missing)),
                         documents=first.documents, passages=numbers, spans=spans, passage_hits=first.passage_hits)


def concat_results(parts: list[SearchResults]) -> SearchResults:
    """One result for consecutive batches of queries searched apart (``parts`` in query order)."""
    first = parts[0]

    def cat(name):
        return None if getattr(first, name) is None else np.concatenate([getattr(p, name) for p in parts])

    return SearchResults(ids=cat("ids"), scores=cat("scores"), rows=cat("rows"), shards=cat("shards"),
                         missing_shards=tuple(sorted({s for p in parts for s in p.missing_shards})),
                         documents=first.documents, passages=cat("passages"), spans=cat("spans"),
                         passage_hits=first.passage_hits)


def search_fde(
    queries: TokenEmbeddings,
    query_fdes: np.ndarray,
    faiss_index,
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    k: int,
    n_candidates: int,
    ef_search: int | None = None,
    nprobe: int | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates by FDE inner product, reranked by exact MaxSim.

    Returns (rows int64 (n_q, k), scores float32 (n_q, k)), padded with -1 / -inf.
    """
    cand = faiss_search(faiss_index, query_fdes, n_candidates, ef_search=ef_search, nprobe=nprobe, allowed=allowed)
    return search_candidates(queries, cand, tokens, doc_offsets, k=k)


def search_candidates(queries: TokenEmbeddings, candidates: np.ndarray, tokens: np.ndarray, doc_offsets: np.ndarray,
                      *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim rerank of candidate rows (int64 (n_q, N), -1 padded) down to the top ``k``."""
    scores = maxsim_scores_batch(queries.vectors, queries.offsets, tokens, doc_offsets, candidates)
    return topk_candidates(candidates, scores, k)


def search_exact(
    queries: TokenEmbeddings,
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    *,
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive MaxSim over every (allowed) document: the exact answer.

    Returns (rows int64 (n_q, k), scores float32 (n_q, k)), padded with -1 / -inf.
    """
    return maxsim_exhaustive_topk(queries.vectors, queries.offsets, tokens, doc_offsets, k, allowed=allowed)

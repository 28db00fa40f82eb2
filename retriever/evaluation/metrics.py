"""IR metrics for BEIR-style evaluation, identical to ``trec_eval`` (as wrapped by ``pytrec_eval``).

Pure Python/numpy: ``pytrec_eval`` is only used by the tests, which check every metric against it
to 1e-6 on random runs.

Conventions (all those of ``trec_eval`` 9.x unless noted):

* **Ranking.** A query's run is ranked by score descending; ties are broken by document id
  *descending* (byte order of the UTF-8 id, i.e. Python ``str`` order). The order of entries in the
  run and any rank column in a run file are ignored.
* **Relevance.** A judged grade ``> 0`` is relevant. Unjudged documents and grades ``<= 0`` are
  not relevant and give no gain.
* **nDCG@k** (``ndcg_cut_k``): linear gain = the grade, discount ``log2(rank + 1)``; the ideal DCG
  uses all positively graded judged documents of the query, whether retrieved or not.
* **Recall@k** (``recall_k``): relevant documents in the top k / all relevant judged documents.
* **Precision@k** (``P_k``): relevant documents in the top k / k (k, even if fewer were retrieved).
* **MRR@k**: 1 / rank of the first relevant document if it is within the top k, else 0 (equals
  ``recip_rank`` on the run cut to its top k; ``trec_eval`` has no cut for it).
* **MAP@k** (``map_cut_k``): sum of precision at the rank of each relevant document within the top
  k, divided by the number of relevant judged documents (not by min(k, n_relevant)).
* **Averaging** (:func:`evaluate`): the mean over every query in ``qrels``. A query missing from
  the run scores 0 (``trec_eval -c``); a query whose judgments are all ``<= 0`` scores 0 on every
  metric and still counts, as in ``trec_eval`` and BEIR. Run queries absent from ``qrels`` are
  ignored.
* **BEIR's identical-id rule** (``ignore_identical_ids=True``): a retrieved document whose id equals
  the query id is dropped before ranking (BEIR does this for collections such as ArguAna and
  Quora, where a query is also a corpus document).
"""

from __future__ import annotations

import heapq
import math
import os
import pathlib
import re
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_METRICS",
    "evaluate",
    "evaluate_per_query",
    "run_from_arrays",
    "chamfer_recall",
    "write_trec_run",
    "read_trec_run",
]

#: The metrics reported for BEIR by default.
DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "recall@1000", "mrr@10", "map@100")

_FAMILIES = ("ndcg", "recall", "precision", "mrr", "map")
_METRIC_RE = re.compile(r"^(" + "|".join(_FAMILIES) + r")@([1-9][0-9]*)$")


def parse_metrics(metrics: str | Iterable[str]) -> list[tuple[str, str, int]]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    parsed = []
    for name in metrics:
        m = _METRIC_RE.match(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(
                f"metrics: unknown metric {name!r}; expected '<family>@<k>' with family in "
                f"{_FAMILIES} and k >= 1, e.g. 'ndcg@10'"
            )
        parsed.append((name, m.group(1), int(m.group(2))))
    if not parsed:
        raise ValueError("metrics: no metric given")
    return parsed


def _ranked(doc_scores: Mapping[str, float], qid: str, depth: int, ignore_identical_ids: bool) -> list[str]:
    """The top ``depth`` document ids in trec_eval order (score desc, then doc id desc)."""
    items = []
    for did, score in doc_scores.items():
        if ignore_identical_ids and did == qid:
            continue
        s = float(score)
        if math.isnan(s):
            raise ValueError(f"run: score of ({qid!r}, {did!r}) is NaN")
        items.append((s, did))
    if len(items) <= depth:
        items.sort(reverse=True)
        return [did for _, did in items]
    return [did for _, did in heapq.nlargest(depth, items)]


def _query_metrics(ranking: list[str], judged: Mapping[str, int], parsed) -> dict[str, float]:
    n_rel = sum(1 for g in judged.values() if g > 0)
    gains = [max(judged.get(did, 0), 0) for did in ranking]
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)
    out: dict[str, float] = {}
    for name, family, k in parsed:
        top = gains[:k]
        if family == "ndcg":
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(top) if g > 0)
            out[name] = dcg / idcg if idcg > 0 else 0.0
        elif family == "recall":
            out[name] = sum(1 for g in top if g > 0) / n_rel if n_rel else 0.0
        elif family == "precision":
            out[name] = sum(1 for g in top if g > 0) / k
        elif family == "mrr":
            out[name] = next((1.0 / (i + 1) for i, g in enumerate(top) if g > 0), 0.0)
        else:  # map
            hits, total = 0, 0.0
            for i, g in enumerate(top):
                if g > 0:
                    hits += 1
                    total += hits / (i + 1)
            out[name] = total / n_rel if n_rel else 0.0
    return out


def evaluate_per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """Metrics for each query of ``qrels``.

    Parameters
    ----------
    run : dict[str, dict[str, float]]
        Query id -> {document id: score}; higher scores rank first. Scores may be ``+-inf``, not NaN.
    qrels : dict[str, dict[str, int]]
        Query id -> {document id: grade}; grades ``> 0`` are relevant.
    metrics : iterable of str
        Names ``"<family>@<k>"`` with family ``ndcg``, ``recall``, ``precision``, ``mrr`` or ``map``.
    ignore_identical_ids : bool
        Drop retrieved documents whose id equals the query id (BEIR's default).

    Returns
    -------
    dict[str, dict[str, float]]
        Query id -> {metric name: value} for every query in ``qrels`` (in qrels order); see the
        module docstring for the exact definitions.
    """
    parsed = parse_metrics(metrics)
    depth = max(k for _, _, k in parsed)
    out: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        doc_scores = run.get(qid, {})
        ranking = _ranked(doc_scores, qid, depth, ignore_identical_ids)
        out[qid] = _query_metrics(ranking, judged, parsed)
    return out


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = True,
) -> dict[str, float]:
    """Mean of each metric over all queries in ``qrels``.

    Parameters
    ----------
    run, qrels, metrics, ignore_identical_ids
        As in :func:`evaluate_per_query`.

    Returns
    -------
    dict[str, float]
        Metric name -> mean over the queries of ``qrels`` (queries missing from the run count as
        0), in the order of ``metrics``.

    Raises
    ------
    ValueError
        ``qrels`` is empty, a metric name is unknown, or a score is NaN.

    Examples
    --------
    >>> qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    >>> run = {"q1": {"d2": 0.9, "d1": 0.5}, "q2": {"d3": 0.1}}
    >>> evaluate(run, qrels, metrics=("mrr@10", "recall@1"))
    {'mrr@10': 0.75, 'recall@1': 0.5}
    """
    if not qrels:
        raise ValueError("qrels is empty: nothing to average over")
    per_query = evaluate_per_query(run, qrels, metrics, ignore_identical_ids)
    names = [name for name, _, _ in parse_metrics(metrics)]
    n = len(per_query)
    return {name: math.fsum(m[name] for m in per_query.values()) / n for name in names}


# -- arrays <-> runs -------------------------------------------------------------------------


def _rows(
    query_ids: Sequence[str],
    ids: np.ndarray,
    scores: np.ndarray,
    doc_ids: Sequence[str] | np.ndarray | None,
) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """Yield ``(query id, [(doc id, score), ...])`` per row, padding dropped, validated."""
    ids = np.asarray(ids)
    scores = np.asarray(scores)
    if ids.ndim != 2 or scores.shape != ids.shape:
        raise ValueError(
            f"ids and scores must be 2-D arrays of the same shape (n_queries, k), got "
            f"{ids.shape} and {scores.shape}"
        )
    if len(query_ids) != ids.shape[0]:
        raise ValueError(f"query_ids has {len(query_ids)} entries but ids has {ids.shape[0]} rows")
    if scores.dtype.kind not in "fiu":
        raise TypeError(f"scores must be a numeric array, got dtype {scores.dtype}")
    if scores.dtype.kind == "f" and np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    integer = ids.dtype.kind in "iu"
    if integer:
        if doc_ids is None:
            raise ValueError("ids are integer row numbers: pass doc_ids (row number -> external id)")
        n_docs = len(doc_ids)
        if ids.size and ids.max(initial=-1) >= n_docs:
            raise ValueError(f"ids hold row {int(ids.max())} but doc_ids has only {n_docs} entries")
    elif ids.dtype.kind not in "UO":
        raise TypeError(f"ids must be integer rows or string ids, got dtype {ids.dtype}")
    names = None
    if integer and isinstance(doc_ids, np.ndarray) and len(doc_ids):
        # Gather only the referenced ids (O(n_queries * k)), not the whole id table.
        names = doc_ids[np.maximum(ids, 0)].tolist()
    for qi, (qid, id_row, score_row) in enumerate(zip(query_ids, ids.tolist(), scores.tolist())):
        name_row = names[qi] if names is not None else None
        row: list[tuple[str, float]] = []
        seen: set[str] = set()
        for j, (raw, s) in enumerate(zip(id_row, score_row)):
            s = float(s)
            if s == -math.inf:
                continue
            if integer:
                if raw < 0:
                    continue
                did = name_row[j] if name_row is not None else doc_ids[raw]
            else:
                if raw is None or raw == "":
                    continue
                did = raw
            if not isinstance(did, str):
                raise TypeError(f"document ids must be strings, got {type(did).__name__} in row {qi}")
            if type(did) is not str:
                did = str(did)  # np.str_ -> str
            if did in seen:
                raise ValueError(f"row {qi} (query {qid!r}) retrieves document {did!r} twice")
            seen.add(did)
            row.append((did, s))
        yield str(qid), row


def run_from_arrays(
    query_ids: Sequence[str],
    ids: np.ndarray,
    scores: np.ndarray,
    doc_ids: Sequence[str] | np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Turn search output arrays into a run dict for :func:`evaluate`.

    Parameters
    ----------
    query_ids : sequence of str, length n_queries
        External id of each row.
    ids : ndarray, shape (n_queries, k)
        Either integer document rows (then ``doc_ids`` maps row -> external id; ``-1`` = padding) or
        string/object external ids (``None`` or ``""`` = padding).
    scores : ndarray, shape (n_queries, k), float
        Scores; ``-inf`` marks padding. NaN is rejected.
    doc_ids : sequence of str, optional
        Row number -> external document id; required for integer ``ids``.

    Returns
    -------
    dict[str, dict[str, float]]
        Query id -> {document id: score} without padding; every query appears (possibly empty).

    Raises
    ------
    ValueError
        Shape mismatch, NaN score, out-of-range row, or a document twice in one row.
    """
    run: dict[str, dict[str, float]] = {}
    for qid, row in _rows(query_ids, ids, scores, doc_ids):
        if qid in run:
            raise ValueError(f"query id {qid!r} appears in two rows")
        run[qid] = dict(row)
    return run


def chamfer_recall(pred_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Share of the exact top-k that a candidate list finds ("Chamfer recall@k at N").

    Parameters
    ----------
    pred_ids : ndarray, shape (n_queries, n)
        Predicted document ids (any n; slice to ``[:, :N]`` for "recall@k at N"). Padding never
        matches.
    exact_ids : ndarray, shape (n_queries, k0), k0 >= k
        Exhaustive-MaxSim ranking; the first ``k`` columns are the target. Padding (negative ints,
        or ``None``/``""`` for string ids) is not counted.
    k : int
        Size of the exact top list, ``1 <= k <= k0``.

    Returns
    -------
    float
        Mean over queries of ``|target ∩ pred| / |target|``; queries whose target is all padding
        are skipped.

    Raises
    ------
    ValueError
        Bad shapes or ``k``, or no query with a non-empty target.

    Examples
    --------
    >>> import numpy as np
    >>> chamfer_recall(np.array([[3, 1, 7], [5, 6, -1]]), np.array([[1, 2], [5, -1]]), k=2)
    0.75
    """
    pred = np.asarray(pred_ids)
    exact = np.asarray(exact_ids)
    if pred.ndim != 2 or exact.ndim != 2 or pred.shape[0] != exact.shape[0]:
        raise ValueError(
            f"pred_ids and exact_ids must be 2-D with the same number of rows, got {pred.shape} and {exact.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= exact.shape[1]:
        raise ValueError(f"k must be an integer in [1, {exact.shape[1]}] (exact_ids width), got {k!r}")
    kinds = {pred.dtype.kind in "iu", exact.dtype.kind in "iu"}
    if len(kinds) != 1 and pred.size:
        raise TypeError(f"pred_ids ({pred.dtype}) and exact_ids ({exact.dtype}) must both be ints or both ids")

    def valid(x) -> bool:
        if isinstance(x, (int, np.integer)):
            return x >= 0
        return x is not None and x != ""

    fractions = []
    for p_row, e_row in zip(pred, exact[:, :k]):
        target = {x for x in e_row.tolist() if valid(x)}
        if not target:
            continue
        found = target.intersection(p_row.tolist())
        fractions.append(len(found) / len(target))
    if not fractions:
        raise ValueError("exact_ids holds only padding in its first k columns: nothing to recall")
    return float(np.mean(fractions))


# -- TREC run files --------------------------------------------------------------------------


def _check_token(value: str, what: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} {value!r} cannot be written to a TREC run (empty or contains whitespace)")
    return value


def write_trec_run(
    path: str | os.PathLike,
    query_ids: Sequence[str],
    ids: np.ndarray,
    scores: np.ndarray,
    tag: str = "retriever",
    doc_ids: Sequence[str] | np.ndarray | None = None,
) -> None:
    """Write search results as a TREC run file: ``qid Q0 docid rank score tag`` per line.

    Parameters
    ----------
    path : str or PathLike
        Output file (overwritten).
    query_ids, ids, scores, doc_ids
        As in :func:`run_from_arrays`; padding is skipped.
    tag : str
        Run tag (no whitespace).

    Notes
    -----
    Each query's lines are written in trec_eval order (score descending, ties by document id
    descending) with ranks 1, 2, ..., so the rank column agrees with how ``trec_eval`` and
    :func:`evaluate` rank. Scores are written with ``repr(float)``, which reads back exactly.
    """
    _check_token(tag, "tag")
    lines = []
    for qid, row in _rows(query_ids, ids, scores, doc_ids):
        _check_token(qid, "query id")
        row.sort(key=lambda ds: (ds[1], ds[0]), reverse=True)
        for rank, (did, s) in enumerate(row, start=1):
            lines.append(f"{qid} Q0 {_check_token(did, 'document id')} {rank} {s!r} {tag}\n")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a TREC run file (whitespace-separated ``qid Q0 docid rank score tag``).

    Parameters
    ----------
    path : str or PathLike
        The run file.

    Returns
    -------
    dict[str, dict[str, float]]
        Query id -> {document id: score}. The rank and tag columns are checked for form and then
        ignored, as ``trec_eval`` does.

    Raises
    ------
    ValueError
        A line without 6 fields, a non-integer rank, a non-numeric or NaN score, or a document
        listed twice for a query (message names file and line).
    """
    file = pathlib.Path(path)
    run: dict[str, dict[str, float]] = {}
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(f"{file}:{lineno}: expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}")
            qid, _, did, rank, score_s, _ = fields
            try:
                int(rank)
                score = float(score_s)
            except ValueError:
                raise ValueError(f"{file}:{lineno}: bad rank {rank!r} or score {score_s!r}") from None
            if math.isnan(score):
                raise ValueError(f"{file}:{lineno}: score is NaN")
            docs = run.setdefault(qid, {})
            if did in docs:
                raise ValueError(f"{file}:{lineno}: document {did!r} listed twice for query {qid!r}")
            docs[did] = score
    return run

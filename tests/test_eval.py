"""retriever.evaluation.metrics against pytrec_eval (trec_eval), plus run-array, Chamfer recall and TREC I/O tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytrec_eval
from hypothesis import given, settings, strategies as st

from retriever.evaluation.metrics import (
    DEFAULT_METRICS,
    chamfer_recall,
    evaluate,
    evaluate_per_query,
    read_trec_run,
    run_from_arrays,
    write_trec_run,
)

from conftest import require_beir


# -- reference: pytrec_eval ---------------------------------------------------------------------


def reference(run, qrels, metrics, ignore_identical_ids=True):
    """Per-query metrics from pytrec_eval, with our averaging conventions.

    BEIR's identical-id rule is applied by deleting entries before evaluating (as BEIR does); queries
    of qrels missing from the run score 0 (pytrec_eval leaves them out). MRR@k is derived from
    P_1..P_k (the first j with P_j > 0 is the first relevant rank), so it does not depend on our
    ranking code.
    """
    if ignore_identical_ids:
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()}
    measures, mapping = set(), {}
    for name in metrics:
        family, k = name.split("@")
        k = int(k)
        if family == "ndcg":
            measures.add(f"ndcg_cut.{k}")
            mapping[name] = f"ndcg_cut_{k}"
        elif family == "recall":
            measures.add(f"recall.{k}")
            mapping[name] = f"recall_{k}"
        elif family == "precision":
            measures.add(f"P.{k}")
            mapping[name] = f"P_{k}"
        elif family == "map":
            measures.add(f"map_cut.{k}")
            mapping[name] = f"map_cut_{k}"
        else:
            measures.add("P." + ",".join(str(j) for j in range(1, k + 1)))
            mapping[name] = ("mrr", k)
    # pytrec_eval parses "P.1,2" per measure string; pass one string per family.
    grouped: dict[str, set[str]] = {}
    for m in measures:
        fam, cuts = m.split(".")
        grouped.setdefault(fam, set()).update(cuts.split(","))
    measure_strings = {f"{fam}.{','.join(sorted(cuts, key=int))}" for fam, cuts in grouped.items()}
    res = pytrec_eval.RelevanceEvaluator(dict(qrels), measure_strings).evaluate(run)
    out = {}
    for q in qrels:
        r = res.get(q)
        row = {}
        for name, key in mapping.items():
            if r is None:
                row[name] = 0.0
            elif isinstance(key, tuple):
                k = key[1]
                first = next((j for j in range(1, k + 1) if r[f"P_{j}"] > 0), None)
                row[name] = 1.0 / first if first else 0.0
            else:
                row[name] = r[key]
        out[q] = row
    return out


def assert_matches_reference(run, qrels, metrics, ignore_identical_ids=True):
    ours = evaluate_per_query(run, qrels, metrics, ignore_identical_ids)
    ref = reference(run, qrels, metrics, ignore_identical_ids)
    assert list(ours) == list(qrels)
    for q in qrels:
        for name in metrics:
            assert ours[q][name] == pytest.approx(ref[q][name], abs=1e-6), (q, name, run.get(q), qrels[q])
    means = evaluate(run, qrels, metrics, ignore_identical_ids)
    for name in metrics:
        assert means[name] == pytest.approx(np.mean([ref[q][name] for q in qrels]), abs=1e-6)


# -- hand-checked conventions -------------------------------------------------------------------


def test_ties_broken_by_doc_id_descending():
    qrels = {"q": {"a": 1, "z": 0}}
    # All tied: trec_eval ranks "z" before "a" (doc id descending), so "a" is at rank 2.
    run = {"q": {"a": 1.0, "z": 1.0}}
    assert evaluate(run, qrels, ["mrr@10", "recall@1"]) == {"mrr@10": 0.5, "recall@1": 0.0}
    assert reference(run, qrels, ["mrr@10"])["q"]["mrr@10"] == 0.5
    # Dict order does not matter.
    assert evaluate({"q": {"z": 1.0, "a": 1.0}}, qrels, ["mrr@10"]) == {"mrr@10": 0.5}
    # String order, not numeric: "9" > "10".
    qrels2 = {"q": {"10": 1}}
    assert evaluate({"q": {"9": 0.0, "10": 0.0}}, qrels2, ["mrr@10"])["mrr@10"] == 0.5
    assert evaluate({"q": {"09": 0.0, "10": 0.0}}, qrels2, ["mrr@10"])["mrr@10"] == 1.0


def test_graded_ndcg_and_negative_grades():
    # Grades are linear gains; a negative grade gives no gain (not a penalty).
    qrels = {"q": {"a": -1, "b": 2, "c": 1}}
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 + 1 / math.log2(3)
    got = evaluate(run, qrels, ["ndcg@10", "recall@1", "map@100", "precision@2"])
    assert got["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
    assert got["recall@1"] == 0.0
    assert got["map@100"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert got["precision@2"] == 0.5
    assert_matches_reference(run, qrels, ["ndcg@10", "recall@1", "map@100", "precision@2"])


def test_zero_grade_is_not_relevant_but_query_counts():
    qrels = {"q1": {"a": 0}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    got = evaluate(run, qrels)
    assert got == {name: 0.5 for name in DEFAULT_METRICS}
    assert_matches_reference(run, qrels, DEFAULT_METRICS)


def test_query_missing_from_run_scores_zero_and_extra_run_queries_ignored():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "q3": {"b": 1.0}}
    per = evaluate_per_query(run, qrels, ["ndcg@10"])
    assert per == {"q1": {"ndcg@10": 1.0}, "q2": {"ndcg@10": 0.0}}
    assert evaluate(run, qrels, ["ndcg@10"]) == {"ndcg@10": 0.5}
    assert evaluate({"q1": {}}, {"q1": {"a": 1}}, ["recall@10"]) == {"recall@10": 0.0}


def test_recall_and_map_denominators_use_all_relevant():
    qrels = {"q": {f"d{i}": 1 for i in range(20)}}
    run = {"q": {"d0": 2.0, "x": 1.5, "d1": 1.0}}
    got = evaluate(run, qrels, ["recall@10", "map@100", "mrr@10"])
    assert got["recall@10"] == pytest.approx(2 / 20)
    assert got["map@100"] == pytest.approx((1 + 2 / 3) / 20)
    assert got["mrr@10"] == 1.0


def test_mrr_cut_at_k():
    qrels = {"q": {"rel": 1}}
    run = {"q": {**{f"n{i:02d}": 10.0 - i for i in range(10)}, "rel": 0.0}}
    assert evaluate(run, qrels, ["mrr@10", "mrr@11"]) == {"mrr@10": 0.0, "mrr@11": pytest.approx(1 / 11)}


def test_identical_ids_ignored_like_beir():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 9.0, "d1": 1.0}}
    assert evaluate(run, qrels, ["mrr@10"]) == {"mrr@10": 1.0}
    assert evaluate(run, qrels, ["mrr@10"], ignore_identical_ids=False) == {"mrr@10": 0.5}
    # Ranks below shift up too: with it ignored, d1 enters the top 1.
    assert evaluate(run, qrels, ["recall@1"]) == {"recall@1": 1.0}
    assert run == {"q1": {"q1": 9.0, "d1": 1.0}}  # unlike BEIR, the caller's run is not mutated


def test_metric_validation_and_errors():
    qrels = {"q": {"a": 1}}
    for bad in ["ndcg", "ndcg@0", "ndcg_cut_10", "NDCG@10", "mrr@-1", "foo@3"]:
        with pytest.raises(ValueError, match="metric"):
            evaluate({}, qrels, [bad])
    with pytest.raises(ValueError, match="metric"):
        evaluate({}, qrels, [])
    assert evaluate({}, qrels, "recall@5") == {"recall@5": 0.0}
    with pytest.raises(ValueError, match="qrels is empty"):
        evaluate({}, {})
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"a": float("nan")}}, qrels)


def test_infinite_scores_rank_normally():
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": {"a": -math.inf, "b": math.inf, "c": 0.0}}
    assert_matches_reference(run, qrels, ["ndcg@2", "map@2", "mrr@1"])


# -- random comparisons with pytrec_eval ---------------------------------------------------------

DOC_POOL = ["d0", "d1", "d2", "d9", "d10", "d11", "D3", "a", "b", "zz", "é", "q0", "q1", "x_7", "x-7"]
QUERY_POOL = ["q0", "q1", "q2", "q3"]
SMALL_METRICS = ["ndcg@1", "ndcg@3", "ndcg@10", "recall@1", "recall@5", "precision@3", "mrr@1", "mrr@4", "map@2", "map@100"]

qrels_strategy = st.dictionaries(
    st.sampled_from(QUERY_POOL),
    st.dictionaries(st.sampled_from(DOC_POOL), st.integers(-1, 3), min_size=1, max_size=8),
    min_size=1,
)
score_strategy = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]),  # heavy ties
    st.floats(-10, 10, allow_nan=False, width=32),
)
run_strategy = st.dictionaries(
    st.sampled_from(QUERY_POOL + ["q9"]),
    st.dictionaries(st.sampled_from(DOC_POOL), score_strategy, max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(qrels=qrels_strategy, run=run_strategy, ignore=st.booleans())
def test_matches_pytrec_eval_hypothesis(qrels, run, ignore):
    assert_matches_reference(run, qrels, SMALL_METRICS, ignore_identical_ids=ignore)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pytrec_eval_random_large(seed):
    rng = np.random.default_rng(seed)
    n_docs, n_q = 1500, 40
    docs = [f"doc{i}" for i in rng.permutation(n_docs)]
    qrels, run = {}, {}
    for qi in range(n_q):
        qid = f"q{qi}"
        judged = rng.choice(n_docs, size=int(rng.integers(1, 40)), replace=False)
        qrels[qid] = {docs[j]: int(rng.choice([0, 1, 1, 2, 3])) for j in judged}
        if qi % 7 == 3:
            continue  # missing from the run
        retrieved = rng.choice(n_docs, size=int(rng.integers(0, 1200)), replace=False)
        scores = np.round(rng.normal(size=retrieved.size), 1)  # coarse: many ties
        run[qid] = {docs[j]: float(s) for j, s in zip(retrieved, scores)}
        # promote some relevant documents so metrics are not all ~0
        for d in list(qrels[qid])[:3]:
            run[qid][d] = float(rng.normal(2.0))
    assert_matches_reference(run, qrels, list(DEFAULT_METRICS) + ["precision@10", "ndcg@100", "map@1000"])


def test_scifact_test_qrels_synthetic_run():
    from retriever.core.beir import iter_corpus, read_qrels

    scifact = require_beir("scifact")

    qrels = read_qrels(scifact / "qrels" / "test.tsv")
    doc_ids = [d["_id"] for d in iter_corpus(scifact)]
    assert len(qrels) == 300
    rng = np.random.default_rng(7)
    run = {}
    for qid, judged in qrels.items():
        picked = rng.choice(len(doc_ids), size=1000, replace=False)
        scores = rng.random(1000).astype(np.float32)  # float32 -> float64, as from an index
        run[qid] = {doc_ids[j]: float(s) for j, s in zip(picked, scores)}
        for d in judged:
            if rng.random() < 0.8:
                run[qid][d] = float(np.float32(rng.random() + 0.2))
    assert_matches_reference(run, qrels, DEFAULT_METRICS)
    perfect = {q: {d: 1.0 for d in judged} for q, judged in qrels.items()}
    assert evaluate(perfect, qrels) == pytest.approx({m: 1.0 for m in DEFAULT_METRICS})


# -- run_from_arrays ------------------------------------------------------------------------------


def test_run_from_arrays_integer_rows_with_padding():
    doc_ids = np.array(["a", "b", "c", "d"])
    ids = np.array([[2, 0, -1], [3, 1, 0]], dtype=np.int64)
    scores = np.array([[0.9, 0.5, -np.inf], [0.7, 0.6, -np.inf]], dtype=np.float32)
    run = run_from_arrays(["q1", "q2"], ids, scores, doc_ids)
    assert run == {"q1": {"c": pytest.approx(0.9), "a": 0.5}, "q2": {"d": pytest.approx(0.7), "b": pytest.approx(0.6)}}
    assert all(type(d) is str for docs in run.values() for d in docs)
    assert all(type(s) is float for docs in run.values() for s in docs.values())
    assert run_from_arrays(["q1", "q2"], ids, scores, list(doc_ids)) == run
    # All padding (an empty index): every query present, with no documents.
    empty = run_from_arrays(["q"], np.full((1, 3), -1), np.full((1, 3), -np.inf), np.array([], dtype=str))
    assert empty == {"q": {}}


def test_run_from_arrays_string_ids():
    ids = np.array([["x", None], ["y", "z"]], dtype=object)
    scores = np.array([[1.0, 0.0], [2.0, 1.0]])
    assert run_from_arrays(["q1", "q2"], ids, scores) == {"q1": {"x": 1.0}, "q2": {"y": 2.0, "z": 1.0}}
    ids_u = np.array([["x", ""], ["y", "z"]])
    assert run_from_arrays(["q1", "q2"], ids_u, scores) == {"q1": {"x": 1.0}, "q2": {"y": 2.0, "z": 1.0}}


def test_run_from_arrays_errors():
    docs = ["a", "b"]
    with pytest.raises(ValueError, match="doc_ids"):
        run_from_arrays(["q"], np.array([[0]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="only 2 entries"):
        run_from_arrays(["q"], np.array([[2]]), np.array([[1.0]]), docs)
    with pytest.raises(ValueError, match="twice"):
        run_from_arrays(["q"], np.array([[1, 1]]), np.array([[1.0, 0.5]]), docs)
    with pytest.raises(ValueError, match="NaN"):
        run_from_arrays(["q"], np.array([[1]]), np.array([[np.nan]]), docs)
    with pytest.raises(ValueError, match="same shape"):
        run_from_arrays(["q"], np.array([[1, 0]]), np.array([[1.0]]), docs)
    with pytest.raises(ValueError, match="rows"):
        run_from_arrays(["q", "r"], np.array([[1]]), np.array([[1.0]]), docs)
    with pytest.raises(ValueError, match="two rows"):
        run_from_arrays(["q", "q"], np.array([[1], [0]]), np.array([[1.0], [1.0]]), docs)
    with pytest.raises(TypeError):
        run_from_arrays(["q"], np.array([[1.5]]), np.array([[1.0]]), docs)


def test_run_from_arrays_feeds_evaluate():
    doc_ids = [f"d{i}" for i in range(50)]
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(50)[:20] for _ in range(5)])
    scores = -np.sort(-rng.random((5, 20)), axis=1)
    ids[0, 15:] = -1
    scores[0, 15:] = -np.inf
    qids = [f"q{i}" for i in range(5)]
    qrels = {q: {f"d{j}": 1 for j in rng.choice(50, 4, replace=False)} for q in qids}
    run = run_from_arrays(qids, ids, scores, doc_ids)
    assert len(run["q0"]) == 15
    assert_matches_reference(run, qrels, ["ndcg@10", "recall@20", "mrr@10"])


# -- chamfer_recall --------------------------------------------------------------------------------


def _chamfer_reference(pred, exact, k):
    fr = []
    for p, e in zip(pred, exact[:, :k]):
        e = e[e >= 0]
        if e.size:
            fr.append(np.isin(e, p).mean())
    return float(np.mean(fr))


def test_chamfer_recall_basic_and_padding():
    pred = np.array([[3, 1, 7], [5, 6, -1]])
    exact = np.array([[1, 2, 9], [5, -1, -1]])
    assert chamfer_recall(pred, exact, 2) == pytest.approx((0.5 + 1.0) / 2)
    assert chamfer_recall(pred, exact, 3) == pytest.approx((1 / 3 + 1.0) / 2)
    # Padding never matches padding.
    assert chamfer_recall(np.array([[-1, -1]]), np.array([[4, -1]]), 2) == 0.0
    # A query whose target is all padding is skipped.
    assert chamfer_recall(np.array([[1], [2]]), np.array([[1], [-1]]), 1) == 1.0
    # String ids.
    assert chamfer_recall(np.array([["a", "b"]], dtype=object), np.array([["b", None]], dtype=object), 2) == 1.0


def test_chamfer_recall_random_against_reference():
    rng = np.random.default_rng(11)
    exact = np.stack([rng.permutation(200)[:10] for _ in range(30)])
    exact[rng.random(exact.shape) < 0.1] = -1
    exact[0] = -1
    for n in (1, 10, 50, 200):
        pred = np.stack([rng.permutation(200)[:n] for _ in range(30)])
        for k in (1, 5, 10):
            if not (exact[:, :k] >= 0).any():
                continue
            assert chamfer_recall(pred, exact, k) == pytest.approx(_chamfer_reference(pred, exact, k))


def test_chamfer_recall_errors():
    with pytest.raises(ValueError, match="k must be"):
        chamfer_recall(np.zeros((2, 3), int), np.zeros((2, 3), int), 4)
    with pytest.raises(ValueError, match="k must be"):
        chamfer_recall(np.zeros((2, 3), int), np.zeros((2, 3), int), 0)
    with pytest.raises(ValueError, match="same number of rows"):
        chamfer_recall(np.zeros((2, 3), int), np.zeros((3, 3), int), 1)
    with pytest.raises(ValueError, match="only padding"):
        chamfer_recall(np.zeros((1, 3), int), -np.ones((1, 3), int), 1)
    with pytest.raises(TypeError):
        chamfer_recall(np.array([["a"]]), np.array([[1]]), 1)


# -- TREC run files ----------------------------------------------------------------------------------


def test_trec_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    doc_ids = [f"doc-{i}" for i in range(100)]
    ids = np.stack([rng.permutation(100)[:12] for _ in range(4)])
    scores = rng.random((4, 12)).astype(np.float32)
    scores[1, 3] = scores[1, 4]  # a tie
    ids[2, 10:] = -1
    scores[2, 10:] = -np.inf
    qids = ["1", "2", "3", "4"]
    path = tmp_path / "run.trec"
    write_trec_run(path, qids, ids, scores, tag="mytag", doc_ids=doc_ids)
    back = read_trec_run(path)
    assert back == run_from_arrays(qids, ids, scores, doc_ids)  # exact: repr(float) round-trips
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 12 - 2
    by_q: dict[str, list[list[str]]] = {}
    for line in lines:
        f = line.split(" ")
        assert len(f) == 6 and f[1] == "Q0" and f[5] == "mytag"
        by_q.setdefault(f[0], []).append(f)
    for q, rows in by_q.items():
        assert [int(r[3]) for r in rows] == list(range(1, len(rows) + 1))
        keys = [(float(r[4]), r[2]) for r in rows]
        assert keys == sorted(keys, reverse=True)  # trec_eval order, ties by doc id descending
    # Evaluating the file gives what evaluating the arrays gives.
    qrels = {q: {doc_ids[j]: 1 for j in range(0, 100, 9)} for q in qids}
    assert evaluate(back, qrels) == evaluate(run_from_arrays(qids, ids, scores, doc_ids), qrels)


def test_trec_write_rejects_whitespace(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(tmp_path / "r", ["q 1"], np.array([["a"]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(tmp_path / "r", ["q"], np.array([["a b"]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="tag"):
        write_trec_run(tmp_path / "r", ["q"], np.array([["a"]]), np.array([[1.0]]), tag="")


@pytest.mark.parametrize(
    "content, match, lineno",
    [
        ("q Q0 d 1 0.5\n", "6 fields", 2),
        ("q Q0 d one 0.5 t\n", "bad rank", 2),
        ("q Q0 d 1 high t\n", "bad rank", 2),
        ("q Q0 d 1 nan t\n", "NaN", 2),
        ("q Q0 d 1 0.5 t\nq Q0 d 2 0.4 t\n", "twice", 3),
    ],
)
def test_trec_read_errors(tmp_path, content, match, lineno):
    path = tmp_path / "bad.trec"
    path.write_text("q Q0 ok 1 1.0 t\n" + content)
    with pytest.raises(ValueError, match=match) as err:
        read_trec_run(path)
    assert f"bad.trec:{lineno}:" in str(err.value)


def test_trec_read_tabs_and_blank_lines(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q1\tQ0\td1\t1\t2.5\tt\r\n\nq1 Q0 d2 2 -1e3 t\n")
    assert read_trec_run(path) == {"q1": {"d1": 2.5, "d2": -1000.0}}

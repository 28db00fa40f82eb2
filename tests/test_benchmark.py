"""The benchmark harness (retriever.evaluation.benchmark, bench/beir/report.py) on a tiny synthetic BEIR collection.

The encoder is the tiny Stanford-layout checkpoint of tests/fixtures/encoder; nothing here needs the
real MiniLM or the real collections.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random

import numpy as np
import pytest

from conftest import REPO
from retriever.cli import bench as bench_cli
from retriever.evaluation import benchmark as bm
from retriever.core.beir import load_beir
from retriever.cli.main import main as cli_main
from retriever.encoders.colbert import ColBERTEncoder
from retriever.evaluation.metrics import chamfer_recall, evaluate, run_from_arrays
from retriever.candidates.fde import FDEConfig
from retriever.hybrid.fusion import HybridConfig
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever


FIXTURES = REPO / "tests" / "fixtures" / "encoder"
CFG_A = IndexConfig(fde=FDEConfig(num_repetitions=3, num_simhash_projections=2, projection_dimension=4), codec="float16")
CFG_B = IndexConfig(fde=FDEConfig(num_repetitions=2, num_simhash_projections=3, projection_dimension=8), codec="float16")
WORDS = ("cell vitamin cancer risk heart blood sleep memory coffee tea exercise pressure fever pain life unit "
         "brain tumour gene protein virus").split()
N_DOCS = 36
FAST = dict(timing_queries=3, warmup=1)


def write_collection(root, seed=0, n_docs=N_DOCS, n_queries=8):
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = [{"_id": f"d{i}", "title": rng.choice(WORDS), "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 14)))}
            for i in range(n_docs)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": " ".join(rng.choices(WORDS, k=3))} for i in range(n_queries)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    for split, qs in (("test", range(0, n_queries, 2)), ("train", range(1, n_queries, 2))):
        lines = [f"q{i}\td{rng.randrange(n_docs)}\t{rng.choice([1, 2])}\n" for i in qs]
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))
    return root


@pytest.fixture(scope="module")
def encoder():
    return ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, encoder):
    tmp = tmp_path_factory.mktemp("bench")
    data = write_collection(tmp / "tinybeir")
    settings = bm.BenchSettings(k=20, n_candidates=(20, 5 * N_DOCS), **FAST)
    rows = bm.run_benchmark(data, split="test", index_configs=[CFG_A, CFG_B], encoder=encoder, settings=settings,
                            results=tmp / "out" / "results.jsonl", cache_dir=tmp / "cache")
    return {"tmp": tmp, "data": data, "rows": rows, "results": tmp / "out" / "results.jsonl", "cache": tmp / "cache"}


def _fde_rows(run):
    return [r for r in run["rows"] if r["method"] == "fde"]


def test_rows_cover_baselines_and_every_configuration(bench_run):
    rows = bench_run["rows"]
    # text indexes store the hybrid signals: a fused row follows each pipeline row (the second index,
    # built from the first one's token store, gets the texts and pooled vectors with it)
    assert [r["method"] for r in rows] == ["exhaustive", "single_vector", "bm25"] + ["fde", "hybrid"] * 4
    fde = [(r["config"]["index"]["fde"]["num_repetitions"], r["config"]["n_candidates"]) for r in rows[3:]]
    assert fde == [(3, 20), (3, 20), (3, 180), (3, 180), (2, 20), (2, 20), (2, 180), (2, 180)]
    for r in rows[4::2]:
        assert r["config"]["hybrid"]["signals"] == ["dense", "bm25"]
        assert r["chamfer_recall@10"] is None and r["encode"] is not None
    written = [json.loads(x) for x in bench_run["results"].read_text().splitlines()]
    assert written == json.loads(json.dumps(rows))
    for r in rows:
        for key in ("dataset", "split", "encoder", "config", "ndcg@10", "recall@10", "mrr@10", "search", "build",
                    "peak_rss_mb", "machine", "version", "timestamp", "run_id", "qps_end_to_end", "load_avg_1m"):
            assert key in r, (r["method"], key)
        assert r["dataset"] == "tinybeir" and r["split"] == "test" and r["n_queries"] == 4
        assert 0.0 <= r["ndcg@10"] <= 1.0
        lat = r["search"]["latency"]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] and r["search"]["qps"] > 0
        assert r["recall@100"] is None and r["recall@1000"] is None and r["map@100"] is None  # deeper than k=20
        assert "path" not in r["encoder"] and "batch_size" not in r["encoder"]["config"]
    assert rows[2]["chamfer_recall@10"] is None and rows[2]["encode"] is None  # BM25: no MaxSim recall, no encoder
    for r in rows[3:]:
        assert set(r["speedup_vs_exhaustive"]) == {"p50", "qps"}
        b = r["build"]
        assert b["total_s"] == pytest.approx(b["encode_s"] + b["fde_s"] + b["faiss_s"] + b["write_s"]
                                             + b.get("bm25_s", 0.0), abs=2e-3)
        assert r["index_bytes"] == sum(f.stat().st_size for f in (bench_run["cache"] / r["index_name"]).iterdir())


def test_exhaustive_row_equals_direct_evaluation(bench_run, encoder):
    data = load_beir(bench_run["data"], split="test")
    r = Retriever.load(bench_run["cache"] / bench_run["rows"][3]["index_name"], encoder=encoder)
    res = r.search(list(data.queries.values()), k=20, mode="exact", hybrid=False)
    expected = evaluate(run_from_arrays(list(data.queries), res.ids, res.scores), data.qrels)
    row = bench_run["rows"][0]
    assert row["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-5)
    assert row["mrr@10"] == pytest.approx(expected["mrr@10"], abs=1e-5)
    assert row["chamfer_recall@10"] == 1.0


def test_full_candidate_depth_equals_exhaustive(bench_run):
    exh = bench_run["rows"][0]
    for r in _fde_rows(bench_run):
        if r["config"]["n_candidates"] >= N_DOCS:
            assert r["chamfer_recall@10"] == 1.0
            assert r["ndcg@10"] == pytest.approx(exh["ndcg@10"], abs=1e-6)


def test_second_index_reuses_the_token_store(bench_run):
    a, b = _fde_rows(bench_run)[0], _fde_rows(bench_run)[2]
    assert a["build"]["tokens_from"] is None and b["build"]["tokens_from"] == a["index_name"]
    assert b["build"]["encode_s"] == a["build"]["encode_s"]  # the reused encoding is what it cost
    ra = Retriever.load(bench_run["cache"] / a["index_name"])
    rb = Retriever.load(bench_run["cache"] / b["index_name"])
    np.testing.assert_array_equal(np.asarray(ra.tokens), np.asarray(rb.tokens))
    assert list(ra.doc_ids) == list(rb.doc_ids)
    assert rb.encoder_info == ra.encoder_info


def test_cached_index_and_exact_results_are_reused(bench_run, encoder, monkeypatch):
    def no_build(*a, **kw):
        raise AssertionError("the cached index was rebuilt")

    monkeypatch.setattr(Retriever, "build", no_build)
    settings = bm.BenchSettings(k=10, n_candidates=(10,), baselines=(), **FAST)
    rows = bm.run_benchmark(bench_run["data"], index_configs=CFG_B, encoder=encoder, settings=settings,
                            results=None, cache_dir=bench_run["cache"])
    assert rows[0]["index_cached"] is True and rows[0]["index_name"] == _fde_rows(bench_run)[2]["index_name"]
    exact_files = sorted(bench_run["cache"].glob("tinybeir-exact-*.npz"))
    assert len(exact_files) == 1  # one query set, one token store


def test_exact_topk_cache(tmp_path, bench_run, encoder, monkeypatch):
    data = load_beir(bench_run["data"], split="train")
    r = Retriever.load(bench_run["cache"] / bench_run["rows"][3]["index_name"], encoder=encoder)
    q = encoder.encode_queries(list(data.queries.values()))
    f = tmp_path / "exact.npz"
    ids, scores = bm.exact_topk(r, q, list(data.queries), 15, f)
    assert ids.shape == (len(data.queries), 15) and f.is_file()
    ref = r.search(q, k=N_DOCS + 5, mode="exact")  # deeper than the corpus: padded
    np.testing.assert_array_equal(ids, np.where(ref.rows >= 0, ref.ids, "")[:, :15].astype(str))
    monkeypatch.setattr(Retriever, "search", lambda *a, **kw: pytest.fail("exact results were recomputed"))
    ids2, scores2 = bm.exact_topk(r, q, list(data.queries), 10, f)
    np.testing.assert_array_equal(ids2, ids[:, :10])
    np.testing.assert_array_equal(scores2, scores[:, :10])
    with np.load(f, allow_pickle=False) as z:
        assert z["ids"].shape[1] == 1000 and (z["ids"][:, N_DOCS:] == "").all()


def test_cache_key_follows_index_and_encoder_settings(encoder):
    name = bm.index_cache_name("x", "sha", CFG_A, encoder)
    assert name.startswith("x-") and name == bm.index_cache_name("x", "sha", CFG_A, encoder)
    assert name != bm.index_cache_name("x", "sha", CFG_B, encoder)
    assert name != bm.index_cache_name("x", "other-corpus", CFG_A, encoder)
    shorter = ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32", document_length=20)
    assert name != bm.index_cache_name("x", "sha", CFG_A, shorter)
    bigger_batches = ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32", batch_size=3)
    assert name == bm.index_cache_name("x", "sha", CFG_A, bigger_batches)  # speed knob only


def test_changed_encoder_builds_a_new_index(tmp_path, encoder):
    data = write_collection(tmp_path / "c", n_docs=10, n_queries=4)
    corpus = load_beir(data).corpus
    _, a = bm.open_index(data, corpus, CFG_A, encoder, tmp_path / "cache")
    other = ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32", document_length=12)
    _, b = bm.open_index(data, corpus, CFG_A, other, tmp_path / "cache")
    assert a["name"] != b["name"] and not b["cached"] and b["build"]["tokens_from"] is None
    _, again = bm.open_index(data, corpus, CFG_A, encoder, tmp_path / "cache")
    assert again["cached"] and again["build"] == a["build"]


def test_chamfer_recall_never_drops_as_candidates_grow(bench_run, encoder):
    data = load_beir(bench_run["data"], split="train")
    r = Retriever.load(bench_run["cache"] / bench_run["rows"][3]["index_name"], encoder=encoder)
    q = encoder.encode_queries(list(data.queries.values()))
    exact = r.search(q, k=10, mode="exact").ids
    recalls = [chamfer_recall(r.search(q, k=10, n_candidates=n).ids, exact, 10) for n in (10, 14, 20, 28, N_DOCS)]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0


def test_mean_pool_is_the_masked_mean_of_hidden_states(encoder):
    import torch

    texts = ["vitamin d and cancer risk in adults", "sleep", "  heart blood pressure  "]
    got = bm.mean_pool(encoder, texts, max_length=16, batch_size=2)
    assert got.shape == (3, encoder.backbone.config.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    for t, v in zip(texts, got):  # one text alone: no padding, a plain mean over its tokens
        ids = encoder.tokenizer(t.strip(), truncation=True, max_length=16, return_tensors="pt")
        with torch.inference_mode():
            h = encoder.backbone(**ids).last_hidden_state[0].numpy()
        ref = h.mean(0) / np.linalg.norm(h.mean(0))
        np.testing.assert_allclose(v, ref, atol=1e-5)


def test_bm25_finds_lexical_matches_and_pads_unmatched_queries():
    docs = ["aspirin reduces fever", "the heart pumps blood", "coffee contains caffeine", "aspirin and fevers"]
    tok, model, config = bm._bm25(docs)
    rows, scores = bm._bm25_search(tok, model, ["aspirin", "zebra unicorn"], k=6)
    assert rows.shape == (2, 6) and config["k1"] == 1.5 and config["stopwords"] == "en"
    assert set(rows[0, :2].tolist()) == {0, 3} and (rows[0, 2:] == -1).all()
    assert np.all(np.diff(scores[0, :2]) <= 0)
    assert (rows[1] == -1).all() and np.isneginf(scores[1]).all()


def test_bm25_stems_english():
    pytest.importorskip("Stemmer")  # PyStemmer: the [bench] extra
    tok, model, config = bm._bm25(["aspirins reduce fevers", "the heart pumps blood"])
    rows, _ = bm._bm25_search(tok, model, ["aspirin fever"], k=2)
    assert config["stemmer"] == "snowball-english" and rows[0].tolist() == [0, -1]


@pytest.mark.parametrize("kw, field", [({"k": 0}, "k"), ({"k": 10, "n_candidates": (5,)}, "n_candidates"),
                                       ({"baselines": ("colbert",)}, "baselines"), ({"threads": 0}, "threads"),
                                       ({"timing_queries": 0}, "timing_queries"), ({"warmup": -1}, "warmup"),
                                       ({"timing_seed": -1}, "timing_seed")])
def test_settings_are_validated(kw, field):
    with pytest.raises(ValueError, match=f"BenchSettings.{field}"):
        bm.BenchSettings(**kw)


def test_cli_bench_appends_rows(tmp_path, capsys):
    data = write_collection(tmp_path / "clibeir", n_docs=12, n_queries=6)
    out = tmp_path / "r.jsonl"
    argv = ["-q", "bench", "--data", str(data), "--model", str(FIXTURES / "bert_stanford"), "--dtype", "float32",
            "--k", "10", "--n-candidates", "10", "12", "--baselines", "exhaustive", "--results", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--num-repetitions", "2", "--num-simhash-projections", "2",
            "--projection-dimension", "4", "--timing-queries", "2", "--split", "train", "--codec", "float16"]
    assert cli_main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["exhaustive", "fde", "hybrid", "fde", "hybrid"] and rows[1]["split"] == "train"
    assert rows[1]["config"]["index"]["fde"]["num_repetitions"] == 2
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [p["method"] for p in printed] == ["exhaustive", "fde", "hybrid", "fde", "hybrid"]


def _load_script(path):
    """A script under bench/ (e.g. ``beir/report``) as a module."""
    name = path.replace("/", "_")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{path}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_writes_table_and_plot(bench_run, tmp_path, capsys):
    report = _load_script("beir/report")
    results = tmp_path / "results.jsonl"
    lines = bench_run["results"].read_text().splitlines()
    stale = json.loads(lines[0])
    stale["ndcg@10"], stale["timestamp"] = 0.123456, "2000-01-01T00:00:00Z"
    results.write_text(json.dumps(stale) + "\n" + "\n".join(lines) + "\n")  # an older run of the same config
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    assert report.main(["--results", str(results), "--out", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    table = [x for x in text.splitlines() if x.startswith("| tinybeir |")]
    assert len(table) == 11 + 2 + 2  # 11 results (latest of each config), 2 builds, 2 smallest-N lines
    smallest = [x.split(" | ")[3] for x in table if x.startswith("| tinybeir | test | (3,2,4) |")]
    assert smallest in (["20"], ["180"])  # N=180 >= the corpus: exact, so it always qualifies
    assert "0.123" not in text and "exhaustive MaxSim" in text and "FDE (3,2,4) N=20" in text
    assert "BM25 (bm25s)" in text and "single-vector (mean pool)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert report.main(["--results", str(results), "--split", "dev", "--out", str(md), "--plot", str(png)]) == 1


def test_single_vector_reencodes_and_caches_without_stored_pooled_vectors(tmp_path, encoder, monkeypatch):
    # an index without the hybrid "dense" signal: the baseline mean-pools the corpus itself, once
    data = write_collection(tmp_path / "nodense", n_docs=12, n_queries=6)
    cfg = IndexConfig(fde=CFG_A.fde, codec="float16", hybrid=HybridConfig(signals=("bm25",)))
    settings = bm.BenchSettings(k=10, n_candidates=(10,), baselines=("single_vector",), **FAST)
    kw = dict(index_configs=cfg, encoder=encoder, settings=settings, results=None, cache_dir=tmp_path / "cache")
    row = bm.run_benchmark(data, **kw)[0]
    assert row["method"] == "single_vector" and "vectors" not in row["config"] and row["build"]["encode_s"] > 0
    files = sorted((tmp_path / "cache").glob("nodense-single-*.npy"))
    assert len(files) == 1
    v = np.load(files[0], allow_pickle=False)
    assert v.shape[0] == len(load_beir(data).corpus)
    assert json.loads(files[0].with_suffix(".json").read_text())["encode_s"] > 0
    calls = []
    real = bm.mean_pool
    monkeypatch.setattr(bm, "mean_pool", lambda enc, texts, *a, **k: calls.append(len(texts)) or real(enc, texts, *a, **k))
    again = bm.run_benchmark(data, **kw)[0]
    assert again["ndcg@10"] == row["ndcg@10"] and len(load_beir(data).corpus) not in calls  # the cached corpus vectors


def test_single_vector_reuses_the_pooled_vectors_stored_in_the_index(bench_run, encoder, monkeypatch):
    import faiss

    def no_encoding(*a, **kw):
        raise AssertionError("the corpus was encoded again")

    monkeypatch.setattr(encoder, "encode_documents", no_encoding)
    monkeypatch.setattr(bm, "mean_pool", no_encoding)
    settings = bm.BenchSettings(k=20, n_candidates=(20,), baselines=("single_vector",), **FAST)
    rows = bm.run_benchmark(bench_run["data"], index_configs=CFG_A, encoder=encoder, settings=settings,
                            results=None, cache_dir=bench_run["cache"])
    row = rows[0]
    assert row["method"] == "single_vector" and row["config"]["vectors"] == "index"
    assert row["config"]["max_length"] == encoder.config.document_length
    assert row["build"]["vectors_from"] == rows[1]["index_name"] and "encode_s" not in row["build"]
    assert not list(bench_run["cache"].glob("tinybeir-single-*.npy"))  # nothing re-encoded or cached
    # the row is the stored vectors searched with the queries' pooled vectors
    data = load_beir(bench_run["data"], split="test")
    r = Retriever.load(bench_run["cache"] / rows[1]["index_name"], encoder=encoder)
    _, qp = ColBERTEncoder.encode_queries(encoder, list(data.queries.values()), return_pooled=True)
    flat = faiss.IndexFlatIP(r.dense.shape[1])
    flat.add(np.asarray(r.dense, dtype=np.float32))
    scores, rws = flat.search(qp, 20)
    ids = np.where(rws >= 0, np.asarray(r.doc_ids, dtype=object)[np.maximum(rws, 0)], None)
    expected = evaluate(run_from_arrays(list(data.queries), ids, scores), data.qrels)
    assert row["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-5)
    assert row["mrr@10"] == pytest.approx(expected["mrr@10"], abs=1e-5)
    assert row["ndcg@10"] == bench_run["rows"][1]["ndcg@10"]  # the same as in the first run


def test_cli_bench_of_a_compressed_store_measures_it_against_float16(tmp_path):
    data = write_collection(tmp_path / "c8beir", n_docs=12, n_queries=6)
    out = tmp_path / "r.jsonl"
    argv = ["-q", "bench", "--data", str(data), "--model", str(FIXTURES / "bert_stanford"), "--dtype", "float32",
            "--k", "10", "--n-candidates", "10", "--baselines", "exhaustive", "--results", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--num-repetitions", "2", "--num-simhash-projections", "2",
            "--projection-dimension", "4", "--timing-queries", "2", "--pool-factor", "2"]  # default codec: int8
    assert cli_main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["method"], r["codec"], r["pool_factor"]) for r in rows] == [
        ("exhaustive", "float16", 1), ("fde", "float16", 1), ("hybrid", "float16", 1), ("exhaustive", "int8", 2),
        ("fde", "int8", 2), ("hybrid", "int8", 2)]
    assert rows[0]["chamfer_recall@10"] == 1.0 and rows[3]["stored_tokens"] < rows[0]["stored_tokens"]
    assert rows[3]["store_bytes"] < rows[0]["store_bytes"] / 3  # half the bytes per token, half the tokens
    assert rows[4]["build"]["tokens_from"] == rows[1]["index_name"]


# -- run-time bounds: a timing sample, batched quality passes, reuse of the ground truth ---------


def test_timing_sample_is_bounded_and_deterministic():
    assert bm.BenchSettings().timing_queries == 200  # bounded by default
    a = bm.timing_sample(3237, 200, seed=0)
    assert len(a) == 200 == len(set(a)) and a == sorted(a) and 0 <= a[0] and a[-1] < 3237
    assert a == bm.timing_sample(3237, 200, seed=0)
    assert a != bm.timing_sample(3237, 200, seed=1)
    assert a != list(np.linspace(0, 3236, 200).round().astype(int))  # drawn, not evenly spaced
    assert bm.timing_sample(50, None) == list(range(50)) == bm.timing_sample(50, 80)  # all, on request
    assert bench_cli._count_or_all("all") is None and bench_cli._count_or_all("7") == 7
    for bad in ("0", "-3", "some"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_cli._count_or_all(bad)


def test_chunks_cover_every_query_once():
    lengths = np.array([3, 50, 1, 7, 7, 7, 2, 90, 4])
    for tokens, most in ((1, 100), (20, 100), (10_000, 100), (1, 3)):
        bm._CHUNK_TOKENS, bm._MAX_CHUNKS = tokens, most
        try:
            chunks = bm._chunks(lengths)
        finally:
            bm._CHUNK_TOKENS, bm._MAX_CHUNKS = 4096, 100
        assert [i for a, b in chunks for i in range(a, b)] == list(range(len(lengths)))
        assert len(chunks) <= max(most, 1) + 1
    assert bm._chunks(np.zeros(0, dtype=np.int64)) == []


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory, encoder):
    """A fresh run (ground truth computed, not cached) with small chunks and every search call recorded."""
    tmp = tmp_path_factory.mktemp("chunked")
    data = write_collection(tmp / "chunkbeir", seed=3, n_docs=36, n_queries=26)  # 13 test queries
    calls = []
    real = Retriever.search

    def spy(self, queries, k=10, **kw):
        calls.append((len(queries), k, kw.get("mode"), kw.get("query_texts") is not None))
        return real(self, queries, k, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(Retriever, "search", spy)
    mp.setattr(bm, "_CHUNK_TOKENS", 1)
    mp.setattr(bm, "_MAX_CHUNKS", 4)  # several chunks per batched pass
    try:
        settings = bm.BenchSettings(k=10, n_candidates=(10,), baselines=("exhaustive",), timing_queries=3, warmup=1)
        rows = bm.run_benchmark(data, index_configs=CFG_A, encoder=encoder, settings=settings, results=None,
                                cache_dir=tmp / "cache")
    finally:
        mp.undo()
    return {"data": data, "rows": rows, "calls": calls, "cache": tmp / "cache"}


def _per_query_reference(run, encoder):
    data = load_beir(run["data"], split="test")
    qids, texts = list(data.queries), list(data.queries.values())
    q, qp = encoder.encode_queries(texts, return_pooled=True)
    r = Retriever.load(run["cache"] / run["rows"][1]["index_name"], encoder=encoder)
    one = [q.select([i]) for i in range(len(qids))]

    def stack(results):
        return np.concatenate([x.ids for x in results]), np.concatenate([x.scores for x in results])

    exact = [r.search(x, k=100, mode="exact") for x in one]
    exact_ids = np.concatenate([np.where(x.rows >= 0, x.ids, "").astype(str) for x in exact])
    return data, qids, texts, qp, r, one, stack, exact_ids


def test_batched_quality_equals_per_query_searches(chunked_run, encoder):
    rows = chunked_run["rows"]
    assert [x["method"] for x in rows] == ["exhaustive", "fde", "hybrid"]
    data, qids, texts, qp, r, one, stack, exact_ids = _per_query_reference(chunked_run, encoder)
    assert len(qids) == 13 and all(x["n_queries"] == 13 for x in rows)
    stage = rows[1]["config"]["mode"]
    per = {
        "exhaustive": (stack([r.search(x, k=10, mode="exact") for x in one]), True),
        "fde": (stack([r.search(x, k=10, n_candidates=10, mode=stage) for x in one]), True),
        "hybrid": (stack([r.search(x, k=10, n_candidates=10, mode=stage, query_texts=[texts[i]],
                                   query_pooled=qp[i: i + 1]) for i, x in enumerate(one)]), False),
    }
    for row in rows:
        (ids, scores), chamfer = per[row["method"]]
        expected = bm._quality(qids, ids, scores, data.qrels, exact_ids, 10, chamfer)
        assert {m: row[m] for m in expected} == expected, row["method"]
    assert rows[1]["chamfer_recall@10"] < 1.0  # N=10 of 36 documents: the pipeline is not exact here


def test_batched_passes_and_timing_sample_bound_the_searches(chunked_run):
    calls, n_q = chunked_run["calls"], 13
    # the ground truth: one exhaustive pass over all queries (in chunks), at the cached depth
    gt = [c for c in calls if c[2] == "exact" and c[1] == bm._EXACT_DEPTH]
    assert sum(c[0] for c in gt) == n_q and len(gt) > 1
    # the exhaustive baseline: 1 warm-up + 3 timed single queries and one batch of the 3; never a quality pass
    exact = [c[0] for c in calls if c[2] == "exact" and c[1] == 10]
    assert sorted(exact) == [1, 1, 1, 1, 3]
    for hybrid in (False, True):
        # the pipeline and the hybrid pipeline: the same timing calls, then one pass over every query (in chunks)
        pipe = [c[0] for c in calls if c[2] not in ("exact", None) and c[3] == hybrid]
        assert pipe[:5] == [1, 1, 1, 1, 3] and sum(pipe[5:]) == n_q and len(pipe[5:]) > 1
    for row in chunked_run["rows"]:
        assert row["timed_queries"] == 3 and row["timing_seed"] == 0
        assert set(row["wall_s"]) == {"quality", "timing"} and row["wall_s"]["timing"] > 0
    assert chunked_run["rows"][0]["ground_truth_cached"] is False and chunked_run["rows"][0]["wall_s"]["quality"] > 0


def test_exhaustive_quality_is_the_ground_truth_ranking(chunked_run, encoder):
    data = load_beir(chunked_run["data"], split="test")
    (f,) = chunked_run["cache"].glob("chunkbeir-exact-*.npz")
    with np.load(f, allow_pickle=False) as z:
        ids, scores = z["ids"], z["scores"]
    top = np.where(ids[:, :10] != "", ids[:, :10], None).astype(object)
    expected = bm._quality(list(data.queries), top, scores[:, :10], data.qrels, ids[:, :100], 10, True)
    row = chunked_run["rows"][0]
    assert {m: row[m] for m in expected} == expected and row["chamfer_recall@10"] == 1.0
    # and the ground truth is exhaustive MaxSim, query by query
    _, _, _, _, _, _, _, exact_ids = _per_query_reference(chunked_run, encoder)
    np.testing.assert_array_equal(ids[:, :100], exact_ids)


def test_cli_times_a_bounded_sample_by_default():
    parser = argparse.ArgumentParser()
    bench_cli.add_bench_parser(parser.add_subparsers())
    assert parser.parse_args(["bench", "--data", "x"]).timing_queries == 200
    assert parser.parse_args(["bench", "--data", "x", "--timing-queries", "all"]).timing_queries is None
    assert parser.parse_args(["bench", "--data", "x", "--timing-queries", "50"]).timing_queries == 50


def test_pipeline_rows_follow_the_per_query_stage_rule(tmp_path, encoder):
    from retriever.candidates.centroids import CentroidConfig

    data = write_collection(tmp_path / "mixed", seed=4, n_queries=8)
    rng = random.Random(4)  # q0 and q4 (test split) long enough (24 vectors) to pass a lowered threshold of 20
    queries = [{"_id": f"q{i}", "text": " ".join(rng.choices(WORDS, k=30 if i % 4 == 0 else 3))} for i in range(8)]
    (data / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    cfg = IndexConfig(fde=CFG_A.fde, codec="float16", hybrid=HybridConfig(),
                      centroids=CentroidConfig(enabled=True, n_centroids=16, max_query_tokens=20))
    settings = bm.BenchSettings(k=10, n_candidates=("auto", 12), baselines=("exhaustive",), **FAST)
    rows = bm.run_benchmark(data, split="test", index_configs=cfg, encoder=encoder, settings=settings, results=None,
                            cache_dir=tmp_path / "cache")
    pipeline = [r for r in rows if r["method"] == "fde"]
    assert [r["config"]["mode"] for r in pipeline] == ["centroids+fde"] * 2
    assert pipeline[0]["config"]["n_candidates_by_stage"] == {"centroids": N_DOCS, "fde": N_DOCS}
    assert pipeline[1]["config"]["n_candidates_by_stage"] == {"centroids": 12, "fde": 12}
    exhaustive = next(r for r in rows if r["method"] == "exhaustive")
    assert pipeline[0]["ndcg@10"] == exhaustive["ndcg@10"]  # N = every document: exact, whatever the stage
    assert pipeline[0]["chamfer_recall@10"] == 1.0

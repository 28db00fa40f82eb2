"""From text to index: streaming build, text search, encoder identity, CLI (tiny checkpoints)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from conftest import REPO
from retriever.index import builder as builder_mod
from retriever.cli import main as cli_mod
from retriever.cli.main import main as cli_main
from retriever.encoders.colbert import ColBERTEncoder
from retriever.evaluation.metrics import read_trec_run
from retriever.candidates.fde import FDEConfig
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever

FIXTURES = REPO / "tests" / "fixtures" / "encoder"
CFG = IndexConfig(fde=FDEConfig(num_repetitions=4, num_simhash_projections=3, projection_dimension=8))

DOCS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever and pain in adults."},
    {"_id": "d2", "title": "", "text": "The heart pumps blood through the body."},
    {"_id": "d3", "title": "Sleep", "text": "Sleep deprivation impairs memory, attention and mood."},
    {"_id": "d4", "title": "Coffee", "text": "Caffeine is a stimulant found in coffee and tea."},
    {"_id": "d5", "title": "Exercise", "text": "Regular exercise lowers blood pressure."},
    {"_id": "d6", "title": "Empty", "text": ""},
]


@pytest.fixture(scope="module")
def encoder():
    return ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_stanford"), dtype="float32")


@pytest.fixture(scope="module")
def text_index(encoder):
    return Retriever.build(DOCS, encoder=encoder, config=CFG, show_progress=False)


def test_text_build_equals_embedding_build(encoder, text_index):
    from retriever.core.beir import doc_text

    emb = encoder.encode_documents([doc_text(d) for d in DOCS])
    ref = Retriever.build(emb, doc_ids=[d["_id"] for d in DOCS], config=CFG, encoder=encoder, show_progress=False)
    np.testing.assert_array_equal(np.asarray(text_index.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(text_index.doc_offsets, ref.doc_offsets)
    assert list(text_index.doc_ids) == [d["_id"] for d in DOCS]
    assert text_index.encoder_info == encoder.identity()


def test_streaming_in_batches_gives_same_index(encoder, text_index, monkeypatch):
    monkeypatch.setattr(builder_mod, "_TEXT_BATCH", 2)
    pairs = ((d["_id"], (d["title"] + " " + d["text"]).strip()) for d in DOCS)  # a generator: streamed once
    r = Retriever.build(pairs, encoder=encoder, config=CFG, show_progress=False)
    np.testing.assert_array_equal(np.asarray(r.tokens), np.asarray(text_index.tokens))
    q = ["blood pressure and exercise", "coffee"]
    np.testing.assert_array_equal(r.search(q, k=3).rows, text_index.search(q, k=3).rows)


def test_text_search_matches_embedding_search(encoder, text_index):
    q = ["does aspirin reduce fever", "caffeine"]
    a = text_index.search(q, k=3, hybrid=False)  # MaxSim alone (text queries fuse by default)
    b = text_index.search(encoder.encode_queries(q), k=3)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert text_index.search("caffeine", k=2).ids.shape == (1, 2)


def test_text_search_after_load_uses_recorded_encoder(tmp_path, text_index, encoder):
    text_index.save(tmp_path / "t")
    loaded = Retriever.load(tmp_path / "t")  # encoder re-created from the manifest on first text query
    q = ["sleep and memory"]
    np.testing.assert_array_equal(loaded.search(q, k=4).rows, text_index.search(q, k=4).rows)
    # the same encoder passed explicitly is accepted; another checkpoint is refused
    Retriever.load(tmp_path / "t", encoder=encoder)
    other = ColBERTEncoder.from_pretrained(str(FIXTURES / "bert_pylate"), dtype="float32")
    with pytest.raises(ValueError, match="encoder|dim"):
        Retriever.load(tmp_path / "t", encoder=other)


def test_text_inputs_errors(encoder):
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        Retriever.build([("a", "x y"), ("a", "z")], encoder=encoder, config=CFG, show_progress=False)
    with pytest.raises(TypeError, match="document id"):
        Retriever.build([(1.5, "x y")], encoder=encoder, config=CFG, show_progress=False)
    with pytest.raises(TypeError, match="not str"):
        Retriever.build([("a", "x"), ("b", 3)], encoder=encoder, config=CFG, show_progress=False)
    with pytest.raises(ValueError, match="'_id'"):
        Retriever.build([{"title": "t", "text": "x"}], encoder=encoder, config=CFG, show_progress=False)
    with pytest.raises(ValueError, match="empty"):
        Retriever.build(iter([]), encoder=encoder, config=CFG, show_progress=False)
    with pytest.raises(TypeError, match="single string"):
        Retriever.build("just one string", encoder=encoder, config=CFG, show_progress=False)
    # plain strings get positional integer ids; an empty text is still a (markers-only) document
    r = Retriever.build(["alpha beta", "", "gamma"], encoder=encoder, config=CFG, show_progress=False)
    assert r.id_type == "int" and r.n_docs == 3


def test_cli_index_and_search(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as fh:
        for d in DOCS:
            fh.write(json.dumps(d) + "\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n"
                               for i, t in enumerate(["aspirin fever", "tea and coffee"])))
    model = str(FIXTURES / "bert_stanford")
    out = tmp_path / "idx"
    assert cli_main(["-q", "index", "--corpus", str(corpus), "--out", str(out), "--model", model,
                     "--num-repetitions", "4", "--num-simhash-projections", "3", "--projection-dimension", "8"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_docs"] == len(DOCS)
    run = tmp_path / "run.trec"
    monkeypatch.setattr(cli_mod, "_SEARCH_STEP", 1)  # a query file is searched in steps: one per query here
    assert cli_main(["-q", "search", "--index", str(out), "--queries", str(queries), "--k", "3", "--out", str(run)]) == 0
    got = read_trec_run(run)
    assert set(got) == {"q0", "q1"} and all(len(v) == 3 for v in got.values())
    # the run equals the API's answer
    r = Retriever.load(out)
    res = r.search(["aspirin fever", "tea and coffee"], k=3)
    for i, qid in enumerate(["q0", "q1"]):
        assert got[qid] == pytest.approx({d: float(sc) for d, sc in zip(res.ids[i], res.scores[i])}, abs=1e-4)
    assert cli_main(["verify", str(out)]) == 0
    (out / "doc_ids.txt").write_text("broken\n")
    assert cli_main(["verify", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert cli_main(["-q", "search", "--index", str(tmp_path / "nope"), "--query", "x"]) == 2

    # --device / --dtype: the index's own encoder (from its manifest) on that device, at that precision
    from retriever.cluster.shards import index_encoder

    (out / "doc_ids.txt").write_text("".join(f"{d['_id']}\n" for d in DOCS))
    assert r.encoder.config.dtype == "bfloat16"  # the checkpoint's default, recorded at build
    enc32 = index_encoder(out, dtype="float32", device="cpu")
    assert enc32.config.dtype == "float32" and enc32.device == "cpu"
    enc32.check_identity(r.encoder_info)  # precision is a runtime setting: the same encoder for the index
    run32 = tmp_path / "run32.trec"
    assert cli_main(["-q", "search", "--index", str(out), "--queries", str(queries), "--k", "3", "--out", str(run32),
                     "--dtype", "float32", "--device", "cpu"]) == 0
    res32 = Retriever.load(out, encoder=enc32).search(["aspirin fever", "tea and coffee"], k=3)
    got32 = read_trec_run(run32)
    for i, qid in enumerate(["q0", "q1"]):
        assert got32[qid] == pytest.approx({d: float(sc) for d, sc in zip(res32.ids[i], res32.scores[i])}, abs=1e-4)
    capsys.readouterr()
    assert cli_main(["-q", "search", "--index", str(out), "--query", "x", "--device", "no-such-device"]) == 2
    assert "device must be a torch device" in capsys.readouterr().err
    embeddings_index = tmp_path / "emb"
    Retriever.build([np.eye(4, 8, dtype=np.float32)], config=CFG, path=embeddings_index, show_progress=False)
    with pytest.raises(ValueError, match="without an encoder"):
        index_encoder(embeddings_index, device="cpu")


def test_word_pooling_build_and_add_agree_with_the_encoder(tmp_path, encoder):
    """Whole-word pooling: build and add store the encoder's word-pooled vectors, with any codec."""
    from dataclasses import replace

    from retriever.core.beir import doc_text

    texts = [doc_text(d) for d in DOCS]
    pooled = encoder.encode_documents(texts, word_pooling=True)
    plain = encoder.encode_documents(texts)
    assert np.all(pooled.lengths <= plain.lengths) and pooled.lengths.sum() < plain.lengths.sum()
    cfg = replace(CFG, word_pooling=True, codec="float16")
    r = Retriever.build(DOCS[:3], encoder=encoder, config=cfg, show_progress=False)
    r.add(DOCS[3:])
    np.testing.assert_array_equal(r.doc_offsets, pooled.offsets)
    np.testing.assert_array_equal(np.asarray(r.tokens), pooled.vectors.astype(np.float16))
    r.save(tmp_path / "w")
    loaded = Retriever.load(tmp_path / "w", verify=True)
    assert loaded.config.word_pooling
    q = ["blood pressure"]
    np.testing.assert_array_equal(loaded.search(q, k=3).rows, r.search(q, k=3).rows)
    r8 = Retriever.build(DOCS, encoder=encoder, config=replace(cfg, codec="int8", pool_factor=2), show_progress=False)
    assert r8.n_tokens < pooled.vectors.shape[0]


def test_streamed_build_logs_truncation_once(encoder, caplog, monkeypatch):
    monkeypatch.setattr(builder_mod, "_TEXT_BATCH", 2)  # three encoding steps for six documents
    long = " ".join(["word"] * 600)  # longer than document_length: truncated
    docs = [{"_id": f"t{i}", "title": "", "text": long if i % 2 else "short text"} for i in range(6)]
    with caplog.at_level("INFO", logger="retriever.encoders.colbert"):
        Retriever.build(docs, encoder=encoder, config=CFG, show_progress=False)
    lines = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert lines == [f"3 of 6 documents truncated to document_length={encoder.config.document_length} tokens"]
    with caplog.at_level("INFO", logger="retriever.encoders.colbert"):
        caplog.clear()
        encoder.encode_documents([long, long])  # outside a build: one line per call, as before
    assert [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()] == [
        f"2 of 2 documents truncated to document_length={encoder.config.document_length} tokens"]

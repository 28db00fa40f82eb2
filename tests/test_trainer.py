"""Tests for retriever.training.trainer and retriever.training.pairs (tiny checkpoints; the real runs are in bench/training/train.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from make_trained_fixture import PAIRS as FIXTURE_PAIRS
from retriever.training import trainer as T
from retriever.cli.main import main as cli_main
from retriever.encoders.colbert import ColBERTEncoder
from retriever.training.pairs import TrainingData, beir_pairs, inverse_cloze_pairs, jsonl_pairs
from retriever.training.trainer import TrainConfig, train, write_checkpoint

HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures" / "encoder"
TRAINED = HERE / "fixtures" / "trained"
BASE = FIX / "bert_pylate"
TEXTS = json.loads((FIX / "texts.json").read_text())

PAIRS = FIXTURE_PAIRS + [  # the pairs the parity fixture was trained on, and two more
    ("human brain cells", "Human brain cells in mice."),
    ("gene test results", "The results of the gene test."),
]
FAST = TrainConfig(epochs=3, batch_size=4, negatives=2, mine_depth=4, lr=0.05, patience=3, metric="mrr@10")


def tiny_data(val: int = 2) -> TrainingData:
    n = len(PAIRS)
    return TrainingData(tuple(f"d{i}" for i in range(n)), tuple(d for _, d in PAIRS), tuple(q for q, _ in PAIRS),
                        tuple((i,) for i in range(n)), ((),) * n, ((),) * n,
                        (False,) * (n - val) + (True,) * val, "test pairs")


def load(path, **kw) -> ColBERTEncoder:
    kw.setdefault("dtype", "float32")
    return ColBERTEncoder.from_pretrained(str(path), **kw)


def write_beir(root: Path, docs: dict, queries: dict, qrels: dict) -> Path:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as fh:
        for d, (title, text) in docs.items():
            fh.write(json.dumps({"_id": d, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for q, text in queries.items():
            fh.write(json.dumps({"_id": q, "text": text}) + "\n")
    for split, rows in qrels.items():
        with open(root / "qrels" / f"{split}.tsv", "w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for q, d, g in rows:
                fh.write(f"{q}\t{d}\t{g}\n")
    return root


# -- the loss against a plain reference ----------------------------------------------------------
def test_maxsim_matches_numpy_reference(monkeypatch):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 5, 8)).astype(np.float32)
    d = rng.standard_normal((7, 9, 8)).astype(np.float32)
    qm = rng.random((3, 5)) < 0.7
    dm = rng.random((7, 9)) < 0.6
    qm[:, 0] = dm[:, 0] = True
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    want = np.zeros((3, 7))
    for a in range(3):
        for b in range(7):
            s = q[a][qm[a]] @ d[b][dm[b]].T
            want[a, b] = s.max(axis=1).sum()
    monkeypatch.setattr(T, "_SIM_ELEMENTS", 100)  # several document chunks
    got = T._maxsim(torch.from_numpy(q), torch.from_numpy(qm).float(), torch.from_numpy(d), torch.from_numpy(dm))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("full", [False, True])
def test_length_grouped_scores_equal_one_padded_batch(full):
    enc = load(BASE)
    docs = T._Features(enc, tuple(TEXTS["documents"]), False, full, False)
    queries = T._Features(enc, tuple(TEXTS["queries"][:3]), True, full, False)
    head = torch.nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        head.weight.copy_(enc.head_layers[0].weight)
        qv, qm = queries.batch([0, 1, 2], head, "cpu")
        cols = [4, 0, 8, 2, 2, 7, 5]
        dv, dm = docs.batch(cols, head, "cpu")
        want = T._maxsim(qv, qm, dv, dm)
        got = T._batch_scores(qv, qm, docs, cols, head, "cpu", groups=3)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # and both are MaxSim over what the encoder returns
    q = enc.encode_queries(TEXTS["queries"][:3])
    d = enc.encode_documents(TEXTS["documents"])
    ref = np.array([[(q[a] @ d[c].T).max(axis=1).sum() for c in cols] for a in range(3)])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_hidden_features_through_the_head_are_the_encoder_output():
    enc = load(BASE)
    w = enc.head_layers[0].weight.numpy()
    for is_query, fn in ((True, enc.encode_queries), (False, enc.encode_documents)):
        h = enc.encode_hidden(TEXTS["queries" if is_query else "documents"], is_query=is_query)
        want = fn(TEXTS["queries" if is_query else "documents"])
        np.testing.assert_array_equal(h.offsets, want.offsets)
        p = h.vectors @ w.T
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        np.testing.assert_allclose(p, want.vectors, atol=1e-5)


def test_model_inputs_are_what_the_encoder_feeds_the_backbone():
    enc = load(BASE)
    ids, att, keep = enc.model_inputs(TEXTS["documents"], is_query=False)
    with torch.inference_mode():
        h = enc.backbone(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(att)).last_hidden_state
        v = torch.nn.functional.normalize(enc.head_layers[0](h)[torch.from_numpy(keep)], dim=-1).numpy()
    np.testing.assert_allclose(v, enc.encode_documents(TEXTS["documents"]).vectors, atol=1e-5)


# -- training -------------------------------------------------------------------------------------
def test_contrastive_loss_matches_numpy_reference():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((3, 7)).astype(np.float32)
    banned = np.zeros((3, 7), dtype=bool)
    banned[0, 4] = banned[2, [0, 5]] = True
    own = [[0], [1, 3, 6], [2, 4]]
    want = []
    for a in range(3):
        allowed = ~banned[a]
        want.append(np.log(np.exp(scores[a, allowed]).sum()) - np.log(np.exp(scores[a, own[a]]).sum()))
    got = T._contrastive_loss(torch.from_numpy(scores), banned, own)
    assert float(got) == pytest.approx(float(np.mean(want)), rel=1e-5)
    # one positive per query at column a: the cross-entropy of in-batch-negative training
    one = T._contrastive_loss(torch.from_numpy(scores), np.zeros((3, 7), dtype=bool), [[0], [1], [2]])
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(scores), torch.arange(3))
    assert float(one) == pytest.approx(float(ce), rel=1e-6)
    with pytest.raises(ValueError, match="banned"):
        T._contrastive_loss(torch.from_numpy(scores), banned, [[4], [1], [2]])


def test_several_positives_per_query_train_reproducibly(tmp_path):
    n = len(PAIRS)
    data = TrainingData(tuple(f"d{i}" for i in range(n)), tuple(d for _, d in PAIRS), tuple(q for q, _ in PAIRS),
                        tuple((i, (i + 1) % n, (i + 2) % n) for i in range(n)), ((),) * n, ((),) * n,
                        (False,) * (n - 2) + (True,) * 2, "test pairs, three positives each")
    cfg = TrainConfig(**{**FAST.to_dict(), "positives": 2})
    a = train(str(BASE), data, tmp_path / "a", cfg, show_progress=False)
    b = train(str(BASE), data, tmp_path / "b", cfg, show_progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.history[-1]["loss"] < a.history[0]["loss"]
    one = train(str(BASE), data, tmp_path / "c", FAST, show_progress=False)
    assert [h["loss"] for h in one.history] != [h["loss"] for h in a.history]


def test_head_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ck"
    r = train(str(BASE), tiny_data(), out, FAST, show_progress=False)
    assert r.path == out and [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.history[-1]["loss"] < r.history[0]["loss"]
    rec = json.loads((out / "training.json").read_text())
    assert rec["best_epoch"] == r.best_epoch and rec["config"] == FAST.to_dict()
    w = load_file(str(out / "1_Dense" / "model.safetensors"))["linear.weight"]
    base_w = load(BASE).head_layers[0].weight.numpy()
    assert w.shape == base_w.shape
    assert (r.best_epoch == 0) == np.array_equal(w, base_w)
    # the written checkpoint encodes as the base backbone followed by the trained head
    enc = load(out)
    h = load(BASE).encode_hidden(TEXTS["documents"], is_query=False)
    p = h.vectors @ w.T
    np.testing.assert_allclose(p / np.linalg.norm(p, axis=1, keepdims=True),
                               enc.encode_documents(TEXTS["documents"]).vectors, atol=1e-5)
    assert enc.config == load(BASE).config.__class__(**{**load(BASE).config.to_dict(), "model": str(out)})


def test_fusion_is_chosen_for_the_trained_model_and_used_by_its_indexes(tmp_path):
    from retriever.hybrid.fusion import FusionConfig, HybridConfig
    from retriever.index.config import IndexConfig
    from retriever.index.retriever import Retriever

    out = tmp_path / "ck"
    train(str(BASE), tiny_data(val=4), out, FAST, show_progress=False)
    rec = json.loads((out / "training.json").read_text())
    fusion = FusionConfig.from_dict(rec["fusion"])
    assert fusion.weights[0] == 1.0 and set(fusion.weights[1:]) <= set(T._FUSION_GRID)
    v = rec["fusion_validation"]
    assert v["chosen"] >= max(v["maxsim"], v["equal_weights"])
    # MaxSim alone through the fusion path ranks as the exact MaxSim validation does
    enc = load(out)
    q = enc.encode_queries(list(tiny_data().queries))
    d = enc.encode_documents(list(tiny_data().doc_texts))
    val_q = np.arange(len(PAIRS) - 4, len(PAIRS))
    assert v["maxsim"] == pytest.approx(T._validate(tiny_data(val=4), q, d, val_q, "mrr@10"), abs=1e-9)
    assert enc.recommended_fusion == rec["fusion"]
    r = Retriever.build(list(tiny_data().doc_texts), encoder=enc, show_progress=False)
    assert r.config.hybrid.fusion == fusion
    r = Retriever.build(list(tiny_data().doc_texts), encoder=enc, show_progress=False,
                        config=IndexConfig(hybrid=HybridConfig(signals=("bm25",))))
    assert r.config.hybrid.fusion == FusionConfig()  # an explicit hybrid config is the user's choice
    rec["fusion"] = [1, 2]
    (out / "training.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="'fusion' must be an object"):
        load(out).recommended_fusion
    rec["fusion"] = {"weights": [1, 0]}
    (out / "training.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="training.json: field 'fusion': FusionConfig.weights"):
        load(out).recommended_fusion


def test_training_is_reproducible(tmp_path):
    a = train(str(BASE), tiny_data(), tmp_path / "a", FAST, show_progress=False)
    b = train(str(BASE), tiny_data(), tmp_path / "b", FAST, show_progress=False)
    assert a.history == [{**h, "seconds": g["seconds"]} for h, g in zip(b.history, a.history)]
    wa = load_file(str(tmp_path / "a" / "1_Dense" / "model.safetensors"))["linear.weight"]
    wb = load_file(str(tmp_path / "b" / "1_Dense" / "model.safetensors"))["linear.weight"]
    np.testing.assert_array_equal(wa, wb)


def test_seed_time_limit_and_no_validation(tmp_path):
    a = train(str(BASE), tiny_data(), tmp_path / "a", FAST, show_progress=False)
    other = train(str(BASE), tiny_data(), tmp_path / "b", TrainConfig(**{**FAST.to_dict(), "seed": 1}),
                  show_progress=False)
    wa, wb = (load_file(str(tmp_path / x / "1_Dense" / "model.safetensors"))["linear.weight"] for x in "ab")
    assert not np.array_equal(wa, wb) and a.history != other.history
    r = train(str(BASE), tiny_data(), tmp_path / "c", TrainConfig(**{**FAST.to_dict(), "max_minutes": 1e-9}),
              show_progress=False)
    assert len(r.history) == 1  # stopped after the first step, best weights so far written
    r = train(str(BASE), tiny_data(val=0), tmp_path / "d", FAST, show_progress=False)
    rec = json.loads((tmp_path / "d" / "training.json").read_text())  # strict JSON: no NaN
    assert rec["base_metric"] is None and rec["history"][0]["metric"] is None and "fusion" not in rec
    assert r.best_epoch == len(r.history)


def test_a_base_without_head_gets_a_new_one(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4, negatives=1, mine_depth=2, dim=8, metric="mrr@10")
    # a plain backbone: the PyLate fixture without its Dense module
    plain = tmp_path / "plain"
    shutil.copytree(BASE, plain)
    shutil.rmtree(plain / "1_Dense")
    (plain / "modules.json").unlink()
    (plain / "config_sentence_transformers.json").unlink()
    settings = {"query_length": 16, "document_length": 24}  # the tiny backbone reads 64 positions at most
    with pytest.raises(ValueError, match="max_position_embeddings"):
        train(str(plain), tiny_data(), tmp_path / "ck", cfg, show_progress=False)
    r = train(str(plain), tiny_data(), tmp_path / "ck", cfg, encoder_settings=settings, show_progress=False)
    enc = load(r.path)
    assert enc.dim == 8 and enc.layout == "pylate"
    assert (enc.config.query_length, enc.config.document_length) == (16, 24)


def test_full_training_changes_the_backbone(tmp_path):
    cfg = TrainConfig(full=True, epochs=2, batch_size=4, negatives=1, mine_depth=3, lr=0.05, backbone_lr=1e-2,
                      metric="mrr@10", patience=2)
    r = train(str(BASE), tiny_data(val=0), tmp_path / "ck", cfg, show_progress=False)
    assert r.best_epoch == 2  # without validation queries the last epoch is kept
    before = load_file(str(BASE / "model.safetensors"))
    after = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert sorted(before) == sorted(after)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert r.history[-1]["loss"] < r.history[0]["loss"]
    # the saved model is the one validated: encoding it reproduces what training measured
    enc = load(tmp_path / "ck")
    assert enc.encode_documents(TEXTS["documents"]).vectors.shape[1] == 16


def test_bad_settings_are_named():
    for kw, field in [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"temperature": float("nan")}, "temperature"),
                      ({"metric": "nope@3"}, "nope"), ({"negatives": -1}, "negatives"),
                      ({"positives": 0}, "positives"),
                      ({"max_minutes": 0}, "max_minutes"), ({"full": 1}, "full"), ({"tune_fusion": None}, "tune_fusion"),
                      ({"metric": "recall@1000"}, "recall@1000")]:
        with pytest.raises(ValueError, match=field):
            TrainConfig(**kw)
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epoch": 3})
    assert TrainConfig.from_dict(FAST.to_dict()) == FAST


def test_existing_output_is_refused_or_replaced_whole(tmp_path, monkeypatch):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        train(str(BASE), tiny_data(), out, FAST, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    enc = load(BASE)
    w = enc.head_layers[0].weight.numpy()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(out, enc, w, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left behind
    monkeypatch.undo()
    write_checkpoint(out, enc, w, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "1_Dense" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="head must be"):
        write_checkpoint(tmp_path / "x", enc, w.T)


# -- parity with PyLate on a checkpoint the trainer wrote ------------------------------------------
def test_pylate_encodes_a_trained_checkpoint_as_we_do():
    enc = load(TRAINED / "bert_trained", long_queries="truncate")  # PyLate cuts long queries
    for side in ("queries", "documents"):
        fn = enc.encode_queries if side == "queries" else enc.encode_documents
        got = fn(TEXTS[side])
        np.testing.assert_array_equal(got.offsets, np.load(TRAINED / "expected" / f"{side}_offsets.npy"))
        assert np.abs(got.vectors - np.load(TRAINED / "expected" / f"{side}_vectors.npy")).max() < 1e-5


def test_trainer_writes_the_layout_of_the_parity_fixture(tmp_path):
    train(str(BASE), tiny_data(), tmp_path / "ck", FAST, show_progress=False)

    def layout(root: Path) -> dict:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        js = {f: json.loads((root / f).read_text()) for f in files
              if f.endswith(".json") and f not in ("training.json", "tokenizer.json")}
        for d in js.values():  # written by the installed transformers, not by the trainer
            if isinstance(d, dict):
                d.pop("transformers_version", None)
        return {"files": files, "json": js}

    assert layout(tmp_path / "ck") == layout(TRAINED / "bert_trained")


# -- training data ----------------------------------------------------------------------------------
def test_beir_pairs(tmp_path):
    root = write_beir(tmp_path / "c", {"a": ("T", "alpha"), "b": ("", "beta"), "c": ("", "gamma")},
                      {"q1": "one", "q2": "two", "q3": "three", "q4": "four"},
                      {"train": [("q1", "a", 1), ("q1", "b", 2), ("q2", "c", 0), ("q3", "c", 1)],
                       "dev": [("q4", "a", 1)]})
    d = beir_pairs(root, "train", val_fraction=0.0)
    assert d.doc_ids == ("a", "b", "c") and d.doc_texts == ("T alpha", "beta", "gamma")
    assert d.queries == ("one", "three") and d.positives == ((0, 1), (2,))  # grade 0 is not a positive
    assert d.grades == ((1, 2), (1,)) and d.grade_of(0) == {0: 1, 1: 2}
    assert d.val == (False, False)
    d = beir_pairs(root, "train", val_split="dev")
    assert d.queries == ("one", "three", "four") and d.val == (False, False, True)
    with pytest.raises(FileNotFoundError, match="val_split='test'"):
        beir_pairs(root, "train", val_split="test")
    with pytest.raises(ValueError, match="val_split='train' is the training split"):
        beir_pairs(root, "train", val_split="train")
    with open(root / "qrels" / "dev.tsv", "a") as fh:
        fh.write("q1\tc\t1\n")  # judged in both splits: stays a training query only
    assert beir_pairs(root, "train", val_split="dev").queries == ("one", "three", "four")
    with pytest.raises(ValueError, match="val_fraction"):
        beir_pairs(root, "train", val_fraction=1.0)


def test_jsonl_pairs_and_their_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"query": "q1", "positive": "doc a", "negatives": ["doc b"]}\n\n'
                 '{"query": "q2", "positive": ["doc b", "doc c"]}\n')
    d = jsonl_pairs(f, val_fraction=0.0)
    assert d.doc_texts == ("doc a", "doc b", "doc c") and d.positives == ((0,), (1, 2)) and d.negatives == ((1,), ())
    # a query repeated on several lines is one query: its positives are never its negatives
    f.write_text('{"query": "q1", "positive": "doc a", "negatives": ["doc b"]}\n'
                 '{"query": "q1", "positive": "doc b", "negatives": ["doc c"]}\n'
                 '{"query": "q2", "positive": "doc c"}\n')
    d = jsonl_pairs(f, val_fraction=0.0)
    assert d.queries == ("q1", "q2") and d.positives == ((0, 1), (2,)) and d.negatives == ((2,), ())
    f.write_text('{"query": "q1", "positive": "doc a", "negatives": ["doc b"]}\n'
                 '{"query": "q2", "positive": ["doc b", "doc c"]}\n')
    corpus = write_beir(tmp_path / "c", {"x": ("", "doc a"), "y": ("", "other")}, {}, {})
    d = jsonl_pairs(f, corpus=corpus, val_fraction=0.0)
    assert d.doc_ids[:2] == ("x", "y") and d.positives[0] == (0,)  # a pair's text that is a corpus document
    for line, msg in [('{"query": "", "positive": "a"}', "query"), ('{"query": "q", "positive": []}', "positive"),
                      ('{"query": "q", "positive": "a", "negatives": "b"}', "negatives"), ("[1]", "JSON object"),
                      ("{bad", "not valid JSON")]:
        f.write_text('{"query": "ok", "positive": "fine"}\n' + line + "\n")
        with pytest.raises(ValueError, match=f"p.jsonl:2: .*{msg}"):
            jsonl_pairs(f)


def test_inverse_cloze_pairs(tmp_path):
    docs = {f"d{i}": (f"Title number {i}", f"First sentence of document {i} is here. Second sentence of document "
                      f"{i} follows now. Third one ends it.") for i in range(20)}
    docs["short"] = ("", "one short text")
    root = write_beir(tmp_path / "c", docs, {}, {})
    d = inverse_cloze_pairs(root, max_pairs=8, seed=1)
    again = inverse_cloze_pairs(root, max_pairs=8, seed=1)
    assert d == again and len(d.queries) == 8
    for q, (p,), (src,) in zip(d.queries, d.positives, d.exclude):
        assert q not in d.doc_texts[p] and q in d.doc_texts[src]
        assert d.doc_ids[p] == d.doc_ids[src] + "#cloze"
        assert d.doc_texts[p].startswith("Title number")
    capped = inverse_cloze_pairs(root, max_pairs=4, seed=1, max_docs=6)
    assert len(capped.doc_texts) == 6 + 4
    with pytest.raises(ValueError, match="no document"):
        inverse_cloze_pairs(write_beir(tmp_path / "e", {"a": ("", "tiny")}, {}, {}))
    with pytest.raises(ValueError, match="max_docs must be a positive int"):
        inverse_cloze_pairs(root, max_docs=0)


def test_training_data_checks():
    with pytest.raises(ValueError, match="positives\\[0\\] is empty"):
        TrainingData(("a",), ("x",), ("q",), ((),), ((),), ((),), (False,), "t")
    with pytest.raises(ValueError, match="positives\\[0\\] refers"):
        TrainingData(("a",), ("x",), ("q",), ((3,),), ((),), ((),), (False,), "t")
    with pytest.raises(ValueError, match="nothing is left to train"):
        TrainingData(("a",), ("x",), ("q",), ((0,),), ((),), ((),), (True,), "t")
    ok = (("a", "b"), ("x", "y"), ("q",), ((0, 1),), ((),), ((),), (False,), "t")
    assert TrainingData(*ok).grade_of(0) == {0: 1, 1: 1}
    for grades, msg in [(((1, 2), (1,)), "grades has 2 entries for 1 queries"),
                        (((1,),), "grades\\[0\\] has 1 grades for 2 positives"),
                        (((1, 0),), "grades\\[0\\] must hold ints >= 1"), (((1, True),), "ints >= 1")]:
        with pytest.raises(ValueError, match=msg):
            TrainingData(*ok, grades)


def test_validation_uses_the_grades_as_beir_test_does():
    """Graded nDCG@10 of the validation ranking, against the formula by hand (exp-free gain = grade)."""
    from retriever.training.trainer import _metric_of

    data = TrainingData(("a", "b", "c"), ("x", "y", "z"), ("q0", "q1"), ((0, 2), (1,)), ((), ()), ((), ()),
                        (False, True), "t", ((1, 2), (1,)))
    ranked = np.array([[0, 1, 2], [1, 0, 2]])
    # query 0: grade 1 at rank 1, grade 2 at rank 3; ideal: 2 then 1
    dcg = 1 / np.log2(2) + 2 / np.log2(4)
    ideal = 2 / np.log2(2) + 1 / np.log2(3)
    assert _metric_of(data, np.array([0]), ranked[:1], "ndcg@10") == pytest.approx(dcg / ideal)
    binary = TrainingData(*[getattr(data, f) for f in ("doc_ids", "doc_texts", "queries", "positives", "negatives",
                                                        "exclude", "val", "source")])
    assert _metric_of(binary, np.array([0]), ranked[:1], "ndcg@10") == pytest.approx(
        (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))


# -- command line -----------------------------------------------------------------------------------
def test_cli_train_and_adapt(tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"query": q, "positive": d}) + "\n" for q, d in PAIRS))
    common = ["--model", str(BASE), "--epochs", "1", "--batch-size", "4", "--negatives", "1", "--metric", "mrr@10"]
    assert cli_main(["-q", "train", "--pairs", str(f), "--out", str(tmp_path / "a"), *common]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(tmp_path / "a")
    assert load(tmp_path / "a").dim == 16
    docs = {f"d{i}": ("", f"{d} It was measured in study {i}. The data were used again.") for i, (_, d) in
            enumerate(PAIRS)}
    corpus = write_beir(tmp_path / "c", docs, {}, {})
    assert cli_main(["-q", "adapt", "--corpus", str(corpus), "--out", str(tmp_path / "b"), *common]) == 0
    rec = json.loads((tmp_path / "b" / "training.json").read_text())
    assert "inverse cloze" in rec["data"]
    with pytest.raises(SystemExit):
        cli_main(["-q", "train", "--pairs", str(f), "--beir", str(corpus), "--out", str(tmp_path / "x"), *common])
    assert cli_main(["-q", "train", "--pairs", str(f), "--out", str(tmp_path / "a"), *common]) == 2  # exists
    assert "exists" in capsys.readouterr().err

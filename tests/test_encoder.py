"""Tests for retriever.encoders.colbert on tiny checkpoints (tests/fixtures/encoder, see make_encoder_fixtures.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from retriever.encoders.colbert import (
    PUNCTUATION,
    ColBERTEncoder,
    EncoderConfig,
    inspect_checkpoint,
    resolve_model_path,
)
from retriever.store.tokens import TokenEmbeddings

FIX = Path(__file__).resolve().parent / "fixtures" / "encoder"
TEXTS = json.loads((FIX / "texts.json").read_text())
STANFORD = FIX / "bert_stanford"
BERT_PYLATE = FIX / "bert_pylate"
MODERNBERT_PYLATE = FIX / "modernbert_pylate"
EXPECTED = sorted(p.name for p in (FIX / "expected").iterdir())


def load(path, **kw) -> ColBERTEncoder:
    kw.setdefault("dtype", "float32")
    return ColBERTEncoder.from_pretrained(str(path), **kw)


@pytest.fixture(scope="module")
def stanford() -> ColBERTEncoder:
    return load(STANFORD, long_queries="truncate")  # as Stanford ColBERT encodes queries


@pytest.fixture(scope="module")
def pylate_bert() -> ColBERTEncoder:
    return load(BERT_PYLATE)


def copy_checkpoint(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


# -- configuration ----------------------------------------------------------------------------
def test_config_round_trips_through_json():
    cfg = EncoderConfig(query_prefix="[unused0]", skiplist_words=["a", "b"], do_query_expansion=True)
    assert cfg.skiplist_words == ("a", "b")
    again = EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown EncoderConfig keys \\['colour'\\]"):
        EncoderConfig.from_dict({**EncoderConfig().to_dict(), "colour": "red"})


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"query_length": 0}, "query_length"),
        ({"document_length": 2}, "document_length"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_tokens": 0}, "batch_tokens"),
        ({"dtype": "float16"}, "dtype"),
        ({"query_prefix": ""}, "query_prefix"),
        ({"do_query_expansion": 1}, "do_query_expansion"),
        ({"attend_to_expansion_tokens": True, "do_query_expansion": False}, "attend_to_expansion_tokens"),
        ({"skiplist_words": (1,)}, "skiplist_words"),
        ({"head": ""}, "head"),
        ({"model": ""}, "model"),
        ({"long_queries": "drop"}, "long_queries"),
    ],
)
def test_config_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        EncoderConfig(**kw)


# -- parity with PyLate -----------------------------------------------------------------------
@pytest.mark.parametrize("case", EXPECTED)
@pytest.mark.parametrize("batch_size", [2, 32])
def test_matches_pylate(case, batch_size):
    name = case.split("__")[0]
    settings = json.loads((FIX / "expected" / case / "settings.json").read_text())
    # PyLate cuts long queries at query_length (our default keeps them: long_queries="extend")
    enc = load(FIX / name, batch_size=batch_size, long_queries="truncate", **settings)
    for side in ("queries", "documents"):
        fn = enc.encode_queries if side == "queries" else enc.encode_documents
        got = fn(TEXTS[side])
        want_v = np.load(FIX / "expected" / case / f"{side}_vectors.npy")
        want_o = np.load(FIX / "expected" / case / f"{side}_offsets.npy")
        np.testing.assert_array_equal(got.offsets, want_o, err_msg=f"{case} {side}")
        assert np.abs(got.vectors - want_v).max() < 1e-5, f"{case} {side}"


def test_layouts_are_detected():
    assert inspect_checkpoint(STANFORD).layout == "stanford"
    assert inspect_checkpoint(BERT_PYLATE).layout == "pylate"
    assert inspect_checkpoint(MODERNBERT_PYLATE).layout == "pylate"
    assert [d.name for d in inspect_checkpoint(BERT_PYLATE).dense_dirs] == ["1_Dense"]


def test_pylate_settings_follow_pylate_fallbacks(tmp_path):
    ck = copy_checkpoint(BERT_PYLATE, tmp_path)
    f = ck / "config_sentence_transformers.json"
    cfg = json.loads(f.read_text())
    f.write_text(json.dumps({**cfg, "skiplist_words": [], "do_query_expansion": None, "query_prefix": None,
                             "document_prefix": ""}))
    s = inspect_checkpoint(ck).settings
    assert s["skiplist_words"] == () and s["do_query_expansion"] is True
    assert s["query_prefix"] == "[Q] " and s["document_prefix"] is None
    d = load(ck).encode_documents(["a cell, a gene."])
    assert d.lengths[0] == 8  # [CLS] a cell , a gene . [SEP]: nothing skipped, no marker


def test_modernbert_backbone_is_used():
    enc = load(MODERNBERT_PYLATE)
    assert enc.backbone.config.model_type == "modernbert"
    assert enc.config.query_prefix == "[Q] " and enc.dim == 16


# -- Stanford ColBERT conventions, each checked against an independent reference -------------
def stanford_reference_ids(tok, texts, marker: str, max_length: int, query: bool):
    """ColBERT's QueryTokenizer/DocTokenizer.tensorize: '. ' placeholder replaced by the marker."""
    obj = tok([". " + t for t in texts], padding="max_length" if query else "longest", truncation=True,
              max_length=max_length, return_tensors="pt")
    ids, mask = obj["input_ids"], obj["attention_mask"]
    ids[:, 1] = tok.convert_tokens_to_ids(marker)
    if query:
        ids[ids == tok.pad_token_id] = tok.mask_token_id
    return ids, mask


def stanford_reference(texts, *, query: bool, attend: bool = False):
    """ColBERT.query / ColBERT.doc: bert -> linear -> (doc: skip-list & pad mask) -> normalise."""
    from transformers import AutoModel, AutoTokenizer

    meta = json.loads((STANFORD / "artifact.metadata").read_text())
    tok = AutoTokenizer.from_pretrained(STANFORD)
    bert = AutoModel.from_pretrained(STANFORD, dtype=torch.float32).eval()
    linear = load_file(STANFORD / "model.safetensors")["linear.weight"]
    marker = meta["query_token_id"] if query else meta["doc_token_id"]
    ids, mask = stanford_reference_ids(tok, texts, marker, meta["query_maxlen" if query else "doc_maxlen"], query)
    if query and attend:
        mask[ids == tok.mask_token_id] = 1
    with torch.no_grad():
        h = bert(input_ids=ids, attention_mask=mask).last_hidden_state @ linear.T
    skip = {tok.encode(s, add_special_tokens=False)[0] for s in string.punctuation}
    out = []
    for i in range(len(texts)):
        keep = [True] * ids.shape[1] if query else [t not in skip and t != tok.pad_token_id for t in ids[i].tolist()]
        out.append(torch.nn.functional.normalize(h[i][torch.tensor(keep)], dim=-1))
    return out


def test_stanford_settings_come_from_artifact_metadata(stanford):
    cfg = stanford.config
    assert (cfg.query_length, cfg.document_length) == (16, 24)
    assert (cfg.query_prefix, cfg.document_prefix) == ("[unused0]", "[unused1]")
    assert cfg.do_query_expansion and not cfg.attend_to_expansion_tokens
    assert cfg.skiplist_words == PUNCTUATION
    assert stanford.dim == 12  # the linear projection (no bias) 32 -> 12


def test_stanford_query_ids_marker_and_mask_padding(stanford):
    ids, _ = stanford_reference_ids(stanford.tokenizer, TEXTS["queries"], "[unused0]", 16, query=True)
    got = stanford.tokenize(TEXTS["queries"], is_query=True)
    np.testing.assert_array_equal(np.stack(got), ids.numpy())
    tok = stanford.tokenizer
    assert all(g[0] == tok.cls_token_id and g[1] == tok.convert_tokens_to_ids("[unused0]") for g in got)
    assert list(got[3]) == [tok.cls_token_id, 1, tok.sep_token_id] + [tok.mask_token_id] * 13  # empty query


def test_stanford_document_ids_marker_and_truncation(stanford):
    ids, mask = stanford_reference_ids(stanford.tokenizer, TEXTS["documents"], "[unused1]", 24, query=False)
    got = stanford.tokenize(TEXTS["documents"], is_query=False)
    for g, row, m in zip(got, ids.numpy(), mask.numpy()):
        np.testing.assert_array_equal(g, row[m.astype(bool)])
    assert max(len(g) for g in got) == 24


@pytest.mark.parametrize("attend", [False, True])
def test_stanford_query_embeddings(attend):
    enc = load(STANFORD, attend_to_expansion_tokens=attend, long_queries="truncate")
    got = enc.encode_queries(TEXTS["queries"])
    want = stanford_reference(TEXTS["queries"], query=True, attend=attend)
    assert (got.lengths == 16).all()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


def test_attending_expansion_tokens_changes_the_real_tokens():
    a = load(STANFORD).encode_queries(["what is a cell?"])[0]
    b = load(STANFORD, attend_to_expansion_tokens=True).encode_queries(["what is a cell?"])[0]
    assert np.abs(a[:3] - b[:3]).max() > 1e-3


def test_stanford_document_embeddings_skip_punctuation(stanford):
    got = stanford.encode_documents(TEXTS["documents"])
    want = stanford_reference(TEXTS["documents"], query=False)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)
    ids = stanford.tokenize(TEXTS["documents"], is_query=False)
    punct = set(stanford.tokenizer.convert_tokens_to_ids(list(string.punctuation)))
    np.testing.assert_array_equal(got.lengths, [sum(t not in punct for t in s) for s in ids])


def test_rows_are_unit_norm_float32(stanford):
    for te in (stanford.encode_queries(TEXTS["queries"]), stanford.encode_documents(TEXTS["documents"])):
        assert isinstance(te, TokenEmbeddings) and te.vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(te.vectors, axis=1), 1.0, atol=1e-5)


# -- behaviour ---------------------------------------------------------------------------------
def test_empty_text_is_encoded_as_special_tokens(stanford):
    q = stanford.encode_queries(["", "   "])
    d = stanford.encode_documents(["", "   ", "...!!!"])
    assert list(q.lengths) == [16, 16]
    assert list(d.lengths) == [3, 3, 3]  # [CLS] [D] [SEP]; the punctuation is skipped
    np.testing.assert_array_equal(d[0], d[1])  # whitespace is stripped
    assert np.abs(d[0] - d[2]).max() > 1e-3  # the kept specials did attend to the punctuation


def test_a_document_is_never_empty(tmp_path):
    enc = load(STANFORD, skiplist_words=PUNCTUATION + ("[CLS]", "[SEP]", "[unused1]"))
    d = enc.encode_documents(["", "...", "a cell"])
    assert list(d.lengths) == [1, 1, 2]


def test_output_follows_input_order_and_is_batch_invariant(pylate_bert):
    texts = TEXTS["documents"]
    batch = pylate_bert.encode_documents(texts, batch_size=3)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(batch[i], pylate_bert.encode_documents([t])[0], atol=1e-5)
    q = pylate_bert.encode_queries(TEXTS["queries"][::-1], batch_size=2)
    np.testing.assert_allclose(q[0], pylate_bert.encode_queries([TEXTS["queries"][-1]])[0], atol=1e-5)


@pytest.mark.parametrize("expand", [False, True])
def test_batches_respect_both_limits_and_cover_every_row_once(expand):
    from retriever.encoders.colbert import _WIDTH_STEP, _batches, _padded_width

    rng = np.random.default_rng(3)
    max_len = 300
    lengths = list(rng.integers(3, max_len + 1, 500))
    order = np.argsort([-n for n in lengths], kind="stable")
    seen = []
    expand = 32 if expand else 0  # expansion target (query_length)
    for rows in _batches(order, lengths, 32, 2048, max_len, expand):
        width = _padded_width(lengths[rows[0]], max_len, expand)
        assert all(lengths[r] <= width <= max_len for r in rows)
        assert len(rows) <= 32 and (len(rows) * width <= 2048 or len(rows) == 1)
        if expand:
            assert width == max(expand, lengths[rows[0]])
        else:
            assert width % _WIDTH_STEP == 0 or width == max_len
        seen.extend(rows)
    assert sorted(seen) == list(range(500))
    # one row wider than the token budget still gets a batch of its own
    assert [list(b) for b in _batches(np.array([1, 0]), [5, 9], 8, 4, 16, False)] == [[1], [0]]


def test_output_does_not_depend_on_batching(pylate_bert):
    texts = TEXTS["documents"] * 3
    ref = pylate_bert.encode_documents(texts, batch_size=1)
    small = ColBERTEncoder.from_config(dataclasses.replace(pylate_bert.config, batch_tokens=20))
    got = small.encode_documents(texts)
    np.testing.assert_array_equal(got.offsets, ref.offsets)
    np.testing.assert_allclose(got.vectors, ref.vectors, atol=1e-5)


def test_query_without_expansion_has_one_vector_per_token(pylate_bert):
    enc = load(BERT_PYLATE, do_query_expansion=False, long_queries="truncate")
    got = enc.encode_queries(TEXTS["queries"])
    np.testing.assert_array_equal(got.lengths, [len(s) for s in enc.tokenize(TEXTS["queries"], is_query=True)])
    assert got.lengths[3] == 3 and got.lengths.max() == 16  # [CLS] [Q] [SEP]; truncated at query_length


@pytest.mark.parametrize("expand, attend", [(False, False), (True, False), (True, True)])
def test_long_queries_extend_to_document_length_and_encode_as_alone(expand, attend):
    """long_queries="extend" (default): a query past query_length keeps its tokens up to
    document_length, with no expansion tokens added; short queries are unchanged, whatever
    their batch holds."""
    kw = dict(do_query_expansion=expand, attend_to_expansion_tokens=attend)
    ext, cut = load(BERT_PYLATE, **kw), load(BERT_PYLATE, long_queries="truncate", **kw)
    long_q = " ".join(["vitamin"] * 40)  # 40 text tokens: past query_length=16, within document_length=24
    texts = [TEXTS["queries"][0], long_q, TEXTS["queries"][3]]
    got = ext.encode_queries(texts)
    assert got.lengths[1] == 24 and cut.encode_queries(texts).lengths[1] == 16
    want = [ext.encode_queries([t]) for t in texts]  # alone: no batch neighbours
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.vectors, atol=1e-5)
    for i in (0, 2):  # short queries: as ColBERT encodes them
        np.testing.assert_allclose(got[i], cut.encode_queries([texts[i]]).vectors, atol=1e-5)
    assert ext.tokenize([long_q], is_query=True)[0].size == 24


def test_truncation_is_logged(pylate_bert, caplog):
    with caplog.at_level(logging.INFO, logger="retriever.encoders.colbert"):
        # [CLS] [D] ... [SEP]: room for 21 text tokens
        pylate_bert.encode_documents(["a cell", " ".join(["cell"] * 100), " ".join(["gene"] * 21),
                                      " ".join(["gene"] * 22)])
    assert "2 of 4 documents truncated to document_length=24 tokens" in caplog.text


def test_non_string_input_names_the_position(pylate_bert):
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got int"):
        pylate_bert.encode_documents(["a", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] must be str, got NoneType"):
        pylate_bert.encode_queries([None])
    with pytest.raises(TypeError, match="texts must be a sequence of str"):
        pylate_bert.encode_queries(5)


def test_single_string_is_a_batch_of_one(pylate_bert):
    one = pylate_bert.encode_queries("what is a cell?")
    assert len(one) == 1
    np.testing.assert_array_equal(one.vectors, pylate_bert.encode_queries(["what is a cell?"]).vectors)


def test_empty_batch(pylate_bert):
    te = pylate_bert.encode_documents([])
    assert len(te) == 0 and te.vectors.shape == (0, 16)


def test_bfloat16_autocast_is_close_to_float32(pylate_bert):
    bf = load(BERT_PYLATE, dtype="bfloat16").encode_documents(TEXTS["documents"])
    fp = pylate_bert.encode_documents(TEXTS["documents"])
    np.testing.assert_array_equal(bf.offsets, fp.offsets)
    assert bf.vectors.dtype == np.float32
    assert (bf.vectors * fp.vectors).sum(1).min() > 0.99


def test_progress_bar(pylate_bert, capsys):
    pylate_bert.encode_documents(TEXTS["documents"], show_progress=True)
    assert "encoding documents" in capsys.readouterr().err


def test_tokenize_aligns_with_vectors_without_skiplist():
    enc = load(BERT_PYLATE, skiplist_words=())
    ids = enc.tokenize(TEXTS["documents"], is_query=False)
    np.testing.assert_array_equal(enc.encode_documents(TEXTS["documents"]).lengths, [len(i) for i in ids])


# -- heads, layouts, identity -------------------------------------------------------------------
def test_plain_backbone_and_npy_head(tmp_path):
    plain = copy_checkpoint(STANFORD, tmp_path)
    (plain / "artifact.metadata").unlink()
    cfg = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    assert inspect_checkpoint(plain).layout == "plain"
    ident = load(plain, document_length=24)
    assert ident.dim == 32 and ident.config.query_prefix is None and not ident.config.do_query_expansion
    w = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    np.save(tmp_path / "head.npy", w)
    headed = load(plain, document_length=24, head=str(tmp_path / "head.npy"))
    assert headed.dim == 8
    x = ident.encode_documents(TEXTS["documents"]).vectors @ w.T
    np.testing.assert_allclose(headed.encode_documents(TEXTS["documents"]).vectors,
                               x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-5)
    assert headed.identity()["weights_sha256"] != ident.identity()["weights_sha256"]


def test_head_identity_drops_the_checkpoint_projection():
    assert load(BERT_PYLATE, head="identity").dim == 32


def test_sentence_transformers_single_vector_model_is_plain(tmp_path):
    st = copy_checkpoint(BERT_PYLATE, tmp_path)
    shutil.rmtree(st / "1_Dense")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    info = inspect_checkpoint(st)
    assert info.layout == "plain" and info.dense_dirs == ()
    assert load(st, document_length=24).dim == 32


def test_identity_and_compatibility(pylate_bert):
    ident = pylate_bert.identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["layout"] == "pylate" and ident["dim"] == 16 and len(ident["weights_sha256"]) == 64
    pylate_bert.check_identity(ident)
    again = ColBERTEncoder.from_config(EncoderConfig.from_dict(ident["config"]))
    assert again.identity() == ident
    load(BERT_PYLATE, dtype="bfloat16", batch_size=7, batch_tokens=40).check_identity(ident)  # runtime knobs only
    with pytest.raises(ValueError, match="config.document_length: 24 != 20"):
        load(BERT_PYLATE, document_length=20).check_identity(ident)
    with pytest.raises(ValueError, match="weights_sha256"):
        load(MODERNBERT_PYLATE).check_identity(ident)


def test_from_config_uses_config_as_given(caplog):
    cfg = EncoderConfig(model=str(BERT_PYLATE), query_length=16, document_length=24, dtype="float32")
    with caplog.at_level(logging.WARNING, logger="retriever.encoders.colbert"):
        enc = ColBERTEncoder.from_config(cfg)
    assert enc.config == cfg and enc.config.query_prefix is None
    assert "differs from what" in caplog.text and "query_prefix" in caplog.text


def test_unknown_override_is_rejected():
    with pytest.raises(TypeError, match="unknown encoder settings \\['query_len'\\]"):
        load(BERT_PYLATE, query_len=8)


# -- bad checkpoints ----------------------------------------------------------------------------
def test_missing_folder_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load(tmp_path)


def test_missing_weights(tmp_path):
    ck = copy_checkpoint(BERT_PYLATE, tmp_path)
    (ck / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"{ck}: no weights file"):
        load(ck)
    ck2 = copy_checkpoint(STANFORD, tmp_path / "b")
    (ck2 / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load(ck2)


def test_missing_dense_weights(tmp_path):
    ck = copy_checkpoint(BERT_PYLATE, tmp_path)
    (ck / "1_Dense" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="1_Dense: no weights file"):
        load(ck)


def test_dense_input_dim_must_match_hidden_size(tmp_path):
    ck = copy_checkpoint(BERT_PYLATE, tmp_path)
    cfg_file = ck / "1_Dense" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "in_features": 64}))
    with pytest.raises(ValueError, match=r"1_Dense/config.json: in_features=64 but its input .*hidden_size.* 32"):
        load(ck)


def test_dense_weight_shape_must_match_its_config(tmp_path):
    ck = copy_checkpoint(BERT_PYLATE, tmp_path)
    save_file({"linear.weight": torch.zeros(16, 20)}, ck / "1_Dense" / "model.safetensors")
    with pytest.raises(ValueError, match=r"linear.weight has shape \(16, 20\), expected \(16, 32\)"):
        load(ck)


def test_stanford_projection_must_match_hidden_size(tmp_path):
    ck = copy_checkpoint(STANFORD, tmp_path)
    state = load_file(ck / "model.safetensors")
    state["linear.weight"] = torch.zeros(12, 20)
    save_file(state, ck / "model.safetensors")
    with pytest.raises(ValueError, match=r"linear.weight has shape \(12, 20\), but hidden_size=32"):
        load(ck)
    del state["linear.weight"]
    save_file(state, ck / "model.safetensors")
    with pytest.raises(ValueError, match="no 'linear.weight'"):
        load(ck)


def test_backbone_weights_must_be_complete(tmp_path):
    ck = copy_checkpoint(BERT_PYLATE, tmp_path)
    state = load_file(ck / "model.safetensors")
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, ck / "model.safetensors")
    with pytest.raises(ValueError, match="weights missing for .* backbone tensors"):
        load(ck)


def test_decoder_models_are_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="config.json: .*not an encoder-only model"):
        load(tmp_path)


def test_malformed_json_names_the_file(tmp_path):
    ck = copy_checkpoint(STANFORD, tmp_path)
    (ck / "artifact.metadata").write_text("{not json")
    with pytest.raises(ValueError, match="artifact.metadata: not valid JSON"):
        load(ck)


def test_unknown_marker_and_lengths_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="query_prefix='\\[NOPE\\]' is not a token"):
        load(BERT_PYLATE, query_prefix="[NOPE]")
    with pytest.raises(ValueError, match="document_length=100 exceeds the model's max_position_embeddings=64"):
        load(BERT_PYLATE, document_length=100)
    np.save(tmp_path / "h.npy", np.zeros((4, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="input dim 10 differs from the backbone hidden_size 32"):
        load(BERT_PYLATE, head=str(tmp_path / "h.npy"))


def test_model_path_resolution(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path("./no/such/folder")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        resolve_model_path(str(tmp_path / "f"))
    import huggingface_hub

    def offline(**kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="could not be fetched from the Hugging Face Hub"):
        resolve_model_path("some-org/some-model")


# -- the bundled default (real weights) ----------------------------------------------------------
@pytest.mark.slow
def test_bundled_default_model():
    enc = ColBERTEncoder.from_pretrained()
    assert enc.layout == "plain" and enc.config == EncoderConfig() and enc.dim == 128
    docs = ["Vitamin D deficiency is linked to cancer risk.", "The mitochondria is the powerhouse of the cell."]
    d = enc.encode_documents(docs)
    q = enc.encode_queries(["does vitamin d affect cancer?"])
    assert d.dim == enc.dim == q.dim
    scores = [(q[0] @ d[i].T).max(1).sum() for i in range(2)]
    assert scores[0] > scores[1]
    fp = ColBERTEncoder.from_pretrained(dtype="float32").encode_documents(docs)
    assert (fp.vectors * d.vectors).sum(1).min() > 0.995


def test_shipped_default_head_is_the_documented_random_matrix():
    head = np.load(Path(__file__).resolve().parents[1] / "retriever" / "assets" / "minilm_l6_gauss128.npy")
    assert head.dtype == np.float32 and head.shape == (128, 384)
    np.testing.assert_array_equal(head, np.random.default_rng(0).standard_normal((128, 384)).astype(np.float32))


def test_dense_activation_and_bias_are_applied(tmp_path):
    ck = copy_checkpoint(BERT_PYLATE, tmp_path)
    cfg_file = ck / "1_Dense" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "bias": True, "activation_function": "torch.nn.modules.activation.Tanh"}))
    w = load_file(ck / "1_Dense" / "model.safetensors")["linear.weight"]
    b = torch.linspace(-1, 1, 16)
    save_file({"linear.weight": w, "linear.bias": b}, ck / "1_Dense" / "model.safetensors")
    enc = load(ck)
    ids = torch.from_numpy(enc.tokenize(["a cell and a gene"], is_query=False)[0])[None]
    with torch.no_grad():
        h = enc.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    want = torch.nn.functional.normalize(torch.tanh(h @ w.T + b), dim=-1)
    np.testing.assert_allclose(enc.encode_documents(["a cell and a gene"])[0], want.numpy(), atol=1e-5)
    cfg_file.write_text(json.dumps({**cfg, "activation_function": "os.system"}))
    with pytest.raises(ValueError, match="activation_function 'os.system' is not supported"):
        load(ck)


def test_passage_spans_cover_the_text_within_the_token_budget():
    enc = ColBERTEncoder.from_pretrained()
    text = " ".join(f"word{i} is here, and then." for i in range(300))
    spans = enc.passage_spans([text, "a short text", ""], 40, 8)
    long, short, empty = spans
    assert short == [(0, len("a short text"))] and empty == [(0, 0)]
    assert len(long) > 5 and long[0][0] == 0 and long[-1][1] == len(text)
    for (a0, b0), (a1, b1) in zip(long, long[1:]):
        assert a0 < a1 < b0 <= b1  # windows advance and overlap
    ids = enc.tokenize([text[a:b] for a, b in long], is_query=False)
    extra = enc.config.document_length - enc.document_budget  # [CLS], [D] marker, [SEP]
    assert max(len(x) for x in ids) <= 40 + extra
    # Overlapping windows hold at least every token of the text: nothing truncated.
    whole = enc.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert sum(len(x) - extra for x in ids) >= len(whole)
    with pytest.raises(ValueError, match="chunk_overlap"):
        enc.passage_spans([text], 40, 40)
    with pytest.raises(ValueError, match="chunk_tokens"):
        enc.passage_spans([text], enc.document_budget + 1)


def test_bf16_weight_copies_match_autocast_and_follow_weight_changes(monkeypatch):
    enc = ColBERTEncoder.from_pretrained(dtype="bfloat16")
    texts = ["a first document about proteins", "and a second, longer one about cells and their membranes"]
    cached = enc.encode_documents(texts).vectors
    assert enc._bf16_cache[1], "bf16 copies of the linear layers are kept"
    with monkeypatch.context() as m:
        m.setattr(ColBERTEncoder, "_bf16_linear_weights", lambda self: None)  # plain autocast
        plain = enc.encode_documents(texts).vectors
    np.testing.assert_array_equal(cached, plain)  # autocast casts a bf16 weight to itself
    lin = next(mod for mod in enc.backbone.modules() if isinstance(mod, torch.nn.Linear))
    with torch.no_grad():
        lin.weight.mul_(0.5)  # as an optimizer step would: the copy must be remade
    changed = enc.encode_documents(texts).vectors
    with monkeypatch.context() as m:
        m.setattr(ColBERTEncoder, "_bf16_linear_weights", lambda self: None)
        np.testing.assert_array_equal(changed, enc.encode_documents(texts).vectors)
    assert not np.array_equal(changed, cached)
    assert all(p.dtype == torch.float32 for p in enc.backbone.parameters())  # the model's own stay float32

"""Build the tiny encoder checkpoints in ``tests/fixtures/encoder`` and PyLate's outputs for them.

Run inside a separate virtual environment that has PyLate (never the project's own one)::

    python3 -m venv /tmp/pylate-venv
    /tmp/pylate-venv/bin/pip install torch==2.13.0
    echo "torch==2.13.0" > /tmp/pin.txt
    /tmp/pylate-venv/bin/pip install -c /tmp/pin.txt "sentence-transformers==5.3.0" \
        "transformers<=5.3.0,>=4.41.0" datasets accelerate pandas ujson ninja fastkmeans "voyager<2.2"
    /tmp/pylate-venv/bin/pip install --no-deps pylate==1.6.0
    /tmp/pylate-venv/bin/python tests/make_encoder_fixtures.py

It writes (all randomly initialised, seeded, a few hundred KB in all):

- ``bert_stanford/``: a Stanford ColBERT ``HF_ColBERT`` checkpoint (BERT weights under ``bert.*`` and a
  bias-free ``linear.weight`` 32->12 in one ``model.safetensors``, ``artifact.metadata``), written here
  by hand in the layout colbert-ir/colbertv2.0 uses;
- ``bert_pylate/``: a PyLate checkpoint (BERT backbone + ``1_Dense`` 32->16), created and saved by PyLate;
- ``modernbert_pylate/``: the same with a tiny ModernBERT backbone and a byte-level BPE tokenizer;
- ``texts.json``: the queries and documents encoded;
- ``expected/<checkpoint>__<variant>/``: PyLate's token embeddings for those texts (float32, CSR as
  ``{queries,documents}_{vectors,offsets}.npy``) and ``settings.json``, the constructor overrides
  given to PyLate (the same keyword arguments go to ``ColBERTEncoder.from_pretrained``).
"""

from __future__ import annotations

import json
import shutil
import string
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "fixtures" / "encoder"
HIDDEN, LAYERS, HEADS, FFN, MAX_POS = 32, 2, 4, 64, 64

WORDS = """the a an of to in and is are was were be for on with as by at from that this it its not or
cell cells protein gene genes cancer patients risk disease study studies effect effects treatment
dose blood brain human mouse mice increase increased decrease reduced high low level levels vitamin
what how why does do which who when than more less after before during between into about all can
may also has have had been use used using result results data model models test tests new one two
hello world query document long text words number numbers case punctuation every where here there""".split()

QUERIES = [
    "what is a cell?",
    "Does vitamin D reduce the risk of cancer in patients?",
    "Hello, World! (test) -- punctuation; everywhere...",
    "",
    "   ",
    "UPPER Case Query With Numbers 123 and 4.5%",
    " ".join(["long query words"] * 12),
    "caf\u00e9 na\u00efve \u2013 r\u00e9sum\u00e9 \u4e16\u754c",
]
DOCUMENTS = [
    "A cell is the unit of life.",
    "Vitamin D levels were increased after treatment; the risk of cancer decreased (p < 0.05).",
    "...!!!",
    "",
    "   ",
    " ".join(f"word{i}" for i in range(60)),
    "Mice and human cells: protein, gene & blood data -- all used in two studies [1,2].",
    "caf\u00e9 na\u00efve \u2013 r\u00e9sum\u00e9 \u4e16\u754c",
    "hello world",
]
STANFORD_META = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_token": "[Q]",
    "doc_token": "[D]",
    "query_maxlen": 16,
    "doc_maxlen": 24,
    "dim": 12,
    "mask_punctuation": True,
    "attend_to_mask_tokens": False,
    "similarity": "cosine",
}
PYLATE_SETTINGS = {"query_length": 16, "document_length": 24}
VARIANTS = {
    "bert_stanford": {"saved": {}},
    "bert_pylate": {
        "saved": {},
        "attend": {"attend_to_expansion_tokens": True},
        "noexpand": {"do_query_expansion": False},
        "nomarkers": {"query_prefix": "", "document_prefix": ""},
    },
    "modernbert_pylate": {"saved": {}, "noexpand": {"do_query_expansion": False}},
}


def wordpiece_vocab() -> list[str]:
    specials = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    vocab = specials + chars + ["##" + c for c in string.digits + string.ascii_lowercase] + sorted(set(WORDS))
    return list(dict.fromkeys(vocab))  # unique, in order: ids are 0..n-1


def bert_backbone(folder: Path, seed: int) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    vocab = {w: i for i, w in enumerate(wordpiece_vocab())}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=MAX_POS)
    assert tok.convert_tokens_to_ids("[unused0]") == 1 and tok.tokenize("cells!") == ["cells", "!"]
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=MAX_POS, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(folder)


def modernbert_backbone(folder: Path, seed: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tk = Tokenizer(models.BPE(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator([" ".join(WORDS)] * 3 + QUERIES + DOCUMENTS, trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tk.token_to_id("[CLS]")), ("[SEP]", tk.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                  pad_token="[PAD]", mask_token="[MASK]", model_max_length=MAX_POS)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=MAX_POS,
                           pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                           sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                           eos_token_id=tok.sep_token_id)
    ModernBertModel(cfg).save_pretrained(folder)


def stanford_checkpoint(folder: Path, tmp: Path) -> None:
    """A HF_ColBERT folder: BERT config with architectures ["HF_ColBERT"], weights bert.* + linear.weight."""
    from safetensors.torch import load_file, save_file

    bert_backbone(tmp / "stanford_bert", seed=1)
    folder.mkdir(parents=True)
    for f in (tmp / "stanford_bert").iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, folder / f.name)
    cfg = json.loads((tmp / "stanford_bert" / "config.json").read_text())
    cfg["architectures"] = ["HF_ColBERT"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {f"bert.{k}": v for k, v in load_file(tmp / "stanford_bert" / "model.safetensors").items()}
    torch.manual_seed(2)
    state["linear.weight"] = torch.nn.Linear(HIDDEN, STANFORD_META["dim"], bias=False).weight.detach().clone()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    (folder / "artifact.metadata").write_text(json.dumps(STANFORD_META, indent=2))


def pylate_checkpoint(folder: Path, backbone: Path, seed: int) -> None:
    from pylate import models

    torch.manual_seed(seed)
    m = models.ColBERT(model_name_or_path=str(backbone), device="cpu", embedding_size=16, **PYLATE_SETTINGS)
    m.save(str(folder))
    for f in ("README.md",):  # model card: not needed, and large
        (folder / f).unlink(missing_ok=True)


def csr(arrays) -> tuple[np.ndarray, np.ndarray]:
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    return np.concatenate(arrays), offsets


def expected(name: str, folder: Path) -> None:
    from pylate import models

    for variant, overrides in VARIANTS[name].items():
        m = models.ColBERT(model_name_or_path=str(folder), device="cpu", **overrides)
        out = OUT / "expected" / f"{name}__{variant}"
        out.mkdir(parents=True)
        for side, texts in (("queries", QUERIES), ("documents", DOCUMENTS)):
            emb = m.encode(texts, is_query=side == "queries", batch_size=3, convert_to_numpy=True)
            v, o = csr(emb)
            np.save(out / f"{side}_vectors.npy", v)
            np.save(out / f"{side}_offsets.npy", o)
        (out / "settings.json").write_text(json.dumps(overrides, indent=2) + "\n")
        print(f"{out.relative_to(OUT)}: {len(o) - 1} documents, {len(v)} document tokens")


def main() -> None:
    try:
        import pylate
    except ImportError:
        sys.exit("run this in a virtual environment with pylate==1.6.0 (see the module docstring)")
    print("pylate", pylate.__version__, "torch", torch.__version__)
    if OUT.exists():
        shutil.rmtree(OUT)
    tmp = OUT / "_build"
    stanford_checkpoint(OUT / "bert_stanford", tmp)
    bert_backbone(tmp / "bert", seed=3)
    pylate_checkpoint(OUT / "bert_pylate", tmp / "bert", seed=4)
    modernbert_backbone(tmp / "modernbert", seed=5)
    pylate_checkpoint(OUT / "modernbert_pylate", tmp / "modernbert", seed=6)
    shutil.rmtree(tmp)
    (OUT / "texts.json").write_text(json.dumps({"queries": QUERIES, "documents": DOCUMENTS}, indent=2) + "\n")
    for name in VARIANTS:
        expected(name, OUT / name)


if __name__ == "__main__":
    main()

"""Build ``tests/fixtures/trained``: a checkpoint written by ``retriever.training.trainer`` and PyLate's encodings of it.

Two steps, in two environments (PyLate is never installed in the project's own one)::

    .venv/bin/python tests/make_trained_fixture.py train              # our trainer -> trained/bert_trained
    /tmp/pylate-venv/bin/python tests/make_trained_fixture.py expected # PyLate loads it -> trained/expected

(the PyLate environment is set up as in ``tests/make_encoder_fixtures.py``). ``tests/test_trainer.py``
then checks that this library encodes the trained checkpoint exactly as PyLate does, and that a
checkpoint the trainer writes today has the same layout and settings files as this one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ENCODER_FIXTURES = HERE / "fixtures" / "encoder"
OUT = HERE / "fixtures" / "trained"
BASE = ENCODER_FIXTURES / "bert_pylate"
# short texts: PyLate truncates queries at query_length, this library's default extends long ones
PAIRS = [
    ("what is a cell", "A cell is the unit of life."),
    ("vitamin d and cancer risk", "Vitamin D levels were increased after treatment; the risk of cancer decreased."),
    ("mice protein gene", "Mice and human cells: protein, gene & blood data."),
    ("hello world", "hello world"),
    ("brain dose study", "The brain study used a high dose."),
    ("blood level test", "A blood test of the level of vitamin."),
    ("new model data", "New data for two models were used."),
    ("low risk patients", "Patients at low risk had reduced disease."),
]


def step_train() -> None:
    sys.path.insert(0, str(HERE.parent))
    from retriever.training.pairs import TrainingData
    from retriever.training.trainer import TrainConfig, train

    docs = tuple(d for _, d in PAIRS)
    n = len(PAIRS)
    data = TrainingData(tuple(f"d{i}" for i in range(n)), docs, tuple(q for q, _ in PAIRS),
                        tuple((i,) for i in range(n)), ((),) * n, ((),) * n,
                        (False,) * (n - 2) + (True,) * 2, "fixture pairs")
    dest = OUT / "bert_trained"
    if dest.exists():
        shutil.rmtree(dest)
    OUT.mkdir(parents=True, exist_ok=True)
    os.chdir(HERE.parent)  # the base model is recorded in training.json as given: a repository path
    train(str(BASE.relative_to(HERE.parent)), data, dest.relative_to(HERE.parent), TrainConfig(epochs=3, batch_size=4, negatives=1, mine_depth=3, lr=0.05,
                                             patience=3, metric="mrr@10"), show_progress=False)
    print(f"wrote {dest}")


def step_expected() -> None:
    from pylate import models

    texts = json.loads((ENCODER_FIXTURES / "texts.json").read_text())
    m = models.ColBERT(model_name_or_path=str(OUT / "bert_trained"), device="cpu")
    dest = OUT / "expected"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for side in ("queries", "documents"):
        emb = m.encode(texts[side], is_query=side == "queries", batch_size=3, convert_to_numpy=True)
        arrays = [np.asarray(a, dtype=np.float32) for a in emb]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        np.save(dest / f"{side}_vectors.npy", np.concatenate(arrays))
        np.save(dest / f"{side}_offsets.npy", offsets)
    print(f"wrote {dest}")


if __name__ == "__main__":
    if sys.argv[1:] == ["train"]:
        step_train()
    elif sys.argv[1:] == ["expected"]:
        step_expected()
    else:
        sys.exit("usage: make_trained_fixture.py train|expected")

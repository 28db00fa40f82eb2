"""Ray backend of sharded indexes: every shard of a saved sharded index served by Ray actors.

``RayShardedRetriever.load(path)`` returns a :class:`RayShardedRetriever`: one actor per
shard (``replicas`` per shard), each loading its shard directory (memory-mapped) once; a search
encodes the query on the driver, sends it to one replica of every shard at once, and merges exactly as
the local backend does (``retriever.cluster.shards.sharded_search``), so both backends return the same answers.
Shard actors are read-only and restart when they die (``max_restarts=-1``); a search sent to a dead
actor is retried on the restarted one (``max_task_retries=-1``), or fails with an error naming the shard.
Changing a sharded index (add, delete, compact) goes through the local backend; reload the Ray
backend afterwards.

Ray is an optional dependency (``pip install '.[distributed]'``). ``address=None`` starts a local Ray
on this machine only (it sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which keeps every Ray service on
127.0.0.1, unless the variable is already set; the backend refuses a local Ray on any other address);
``address="auto"`` or ``"HOST:PORT"`` (or the ``RAY_ADDRESS`` environment variable) joins an existing
cluster, whose nodes must all see the index directory at the same path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from retriever.cluster.shards import ShardedRetriever, documents_by_shard, read_sharded_manifest, sharded_search
from retriever.index import format as fmt
from retriever.index.search import SearchResults

log = logging.getLogger(__name__)

__all__ = ["RayShardedRetriever"]


def _chunk_kwargs(kw: dict, rows: np.ndarray) -> dict:
    """Keyword arguments of a search restricted to the queries ``rows`` (their texts and pooled vectors)."""
    out = dict(kw)
    if out.get("query_texts") is not None:
        out["query_texts"] = [out["query_texts"][i] for i in rows]
    if out.get("query_pooled") is not None:
        out["query_pooled"] = np.asarray(out["query_pooled"])[rows]
    return out


def _concat(method: str, parts: list):
    """One shard's answers for consecutive query chunks, joined in query order."""
    if method == "search":
        return SearchResults(ids=np.concatenate([p.ids for p in parts]), scores=np.concatenate([p.scores for p in parts]),
                             rows=np.concatenate([p.rows for p in parts]))
    return parts[0][0], [x for p in parts for x in p[1]], [x for p in parts for x in p[2]]


def _ray(local: bool = False):
    import sys

    if local and "ray" not in sys.modules:  # read by Ray at import: keep a local Ray on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray backend needs Ray: pip install '.[distributed]' (or load the index with ShardedRetriever.load)") from None
    return ray


def _connect(address: str | None):
    """Ray, initialised: joined to ``address`` (``RAY_ADDRESS`` when None, as ``ray.init`` reads it), or
    a local Ray started here, refused unless every node address is 127.0.0.1. An initialised Ray is kept."""
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    local = address in (None, "local")
    ray = _ray(local=local)
    if ray.is_initialized():
        return ray
    if not local:
        ray.init(address=address, log_to_driver=False)
        return ray
    ray.init(include_dashboard=False, log_to_driver=False)
    nodes = {n["NodeManagerAddress"] for n in ray.nodes()}
    if nodes != {"127.0.0.1"}:
        ray.shutdown()
        raise RuntimeError(f"the local Ray started on {sorted(nodes)}, not only 127.0.0.1: set "
                           f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is first imported, or start Ray yourself "
                           f"and pass its address")
    return ray


class _ShardServer:
    """One shard in a Ray actor (wrapped by ``ray.remote`` when the backend starts)."""

    def __init__(self, shard_dir: str, threads: int | None) -> None:
        if threads:
            import numba

            numba.set_num_threads(int(threads))  # Ray sets OMP_NUM_THREADS per actor; numba does not follow it
        from retriever.index.retriever import Retriever

        self.r = Retriever.load(shard_dir)

    def info(self) -> dict:
        return {"n_docs": self.r.n_docs, "hybrid": self.r.config.hybrid.to_dict(), "pid": os.getpid(),
                "centroids": self.r.centroid_stage is not None,
                "max_query_tokens": self.r.config.centroids.query_token_limit(len(self.r.doc_ids))}

    def search(self, queries, kw: dict) -> SearchResults:
        # arrays only travel back: the document store (an SQLite connection) stays with the actor
        return dataclasses.replace(self.r.search(queries, **kw), documents=None)

    def hybrid_union(self, queries, kw: dict):
        return self.r.hybrid_union(queries, **kw)

    def documents(self, rows) -> list:
        """Stored title, text and metadata of ``rows`` (None each when the shard stores no documents)."""
        store = self.r.documents
        return store.get(rows) if store is not None else [None] * len(rows)


class RayShardedRetriever:
    """A saved sharded index searched through Ray actors (read-only); see the module docstring."""

    @classmethod
    def load(cls, path, *, verify: bool = False, encoder=None, **ray_options) -> "RayShardedRetriever":
        """Serve the saved sharded index at ``path`` from Ray actors.

        ``verify=True`` first checks every shard's checksums in this process
        (:meth:`ShardedRetriever.verify`); ``ray_options`` are this class's keyword arguments
        (``address``, ``replicas``, ``cpus_per_actor``, ``threads_per_actor``, ``timeout_s``).
        """
        if verify:
            ShardedRetriever.verify(path)
        return cls(path, encoder=encoder, **ray_options)

    def __init__(self, path, *, address: str | None = None, replicas: int = 1, cpus_per_actor: float | None = None,
                 threads_per_actor: int | None = 1, encoder=None, timeout_s: float = 300.0) -> None:
        ray = _connect(address)
        self.path = Path(path)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
        top = read_sharded_manifest(self.path)
        self.top = top
        for s, info in enumerate(top["shards"]):  # every shard directory is complete before any actor starts
            d = self.path / info["dir"]
            m = fmt.read_manifest(d)
            if m[fmt.CHECKSUM_FIELD] != info["manifest_sha256"]:
                raise fmt.IndexFormatError(f"{d}: its manifest is not the one {fmt.SHARDED_MANIFEST} records")
        # cpus_per_actor=None: Ray's default for actors (a CPU to be placed, none held while idle), so that
        # shards x replicas may exceed the cluster's CPUs; a number reserves that many per actor
        opts = {"max_restarts": -1, "max_task_retries": -1}
        if cpus_per_actor is not None:
            opts["num_cpus"] = cpus_per_actor
        actor = ray.remote(**opts)(_ShardServer)
        self.actors = [[actor.remote(str(self.path / info["dir"]), threads_per_actor) for _ in range(replicas)]
                       for info in top["shards"]]
        self.timeout_s = float(timeout_s)
        infos = self._get([reps[0].info.remote() for reps in self.actors], "starting")
        self.live = [i["n_docs"] for i in infos]
        from retriever.hybrid.fusion import HybridConfig

        self.hybrid = HybridConfig.from_dict(infos[0]["hybrid"])
        self.has_centroids = all(i["centroids"] for i in infos)
        self.max_query_tokens = infos[0]["max_query_tokens"]
        self._encoder = encoder
        self._next = 0
        log.info("serving %d shards x %d replicas of %s on Ray", len(self.actors), replicas, self.path)

    @property
    def n_shards(self) -> int:
        return len(self.actors)

    @property
    def n_docs(self) -> int:
        return sum(self.live)

    def __repr__(self) -> str:
        return f"RayShardedRetriever(n_shards={self.n_shards}, replicas={len(self.actors[0])}, n_docs={self.n_docs})"

    @property
    def encoder(self):
        """The encoder recorded in the top manifest, created on the driver on first use."""
        if self._encoder is None:
            info = self.top.get("encoder")
            if info is None:
                raise ValueError("this index was built from token embeddings without an encoder; search it with "
                                 "query embeddings")
            from retriever.encoders.colbert import ColBERTEncoder, EncoderConfig

            enc = ColBERTEncoder.from_config(EncoderConfig.from_dict(info["config"]))
            enc.check_identity(info)
            self._encoder = enc
        return self._encoder

    def _get(self, refs, what: str):
        ray = _ray()
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"{what}: the shard actors did not answer within {self.timeout_s:g} s") from None
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"{what}: a shard actor failed and could not be restarted: {e}") from None

    def search(self, queries, k: int = 10, *, allow_partial: bool = False, **kwargs) -> SearchResults:
        """As :meth:`ShardedRetriever.search`: the same answers, the shards searched in parallel.

        A batch of queries is split over each shard's replicas. A shard whose actor cannot answer
        (it died and could not restart, or ``timeout_s`` passed) fails the search with an error
        naming it, or with ``allow_partial=True`` is left out: the results then cover the other
        shards and ``missing_shards`` lists it.
        """
        ray = _ray()
        first_replica = self._next
        self._next += 1

        def call(method, per_shard_kwargs):
            q = per_shard_kwargs[0]["queries"]
            n_q = len(q)
            n_rep = len(self.actors[0])
            chunks = [c for c in np.array_split(np.arange(n_q), min(n_rep, n_q)) if c.size]
            q_refs = [ray.put(q if len(chunks) == 1 else q.select(c)) for c in chunks]
            refs = []  # refs[shard][chunk]
            for reps, kw in zip(self.actors, per_shard_kwargs):
                kw = {key: v for key, v in kw.items() if key != "queries"}
                row = []
                for j, c in enumerate(chunks):
                    kw_c = kw if len(chunks) == 1 else _chunk_kwargs(kw, c)
                    row.append(getattr(reps[(first_replica + j) % n_rep], method).remote(q_refs[j], kw_c))
                refs.append(row)
            out = []
            failed = []
            for s_i, row in enumerate(refs):
                try:
                    parts = ray.get(row, timeout=self.timeout_s)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                    failed.append((s_i, e))
                    out.append(None)
                    continue
                out.append(parts[0] if len(parts) == 1 else _concat(method, parts))
            if failed and not allow_partial:
                s_i, e = failed[0]
                what = "did not answer within %g s" % self.timeout_s if isinstance(e, ray.exceptions.GetTimeoutError) \
                    else f"failed and could not be restarted ({type(e).__name__})"
                raise RuntimeError(f"search: shard {s_i} ({self.top['shards'][s_i]['dir']}) {what}; "
                                   f"pass allow_partial=True to search the other shards")
            return out

        res = sharded_search(call, lambda: self.encoder, self.hybrid, self.live, queries, k,
                             has_centroids=self.has_centroids, max_query_tokens=self.max_query_tokens, **kwargs)
        return dataclasses.replace(res, documents=self._fetch_documents)

    def _fetch_documents(self, rows, shards) -> list:
        """Hits' stored documents, asked of one replica of each shard involved, in parallel (see
        ``SearchResults.hits``)."""
        ray = _ray()

        def fetch(wanted: dict) -> dict:
            refs = {s: self.actors[s][0].documents.remote(r.tolist()) for s, r in wanted.items()}
            return {s: ray.get(ref, timeout=self.timeout_s) for s, ref in refs.items()}

        return documents_by_shard(rows, shards, fetch)

    def close(self) -> None:
        """Stop the shard actors (the Ray instance stays up)."""
        ray = _ray()
        for reps in self.actors:
            for a in reps:
                ray.kill(a, no_restart=True)
        self.actors = []


# -- distributed build ----------------------------------------------------------------------------

_CHUNK = "chunk-{:06d}.npz"


class _EncoderWorker:
    """Encodes chunks of (id, text) pairs into chunk files (wrapped by ``ray.remote``); loads the model once."""

    def __init__(self, encoder_config: dict, threads: int | None, gpu: bool = False) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        from retriever.encoders.colbert import ColBERTEncoder, EncoderConfig

        device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
        self.encoder = ColBERTEncoder.from_config(EncoderConfig.from_dict(encoder_config), device=device)

    def encode(self, pairs: list, path: str, word_pooling: bool, progress=None) -> int:
        """Encode and write ``path`` atomically (a temporary file renamed: the file is the done-marker).

        The chunk is encoded ``_PROGRESS_DOCS`` documents at a time; after each step the count goes to
        ``progress`` (a :class:`_Progress` actor), so the driver's bar moves per document, not per chunk.
        """
        import json as _json

        from retriever.store.tokens import TokenEmbeddings

        texts = [t for _, t in pairs]
        docs, pooled_parts = [], []
        for s in range(0, len(texts), _PROGRESS_DOCS):
            e, p = self.encoder.encode_documents(texts[s:s + _PROGRESS_DOCS], word_pooling=word_pooling,
                                                 return_pooled=True)
            docs.extend(e)
            pooled_parts.append(p)
            if progress is not None:
                progress.add.remote(len(p))
        emb = TokenEmbeddings.from_list(docs)
        pooled = np.concatenate(pooled_parts)
        tmp = path + ".partial"  # not a chunk name: an interrupted write is never taken for a finished chunk
        with open(tmp, "wb") as fh:
            # float32 as encoded: a shard built from these files stores what a build from the texts stores
            np.savez(fh, vectors=emb.vectors, offsets=emb.offsets, pooled=pooled,
                     ids=np.array(_json.dumps([i for i, _ in pairs])), texts=np.array(_json.dumps(texts)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return len(pairs)


def auto_chunk_docs(n_docs: int) -> int:
    """Documents per encoded chunk for ``chunk_docs="auto"``: ``n_docs / 16`` within [32, 1024], so that a
    small corpus still makes enough chunks to keep every encoder actor busy (one 1,024-document chunk
    left one of two actors idle: 300 SciFact documents took 42 s against 18 s for the local build), while
    a large one keeps few chunk files. It depends on the corpus only, so ``resume`` finds the same plan
    whatever ``workers`` is."""
    return int(min(1024, max(32, -(-int(n_docs) // 16))))


_PROGRESS_DOCS = 32  # documents an encoder actor encodes between two progress reports
_PROGRESS_POLL_S = 1.0  # the driver reads the running count this often while chunks are encoded


class _Progress:
    """Documents encoded so far by every encoder actor of one build (wrapped by ``ray.remote``)."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += int(n)

    def value(self) -> int:
        return self.n


def _read_chunk(path: Path):
    import json as _json

    with np.load(path, allow_pickle=False) as z:
        return (z["vectors"], z["offsets"], z["pooled"], _json.loads(str(z["ids"])), _json.loads(str(z["texts"])))


def _build_shard(chunk_paths: list[str], shard: int, n_shards: int, out_dir: str, config_dict: dict,
                 encoder_config: dict) -> int:
    """Build shard ``shard`` from the chunk files: the documents routed to it, in corpus order."""
    from retriever.cluster.shards import shard_of
    from retriever.encoders.colbert import ColBERTEncoder, EncoderConfig
    from retriever.index.config import IndexConfig
    from retriever.index.retriever import Retriever
    from retriever.store.tokens import TokenEmbeddings

    vecs, lens, pooled, ids, texts = [], [], [], [], []
    for p in chunk_paths:
        v, off, pl, cid, ctx = _read_chunk(Path(p))
        for j, i in enumerate(cid):
            if shard_of(i, n_shards) == shard:
                vecs.append(v[off[j] : off[j + 1]])
                lens.append(int(off[j + 1] - off[j]))
                pooled.append(pl[j])
                ids.append(i)
                texts.append(ctx[j])
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    emb = TokenEmbeddings(np.ascontiguousarray(np.concatenate(vecs), dtype=np.float32), offsets)
    encoder = ColBERTEncoder.from_config(EncoderConfig.from_dict(encoder_config))
    config = IndexConfig.from_dict(config_dict)
    hybrid_on = config.hybrid == "auto" or config.hybrid.enabled
    # the texts feed BM25 and the document store (each its encoded text: title and body joined)
    texts_arg = texts if hybrid_on or config.store_text else None
    pooled_arg = np.stack(pooled).astype(np.float32) if hybrid_on else None
    Retriever.build(emb, ids, config=config, encoder=encoder, path=out_dir, show_progress=False,
                    texts=texts_arg, pooled=pooled_arg)
    return len(ids)


def build_sharded_on_ray(documents, path, *, n_shards: int, config=None, encoder=None, workers: int = 2,
                         chunk_docs: int | str = "auto", resume: bool = False, address: str | None = None,
                         threads_per_worker: int | None = 1, gpus_per_worker: float = 0.0,
                         show_progress: bool = True, stall_timeout_s: float = 900.0):
    """Build a sharded index with Ray: encoder actors encode chunks of the corpus, shard tasks build the shards.

    ``documents``: texts as for :meth:`Retriever.build` (strings with ids, ``(id, text)`` pairs, BEIR dicts).
    Encoded chunks are written to ``.NAME.build/`` beside ``path`` (a chunk file is renamed into place
    when complete: it is its own done-marker); with ``resume=True`` a rerun after an interruption (a killed
    driver) skips the chunks already there and gives the same index. Encoder actors and shard tasks are
    retried when a worker dies. The index appears at ``path`` atomically (every shard, then
    ``sharded.json``), and the chunk directory is removed. Returns the ``ShardedRetriever``.
    ``gpus_per_worker`` > 0 places each encoder actor on a GPU (the encoder then runs there: its
    ``device`` is taken from the actor's assigned GPU). The encoder actors are named
    ``retriever-encoder-<build dir>-<i>`` (``ray.get_actor``), so an operator can find them.
    The progress bar counts documents as the actors encode them (every ``_PROGRESS_DOCS``); when no
    document is encoded for ``stall_timeout_s`` seconds (no actor placed, say) the build stops with
    a ``RuntimeError`` saying so, keeping the encoded chunks for ``resume=True``.
    """
    import json as _json
    import shutil
    import time as _time

    from tqdm.auto import tqdm

    from retriever.cluster.shards import (
        ShardedRetriever,
        check_n_shards,
        check_not_empty,
        shard_dir,
        shard_of,
        write_top_manifest,
    )
    from retriever.core.storage import atomic_replace_dir, make_temp_dir_beside
    from retriever.index.config import IndexConfig
    from retriever.index.inputs import text_items

    n_shards = check_n_shards(n_shards)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if chunk_docs != "auto" and (isinstance(chunk_docs, bool) or not isinstance(chunk_docs, int) or chunk_docs < 1):
        raise ValueError(f"chunk_docs must be 'auto' or a positive integer, got {chunk_docs!r}")
    config = config or IndexConfig()
    if encoder is None:
        from retriever.encoders.colbert import ColBERTEncoder

        encoder = ColBERTEncoder.from_pretrained("default")
    enc_config = encoder.config.to_dict()
    target = Path(path)
    t_start = _time.perf_counter()
    # (id, text) pairs travel to the encoder actors; titles and metadata stay out of Ray builds' stores
    pairs = [(rec.id, rec.text) for rec in text_items(list(documents), None)]
    if not pairs:
        raise ValueError("cannot build an index from an empty corpus")
    seen = set()
    for i, _ in pairs:
        if i in seen:
            raise ValueError(f"document id {i!r} appears twice")
        seen.add(i)
    check_not_empty(np.bincount([shard_of(i, n_shards) for i, _ in pairs], minlength=n_shards).tolist(), n_shards)
    if config.centroids.max_query_tokens == "auto":  # the stage rule follows the whole corpus, not a shard
        import dataclasses

        config = dataclasses.replace(config, centroids=dataclasses.replace(
            config.centroids, max_query_tokens=config.centroids.query_token_limit(len(pairs))))
    if chunk_docs == "auto":
        chunk_docs = auto_chunk_docs(len(pairs))
    work = target.parent / f".{target.name}.build"
    plan = {"n_docs": len(pairs), "chunk_docs": chunk_docs, "n_shards": n_shards, "encoder": encoder.identity(),
            "config": config.to_dict(),
            "ids_sha256": hashlib_sha256(_json.dumps([str(i) for i, _ in pairs]))}
    plan_file = work / "plan.json"
    if work.exists():
        if not resume:
            raise FileExistsError(f"{work} holds an interrupted build: pass resume=True (CLI --resume) to continue "
                                  f"it, or remove the directory")
        old = _json.loads(plan_file.read_text()) if plan_file.is_file() else None
        if old != _json.loads(_json.dumps(plan)):
            raise ValueError(f"{work} was started with another corpus, encoder or settings: remove it to start over")
    else:
        (work / "chunks").mkdir(parents=True)
        plan_file.write_text(_json.dumps(plan))
    ray = _connect(address)
    chunks = [pairs[s : s + chunk_docs] for s in range(0, len(pairs), chunk_docs)]
    t0 = _time.perf_counter()
    plan_s = t0 - t_start
    paths = [work / "chunks" / _CHUNK.format(j) for j in range(len(chunks))]
    todo = [j for j, p in enumerate(paths) if not p.is_file()]
    log.info("%d chunks of %d documents, %d to encode (%d done before)", len(chunks), chunk_docs, len(todo),
             len(chunks) - len(todo))
    opts = {"max_restarts": -1, "max_task_retries": -1}
    if gpus_per_worker:
        opts["num_gpus"] = gpus_per_worker
    worker_cls = ray.remote(**opts)(_EncoderWorker)
    tag = hashlib_sha256(str(work.resolve()))[:12]
    actors = [worker_cls.options(name=f"retriever-encoder-{tag}-{i}").remote(enc_config, threads_per_worker,
                                                                           bool(gpus_per_worker))
              for i in range(min(workers, max(1, len(todo))))]
    word_pooling = bool(config.word_pooling)
    progress = ray.remote(num_cpus=0)(_Progress).remote()
    before = sum(len(chunks[j]) for j in range(len(chunks)) if j not in set(todo))
    try:
        with tqdm(total=len(pairs), initial=before, desc="encoding documents (Ray)", unit="doc",
                  disable=not show_progress) as bar:
            pending = {}
            queue = list(todo)
            free = list(actors)
            finished, last_change, seen = before, _time.monotonic(), -1
            while queue or pending:
                while queue and free:
                    j, a = queue.pop(0), free.pop(0)
                    pending[a.encode.remote(chunks[j], str(paths[j]), word_pooling, progress)] = (j, a)
                done, _ = ray.wait(list(pending), num_returns=1, timeout=_PROGRESS_POLL_S)
                if done:
                    j, a = pending.pop(done[0])
                    finished += ray.get(done[0])
                    free.append(a)
                # per document: the actors' running count (a retried chunk may count twice: capped)
                encoded = max(finished, min(len(pairs), before + ray.get(progress.value.remote())))
                if encoded != seen:
                    bar.update(encoded - bar.n)
                    seen, last_change = encoded, _time.monotonic()
                elif _time.monotonic() - last_change > stall_timeout_s:
                    raise RuntimeError(
                        f"no document encoded in {stall_timeout_s:.0f} s ({encoded} of {len(pairs)} done): the "
                        f"encoder actors may not have been placed (see `ray status`: each needs a CPU"
                        f"{' and a GPU' if gpus_per_worker else ''}); the chunks encoded so far are kept in {work}, "
                        f"rerun with resume=True (--resume) to continue")
    finally:  # the named actors go with the build, also when it fails (a rerun names them again)
        for a in actors:
            ray.kill(a, no_restart=True)
        ray.kill(progress)
    encode_s = _time.perf_counter() - t0
    tmp = make_temp_dir_beside(target)
    try:
        build = ray.remote(max_retries=3)(_build_shard)
        refs = [build.remote([str(p) for p in paths], s, n_shards, str(tmp / shard_dir(s)), config.to_dict(),
                             enc_config) for s in range(n_shards)]
        sizes = ray.get(refs)
        t1 = _time.perf_counter()
        write_top_manifest(tmp, n_shards, config, fmt.read_manifest(tmp / shard_dir(0))["id_type"], encoder.identity())
        atomic_replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    t2 = _time.perf_counter()
    timings = {"plan_s": plan_s, "encode_s": encode_s, "shards_s": t1 - t0 - encode_s, "finish_s": t2 - t1,
               "total_s": t2 - t_start, "encoded_docs": sum(len(chunks[j]) for j in todo)}
    log.info("built %d shards (%s documents) in %.1f s: %s", n_shards, sizes, timings["total_s"],
             {k: round(v, 2) for k, v in timings.items()})
    sr = ShardedRetriever.load(target, encoder=encoder)
    sr.build_timings = timings
    return sr


def hashlib_sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()

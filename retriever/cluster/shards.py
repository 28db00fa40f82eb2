"""Document-partitioned (sharded) indexes: one ordinary index per shard, searched together.

A sharded index is a directory::

    sharded.json      the top manifest (format name and version, shard list with each shard's
                      document count and manifest checksum, the shared encoder identity and
                      requested index config, the id type and the routing rule); written last,
                      so it is the commit point
    shard-0000/ ...   one ordinary index directory per shard (``retriever.index.retriever``)

Documents go to shard ``blake2b-64(str(id)) mod n_shards``, so ``add`` / ``delete`` / ``upsert``
find a document's shard from its id alone. A search runs on every shard (the query is encoded
once) and the per-shard top-k lists are merged by (score descending, shard, row): exact for
MaxSim, which is a per-document score, so a sharded exhaustive search equals the single index's.
Hybrid searches fuse within each shard (each shard normalises its own top lists), so their merged
ranking is close to, not identical with, a single index's. A chunked index (``IndexConfig.chunk_tokens``)
keeps all passages of a document in the document's shard, so a document's best passage (MaxP) is a
per-document score too: each shard ranks its documents and the lists merge as above.

This module is the local backend: shards live in this process. It imports ``index``; nothing in
the single-index modules imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retriever.core.storage import atomic_replace_dir, make_temp_dir_beside, recover_interrupted_swap
from retriever.hybrid.fusion import FusionConfig, fuse
from retriever.index import format as fmt
from retriever.index.config import IndexConfig
from retriever.index.inputs import is_batch_item, is_embeddings, is_text_item, py_scalar, text_items, texts_of_queries
from retriever.index.passages import DEPTH_GROWTH
from retriever.index.retriever import Retriever
from retriever.index.search import (
    SearchResults,
    auto_n_candidates,
    auto_rule,
    candidate_stage,
    search_in_groups,
    stage_groups,
)
from retriever.index.writer import WriteGuard
from retriever.store.tokens import TokenEmbeddings, as_token_embeddings

log = logging.getLogger(__name__)

__all__ = ["ShardedRetriever", "shard_of", "is_sharded", "index_encoder", "search_encoder", "SHARDED_MANIFEST"]

SHARDED_MANIFEST = fmt.SHARDED_MANIFEST
SHARDED_FORMAT = "retriever-sharded-index"
SHARDED_VERSION = 1
ROUTING = "blake2b-64(str(id)) mod n_shards"
MAX_SHARDS = 4096


def shard_of(doc_id, n_shards: int) -> int:
    """The shard a document id belongs to (stable across processes, machines and versions)."""
    h = hashlib.blake2b(str(py_scalar(doc_id)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") % int(n_shards)


def is_sharded(path) -> bool:
    return (Path(path) / SHARDED_MANIFEST).is_file()


def index_encoder(path, *, device: str | None = None, **overrides):
    """The text encoder a (single or sharded) index was built with, as its manifest records it, on
    ``device`` (default CPU), with ``overrides`` of its runtime fields (``dtype``, ``batch_size``,
    ``batch_tokens``: the index does not depend on them). ``ValueError`` when the index was built
    from token embeddings without an encoder."""
    from dataclasses import replace

    from retriever.encoders.colbert import ColBERTEncoder, EncoderConfig

    where = Path(path)
    m = read_sharded_manifest(where) if is_sharded(where) else fmt.read_manifest(where)
    info = m.get("encoder")
    if info is None:
        raise ValueError(f"{where} was built from token embeddings without an encoder: give an encoder (--model) to "
                         "search it with text")
    config = replace(EncoderConfig.from_dict(info["config"]), **overrides)
    return ColBERTEncoder.from_config(config, device=device or "cpu")


def search_encoder(path, *, model: str | None = None, device: str | None = None, **overrides):
    """The encoder to search index ``path`` with, as ``retriever search`` and ``retriever serve`` choose it:
    ``model`` (with ``overrides``) when given; else, when a ``device`` or a ``dtype`` is asked for, the
    index's own (:func:`index_encoder`); else None (the index creates its own on first use, on the CPU)."""
    if model:
        from retriever.encoders.colbert import ColBERTEncoder

        return ColBERTEncoder.from_pretrained(model, device=device or "cpu", **overrides)
    if device or overrides.get("dtype"):
        return index_encoder(path, device=device, **overrides)
    return None


def shard_dir(i: int) -> str:
    return f"shard-{i:04d}"


def check_n_shards(n_shards) -> int:
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"n_shards must be an integer in [1, {MAX_SHARDS}], got {n_shards!r}")
    return int(n_shards)


class ShardedRetriever:
    """Several ordinary indexes (shards) searched as one; see the module docstring.

    Create one with :meth:`build` or :meth:`load`.
    """

    def __init__(self, shards: list[Retriever], config: IndexConfig | None = None) -> None:
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        first = shards[0]
        for i, s in enumerate(shards[1:], 1):
            if s.encoder_info != first.encoder_info:
                raise ValueError(f"shard {i} was built with another encoder than shard 0 (mixed encoders)")
            if s.dim != first.dim or s.id_type != first.id_type:
                raise ValueError(f"shard {i} has dim {s.dim} / {s.id_type} ids, shard 0 dim {first.dim} / {first.id_type} ids")
            if s.config.hybrid != first.config.hybrid:
                raise ValueError(f"shard {i} stores other hybrid signals than shard 0")
        for s in shards:  # the sharded index locks its top directory; its shards lock nothing themselves
            s.writer.close()
            s.writer.managed = False
        self.shards = shards
        self.config = config if config is not None else first.config
        self.writer = WriteGuard(_top_commit_of)
        self._shared_encoder = None
        self.build_timings: dict = {}  # filled by a distributed build (retriever.cluster.distributed)

    # -- properties ------------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        return len(self.shards)

    @property
    def n_docs(self) -> int:
        return sum(s.n_docs for s in self.shards)

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return f"ShardedRetriever(n_shards={self.n_shards}, n_docs={self.n_docs}, shards={[s.n_docs for s in self.shards]})"

    @property
    def encoder(self):
        """The text encoder shared by every shard (shard 0's, given to the others)."""
        if self._shared_encoder is None:
            enc = self.shards[0].encoder
            for s in self.shards[1:]:
                s.share_encoder(enc)
            self._shared_encoder = enc
        return self._shared_encoder

    # -- build -----------------------------------------------------------------------------
    @classmethod
    def build(cls, documents, doc_ids=None, *, n_shards: int, config: IndexConfig | None = None, encoder=None,
              path=None, show_progress: bool = True, texts=None, pooled=None) -> "ShardedRetriever":
        """Route documents to ``n_shards`` shards by id and build each shard as :meth:`Retriever.build`.

        ``documents`` / ``doc_ids`` / ``config`` / ``encoder`` / ``texts`` / ``pooled`` are as for
        :meth:`Retriever.build` (streamed ``(TokenEmbeddings, ids)`` batches excepted). Texts are
        routed first (held in memory as (id, text) pairs), then each shard encodes its own. With
        ``path`` the directory is written atomically (every shard, then ``sharded.json``).
        """
        n_shards = check_n_shards(n_shards)
        config = config or IndexConfig()
        if isinstance(documents, (str, bytes)):
            raise TypeError("documents must be a collection of texts or token embeddings, not a single string")
        if is_embeddings(documents):
            is_text, items = False, documents
        else:
            items = list(documents)
            if not items:
                raise ValueError("cannot build an index from an empty corpus")
            if is_batch_item(items[0]):
                raise ValueError("a sharded build takes token embeddings or texts, not streamed (TokenEmbeddings, ids) "
                                 "batches")
            is_text = is_text_item(items[0])
        if is_text:
            if texts is not None or pooled is not None:
                raise ValueError("texts= and pooled= go with token embeddings")
            routed: list[list] = [[] for _ in range(n_shards)]
            for rec in text_items(items, doc_ids):  # records keep titles and metadata for the shards' stores
                routed[shard_of(rec.id, n_shards)].append(rec)
            parts = [(p, None, None, None) for p in routed]
            sizes = [len(p) for p in routed]
        else:
            emb = as_token_embeddings(list(items) if not isinstance(items, TokenEmbeddings) else items)
            ids = list(range(len(emb))) if doc_ids is None else list(doc_ids)
            if len(ids) != len(emb):
                raise ValueError(f"{len(ids)} doc_ids for {len(emb)} documents")
            if texts is not None:
                texts = list(texts)
                if len(texts) != len(emb):
                    raise ValueError(f"{len(texts)} texts for {len(emb)} documents")
            which = np.array([shard_of(i, n_shards) for i in ids], dtype=np.int64)
            check_not_empty(np.bincount(which, minlength=n_shards).tolist(), n_shards)
            parts = []
            for s in range(n_shards):
                rows = np.flatnonzero(which == s)
                parts.append((emb.select(rows), [ids[r] for r in rows],
                              None if texts is None else [texts[r] for r in rows],
                              None if pooled is None else np.asarray(pooled)[rows]))
            sizes = [len(p[1]) for p in parts]
        check_not_empty(sizes, n_shards)
        if config.centroids.max_query_tokens == "auto":  # the stage rule follows the whole corpus, not a shard
            config = dataclasses.replace(config, centroids=dataclasses.replace(
                config.centroids, max_query_tokens=config.centroids.query_token_limit(sum(sizes))))
        if is_text and encoder is None:
            from retriever.encoders.colbert import ColBERTEncoder

            encoder = ColBERTEncoder.from_pretrained("default")
        target = Path(path) if path is not None else None
        guard = WriteGuard(_top_commit_of)
        if target is not None:
            guard.lock(target, "build into")
        workdir = None
        shards = []
        try:
            workdir = make_temp_dir_beside(target) if target is not None else None
            for s, part in enumerate(tqdm(parts, desc="building shards", unit="shard", disable=not show_progress)):
                shard_path = workdir / shard_dir(s) if workdir is not None else None
                if is_text:
                    r = Retriever.build(part[0], config=config, encoder=encoder, path=shard_path,
                                        show_progress=show_progress, lock=False)
                else:
                    r = Retriever.build(part[0], part[1], config=config, encoder=encoder, path=shard_path,
                                        show_progress=show_progress, texts=part[2], pooled=part[3], lock=False)
                shards.append(r)
            sr = cls(shards, config)
            if workdir is not None:
                sr._write_top_manifest(workdir)
                commit = _top_commit_of(workdir)
                atomic_replace_dir(workdir, target)
                sr = cls([Retriever.load(target / shard_dir(s), encoder=encoder) for s in range(n_shards)], config)
                guard.opened(target, commit)
            sr.writer = guard
        except BaseException:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            guard.close()
            raise
        log.info("built %r", sr)
        return sr

    # -- search ----------------------------------------------------------------------------
    def search(self, queries, k: int = 10, *, hybrid=None, n_candidates="auto", **kwargs) -> SearchResults:
        """Top-``k`` over every shard, merged by (score descending, shard, row).

        Arguments as for :meth:`Retriever.search`. Text queries are encoded once.
        ``n_candidates="auto"`` splits the single index's rule over the shards: the candidates
        of ``auto_n_candidates(live documents, k)`` (``auto_candidates`` when every shard has the
        token centroid stage and ``mode`` uses it) shared in proportion to each shard's live
        documents (at least ``k`` each), so a sharded search reranks about as many documents as the
        single one; an explicit number applies to every shard. A hybrid search fuses with each
        signal's top list taken over all shards (as one index would), then merges. The result's
        ``rows`` are rows within the shard given by ``shards``.
        """
        first = self.shards[0]

        def call(method, per_shard_kwargs):
            out = []
            for shard, kw in zip(self.shards, per_shard_kwargs):
                out.append(shard.search(**kw) if method == "search" else shard.hybrid_union(**kw))
            return out

        chunked = first.passages is not None
        res = sharded_search(call, lambda: self.encoder, first.config.hybrid, [s.n_live_rows for s in self.shards],
                             queries, k, hybrid=hybrid, n_candidates=n_candidates,
                             has_centroids=all(s.centroid_stage is not None for s in self.shards),
                             max_query_tokens=first.config.centroids.query_token_limit(len(first.doc_ids)),
                             chunked=chunked, **kwargs)
        if chunked and res.passages is None:  # fused across shards from passage rows: name the passages
            res = self._with_passages(res)
        if any(s.documents is not None for s in self.shards):
            res = dataclasses.replace(res, documents=self._fetch_documents)
        return res

    def _with_passages(self, res: SearchResults) -> SearchResults:
        """Chunked shards: ``res`` (passage rows of a fused search) with each hit's passage number and span;
        document results (not ``passage_hits``) then name each document by its first passage's row."""
        numbers = np.full(res.rows.shape, -1, dtype=np.int64)
        spans = np.full(res.rows.shape + (2,), -1, dtype=np.int64)
        for s in np.unique(res.shards[res.rows >= 0]).tolist():
            at = (res.shards == s) & (res.rows >= 0)
            numbers[at], spans[at] = self.shards[s].passages.info(res.rows[at])
        rows = res.rows if res.passage_hits else np.where(res.rows >= 0, res.rows - numbers, -1)
        return dataclasses.replace(res, rows=rows, passages=numbers, spans=spans)

    def _fetch_documents(self, rows, shards) -> list:
        """Stored documents of hits given as (row within shard, shard), in order (None where a shard has none)."""
        stores = {s: self.shards[s].documents for s in np.unique(shards).tolist()}
        return documents_by_shard(rows, shards, lambda wanted: {
            s: stores[s].get(r) for s, r in wanted.items() if stores[s] is not None})

    # -- lifecycle -------------------------------------------------------------------------
    def _route(self, ids: list) -> np.ndarray:
        return np.array([shard_of(i, self.n_shards) for i in ids], dtype=np.int64)

    def add(self, documents, doc_ids=None, *, show_progress: bool = False) -> None:
        """Add documents, each to its id's shard (all or nothing across shards); ids are required
        unless ``documents`` are ``(id, text)`` pairs or BEIR dicts."""
        self.writer.begin_change()
        self._change(documents, doc_ids, replace=False, show_progress=show_progress)

    def upsert(self, documents, doc_ids=None, *, show_progress: bool = False) -> None:
        """Add or replace documents, each in its id's shard (all or nothing across shards)."""
        self.writer.begin_change()
        self._change(documents, doc_ids, replace=True, show_progress=show_progress)

    def _change(self, documents, doc_ids, *, replace: bool, show_progress: bool) -> None:
        if isinstance(documents, (str, bytes)):
            raise TypeError("documents must be a collection of texts or token embeddings, not a single string "
                            "(wrap it in a list)")
        if is_embeddings(documents):
            is_text, items = False, documents
        else:
            items = list(documents)
            if not items:
                return
            is_text = is_text_item(items[0])
        if is_text:
            if doc_ids is None and all(isinstance(x, str) for x in items):
                raise ValueError("a sharded index routes documents by id: give doc_ids (or (id, text) pairs / BEIR dicts)")
            pairs = list(text_items(items, doc_ids))
            which = self._route([rec.id for rec in pairs])
            groups = {s: [pairs[j] for j in np.flatnonzero(which == s)] for s in np.unique(which).tolist()}
            calls = {s: (g, None) for s, g in groups.items()}
        else:
            emb = as_token_embeddings(list(items) if not isinstance(items, TokenEmbeddings) else items)
            if doc_ids is None:
                raise ValueError("a sharded index routes documents by id: give doc_ids")
            ids = list(doc_ids)
            if len(ids) != len(emb):
                raise ValueError(f"{len(ids)} doc_ids for {len(emb)} documents")
            which = self._route(ids)
            calls = {}
            for s in np.unique(which).tolist():
                rows = np.flatnonzero(which == s)
                calls[s] = (emb.select(rows), [ids[r] for r in rows])
        snapshots = {}
        try:
            for s, (docs, ids_s) in calls.items():
                shard = self.shards[s]
                snapshots[s] = (len(shard.doc_ids), shard.deleted)
                if replace:
                    shard.upsert(docs, ids_s, show_progress=show_progress)
                else:
                    shard.add(docs, ids_s, show_progress=show_progress)
        except BaseException:
            for s, (n_rows, deleted) in snapshots.items():  # the shards already changed: back to before
                _restore(self.shards[s], n_rows, deleted)
            raise

    def delete(self, ids) -> None:
        """Delete documents by id (all or nothing: ``KeyError`` naming unknown ids, nothing deleted)."""
        if isinstance(ids, (str, bytes)):
            raise TypeError("ids must be a collection of ids, not a single string")
        ids = list(ids)
        self.writer.begin_change()
        which = self._route(ids)
        missing = []
        for s in np.unique(which).tolist():
            group = [ids[j] for j in np.flatnonzero(which == s)]
            try:
                self.shards[s].rows_of(group)
            except KeyError as e:
                missing.append(str(e.args[0]) if e.args else str(e))
        if missing:
            raise KeyError("; ".join(missing))
        for s in np.unique(which).tolist():
            self.shards[s].delete([ids[j] for j in np.flatnonzero(which == s)])

    def compact(self, *, retrain: bool = False) -> int:
        """Compact every shard; returns the rows removed."""
        self.writer.begin_change()
        return sum(s.compact(retrain=retrain) for s in self.shards)

    # -- persistence -----------------------------------------------------------------------
    def _write_top_manifest(self, directory: Path) -> None:
        first = self.shards[0]
        write_top_manifest(directory, self.n_shards, self.config, first.id_type, first.encoder_info)

    def save(self, path) -> None:
        """Write every shard and then ``sharded.json`` into a new directory, swapped in atomically."""
        target = Path(path)
        self.writer.before_save(target)
        recover_interrupted_swap(target)
        tmp = make_temp_dir_beside(target)
        try:
            for s, shard in enumerate(self.shards):
                shard.save(tmp / shard_dir(s), lock=False)
            self._write_top_manifest(tmp)
            commit = _top_commit_of(tmp)
            atomic_replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.writer.opened(target, commit)
        log.info("saved %r to %s", self, target)

    def close(self) -> None:
        """Release the write lock of the sharded directory (see :meth:`Retriever.close`). Idempotent."""
        self.writer.close()

    def __enter__(self) -> "ShardedRetriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def load(cls, path, *, mmap: bool = True, verify: bool = False, encoder=None, backend: str = "local"):
        """Load a sharded index (or an ordinary index directory, as one shard).

        ``backend`` must be ``"local"``; Ray actors serve shards through
        :meth:`retriever.cluster.distributed.RayShardedRetriever.load` (the Ray layer sits above this one).
        """
        if backend == "ray":
            raise ValueError("backend='ray' moved to the Ray layer: use "
                             "retriever.cluster.distributed.RayShardedRetriever.load(path, ...)")
        if backend != "local":
            raise ValueError(f"backend must be 'local', got {backend!r}")
        path = Path(path)
        recover_interrupted_swap(path)
        if not is_sharded(path):
            if (path / fmt.MANIFEST).is_file():
                one = Retriever.load(path, mmap=mmap, verify=verify, encoder=encoder)
                sr = cls([one])
                sr.writer.opened(path, one.writer.seen.get(path.absolute()))
                return sr
            raise fmt.IndexFormatError(f"no index at {path}: neither {SHARDED_MANIFEST} nor {fmt.MANIFEST} is there")
        top = read_sharded_manifest(path)
        shards = []
        for s, info in enumerate(top["shards"]):
            d = path / info["dir"]
            if not d.is_dir():
                raise fmt.IndexFormatError(f"{path / SHARDED_MANIFEST}: shard {s} ({d}) is missing")
            m = fmt.read_manifest(d)
            if m[fmt.CHECKSUM_FIELD] != info["manifest_sha256"]:
                raise fmt.IndexFormatError(f"{d}: its manifest is not the one {SHARDED_MANIFEST} records (the shard was "
                                           f"changed or replaced on its own)")
            shards.append(Retriever.load(d, mmap=mmap, verify=verify, encoder=encoder))
        try:
            config = IndexConfig.from_dict(top["config"])
            sr = cls(shards, config)
        except (TypeError, ValueError) as e:
            raise fmt.IndexFormatError(f"{path / SHARDED_MANIFEST}: {e}") from None
        sr.writer.opened(path, top[fmt.CHECKSUM_FIELD])
        return sr

    @staticmethod
    def verify(path) -> dict:
        """Full check of every shard (:meth:`Retriever.verify`) and that each document sits in the shard
        its id routes to. Returns the top manifest; ``IndexFormatError`` names the first problem."""
        path = Path(path)
        if not is_sharded(path):
            Retriever.verify(path)
            return fmt.read_manifest(path)
        top = read_sharded_manifest(path)
        ShardedRetriever.load(path)  # the top manifest against every shard's manifest, shared encoder, hybrid config
        n = top["n_shards"]
        for s, info in enumerate(top["shards"]):
            Retriever.verify(path / info["dir"])
            r = Retriever.load(path / info["dir"])
            live = r.doc_ids[r.deleted == 0].tolist()
            bad = [i for i in live if shard_of(i, n) != s]
            if bad:
                raise fmt.IndexFormatError(f"{path / info['dir']}: document {bad[0]!r} belongs to shard "
                                           f"{shard_of(bad[0], n)}, not {s}")
        return top


def write_top_manifest(directory: Path, n_shards: int, config: IndexConfig, id_type: str, encoder_info) -> None:
    """Write ``sharded.json`` for the complete shard directories ``shard-NNNN`` in ``directory`` (the commit point)."""
    from retriever.core.version import __version__

    shards = []
    for s in range(n_shards):
        m = fmt.read_manifest(directory / shard_dir(s))
        shards.append({"dir": shard_dir(s), "n_docs": m["n_docs"], "n_deleted": m.get("n_deleted", 0),
                       "manifest_sha256": m[fmt.CHECKSUM_FIELD]})
    top = {
        "format": SHARDED_FORMAT, "format_version": SHARDED_VERSION, "library_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "n_shards": n_shards,
        "routing": ROUTING, "id_type": id_type, "encoder": encoder_info,
        "config": config.to_dict(), "shards": shards,
    }
    top[fmt.CHECKSUM_FIELD] = fmt.manifest_checksum(top)
    p = directory / SHARDED_MANIFEST
    tmp = directory / (SHARDED_MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(top, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def documents_by_shard(rows, shards, fetch) -> list:
    """Hits' stored documents, in hit order, for hits given as (row within shard, shard): ``fetch({shard:
    its rows})`` returns ``{shard: [dict or None per row]}`` (a shard left out: None for its hits)."""
    rows, shards = np.asarray(rows), np.asarray(shards)
    where = {s: np.flatnonzero(shards == s) for s in np.unique(shards).tolist()}
    found = fetch({s: rows[pos] for s, pos in where.items()})
    out: list = [None] * rows.size
    for s, docs in found.items():
        for j, doc in zip(where[s].tolist(), docs):
            out[j] = doc
    return out


def _top_commit_of(path: Path) -> str | None:
    """The commit id of a sharded index (``sharded.json``'s checksum) or of an ordinary one at ``path``."""
    return fmt.commit_of(path, (SHARDED_MANIFEST, fmt.MANIFEST))


def read_sharded_manifest(path: Path) -> dict:
    p = Path(path) / SHARDED_MANIFEST
    try:
        top = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fmt.IndexFormatError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(top, dict) or top.get("format") != SHARDED_FORMAT:
        raise fmt.IndexFormatError(f"{p} is not a {SHARDED_FORMAT} manifest")
    if top.get("format_version") != SHARDED_VERSION:
        raise fmt.IndexFormatError(f"{p}: format_version {top.get('format_version')!r} is not supported "
                                   f"(this library reads {SHARDED_VERSION})")
    if top.get(fmt.CHECKSUM_FIELD) != fmt.manifest_checksum(top):
        raise fmt.IndexFormatError(f"{p} does not match its {fmt.CHECKSUM_FIELD} (edited or damaged)")
    n = top.get("n_shards")
    shards = top.get("shards")
    if (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARDS or not isinstance(shards, list)
            or len(shards) != n):
        raise fmt.IndexFormatError(f"{p}: n_shards {n!r} does not match its shard list")
    for s, info in enumerate(shards):
        if not isinstance(info, dict) or info.get("dir") != shard_dir(s) or not isinstance(info.get("manifest_sha256"), str):
            raise fmt.IndexFormatError(f"{p}: shard entry {s} is malformed: {info!r}")
    if top.get("routing") != ROUTING:
        raise fmt.IndexFormatError(f"{p}: routing {top.get('routing')!r} is not {ROUTING!r}")
    return top


def check_not_empty(sizes: list[int], n_shards: int) -> None:
    empty = [s for s, n in enumerate(sizes) if n == 0]
    if empty:
        raise ValueError(f"{len(empty)} of {n_shards} shards would be empty ({sum(sizes)} documents): use fewer shards")


def _restore(shard: Retriever, n_rows: int, deleted: np.ndarray) -> None:
    """Undo an add / upsert that succeeded on ``shard``: rows past ``n_rows`` deleted, old flags back."""
    extra = len(shard.doc_ids) - n_rows
    with shard.ids_lock:
        shard.deleted = np.concatenate([deleted, np.ones(extra, dtype=np.uint8)])
        shard.row_of = None


def shard_candidates(n_candidates, k, subset, live: list[int], rule=auto_n_candidates) -> list:
    """Per-shard ``n_candidates`` of a sharded search (see :meth:`ShardedRetriever.search`)."""
    n = len(live)
    if not (n_candidates is None or (isinstance(n_candidates, str) and n_candidates == "auto")):
        return [n_candidates] * n
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        return ["auto"] * n  # the shards name the bad k
    counts = np.asarray(live, dtype=np.float64)
    if subset is not None or counts.sum() == 0:
        return ["auto"] * n
    total = rule(int(counts.sum()), int(k))
    return [max(int(k), int(np.ceil(total * c / counts.sum()))) for c in counts]


def sharded_search(call, get_encoder, hybrid_config, live: list[int], queries, k, *, hybrid=None,
                   n_candidates="auto", has_centroids: bool = False, max_query_tokens: int | None = None,
                   chunked: bool = False, **kwargs) -> SearchResults:
    """The search of a sharded index over any backend.

    ``call(method, per_shard_kwargs)`` runs ``method`` ("search" or "hybrid_union") on every shard
    with its keyword arguments and returns the results in shard order (a local loop, or remote
    calls in parallel); "hybrid_union" results are ``(fusion, scored, ids of each query's U)``; a
    shard that did not answer (a partial search) is ``None``. ``live``: each shard's searchable rows.
    ``has_centroids`` / ``max_query_tokens``: every shard has the token centroid stage, and the shards'
    ``CentroidConfig.max_query_tokens``: under ``mode="auto"`` a batch of short and long queries is
    searched as two groups (:func:`retriever.index.search.stage_groups`), each with its stage's
    candidate count split across the shards.
    ``chunked`` (shards of passages, ``IndexConfig.chunk_tokens``): a fused document search folds the
    shards' fused passages into documents, each at its best passage, ranking deeper until it names ``k``
    documents; its hits are passage rows without passage numbers, which the caller adds (a search that
    is not fused gets documents, passage numbers included, from the shards themselves).
    """
    texts = texts_of_queries(queries)
    base_kw = dict(kwargs, hybrid=hybrid)
    fused = hybrid_config.enabled and hybrid is not False
    if texts is not None:
        encoder = get_encoder()
        if fused and "dense" in hybrid_config.signals:
            q, qp = encoder.encode_queries(texts, return_pooled=True)
            base_kw.update(query_texts=texts, query_pooled=qp)
        else:
            q = encoder.encode_queries(texts)
            if fused:
                base_kw.update(query_texts=texts)
        queries = q
    fused = fused and base_kw.get("query_texts") is not None
    if fused:  # short and long queries fuse with their own weights and depth (FusionConfig.long_weights)
        fusion = hybrid if isinstance(hybrid, FusionConfig) else hybrid_config.fusion
        queries = as_token_embeddings(queries)
        groups = fusion.groups(queries.lengths)
        if len(groups) > 1:
            def search(f, q_g, texts_g, pooled_g):
                kw = dict(kwargs, query_texts=texts_g)
                if pooled_g is not None:
                    kw["query_pooled"] = pooled_g
                return sharded_search(call, get_encoder, hybrid_config, live, q_g, k, hybrid=f,
                                      n_candidates=n_candidates, has_centroids=has_centroids,
                                      max_query_tokens=max_query_tokens, chunked=chunked, **kw)

            return search_in_groups(groups, queries, base_kw["query_texts"], base_kw.get("query_pooled"), search)
        base_kw["hybrid"] = groups[0][0]
    mode = kwargs.get("mode", "auto")
    stage = candidate_stage(has_centroids, mode)
    if stage == "centroids" and mode == "auto" and max_query_tokens is not None:
        queries = as_token_embeddings(queries)
        by_stage = stage_groups(queries.lengths, has_centroids, mode, max_query_tokens)
        stage = by_stage[0][0]
        if len(by_stage) > 1:  # long queries take the FDE stage, the others the centroid stage
            def search_stage(_, q_g, texts_g, pooled_g):
                kw = dict(base_kw)
                if texts_g is not None:
                    kw["query_texts"] = texts_g
                if pooled_g is not None:
                    kw["query_pooled"] = pooled_g
                return sharded_search(call, get_encoder, hybrid_config, live, q_g, k, n_candidates=n_candidates,
                                      has_centroids=has_centroids, max_query_tokens=max_query_tokens, chunked=chunked,
                                      **kw)

            return search_in_groups(by_stage, queries, base_kw.get("query_texts"), base_kw.get("query_pooled"),
                                    search_stage)
    cands = shard_candidates(n_candidates, k, kwargs.get("subset"), live, auto_rule(stage))
    by_document = fused and chunked and not kwargs.get("passages", False)
    total = max(1, int(sum(live)))
    depth = int(k)  # a fused document search ranks the whole unions of a passage search of k, deeper if need be
    while True:
        per_shard = [dict(base_kw, queries=queries, k=depth,
                          n_candidates=n if n == "auto" or not by_document else max(int(n), depth)) for n in cands]
        answers = call("hybrid_union" if fused else "search", per_shard)
        missing = tuple(s for s, a in enumerate(answers) if a is None)
        present = [s for s, a in enumerate(answers) if a is not None]
        if not present:
            raise RuntimeError("no shard answered the search")
        if not fused:
            res = merge_results([answers[s] for s in present], int(k), present)
            break
        fusion = answers[present[0]][0]
        res = fuse_shards([answers[s][1] for s in present], fusion, int(k), [answers[s][2] for s in present],
                          present, depth=max(depth, int(fusion.depth)), by_document=by_document)
        if not by_document:
            break
        # a query is done when it names k documents or its unions hold fewer rows than were asked for
        union = np.sum([[u.size for u, _, _ in answers[s][1]] for s in present], axis=0)
        done = ((res.rows >= 0).sum(axis=1) >= int(k)) | (union < depth)
        if done.all() or depth >= total:
            break
        depth = min(total, depth * DEPTH_GROWTH)
    if kwargs.get("passages", False) and fused:
        res = dataclasses.replace(res, passage_hits=True)
    return dataclasses.replace(res, missing_shards=missing) if missing else res


def fuse_shards(scored: list[list], fusion, k: int, u_ids: list[list], shard_numbers: list[int] | None = None,
                depth: int | None = None, by_document: bool = False) -> SearchResults:
    """Rank the shards' hybrid unions as one index would: each signal's mean and spread come from its
    top-``depth`` scores over all shards (default ``max(fusion.depth, k)``: the depth the unions were made
    with), then the fused lists merge by (score, shard, row). ``u_ids[s][i]``: the external ids of shard
    ``s``'s union for query ``i``. ``by_document`` (chunked shards, whose union rows are passages): each
    document is kept at its best passage only, so the ``k`` hits are ``k`` documents."""
    depth = max(int(fusion.depth), int(k)) if depth is None else int(depth)
    n_q = len(scored[0])
    parts = []
    for s, shard_scored in enumerate(scored):
        rows = np.full((n_q, k), -1, dtype=np.int64)
        scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        for i in range(n_q):
            u, signals, _ = shard_scored[i]
            if u.size == 0:
                continue
            tops = {}
            for name in signals:
                every = np.concatenate([sc[i][2][name] for sc in scored])
                tops[name] = np.sort(every)[-depth:]
            f = fuse(signals, tops, fusion)
            order = np.lexsort((u, -f))
            if by_document:  # a document's first (best) passage
                _, first = np.unique(np.asarray(u_ids[s][i])[order], return_index=True)
                order = order[np.sort(first)]
            order = order[:k]
            rows[i, : order.size] = u[order]
            scores[i, : order.size] = f[order]
        ids = _padded_ids(u_ids[s], scored[s], rows)
        parts.append(SearchResults(ids=ids, scores=scores, rows=rows))
    return merge_results(parts, k, shard_numbers)


def _padded_ids(u_ids: list, shard_scored: list, rows: np.ndarray) -> np.ndarray:
    """External ids of ``rows`` (per query, rows of its union U), padded as SearchResults pads."""
    sample = next((x for x in u_ids if len(x)), None)
    is_int = sample is not None and np.asarray(sample).dtype.kind in "iu"
    out = np.full(rows.shape, -1 if is_int else None, dtype=np.int64 if is_int else object)
    for i in range(rows.shape[0]):
        u = shard_scored[i][0]
        hit = rows[i] >= 0
        if hit.any():
            out[i, hit] = np.asarray(u_ids[i])[np.searchsorted(u, rows[i, hit])]
    return out


def merge_results(parts: list[SearchResults], k: int, shard_numbers: list[int] | None = None) -> SearchResults:
    """Merge per-shard results by (score descending, shard, row); ``shards`` tells each hit's shard
    (``shard_numbers[j]`` is the shard of ``parts[j]``; default: j)."""
    numbers = list(range(len(parts))) if shard_numbers is None else list(shard_numbers)
    n_q = len(parts[0])
    scores = np.concatenate([p.scores for p in parts], axis=1)
    rows = np.concatenate([p.rows for p in parts], axis=1)
    ids = np.concatenate([p.ids for p in parts], axis=1)
    shard = np.concatenate([np.full(p.rows.shape, numbers[j], dtype=np.int64) for j, p in enumerate(parts)], axis=1)
    with_passages = all(p.passages is not None for p in parts)
    if with_passages:
        pas = np.concatenate([p.passages for p in parts], axis=1)
        spans = np.concatenate([p.spans for p in parts], axis=1)
        out_pas = np.full((n_q, k), -1, dtype=np.int64)
        out_spans = np.full((n_q, k, 2), -1, dtype=np.int64)
    out_ids = np.empty((n_q, k), dtype=ids.dtype)
    out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_rows = np.full((n_q, k), -1, dtype=np.int64)
    out_shards = np.full((n_q, k), -1, dtype=np.int64)
    out_ids[:] = -1 if ids.dtype != object else None
    for i in range(n_q):
        valid = np.flatnonzero(rows[i] >= 0)
        order = valid[np.lexsort((rows[i, valid], shard[i, valid], -scores[i, valid]))][:k]
        out_ids[i, : order.size] = ids[i, order]
        out_scores[i, : order.size] = scores[i, order]
        out_rows[i, : order.size] = rows[i, order]
        out_shards[i, : order.size] = shard[i, order]
        if with_passages:
            out_pas[i, : order.size] = pas[i, order]
            out_spans[i, : order.size] = spans[i, order]
    return SearchResults(ids=out_ids, scores=out_scores, rows=out_rows, shards=out_shards,
                         passages=out_pas if with_passages else None, spans=out_spans if with_passages else None,
                         passage_hits=any(p.passage_hits for p in parts))

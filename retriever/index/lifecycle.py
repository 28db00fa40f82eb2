"""Changing a built index: add, upsert, delete, compact (the work behind the ``Retriever`` methods).

How each change is made
-----------------------
* **add / upsert** validate every new document exactly as ``build`` does (dims, NaN/inf,
  zero-token documents, float16 range, id type and uniqueness) before anything visible changes.
  Token vectors are staged behind the end of the token store and FDE vectors in a spool file;
  only then are the FDEs added to FAISS and the new arrays swapped in. A failing call leaves the
  object as it was (the staged bytes are cut off again).
* **The token store grows** in the object's own temporary directory. An index built without a
  path already keeps its store there, and new rows are appended to that file in place (old rows
  are never rewritten; existing memory maps stay valid). The store of a *loaded* index belongs
  to the saved directory, which must not change before ``save``: the first ``add`` copies it, in
  blocks, into a new temporary directory (one sequential copy), and later ones append there. An
  index loaded with ``mmap=False`` keeps its store in memory and concatenates.
* **delete** sets rows of the ``deleted`` mask (a new array, swapped in), which every search
  path honours: the exhaustive kernels take the mask, FAISS gets an ID selector of the allowed
  rows, so deleted documents cost no candidate slots and recall is that of the remaining set.
  A deleted id may be added again: it then names a new row.
* **compact** copies the live rows' tokens to a new store and rebuilds FAISS over them: Flat and
  HNSW-Flat reuse their stored FDE vectors (identical to re-encoding), other types re-encode
  from the stored (decoded) tokens. Trained types (IVF, PQ) keep their training unless
  ``retrain=True``, which also retrains a residual token codec on the live tokens and re-encodes
  the store with it (from the decoded vectors: the original vectors are not kept).
* New documents are pooled (``pool_factor``) and encoded with the index's codec as it was
  trained at build time, so codes of old and new documents mean the same thing.
* Hybrid signals (``retriever.hybrid.fusion``) follow the rows: ``add`` / ``upsert`` need texts (the
  pooled vectors come from the same encoder pass, the BM25 postings are merged into a new
  ``LexicalIndex``; both are swapped in with the rest), deleted rows stay in BM25's statistics
  until ``compact``, which keeps the live rows of both.
* A chunked index (``IndexConfig.chunk_tokens``, ``retriever.index.passages``) has one row per
  passage: ``add`` / ``upsert`` split new texts into passages as the build did and append them
  (the document store keeps each document once, at its first passage's row), ``delete`` and
  ``upsert`` flag every passage of a document, and ``compact`` keeps whole documents, so a
  document's passages stay consecutive rows numbered from 0.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from retriever.candidates.ann import add_rows, make_faiss_index
from retriever.core.storage import NpyAppender
from retriever.hybrid.lexical import LexicalAppender
from retriever.index import format as fmt
from retriever.index.builder import (
    FAISS_ADD_ROWS,
    check_signals,
    fill_centroids,
    fill_faiss,
    pooled_tokens,
    stream_texts,
)
from retriever.index.documents import DocumentStore
from retriever.index.passages import embeddings_refused
from retriever.index.inputs import (
    check_ids,
    ids_array,
    is_embeddings,
    is_text_item,
    py_scalar,
    text_items,
    validate_batch,
)
from retriever.store.tokens import TokenEmbeddings, as_token_embeddings

if TYPE_CHECKING:  # index imports this module (inside its methods); this one never imports index
    from retriever.index.retriever import Retriever

log = logging.getLogger(__name__)

__all__ = ["add_documents", "delete_documents", "compact_index", "lookup_rows"]

_COPY_ROWS = 1 << 18  # token rows per block when copying a store (64 MiB of float16 at dim 128)
_MAX_NAMED = 10  # unknown ids named in a KeyError


# -- ids -----------------------------------------------------------------------------------------


def _id_list(ids, what: str) -> list:
    """A list of external ids from a collection; a lone str/int is refused (its shape is ambiguous)."""
    if isinstance(ids, (str, bytes, int, np.integer)):
        raise TypeError(f"{what} must be a collection of document ids, not a single {type(ids).__name__} "
                        f"(wrap it in a list: [{ids!r}])")
    try:
        return list(ids)
    except TypeError:
        raise TypeError(f"{what} must be a collection of document ids, got {type(ids).__name__}") from None


def lookup_rows(r: Retriever, ids, what: str = "ids") -> np.ndarray:
    """Rows of the live documents ``ids``; ``KeyError`` naming every id that is not in the index."""
    ids = _id_list(ids, what)
    row_of = r.live_row_map()
    out = np.empty(len(ids), dtype=np.int64)
    missing = []
    for j, i in enumerate(ids):
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (str, int, np.integer)):
            raise TypeError(f"{what}[{j}] has type {type(i).__name__}; document ids are str or int")
        row = row_of.get(py_scalar(i))
        if row is None or r.deleted[row]:
            missing.append(i)
        else:
            out[j] = row
    if missing:
        named = ", ".join(repr(py_scalar(i)) for i in missing[:_MAX_NAMED])
        more = f" and {len(missing) - _MAX_NAMED} more" if len(missing) > _MAX_NAMED else ""
        hint = f" (this index has {r.id_type} ids)" if any(_type_of(i) != r.id_type for i in missing) else ""
        noun = "document id" if len(missing) == 1 else f"{len(missing)} document ids"
        raise KeyError(f"{noun} not in the index: {named}{more}{hint}")
    return out


def _type_of(i) -> str:
    return "str" if isinstance(i, str) else "int"


# -- add / upsert --------------------------------------------------------------------------------


class _TokenSink:
    """Receives the store rows of new documents behind the current store until commit."""

    def __init__(self, r: Retriever) -> None:
        self.r = r
        self.n_old = r.n_tokens
        self.n_new = 0
        self.mem: list[np.ndarray] | None = None
        self.app: NpyAppender | None = None
        self.new_workdir: Path | None = None
        tokens = r.tokens
        if not isinstance(tokens, np.memmap):
            self.mem = []
        elif _owns_token_file(r):
            self.app = NpyAppender.resume(r.workdir / fmt.TOKENS, r.codec.row_width, r.codec.row_dtype, self.n_old)
        else:  # the store belongs to a saved directory: copy it once into our own workdir
            self.new_workdir = Path(tempfile.mkdtemp(prefix="retriever-"))
            try:
                self.app = NpyAppender(self.new_workdir / fmt.TOKENS, r.codec.row_width, r.codec.row_dtype, durable=False)
                for s in range(0, self.n_old, _COPY_ROWS):
                    self.app.append(tokens[s : s + _COPY_ROWS])
            except BaseException:
                self.rollback()
                raise

    def append(self, rows: np.ndarray) -> None:
        if self.mem is not None:
            self.mem.append(rows)
        else:
            self.app.append(rows)
        self.n_new += rows.shape[0]

    def finish(self) -> np.ndarray:
        """The grown store: a memory map of the file (header now final) or an in-memory array."""
        if self.mem is not None:
            return np.concatenate([self.r.tokens, *self.mem], axis=0)
        self.app.close()
        return fmt.load_array(self.app.path.parent, fmt.TOKENS, True, self.r.codec.row_dtype,
                              (self.n_old + self.n_new, self.r.codec.row_width))

    def rollback(self) -> None:
        if self.new_workdir is not None:
            if self.app is not None:
                self.app.discard()
            shutil.rmtree(self.new_workdir, ignore_errors=True)
        elif self.app is not None:
            self.app.truncate_to(self.n_old)


def _owns_token_file(r: Retriever) -> bool:
    if r.workdir is None or not isinstance(r.tokens, np.memmap) or r.tokens.filename is None:
        return False
    return Path(r.tokens.filename).resolve() == (r.workdir / fmt.TOKENS).resolve()


class _Stager:
    """Validates, encodes and stages batches of new documents; ``commit`` makes them visible."""

    def __init__(self, r: Retriever, replace: bool) -> None:
        self.r = r
        self.replace = replace
        self.ids: list = []
        self.taken: set = set()
        self.lengths: list[np.ndarray] = []
        self.sink: _TokenSink | None = None
        self.timings = {"encode_s": 0.0, "pool_s": 0.0, "codec_s": 0.0, "fde_s": 0.0, "faiss_s": 0.0, "write_s": 0.0}
        self.hybrid = r.config.hybrid
        self.pooled: list[np.ndarray] = []
        self.lexical_app = LexicalAppender(r.lexical) if r.lexical is not None else None
        self.records: list = []  # the new documents for the document store (None: a row without text)
        self.codes: list[np.ndarray] = []  # token centroid ids of the new tokens (centroid stage)
        self.residuals: list[np.ndarray] = []  # and their residual codes (a stage with residual codes)
        self.config = r.config
        self.numbers: list[np.ndarray] = []  # a chunked index: passage number and span of every new row
        self.spans: list[np.ndarray] = []

    def add(self, emb: TokenEmbeddings, ids: list, pooled: np.ndarray | None = None,
            texts: list[str] | None = None, records: list | None = None,
            passages: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        r = self.r
        if (r.passages is not None) != (passages is not None):
            raise embeddings_refused(r.config, "these documents are") if passages is None else \
                ValueError("passages given to an index without IndexConfig.chunk_tokens")
        if ids:
            batch_type = check_ids(ids, None)
            if batch_type != r.id_type:
                raise TypeError(f"document ids are {batch_type}, this index has {r.id_type} ids (e.g. {py_scalar(ids[0])!r})")
        row_of = r.live_row_map()
        in_index = None if self.replace else (lambda i: i in row_of)
        numbers = None if passages is None else np.asarray(passages[0], dtype=np.int64)
        validate_batch(emb, ids, r.dim, r.id_type, self.taken, len(self.ids), in_index, numbers=numbers)
        pooled = check_signals(self.hybrid, len(ids), pooled, texts,
                               r.dense.shape[1] if r.dense is not None else None)
        t0 = time.perf_counter()
        emb = pooled_tokens(emb, r.config.pool_factor)
        self.timings["pool_s"] += time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = r.codec.encode(emb.vectors)  # a trained codec is kept as it is
        t2 = time.perf_counter()
        self.timings["codec_s"] += t2 - t1
        stage = r.centroid_stage
        if stage is not None:  # assigned from the stored (decoded) vectors, as a build does
            x = r.codec.decode(rows)
            codes = stage.assign(x)
            self.codes.append(codes)
            if stage.residuals is not None:
                self.residuals.append(stage.encode_residuals(x, codes))
            t3 = time.perf_counter()
            self.timings["centroids_s"] = self.timings.get("centroids_s", 0.0) + t3 - t2
            t2 = t3
        if self.sink is None:
            self.sink = _TokenSink(r)
        self.sink.append(rows)
        self.timings["write_s"] += time.perf_counter() - t2
        if self.lexical_app is not None:
            self.lexical_app.add(texts)
        if pooled is not None:
            self.pooled.append(pooled)
        self.taken.update(py_scalar(i) for i in ids)
        self.ids.extend(ids)
        self.lengths.append(emb.lengths)
        self.records.extend(records if records is not None else [None] * len(ids))
        if passages is not None:
            self.numbers.append(numbers)
            self.spans.append(np.asarray(passages[1], dtype=np.int64).reshape(-1, 2))

    def commit(self) -> int:
        r = self.r
        if not self.ids:
            return 0
        # everything that can fail for a reason other than memory happens before FAISS changes
        lengths = np.concatenate(self.lengths)
        offsets = np.empty(len(r.doc_offsets) + lengths.size, dtype=np.int64)
        offsets[: len(r.doc_offsets)] = r.doc_offsets
        np.cumsum(lengths, out=offsets[len(r.doc_offsets) :])
        offsets[len(r.doc_offsets) :] += r.doc_offsets[-1]
        new_ids = ids_array(self.ids, r.id_type)
        doc_ids = np.concatenate([r.doc_ids, new_ids])
        deleted = np.concatenate([r.deleted, np.zeros(len(self.ids), dtype=np.uint8)])
        n_before = len(r.doc_ids)
        passages = numbers = None
        if r.passages is not None:
            numbers = np.concatenate(self.numbers)
            passages = r.passages.extended(numbers, np.concatenate(self.spans))
        replaced = []
        if self.replace:
            row_of = r.live_row_map()
            replaced = sorted({row_of[py_scalar(i)] for i in self.ids if py_scalar(i) in row_of})
            deleted[replaced if r.passages is None else r.passages.expand(np.asarray(replaced, dtype=np.int64))] = 1
        tokens = self.sink.finish()
        lexical = self.lexical_app.finish() if self.lexical_app is not None else None
        dense = None
        if r.dense is not None:  # in memory (a loaded index's file belongs to its directory until save)
            dense = np.concatenate([np.asarray(r.dense), *(p.astype(np.float16) for p in self.pooled)])
        stage = None
        if r.centroid_stage is not None:  # the lists of the grown store (built before anything changes)
            old = r.centroid_stage
            residuals = None if old.residuals is None else np.concatenate([np.asarray(old.residuals), *self.residuals])
            stage = old.with_codes(np.concatenate([np.asarray(old.codes), *self.codes]), offsets, residuals)
        store = r.documents
        if store is not None:  # pending in memory until the save; rolled back below if FAISS fails
            store.append(self.records)
        index = r.faiss_index
        ntotal = index.ntotal
        try:  # FDEs of the new rows, computed from the grown store as a build computes them
            fill_faiss(index, r.config.faiss_factory, r.codec, r.fde_encoder, tokens, offsets,
                       np.arange(n_before, n_before + len(self.ids)), seed=r.config.fde.seed, timings=self.timings,
                       train=False)
        except BaseException as e:
            if store is not None:
                store.truncate(n_before)
            _undo_faiss_add(index, ntotal, e)
            raise
        # swap in (plain attribute assignments: nothing below can fail)
        r.tokens = tokens
        if stage is not None:
            r.centroid_stage = stage
        r.doc_offsets = offsets
        r.doc_ids = doc_ids
        r.deleted = deleted
        if passages is not None:
            r.passages = passages
        if lexical is not None:
            r.lexical = lexical
        if dense is not None:
            r.dense = dense
        if self.sink.new_workdir is not None:
            r.adopt_workdir(self.sink.new_workdir)
        with r.ids_lock:
            if r.row_of is not None:
                for j, i in enumerate(self.ids):
                    if numbers is None or numbers[j] == 0:
                        r.row_of[py_scalar(i)] = n_before + j
        n_added = len(self.ids) if numbers is None else int((numbers == 0).sum())
        log.info("added %d documents%s (%d replaced) to %r", n_added,
                 "" if numbers is None else f" in {len(self.ids)} passages", len(replaced), r)
        return n_added

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.rollback()


def _undo_faiss_add(index, ntotal: int, cause: BaseException) -> None:
    if index.ntotal == ntotal:
        return
    try:
        index.remove_ids(faiss.IDSelectorRange(ntotal, index.ntotal))
    except RuntimeError:
        raise RuntimeError(
            f"adding to the FAISS index failed ({cause!r}) after {index.ntotal - ntotal} vectors, and this index "
            f"type cannot remove them: this Retriever is inconsistent, load it again from disk"
        ) from cause


def add_documents(r: Retriever, documents, doc_ids, *, replace: bool, show_progress: bool) -> int:
    """Validate, stage and commit new documents (see :meth:`Retriever.add`); returns how many."""
    verb = "upsert" if replace else "add"
    if isinstance(documents, (str, bytes)):
        raise TypeError("documents must be a collection of texts or token embeddings, not a single string "
                        "(wrap it in a list)")
    if isinstance(doc_ids, (str, bytes)):
        raise TypeError("doc_ids must be a collection of ids, not a single string")
    if is_embeddings(documents):
        is_text, items = False, documents
    else:
        items = list(documents)
        if not items:
            if doc_ids is not None and len(list(doc_ids)):
                raise ValueError(f"{len(list(doc_ids))} doc_ids for 0 documents")
            return 0
        is_text = is_text_item(items[0])
    stager = _Stager(r, replace)
    try:
        if is_text:
            encoder = r.encoder  # ValueError if the index has none
            if doc_ids is None and all(isinstance(x, str) for x in items):
                doc_ids = _default_ids(r, len(items), verb)
            stream_texts(stager, text_items(items, doc_ids), encoder, show_progress, r.config.word_pooling,
                         chunking=r.config)
        else:
            if r.passages is not None:
                raise embeddings_refused(r.config, "this index is chunked and these documents are")
            emb = as_token_embeddings(list(items) if not isinstance(items, TokenEmbeddings) else items)
            ids = _default_ids(r, len(emb), verb) if doc_ids is None else list(doc_ids)
            stager.add(emb, ids)
        return stager.commit()
    except BaseException:
        stager.abort()
        raise


def _default_ids(r: Retriever, n: int, verb: str) -> list:
    if verb == "upsert":
        raise ValueError("upsert needs doc_ids (or (id, text) pairs / BEIR dicts that carry ids)")
    if r.id_type != "int":
        raise ValueError("doc_ids are required: this index has string ids")
    start = int(r.doc_ids.max()) + 1 if len(r.doc_ids) else 0
    return list(range(start, start + n))


# -- delete --------------------------------------------------------------------------------------


def delete_documents(r: Retriever, ids) -> int:
    """Mark live documents deleted (all or nothing); returns how many were deleted."""
    rows = np.unique(lookup_rows(r, ids))
    if rows.size == 0:
        return 0
    deleted = r.deleted.copy()
    deleted[rows if r.passages is None else r.passages.expand(rows)] = 1  # every passage of a chunked document
    with r.ids_lock:
        r.deleted = deleted  # one reference swap: a concurrent search sees the old or the new mask
        if r.row_of is not None:
            for key in r.doc_ids[rows].tolist():
                r.row_of.pop(key, None)
    log.info("deleted %d documents from %r", rows.size, r)
    return int(rows.size)


# -- compact -------------------------------------------------------------------------------------


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive values in a sorted int array."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.r_[0, breaks]]
    stops = rows[np.r_[breaks - 1, rows.size - 1]] + 1
    return list(zip(starts.tolist(), stops.tolist()))


def _stores_exact_vectors(index) -> bool:
    """True when ``reconstruct`` returns the vectors exactly as added (Flat and HNSW-Flat)."""
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexFlat):
        return True
    if isinstance(base, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(base.storage), faiss.IndexFlat)
    return False


def _copy_search_defaults(src, dst) -> None:
    """Carry HNSW efSearch/efConstruction and IVF nprobe over to a rebuilt index."""
    a, b = faiss.downcast_index(src), faiss.downcast_index(dst)
    if isinstance(a, faiss.IndexHNSW) and isinstance(b, faiss.IndexHNSW):
        b.hnsw.efSearch = a.hnsw.efSearch
        b.hnsw.efConstruction = a.hnsw.efConstruction
    try:
        faiss.extract_index_ivf(dst).nprobe = faiss.extract_index_ivf(src).nprobe
    except RuntimeError:
        pass


def _compacted_faiss(r: Retriever, live: np.ndarray, tokens: np.ndarray, offsets: np.ndarray, retrain: bool, codec):
    old = r.faiss_index
    factory = r.config.faiss_factory
    fresh = make_faiss_index(factory, old.d)
    needs_training = not fresh.is_trained
    if not needs_training and _stores_exact_vectors(old) and codec is r.codec:
        _copy_search_defaults(old, fresh)
        blocks = (old.reconstruct_batch(live[s : s + FAISS_ADD_ROWS]) for s in range(0, live.size, FAISS_ADD_ROWS))
        add_rows(fresh, blocks, int(live.size))
        return fresh
    if needs_training and not retrain:
        index = faiss.clone_index(old)
        index.reset()  # keeps the trained quantiser / codebooks, drops the vectors
    else:
        index = fresh
        _copy_search_defaults(old, index)
    fill_faiss(index, factory, codec, r.fde_encoder, tokens, offsets, np.arange(live.size), seed=r.config.fde.seed)
    return index


def _compacted_centroids(r: Retriever, live: np.ndarray, tokens, offsets: np.ndarray, retrain: bool, codec,
                         workdir: Path):
    """The centroid stage of the compacted store (None without one): the kept tokens' codes, or with
    ``retrain`` centroids trained afresh on the compacted store and every token assigned again."""
    old = r.centroid_stage
    if old is None:
        return None
    if retrain:
        return _in_memory(fill_centroids(r.config.centroids, codec, tokens, offsets, workdir))
    residuals = None if old.residuals is None else _kept_token_rows(old.residuals, r.doc_offsets, live)
    return old.with_codes(_kept_token_rows(old.codes, r.doc_offsets, live), offsets, residuals)


def _kept_token_rows(arr, doc_offsets: np.ndarray, live: np.ndarray) -> np.ndarray:
    """The rows of a per-token array (tokens, centroid ids, residual codes) that belong to the ``live``
    documents, in order, one copy per run of consecutive documents."""
    return np.concatenate([np.asarray(arr[int(doc_offsets[a]) : int(doc_offsets[b])]) for a, b in _runs(live)],
                          axis=0)


def _in_memory(stage):
    """``stage`` with its per-token codes read into memory (its work directory may not outlive the call)."""
    stage.codes = np.array(stage.codes)
    if stage.residuals is not None:
        stage.residuals = np.array(stage.residuals)
    return stage


def rebuild_centroid_stage(r: Retriever, config, *, show_progress: bool = False) -> None:
    """See :meth:`Retriever.rebuild_centroids`."""
    import dataclasses

    config = config if config is not None else dataclasses.replace(r.config.centroids, enabled=True)
    config = config.resolved(len(r.doc_ids), r.n_tokens)
    stage = None
    if config.enabled:
        workdir = Path(tempfile.mkdtemp(prefix="retriever-"))
        try:
            stage = _in_memory(fill_centroids(config, r.codec, r.tokens, r.doc_offsets, workdir,
                                              show_progress=show_progress))  # in memory until saved
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    r.centroid_stage = stage
    r.config = dataclasses.replace(r.config, centroids=dataclasses.replace(config, enabled=bool(config.enabled)))
    log.info("%s the token centroid stage of %r", "rebuilt" if stage is not None else "removed", r)


_RETRAIN_SAMPLE_DOCS = 4096  # documents whose (decoded) tokens a codec retraining samples at most


def _retrained_codec(r: Retriever, live: np.ndarray):
    """A codec of the same config trained afresh on decoded tokens of (a sample of) the live documents."""
    from retriever.store.codecs import TokenCodec

    cfg = r.codec.config
    rng = np.random.default_rng(cfg.seed)
    docs = live if live.size <= _RETRAIN_SAMPLE_DOCS else np.sort(rng.choice(live, _RETRAIN_SAMPLE_DOCS, replace=False))
    sample = np.concatenate([r.codec.decode(r.tokens[int(r.doc_offsets[d]) : int(r.doc_offsets[d + 1])]) for d in docs])
    budget = max(1, cfg.max_train_bytes // (4 * r.dim))
    if sample.shape[0] > budget:
        sample = sample[np.sort(rng.choice(sample.shape[0], budget, replace=False))]
    n_tokens = int(np.diff(r.doc_offsets)[live].sum())
    return TokenCodec.train(cfg, sample, n_tokens)


def compact_index(r: Retriever, *, retrain: bool = False) -> int:
    """Rewrite ``r`` without its deleted rows (see :meth:`Retriever.compact`); returns rows removed."""
    if not isinstance(retrain, (bool, np.bool_)):
        raise TypeError(f"retrain must be a bool, got {retrain!r}")
    n_dead = int(r.deleted.sum())
    if n_dead == 0 and not retrain:
        return 0
    live = np.flatnonzero(r.deleted == 0)
    if live.size == 0:
        raise ValueError("every document is deleted and an index cannot be empty: build a new index instead")
    lengths = np.diff(r.doc_offsets)[live]
    offsets = np.zeros(live.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    src_off = r.doc_offsets
    workdir = Path(tempfile.mkdtemp(prefix="retriever-"))
    try:
        codec = r.codec
        if retrain and codec.needs_training:
            codec = _retrained_codec(r, live)
        if isinstance(r.tokens, np.memmap) or codec is not r.codec:
            with NpyAppender(workdir / fmt.TOKENS, codec.row_width, codec.row_dtype, durable=False) as w:
                for a, b in _runs(live):
                    t0, t1 = int(src_off[a]), int(src_off[b])
                    for s in range(t0, t1, _COPY_ROWS):
                        block = r.tokens[s : min(t1, s + _COPY_ROWS)]
                        w.append(block if codec is r.codec else codec.encode(r.codec.decode(block)))
            tokens = fmt.load_array(workdir, fmt.TOKENS, True, codec.row_dtype, (int(offsets[-1]), codec.row_width))
            if not isinstance(r.tokens, np.memmap):
                tokens = np.array(tokens)  # an in-memory index stays in memory
        else:
            tokens = _kept_token_rows(r.tokens, src_off, live)
        index = _compacted_faiss(r, live, tokens, offsets, retrain, codec)
        stage = _compacted_centroids(r, live, tokens, offsets, retrain, codec, workdir)
        dense = np.asarray(r.dense[live]) if r.dense is not None else None
        lexical = r.lexical.select(live) if r.lexical is not None else None
        passages = r.passages.select(live) if r.passages is not None else None  # whole documents: all or none
        documents = None
        if r.documents is not None:  # rows renumbered in a new file of this workdir
            r.documents.write_to(workdir, r.deleted, keep_rows=live)
            documents = DocumentStore.open(workdir, live.size)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    with r.ids_lock:
        r.codec = codec
        r.tokens = tokens
        r.doc_offsets = offsets
        r.doc_ids = r.doc_ids[live]
        r.deleted = np.zeros(live.size, dtype=np.uint8)
        r.faiss_index = index
        r.centroid_stage = stage
        r.dense = dense
        r.lexical = lexical
        r.passages = passages
        r.row_of = None
        old_documents, r.documents = r.documents, documents
    if old_documents is not None:
        old_documents.close()
    if isinstance(tokens, np.memmap) or documents is not None:
        r.adopt_workdir(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("compacted %r: %d deleted rows removed%s", r, n_dead, " (FAISS retrained)" if retrain else "")
    return n_dead


# -- deep checks ---------------------------------------------------------------------------------

_FDE_SAMPLE = 64  # documents whose stored FDE verify() compares with a fresh encoding


_CODE_SAMPLE = 4096  # stored tokens whose centroid id verify() compares with a fresh assignment


def _check_centroid_codes(r: Retriever, path: Path) -> None:
    """The centroid ids of a sample of stored tokens are those a fresh assignment gives (up to float ties)."""
    stage = r.centroid_stage
    rows = np.unique(np.linspace(0, r.n_tokens - 1, min(_CODE_SAMPLE, r.n_tokens)).astype(np.int64))
    x = r.codec.decode(np.asarray(r.tokens[rows]))
    stored = np.asarray(stage.codes[rows]).astype(np.int64)
    fresh = stage.assign(x).astype(np.int64)
    s_stored = np.einsum("ij,ij->i", x, stage.centroids[stored])
    s_fresh = np.einsum("ij,ij->i", x, stage.centroids[fresh])
    bad = np.flatnonzero((stored != fresh) & (s_stored < s_fresh - 1e-4))
    if bad.size:
        raise fmt.IndexFormatError(
            f"{path / fmt.IVF_CODES}: the centroid ids of {bad.size} of {rows.size} sampled tokens (e.g. token "
            f"{int(rows[bad[0]])}) are not those of their stored vectors")
    if stage.residuals is None:
        return
    # residual codes: each sub-vector's stored codeword is (up to float ties) its nearest
    m, _, ds = stage.pq.shape
    res = x - stage.centroids[stored]
    codes = np.asarray(stage.residuals[rows]).astype(np.int64)
    worse = np.zeros(rows.size, bool)
    for u in range(m):  # squared distances up to |sub-vector|^2, which every codeword shares
        cb = stage.pq[u]
        dist = (cb * cb).sum(1)[None, :] - 2.0 * (res[:, u * ds : (u + 1) * ds] @ cb.T)
        worse |= dist[np.arange(rows.size), codes[:, u]] > dist.min(1) + 1e-4
    bad = np.flatnonzero(worse)
    if bad.size:
        raise fmt.IndexFormatError(
            f"{path / fmt.IVF_RESIDUALS}: the residual codes of {bad.size} of {rows.size} sampled tokens (e.g. token "
            f"{int(rows[bad[0]])}) are not those of their stored vectors")


def _check_passages(r: Retriever, path: Path) -> None:
    """A chunked index: the passage map against ids and deleted flags, the document store holding each live
    document once (at its first passage's row), and every span inside its document's source text."""
    from retriever.index.passages import passage_source

    pm = r.passages
    pm.check(path / fmt.PASSAGES, r.doc_ids, r.deleted)
    if r.documents is None:
        return
    heads = pm.heads[r.deleted[pm.heads] == 0]
    stored = r.documents.stored_rows()
    if not np.array_equal(stored, heads):
        extra = np.setdiff1d(stored, heads)
        what = (f"holds a document at row {int(extra[0])}, which is not the first passage of a live document"
                if extra.size else f"has no document at row {int(np.setdiff1d(heads, stored)[0])}, the first passage "
                                   f"of live document {r.doc_ids[np.setdiff1d(heads, stored)[0]]!r}")
        raise fmt.IndexFormatError(f"{path / fmt.DOCUMENTS} {what}")
    ends = np.maximum.reduceat(pm.spans[:, 1], pm.heads) if pm.n_rows else np.zeros(0, dtype=np.int64)
    end_of = dict(zip(pm.heads.tolist(), ends.tolist()))
    for s in range(0, heads.size, _CODE_SAMPLE):
        block = heads[s : s + _CODE_SAMPLE]
        for row, doc in zip(block.tolist(), r.documents.get(block)):
            n = len(passage_source(doc["title"], doc["text"]))
            if end_of[row] > n:
                raise fmt.IndexFormatError(f"{path / fmt.PASSAGES}: a passage of document {r.doc_ids[row]!r} ends at "
                                           f"character {end_of[row]}, its text has {n}")


def check_consistency(r: Retriever, path: Path) -> None:
    """Checks of :meth:`Retriever.verify` beyond checksums; ``IndexFormatError`` naming the problem."""
    live = np.flatnonzero(r.deleted == 0)
    if r.passages is not None:
        _check_passages(r, path)
        live = live[r.passages.numbers[live] == 0]  # one id per document, at its first passage
    live_ids = r.doc_ids[live].tolist()
    if len(set(live_ids)) != len(live_ids):
        seen: set = set()
        dup = next(i for i in live_ids if i in seen or seen.add(i))
        raise fmt.IndexFormatError(f"{path / fmt.DOC_IDS}: document id {dup!r} names two live documents")
    if r.id_type == "str":
        try:
            check_ids(live_ids, "str")
        except (TypeError, ValueError) as e:
            raise fmt.IndexFormatError(f"{path / fmt.DOC_IDS}: {e}") from None
    if r.codec.kind == "residual":
        n_cent, id_bytes = r.codec.centroids.shape[0], r.codec.id_bytes
        for s in range(0, r.n_tokens, _COPY_ROWS):
            raw = np.ascontiguousarray(r.tokens[s : s + _COPY_ROWS, :id_bytes])
            ids = np.zeros((raw.shape[0], 4), dtype=np.uint8)
            ids[:, :id_bytes] = raw
            bad = np.flatnonzero(ids.view("<u4")[:, 0] >= n_cent)
            if bad.size:
                raise fmt.IndexFormatError(f"{path / fmt.TOKENS}: token row {s + int(bad[0])} names centroid "
                                           f"{int(ids.view('<u4')[bad[0], 0])}, the codec has {n_cent}")
    if r.centroid_stage is not None and r.n_tokens:
        _check_centroid_codes(r, path)
    if r.documents is not None:
        r.documents.check(r.doc_ids, r.deleted == 0, full=True)
    if not _stores_exact_vectors(r.faiss_index) or live.size == 0:
        return
    rows = np.unique(live[np.linspace(0, live.size - 1, min(_FDE_SAMPLE, live.size)).astype(np.int64)])
    emb = TokenEmbeddings.from_list([r.codec.decode(r.tokens[r.doc_offsets[i] : r.doc_offsets[i + 1]]) for i in rows])
    fresh = r.fde_encoder.encode_documents(emb)
    stored = r.faiss_index.reconstruct_batch(rows)
    bad = ~np.all(np.isclose(stored, fresh, rtol=1e-4, atol=1e-5), axis=1)
    if bad.any():
        raise fmt.IndexFormatError(
            f"{path / fmt.FAISS}: the stored FDEs of {int(bad.sum())} of {rows.size} sampled documents (e.g. row "
            f"{int(rows[bad][0])}) differ from those of {fmt.TOKENS} under the manifest's FDE config"
        )

"""Building blocks shared by ``Retriever.build`` and the lifecycle (``add`` / ``upsert``).

Validation of documents and ids, pooling of token vectors, the streaming :class:`IndexBuilder` that
writes a new index's token store, :func:`fill_faiss` that computes FDEs from a token store block by
block straight into FAISS (build, add and compact), and the text-item readers. Both ``retriever.index.retriever`` and
``retriever.index.lifecycle`` import from here; this module imports neither.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from tqdm.auto import tqdm

from retriever.candidates.ann import add_rows, make_faiss_index, resolve_factory, train_index
from retriever.candidates.centroids import CentroidConfig, CentroidIndex
from retriever.candidates.fde import FDEEncoder
from retriever.core.memory import release_freed_memory
from retriever.core.storage import NpyAppender, NpyRowReader
from retriever.hybrid.lexical import LexicalAppender, LexicalIndex
from retriever.index import format as fmt
from retriever.index.documents import DocumentRecord, DocumentStore
from retriever.index.inputs import ids_array, py_scalar, validate_batch
from retriever.index.passages import PassageMap, timed_split
from retriever.store.codecs import TokenCodec
from retriever.store.tokens import TokenEmbeddings

if TYPE_CHECKING:
    from retriever.index.config import IndexConfig

_TOKEN_SPOOL = "token_spool.npy"  # float16 (pooled) vectors awaiting a codec that must be trained first
_CODE_ROWS = 1 << 16  # tokens encoded per step when a trained codec encodes the spool
# Documents encoded per streaming step: bounds the float32 tokens held at once (128 encodes as
# fast as 256 here; bench/scale/build_memory.py measures the peak).
_TEXT_BATCH = 128
FAISS_ADD_ROWS = 256  # FDE rows computed and added to FAISS per step (10 MB at the default 10,240 dims)


# -- building ----------------------------------------------------------------------------------


def pooled_tokens(emb: TokenEmbeddings, pool_factor: int) -> TokenEmbeddings:
    """The documents' token vectors after pooling (float32), or as they are when ``pool_factor`` is 1."""
    vectors = np.ascontiguousarray(emb.vectors, dtype=np.float32)
    if pool_factor == 1:
        return TokenEmbeddings(vectors, emb.offsets)
    from retriever_kernels.pooling import pool_tokens

    pooled, offsets = pool_tokens(vectors, np.ascontiguousarray(emb.offsets, dtype=np.int64), int(pool_factor))
    return TokenEmbeddings(pooled, offsets)


class IndexBuilder:
    """Streams validated document batches into a token store in ``workdir``; :meth:`finish` fills FAISS.

    A codec that needs training (residual codes) cannot encode before it has seen the corpus:
    then the (pooled) vectors are spooled as float16 first, the codec is trained on a random
    sample of them (bounded by ``CodecConfig.max_train_bytes``), and :meth:`finish` encodes the
    spool into the store block by block.
    """

    def __init__(self, workdir: Path, config: IndexConfig, dim: int, show_progress: bool = False,
                 pooled_dim: int | None = None, store_documents: bool = False):
        self.workdir = workdir
        self.config = config
        self.dim = dim
        self.show_progress = show_progress
        self.fde_encoder = FDEEncoder(config.fde, dim)
        config.codec.check_dim(dim)
        self.codec = None if config.codec.kind == "residual" else TokenCodec.untrained(config.codec, dim)
        if self.codec is not None:
            self.tokens = NpyAppender(workdir / fmt.TOKENS, self.codec.row_width, self.codec.row_dtype)
        else:
            self.tokens = NpyAppender(workdir / _TOKEN_SPOOL, dim, np.float16)
        self.factory: str | None = None  # the FAISS factory finish() built ("auto" resolved)
        self.centroid_config: CentroidConfig | None = None  # finish(): "auto" resolved
        self.centroid_index: CentroidIndex | None = None
        self.lengths: list[np.ndarray] = []
        self.ids: list = []
        self.id_set: set = set()
        self.id_type: str | None = None
        self.timings = {"encode_s": 0.0, "pool_s": 0.0, "fde_s": 0.0, "codec_s": 0.0, "faiss_s": 0.0, "write_s": 0.0}
        self.hybrid = config.hybrid  # resolved (a HybridConfig) by the caller
        self.dense: NpyAppender | None = None  # pooled vectors, float16, streamed to dense.npy
        self.pooled_dim = pooled_dim
        self.lexical = self._lexical_app = None
        if "dense" in self.hybrid.signals:
            if pooled_dim is None:
                raise ValueError("the dense hybrid signal needs an encoder that returns pooled vectors")
            self.dense = NpyAppender(workdir / fmt.DENSE, pooled_dim, np.float16)
        if "bm25" in self.hybrid.signals:
            self._lexical_app = LexicalAppender(LexicalIndex.empty(self.hybrid.bm25))
            self.timings["bm25_s"] = 0.0
        self.documents = DocumentStore.writer(workdir) if store_documents else None  # documents.sqlite
        if self.documents is not None:
            self.timings["store_s"] = 0.0
        self.numbers: list[np.ndarray] = []  # chunked builds: passage number and span of every row
        self.spans: list[np.ndarray] = []
        self.passages: PassageMap | None = None  # finish(): the passage map of a chunked build

    def add(self, emb: TokenEmbeddings, ids: list, pooled: np.ndarray | None = None,
            texts: list[str] | None = None, records: list[DocumentRecord] | None = None,
            passages: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Append a batch; ``records`` (one per row, for the document store) are required when the
        build stores documents. A chunked build (``IndexConfig.chunk_tokens``) appends passages: ``ids``
        repeat each document's id on its rows, ``passages`` = (passage numbers, spans) of the rows and
        ``records`` hold each document on its first row only (None on the others)."""
        if self.config.chunked and passages is None:
            raise ValueError(f"IndexConfig.chunk_tokens={self.config.chunk_tokens}: a chunked build appends passages "
                             f"(split from texts), not whole documents")
        if passages is not None and not self.config.chunked:
            raise ValueError("passages given to a build without IndexConfig.chunk_tokens")
        numbers = None if passages is None else passages[0]
        self.id_type, _ = validate_batch(emb, ids, self.dim, self.id_type, self.id_set, len(self.ids),
                                         numbers=numbers)
        if passages is not None:
            self.numbers.append(np.asarray(passages[0], dtype=np.int64))
            self.spans.append(np.asarray(passages[1], dtype=np.int64).reshape(-1, 2))
        pooled = check_signals(self.hybrid, len(ids), pooled, texts, self.pooled_dim)
        if self.documents is not None:
            if records is None or len(records) != len(ids):
                raise ValueError("this build stores documents: every batch needs its documents' texts")
            t0 = time.perf_counter()
            self.documents.append(records)
            self.timings["store_s"] += time.perf_counter() - t0
        if self._lexical_app is not None:
            t0 = time.perf_counter()
            self._lexical_app.add(texts)
            self.timings["bm25_s"] += time.perf_counter() - t0
        if pooled is not None:
            self.dense.append(pooled.astype(np.float16))
        self.id_set.update(py_scalar(i) for i in ids)
        t0 = time.perf_counter()
        emb = pooled_tokens(emb, self.config.pool_factor)
        t_pool = time.perf_counter()
        self.timings["pool_s"] += t_pool - t0
        if self.codec is not None:
            rows = self.codec.encode(emb.vectors)
            t1 = time.perf_counter()
            self.timings["codec_s"] += t1 - t_pool
            self.tokens.append(rows)
        else:
            rows = emb.vectors.astype(np.float16)
            t1 = time.perf_counter()
            self.tokens.append(rows)
        self.timings["write_s"] += time.perf_counter() - t1
        self.lengths.append(emb.lengths)
        self.ids.extend(ids)

    def _encode_spool(self, offsets: np.ndarray) -> None:
        """Train the codec on a sample of the float16 spool, then write the coded store."""
        t0 = time.perf_counter()
        spool_path = self.workdir / _TOKEN_SPOOL
        spool = NpyRowReader(spool_path)
        n_tokens = spool.shape[0]
        budget = max(1, self.config.codec.max_train_bytes // (4 * self.dim))
        rows = np.arange(n_tokens)
        if n_tokens > budget:
            rows = np.sort(np.random.default_rng(self.config.codec.seed).choice(n_tokens, budget, replace=False))
        self.codec = TokenCodec.train(self.config.codec, np.asarray(spool[rows], dtype=np.float32), n_tokens)
        self.timings["codec_s"] += time.perf_counter() - t0
        store = NpyAppender(self.workdir / fmt.TOKENS, self.codec.row_width, self.codec.row_dtype)
        n_docs = offsets.size - 1
        bar = tqdm(total=n_docs, desc=f"encoding tokens ({self.codec.config.name})", unit="doc",
                   disable=not self.show_progress)
        with store, bar:
            d0 = 0
            while d0 < n_docs:
                # documents whose tokens fit a block of _CODE_ROWS (at least one document)
                d1 = max(d0 + 1, int(np.searchsorted(offsets, offsets[d0] + _CODE_ROWS, side="right")) - 1)
                d1 = min(d1, n_docs)
                t0, t1 = int(offsets[d0]), int(offsets[d1])
                t_a = time.perf_counter()
                emb = TokenEmbeddings(np.asarray(spool[t0:t1], dtype=np.float32), offsets[d0 : d1 + 1] - t0)
                code_rows = self.codec.encode(emb.vectors)
                t_b = time.perf_counter()
                store.append(code_rows)
                self.timings["codec_s"] += t_b - t_a
                self.timings["write_s"] += time.perf_counter() - t_b
                bar.update(d1 - d0)
                d0 = d1
        spool.close()
        spool_path.unlink()

    def finish(self):
        """Close the store, then compute the FDEs from it into FAISS; returns (doc_offsets, ids array, faiss index)."""
        if not self.ids:
            raise ValueError("cannot build an index from an empty corpus")
        t0 = time.perf_counter()
        self.tokens.close()
        lengths = np.concatenate(self.lengths)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if self.codec is None:
            self.timings["write_s"] += time.perf_counter() - t0
            self._encode_spool(offsets)
            t0 = time.perf_counter()
        self.timings["write_s"] += time.perf_counter() - t0
        factory = resolve_factory(self.config.faiss_factory, len(self.ids), self.fde_encoder.output_dim)
        index = make_faiss_index(factory, self.fde_encoder.output_dim)
        with NpyRowReader(self.workdir / fmt.TOKENS) as store:  # plain reads: a map's pages would count as RSS
            if store.shape != (int(offsets[-1]), self.codec.row_width):
                raise RuntimeError(f"token store holds {store.shape} rows, expected {(int(offsets[-1]), self.codec.row_width)}")
            fill_faiss(index, factory, self.codec, self.fde_encoder, store, offsets, np.arange(len(self.ids)),
                       seed=self.config.fde.seed, timings=self.timings, show_progress=self.show_progress)
        release_freed_memory()
        self.factory = factory
        self.centroid_config = self.config.centroids.resolved(len(self.ids), int(offsets[-1]))
        if self.centroid_config.enabled:
            with NpyRowReader(self.workdir / fmt.TOKENS) as store:
                self.centroid_index = fill_centroids(self.centroid_config, self.codec, store, offsets, self.workdir,
                                                     timings=self.timings, show_progress=self.show_progress)
            release_freed_memory()
        if self.dense is not None:
            self.dense.close()
        if self.documents is not None:
            t0 = time.perf_counter()
            self.documents.finish()
            self.timings["store_s"] += time.perf_counter() - t0
        if self._lexical_app is not None:
            t0 = time.perf_counter()
            self.lexical = self._lexical_app.finish()
            self._lexical_app = None
            self.timings["bm25_s"] += time.perf_counter() - t0
        if self.config.chunked:
            self.passages = PassageMap(np.concatenate(self.numbers), np.concatenate(self.spans))
        return offsets, ids_array(self.ids, self.id_type), index


def check_signals(hybrid, n: int, pooled, texts, pooled_dim: int | None):
    """Check that a batch of ``n`` documents carries what the index's hybrid signals need.

    Returns the pooled vectors as contiguous float32 (or None); ``ValueError`` naming what is missing
    or malformed (token embeddings alone cannot feed a hybrid index: the signals come from text).
    """
    if "dense" in hybrid.signals:
        if pooled is None:
            raise ValueError("this index stores the 'dense' hybrid signal (pooled vectors computed from text): "
                             "give texts, not token embeddings")
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        if pooled.shape != (n, pooled_dim):
            raise ValueError(f"pooled vectors have shape {pooled.shape}, expected {(n, pooled_dim)}")
        if not np.isfinite(pooled).all() or np.abs(pooled).max(initial=0.0) > 65504.0:
            raise ValueError("pooled vectors hold NaN, infinite or float16-overflowing values")
    else:
        pooled = None
    if "bm25" in hybrid.signals:
        if texts is None:
            raise ValueError("this index stores the 'bm25' hybrid signal (computed from text): give texts, "
                             "not token embeddings")
        if len(texts) != n:
            raise ValueError(f"{len(texts)} texts for {n} documents")
    return pooled


def _doc_fdes(codec: TokenCodec, fde_encoder: FDEEncoder, store: np.ndarray, offsets: np.ndarray,
              docs: np.ndarray) -> np.ndarray:
    """float32 FDEs of document rows ``docs`` (sorted), computed from their stored (decoded) tokens."""
    starts, stops = offsets[docs], offsets[docs + 1]
    if docs.size and np.array_equal(starts[1:], stops[:-1]):  # consecutive rows: one slice
        vectors = codec.decode(store[int(starts[0]) : int(stops[-1])])
    else:
        vectors = np.concatenate([codec.decode(store[int(a) : int(b)]) for a, b in zip(starts, stops)])
    sub = np.zeros(docs.size + 1, dtype=np.int64)
    np.cumsum(stops - starts, out=sub[1:])
    return fde_encoder.encode_documents(TokenEmbeddings(vectors, sub))


def fill_faiss(index, factory: str, codec: TokenCodec, fde_encoder: FDEEncoder, store: np.ndarray,
               offsets: np.ndarray, docs: np.ndarray, *, seed: int, timings: dict | None = None,
               show_progress: bool = False, train: bool = True) -> None:
    """Add the FDEs of document rows ``docs`` (sorted) to ``index``, computed block by block from the store.

    An index type that needs training is first trained on the FDEs of a random sample of ``docs``
    (at most ``ann.TRAIN_BYTES`` of float32 FDEs); ``train=False`` requires a trained index. No FDE
    matrix of the corpus is ever held or written: peak memory is one block of FDEs plus the index.
    """
    timings = timings if timings is not None else {}
    docs = np.asarray(docs, dtype=np.int64)
    t0 = time.perf_counter()
    fde_s = 0.0
    if not index.is_trained:
        if not train:
            raise ValueError(f"the FAISS index {factory!r} is not trained")

        def sample_rows(rows):
            nonlocal fde_s
            t = time.perf_counter()
            out = np.concatenate([_doc_fdes(codec, fde_encoder, store, offsets, docs[rows[s : s + FAISS_ADD_ROWS]])
                                  for s in range(0, rows.size, FAISS_ADD_ROWS)])
            fde_s += time.perf_counter() - t
            return out

        train_index(index, factory, int(docs.size), sample_rows, seed=seed)
    bar = tqdm(total=int(docs.size), desc=f"FDEs into FAISS ({factory})", unit="doc", disable=not show_progress)

    def blocks():
        nonlocal fde_s
        for s in range(0, docs.size, FAISS_ADD_ROWS):
            t = time.perf_counter()
            block = _doc_fdes(codec, fde_encoder, store, offsets, docs[s : s + FAISS_ADD_ROWS])
            fde_s += time.perf_counter() - t
            yield block
            bar.update(block.shape[0])

    with bar:
        add_rows(index, blocks(), int(docs.size))
    timings["fde_s"] = timings.get("fde_s", 0.0) + fde_s
    timings["faiss_s"] = timings.get("faiss_s", 0.0) + time.perf_counter() - t0 - fde_s


def fill_centroids(config: CentroidConfig, codec: TokenCodec, store, offsets: np.ndarray, workdir: Path, *,
                   timings: dict | None = None, show_progress: bool = False) -> CentroidIndex:
    """The token centroid stage of a token store: trained on a random sample of its decoded tokens
    (at most ``config.max_train_bytes`` of float32), then every token assigned block by block into
    ``workdir / ivf_codes.npy`` and, with residual codes, its residual coded into
    ``workdir / ivf_residuals.npy`` (both memory-mapped into the result, with the inverted lists built)."""
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    n_tokens = int(offsets[-1])
    budget = max(1, config.max_train_bytes // (4 * codec.dim))
    rows = np.arange(n_tokens)
    if n_tokens > budget:
        rows = np.sort(np.random.default_rng(config.seed).choice(n_tokens, budget, replace=False))
    sample = np.concatenate([codec.decode(np.asarray(store[rows[s : s + _CODE_ROWS]]))
                             for s in range(0, rows.size, _CODE_ROWS)])
    out = CentroidIndex.train(sample, n_tokens, config)
    del sample
    mq = out.residual_bytes
    bar = tqdm(total=n_tokens, desc=f"token centroids ({out.n_centroids})", unit="tok", unit_scale=True,
               disable=not show_progress)
    with contextlib.ExitStack() as stack:
        w = stack.enter_context(NpyAppender(workdir / fmt.IVF_CODES, 1, out.code_dtype))
        wr = stack.enter_context(NpyAppender(workdir / fmt.IVF_RESIDUALS, mq, np.uint8)) if mq else None
        stack.enter_context(bar)
        for s in range(0, n_tokens, 4 * _CODE_ROWS):
            x = codec.decode(np.asarray(store[s : min(n_tokens, s + 4 * _CODE_ROWS)]))
            codes = out.assign(x)
            w.append(codes[:, None])
            if wr is not None:
                wr.append(out.encode_residuals(x, codes))
            bar.update(x.shape[0])
    codes = fmt.load_array(workdir, fmt.IVF_CODES, True, out.code_dtype, (n_tokens, 1)).reshape(-1)
    residuals = fmt.load_array(workdir, fmt.IVF_RESIDUALS, True, np.uint8, (n_tokens, mq)) if mq else None
    out.set_codes(codes, offsets, residuals)
    timings["centroids_s"] = timings.get("centroids_s", 0.0) + time.perf_counter() - t0
    return out


def stream_texts(builder, records: Iterator, encoder, show_progress: bool, word_pooling: bool = False,
                 chunking: IndexConfig | None = None) -> None:
    """Encode :class:`DocumentRecord` s step by step (``_TEXT_BATCH`` documents) into ``builder.add``.

    With ``chunking`` (an ``IndexConfig`` with ``chunk_tokens``) each step's documents are split into
    passages first (``retriever.index.passages``) and the passages are encoded and added, one row each.
    Truncated documents are counted over all steps and logged in one line at the end.
    """
    summary = encoder.truncation_summary() if hasattr(encoder, "truncation_summary") else contextlib.nullcontext()
    with tqdm(desc="encoding documents", unit="doc", disable=not show_progress) as bar, summary:
        while True:
            chunk = list(itertools.islice(records, _TEXT_BATCH))
            if not chunk:
                break
            passages = None
            rows = chunk
            if chunking is not None and chunking.chunked:
                batch = timed_split(chunk, encoder, chunking, builder.timings)
                ids, texts, rows, passages = batch.ids, batch.texts, batch.records, (batch.numbers, batch.spans)
            else:
                ids = [rec.id for rec in chunk]
                texts = [rec.text for rec in chunk]
            signals = builder.hybrid.signals
            t0 = time.perf_counter()
            pooled = None
            if "dense" in signals:
                emb, pooled = encoder.encode_documents(texts, word_pooling=word_pooling, return_pooled=True)
            else:
                emb = encoder.encode_documents(texts, word_pooling=word_pooling)
            builder.timings["encode_s"] += time.perf_counter() - t0
            builder.add(emb, ids, pooled, texts if "bm25" in signals else None, records=rows, passages=passages)
            del emb  # not alive during the next step's encoding
            release_freed_memory()
            bar.update(len(chunk))

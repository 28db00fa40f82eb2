"""The index: build from token embeddings or texts, search, save, load.

``Retriever`` holds a token store (CSR: ``tokens`` + ``doc_offsets``; int8 by default, see
``retriever.store.codecs``), the external document ids, a FAISS inner-product index over the documents'
MUVERA FDE vectors and, from 2,048 documents, the token centroid stage (``retriever.candidates.centroids``).
Search fetches candidates from the centroid stage (or by FDE inner product) and reranks them by
exact MaxSim.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from retriever.candidates.ann import faiss_search
from retriever.candidates.centroids import CentroidConfig, CentroidIndex
from retriever.candidates.fde import FDEEncoder
from retriever.core.storage import (
    NpyAppender,
    atomic_replace_dir,
    make_temp_dir_beside,
    recover_interrupted_swap,
)
from retriever.hybrid.fusion import FusionConfig, rank_fused, score_union
from retriever.hybrid.lexical import LexicalIndex
from retriever.index import format as fmt
from retriever.index.builder import IndexBuilder, stream_texts
from retriever.index.config import IndexConfig
from retriever.index.documents import DocumentRecord, DocumentStore, check_metadata
from retriever.index.inputs import (
    MAX_INT_ID,
    ids_array,
    is_batch_item,
    is_embeddings,
    is_text_item,
    peek,
    py_scalar,
    text_items,
    texts_of_queries,
)
from retriever.index.passages import PassageMap, check_chunking, embeddings_refused, load_passage_map, rank_documents
from retriever.index.search import (
    SearchResults,
    auto_rule,
    candidate_stage,
    exhaustive_is_cheaper,
    merge_query_groups,
    search_candidates,
    search_exact,
    search_in_groups,
    stage_groups,
)
from retriever.index.writer import WriteGuard
from retriever.store.codecs import TokenCodec
from retriever.store.tokens import TokenEmbeddings, as_token_embeddings

log = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 5  # loads retried when a concurrent save swaps the directory mid-load

#: The largest ``k`` a search accepts: results are dense (n_queries, k) arrays, so an unbounded k
#: (say 10**8) would allocate gigabytes of padding before any work.
MAX_K = 100_000

__all__ = ["IndexConfig", "Retriever"]


# -- the index ---------------------------------------------------------------------------------


class Retriever:
    """A multi-vector index: candidates from token centroids or MUVERA FDEs, exact MaxSim rerank.

    Create one with :meth:`build` or :meth:`load`; the constructor is internal.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (5, 9, 3)]
    >>> r = Retriever.build(docs, doc_ids=["a", "b", "c"], show_progress=False)
    >>> res = r.search(docs[1], k=2)
    >>> res.ids[0, 0]
    'b'
    """

    def __init__(
        self,
        *,
        tokens: np.ndarray,
        doc_offsets: np.ndarray,
        doc_ids: np.ndarray,
        id_type: str,
        faiss_index,
        config: IndexConfig,
        codec: TokenCodec | None = None,
        encoder_info: dict | None = None,
        encoder=None,
        deleted: np.ndarray | None = None,
        workdir: Path | None = None,
        build_timings: dict | None = None,
        dense: np.ndarray | None = None,
        lexical: LexicalIndex | None = None,
        centroid_stage: CentroidIndex | None = None,
        documents: DocumentStore | None = None,
        passages: PassageMap | None = None,
    ) -> None:
        if config.hybrid == "auto":
            config = config.resolved(texts=False, pooled=False)
        self.tokens = tokens
        self.doc_offsets = doc_offsets
        self.doc_ids = doc_ids
        self.id_type = id_type
        self._faiss_lock = threading.Lock()
        self._faiss_loader = None  # reads fde.faiss on first use (see load)
        self.faiss_index = faiss_index
        self.config = config
        self.codec = codec if codec is not None else TokenCodec.untrained(config.codec, int(tokens.shape[1]))
        self.dim = self.codec.dim
        self.fde_encoder = FDEEncoder(config.fde, self.dim)
        self.encoder_info = encoder_info
        self._encoder = encoder
        self._encoder_lock = threading.Lock()
        self.deleted = deleted if deleted is not None else np.zeros(len(doc_offsets) - 1, dtype=np.uint8)
        self.build_timings = build_timings or {}
        self.dense = dense  # hybrid "dense" signal: (n_rows, d) float16 pooled vectors (dense.npy)
        self.lexical = lexical  # hybrid "bm25" signal
        self.centroid_stage = centroid_stage  # token centroid candidates (retriever.candidates.centroids), or None
        self.documents = documents  # titles, texts and metadata by row (retriever.index.documents), or None
        self.passages = passages  # chunked indexes: row -> passage of its document (retriever.index.passages)
        self.row_of: dict | None = None  # external id -> live row, built on first use
        self.ids_lock = threading.Lock()  # guards row_of
        self._write_lock = threading.RLock()  # serialises add/upsert/delete/compact/save
        self.writer = WriteGuard(fmt.commit_of)  # write locks held, commit last seen per directory
        self.workdir: Path | None = None
        self._workdir_cleanup = None
        if workdir is not None:  # temporary files of an unsaved build, removed with the object
            self.adopt_workdir(workdir)

    def adopt_workdir(self, workdir: Path | None) -> None:
        """Make ``workdir`` this object's temporary directory (removed with it); drop the previous one."""
        old = self._workdir_cleanup
        self.workdir = workdir
        self._workdir_cleanup = weakref.finalize(self, shutil.rmtree, str(workdir), True) if workdir is not None else None
        if old is not None:
            old()  # memory maps of its files stay valid until they are released

    # -- properties ------------------------------------------------------------------------
    @property
    def faiss_index(self):
        """The FAISS index of the document FDEs. A loaded index with the token centroid stage reads
        it on first use (searches use the centroid stage: the FDEs stay on disk, 1.3 KB per document)."""
        if self._faiss_index is None and self._faiss_loader is not None:
            with self._faiss_lock:
                if self._faiss_index is None and self._faiss_loader is not None:
                    self._faiss_index = self._faiss_loader()
                    self._faiss_loader = None
        return self._faiss_index

    @faiss_index.setter
    def faiss_index(self, index) -> None:
        self._faiss_index = index
        self._faiss_loader = None

    @property
    def faiss_loaded(self) -> bool:
        """Whether the FDE index is in memory (see :attr:`faiss_index`)."""
        return self._faiss_index is not None

    @property
    def n_docs(self) -> int:
        """Documents that can be returned (deleted ones excluded); a chunked index counts documents, not
        their passages (see :attr:`n_live_rows`)."""
        if self.passages is not None:
            return self.passages.n_live_documents(self.deleted)
        return self.n_live_rows

    @property
    def n_live_rows(self) -> int:
        """Rows that can be returned: documents, or a chunked index's passages (deleted ones excluded)."""
        return int(len(self.doc_ids) - int(self.deleted.sum()))

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def store(self):
        """The token store as the MaxSim kernels take it (decoded inside the kernels)."""
        return self.codec.store(self.tokens)

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return (
            f"Retriever(n_docs={self.n_docs}, n_tokens={self.n_tokens}, dim={self.dim}, "
            f"fde_dim={self.fde_encoder.output_dim}, faiss={self.config.faiss_factory!r}, "
            f"codec={self.codec.config.name!r}, pool_factor={self.config.pool_factor}"
            f"{', word_pooling=True' if self.config.word_pooling else ''}"
            f"{f', hybrid={self.config.hybrid.signals}' if self.config.hybrid.enabled else ''}"
            f"{f', passages={self.n_live_rows}, chunk_tokens={self.config.chunk_tokens}' if self.passages else ''})"
        )

    # -- build -----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        documents,
        doc_ids=None,
        *,
        config: IndexConfig | None = None,
        encoder=None,
        path: str | Path | None = None,
        show_progress: bool = True,
        texts=None,
        pooled=None,
        metadata=None,
        lock: bool = True,
    ) -> "Retriever":
        """Build an index from token embeddings or from texts.

        Parameters
        ----------
        documents :
            Token embeddings — a ``TokenEmbeddings``, a list of ``(n_i, dim)`` arrays — or texts:
            an iterable of strings, ``(id, text)`` pairs, or BEIR dicts (``_id``, ``title``, ``text``).
            Texts are encoded with ``encoder`` (the bundled default when ``None``) and streamed to
            disk batch by batch.
        doc_ids : sequence of str or non-negative int, optional
            External ids (unique). Default: 0..n-1. Not used with pairs or BEIR dicts, which carry ids.
        config : IndexConfig, optional
        encoder : ColBERTEncoder, optional
        path : optional directory to build into (written atomically, like :meth:`save`);
            without it the index lives in a temporary directory until saved.
        texts, pooled : optional, with token embeddings (not streamed batches) only
            The documents' texts (one str each: the BM25 hybrid signal) and pooled single vectors
            (float32 ``(n, d)``: the dense signal), when the token embeddings were computed
            elsewhere. Text builds compute both themselves.
        metadata : optional, with token embeddings and ``texts``
            One JSON object (dict) per document, kept in the document store for ``where=`` filters
            (text builds take metadata from BEIR dicts instead).
        lock : take ``path``'s write lock (default) and hold it until :meth:`close`; ``False`` only
            for a caller that holds the lock of an enclosing directory (a sharded index's shards).
        """
        config = config or IndexConfig()
        if isinstance(documents, (str, bytes)):
            raise TypeError("documents must be a collection of texts or token embeddings, not a single string")
        if isinstance(doc_ids, (str, bytes)):
            raise TypeError("doc_ids must be a collection of ids, not a single string")
        streamed = False
        if is_embeddings(documents):
            is_text, items = False, documents
        else:
            first, items = peek(documents)
            is_text = is_text_item(first)
            streamed = is_batch_item(first)
            if streamed and doc_ids is not None:
                raise ValueError("doc_ids must be None when documents are (TokenEmbeddings, ids) batches: "
                                 "each batch carries its ids")
        if (texts is not None or pooled is not None or metadata is not None) and (is_text or streamed):
            raise ValueError("texts=, pooled= and metadata= go with token embeddings (a list or TokenEmbeddings); "
                             "text builds compute them, streamed batches cannot carry them")
        if metadata is not None and texts is None:
            raise ValueError("metadata= is stored with the documents' texts: give texts= too")
        if config.chunked and not is_text:
            raise embeddings_refused(config, "these documents are")
        if texts is not None:
            if isinstance(texts, (str, bytes)):
                raise TypeError("texts must be a collection of strings, one per document, not a single string")
            texts = list(texts)
        if is_text:  # the bundled encoder pools; an encoder of another kind may not
            config = config.resolved(texts=True, pooled=encoder is None or hasattr(encoder, "pooled_dim"),
                                     fusion=getattr(encoder, "recommended_fusion", None))
        else:
            config = config.resolved(texts=texts is not None, pooled=pooled is not None,
                                     fusion=getattr(encoder, "recommended_fusion", None))
        target = Path(path) if path is not None else None
        guard = WriteGuard(fmt.commit_of, managed=lock)
        if target is not None:
            guard.lock(target, "build into")
        try:
            workdir = make_temp_dir_beside(target) if target is not None else Path(tempfile.mkdtemp(prefix="retriever-"))
        except BaseException:
            guard.close()
            raise
        try:
            if is_text:
                if encoder is None:
                    from retriever.encoders.colbert import ColBERTEncoder

                    encoder = ColBERTEncoder.from_pretrained("default")
                check_chunking(config, encoder)
                pooled_dim = getattr(encoder, "pooled_dim", None) if "dense" in config.hybrid.signals else None
                builder = IndexBuilder(workdir, config, encoder.dim, show_progress, pooled_dim=pooled_dim,
                                       store_documents=config.store_text)
                stream_texts(builder, text_items(items, doc_ids), encoder, show_progress, config.word_pooling,
                             chunking=config)
            elif config.word_pooling:
                raise ValueError("IndexConfig.word_pooling needs text documents (the encoder's tokenizer tells "
                                 "the words apart); these are token embeddings")
            elif streamed:
                builder = None
                with tqdm(desc="adding token embeddings", unit="doc", disable=not show_progress) as bar:
                    for pos, batch in enumerate(items):
                        if not is_batch_item(batch):
                            raise TypeError(f"documents batch {pos} is a {type(batch).__name__}; every batch must be "
                                            f"a (TokenEmbeddings, ids) pair")
                        emb, ids = batch
                        if builder is None:
                            builder = IndexBuilder(workdir, config, emb.dim, show_progress)
                        builder.add(emb, list(ids))
                        bar.update(len(emb))
            else:
                emb = as_token_embeddings(list(items) if not isinstance(items, TokenEmbeddings) else items)
                ids = list(range(len(emb))) if doc_ids is None else list(doc_ids)
                pooled_dim = None
                if pooled is not None:
                    pooled = np.asarray(pooled)
                    if pooled.ndim != 2:
                        raise ValueError(f"pooled must be a 2-D (n_docs, d) array, got shape {pooled.shape}")
                    pooled_dim = int(pooled.shape[1])
                    if encoder is not None and getattr(encoder, "pooled_dim", pooled_dim) != pooled_dim:
                        raise ValueError(f"pooled vectors have dim {pooled_dim}, the encoder pools {encoder.pooled_dim}")
                stores = config.store_text and texts is not None
                builder = IndexBuilder(workdir, config, emb.dim, show_progress, pooled_dim=pooled_dim,
                                       store_documents=stores)
                records = None
                if stores:
                    if len(texts) != len(ids):
                        raise ValueError(f"{len(texts)} texts for {len(ids)} documents")
                    metas = [None] * len(ids) if metadata is None else list(metadata)
                    if len(metas) != len(ids):
                        raise ValueError(f"{len(metas)} metadata objects for {len(ids)} documents")
                    records = [DocumentRecord(i, t, None, t, check_metadata(m, i)) for i, t, m in zip(ids, texts, metas)]
                builder.add(emb, ids, pooled if "dense" in config.hybrid.signals else None,
                            texts if "bm25" in config.hybrid.signals else None, records=records)
            encoder_info = encoder.identity() if encoder is not None else None
            offsets, ids_arr, index = builder.finish()
            if builder.factory != config.faiss_factory:
                log.info("faiss_factory=%r chose %r for %d documents", config.faiss_factory, builder.factory, len(ids_arr))
                config = dataclasses.replace(config, faiss_factory=builder.factory)
            config = dataclasses.replace(config, centroids=builder.centroid_config)
            codec = builder.codec
            tokens = fmt.load_array(workdir, fmt.TOKENS, True, codec.row_dtype, (int(offsets[-1]), codec.row_width))
            r = cls(
                tokens=tokens,
                doc_offsets=offsets,
                doc_ids=ids_arr,
                id_type=builder.id_type,
                faiss_index=index,
                config=config,
                codec=codec,
                encoder_info=encoder_info,
                encoder=encoder,
                workdir=None if target is not None else workdir,
                build_timings=builder.timings,
                dense=_built_dense(workdir, builder, len(ids_arr)),
                lexical=builder.lexical,
                centroid_stage=builder.centroid_index,
                passages=builder.passages,
            )
            if builder.documents is None:
                config = dataclasses.replace(config, store_text=False)
                r.config = config
            else:  # the file the build wrote (moved with its directory below)
                r.documents = DocumentStore.open(workdir, len(ids_arr))
            r.writer = guard
            if target is not None:
                r._write_into(workdir, tokens_in_place=True)
                commit = fmt.commit_of(workdir)
                atomic_replace_dir(workdir, target)
                guard.opened(target, commit)
                r.tokens = fmt.load_array(target, fmt.TOKENS, True, codec.row_dtype, tokens.shape)
                stage = r.centroid_stage
                if stage is not None:  # the same bytes, mapped from their final place
                    stage.codes = _load_codes(target, stage, r.n_tokens)
                    if stage.residuals is not None:
                        stage.residuals = fmt.load_array(target, fmt.IVF_RESIDUALS, True, np.uint8,
                                                         stage.residuals.shape)
                if r.dense is not None:
                    r.dense = fmt.load_array(target, fmt.DENSE, True, np.float16, r.dense.shape)
                if r.documents is not None:  # the same file, from its final place
                    r.documents = r.documents.rebased(target, len(ids_arr))
            log.info("built %r (timings %s)", r, {k: round(v, 2) for k, v in builder.timings.items()})
            return r
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            guard.close()
            raise

    # -- search ----------------------------------------------------------------------------
    def search(
        self,
        queries,
        k: int = 10,
        *,
        n_candidates: int | str | None = "auto",
        mode: str = "auto",
        ef_search: int | None = None,
        nprobe: int | None = None,
        subset=None,
        where: dict | None = None,
        hybrid: bool | FusionConfig | None = None,
        query_texts=None,
        query_pooled=None,
        passages: bool = False,
    ) -> SearchResults:
        """Top-``k`` documents for each query by MaxSim (late interaction) similarity.

        Parameters
        ----------
        queries :
            Query token embeddings (``TokenEmbeddings``, a list of ``(n_i, dim)`` arrays, or one
            ``(n, dim)`` array = a batch of one), or query texts (a string or a list of strings,
            encoded with the index's encoder).
        k : int in [1, MAX_K] (100,000: results are (n_queries, k) arrays, padded past the corpus)
        n_candidates : int >= k, or "auto" (default; ``None`` means the same)
            Documents fetched by the candidate stage and reranked exactly. ``"auto"``: for the
            FDE stage :func:`retriever.index.search.auto_n_candidates` (``20 * sqrt(n)``), for the
            centroid stage :func:`retriever.candidates.centroids.auto_candidates` (``65 * n ** 0.25``, at least 400), of the
            number of searchable documents (live, and in ``subset`` when given); at least ``10 * k``.
        mode : "auto" (default), "fde", "centroids" or "exact"
            "fde": FAISS candidates by FDE inner product + exact rerank; "centroids": candidates
            from the token centroid stage (indexes built with it) + exact rerank; "exact":
            exhaustive MaxSim, the ground truth; "auto": the centroid stage when the index has
            it for queries of at most ``IndexConfig.centroids.max_query_tokens`` vectors (64 below 40,000
            documents, every query above), the FDEs for longer ones and on indexes without the stage (a
            mixed batch is searched as two groups), unless scoring every document costs less than reranking the
            candidates (:func:`retriever.index.search.exhaustive_is_cheaper`: large batches of short
            queries on small corpora), in which case the answer is the exact one.
        ef_search : HNSW search depth (HNSW FDE indexes only)
        nprobe : lists visited: per query token for the centroid stage (default
            ``IndexConfig.centroids.nprobe``), per query for IVF FDE indexes
        subset : optional collection of external ids; only these documents are returned
        where : optional metadata filter (MongoDB style, ``retriever.index.filters``), e.g.
            ``{"year": {"$gte": 2020}, "lang": "en"}``; only documents whose stored metadata matches
            are returned (with ``subset``: documents in both). Needs the document store.
        hybrid : None (default), True, False or a FusionConfig
            Fuse MaxSim with the index's stored hybrid signals (dense single vector, BM25; see
            ``retriever.hybrid.fusion``): ``None`` does when the index stores any and the queries are
            texts; ``True`` requires it; ``False`` ranks by MaxSim alone; a ``FusionConfig``
            fuses with those settings instead of the index's. A hybrid search's ``scores`` are
            the fused scores.
        query_texts, query_pooled : with query embeddings only
            The queries' texts (BM25) and pooled single vectors (float32 ``(n_queries, d)``, the
            dense signal) for a hybrid search when the embeddings were computed elsewhere (an index
            built with ``texts=`` / ``pooled=``). Text queries compute both themselves.
        passages : bool
            Chunked indexes (``IndexConfig.chunk_tokens``) only. False (default): documents, each scored
            by its best passage (MaxP), ``k`` distinct documents (passages are ranked as deep as that
            takes); ``subset`` and ``where`` select documents (all their passages). True: the top-``k``
            passages, a document possibly several times. ``n_candidates`` counts passages.

        Returns
        -------
        SearchResults with (n_queries, k) ``ids``, ``scores`` (descending) and ``rows``; its
        :meth:`~SearchResults.hits` adds each hit's title, text and metadata from the document store.
        A chunked index's results also carry each hit's ``passages`` (number) and ``spans``.
        """
        return self._search(queries, k, n_candidates=n_candidates, mode=mode, ef_search=ef_search, nprobe=nprobe,
                            subset=subset, where=where, hybrid=hybrid, query_texts=query_texts,
                            query_pooled=query_pooled, passages=passages)

    def warmup(self) -> None:
        """Answer one throw-away query along the default path, so that the first real one pays no
        compilation or lazy loading: the numba kernels (compiled, or read from numba's on-disk cache),
        the text encoder and its first forward pass, the candidate stage's first use. A text query
        when the index has an encoder, else a random unit query of ``dim``. The service calls this
        before it reports healthy."""
        if self.n_docs == 0:
            return
        if self._encoder is not None or self.encoder_info is not None:
            self.search(["warm up"], k=10)
        else:
            q = np.random.default_rng(0).standard_normal((4, self.dim)).astype(np.float32)
            self.search([q / np.linalg.norm(q, axis=1, keepdims=True)], k=10)

    def hybrid_union(self, queries, k: int = 10, **kwargs):
        """A hybrid search stopped before ranking: ``(fusion, scored, ids)``, with ``scored`` per query
        ``(rows of U, {signal: scores over U}, {signal: its own top scores})`` (see
        :func:`retriever.hybrid.fusion.score_union`) and ``ids`` per query the external ids of U. A sharded
        index fuses its shards' unions with global top lists so that fused scores compare across
        shards. Arguments as for :meth:`search`; ``ValueError`` when the search would not be hybrid."""
        out = self._search(queries, k, union_only=True, **kwargs)
        if out is None:
            raise ValueError("not a hybrid search: the index stores no hybrid signals, the queries have no texts, "
                             "or hybrid=False")
        fusion, scored = out
        return fusion, scored, [self._ids_of(u) for u, _, _ in scored]

    def _search(self, queries, k, *, n_candidates="auto", mode="auto", ef_search=None, nprobe=None, subset=None,
                where=None, hybrid=None, query_texts=None, query_pooled=None, union_only=False, passages=False):
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if mode not in ("auto", "fde", "centroids", "exact"):
            raise ValueError(f"mode must be 'auto', 'fde', 'centroids' or 'exact', got {mode!r}")
        if not isinstance(passages, (bool, np.bool_)):
            raise TypeError(f"passages must be a bool, got {passages!r}")
        if passages and self.passages is None:
            raise ValueError("passages=True returns passages of an index built with IndexConfig.chunk_tokens "
                             "(documents split into passages); this index has one row per document")
        if mode == "centroids" and self.centroid_stage is None:
            raise ValueError("mode='centroids' needs an index built with the token centroid stage "
                             "(IndexConfig.centroids); this one has none")
        stage = candidate_stage(self.centroid_stage is not None, mode)
        if stage == "centroids" and ef_search is not None:
            raise ValueError("ef_search applies to HNSW FDE indexes; this search uses the centroid stage "
                             "(pass mode='fde' to search the FDEs)")
        if nprobe is not None and (not isinstance(nprobe, (int, np.integer)) or isinstance(nprobe, bool) or nprobe < 1):
            raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}")
        auto = n_candidates is None or (isinstance(n_candidates, str) and n_candidates == "auto")
        if not auto and (not isinstance(n_candidates, (int, np.integer)) or isinstance(n_candidates, bool)
                         or n_candidates < k):
            raise ValueError(f"n_candidates must be 'auto' or an integer >= k ({k}), got {n_candidates!r}")
        texts = texts_of_queries(queries)
        if texts is not None and (query_texts is not None or query_pooled is not None):
            raise ValueError("query_texts and query_pooled go with query embeddings; these queries are texts")
        fusion = self._fusion(hybrid, texts is not None or query_texts is not None)
        q_pooled = None
        if fusion is not None and texts is not None and "dense" in self.config.hybrid.signals:
            q, q_pooled = self.encoder.encode_queries(texts, return_pooled=True)
            q = self._query_embeddings(q)
        else:
            q = self._query_embeddings(queries)
        if fusion is not None and texts is None:  # embeddings with their texts (and pooled vectors)
            texts, q_pooled = self._hybrid_query_side(len(q), query_texts, query_pooled)
        elif fusion is None and (query_texts is not None or query_pooled is not None):
            raise ValueError("query_texts / query_pooled serve hybrid searches only; this search is not one "
                             "(hybrid=False, or the index stores no hybrid signals)")
        if fusion is not None:  # short and long queries are fused with their own weights and depth
            groups = fusion.groups(q.lengths)
            if len(groups) > 1:
                if union_only:
                    raise ValueError("hybrid_union: this batch mixes short and long queries, which fuse differently "
                                     "(FusionConfig.long_weights); pass each group apart or a FusionConfig with "
                                     "long_weights=None")
                return search_in_groups(groups, q, texts, q_pooled, lambda f, q_g, texts_g, pooled_g: self._search(
                    q_g, k, n_candidates=n_candidates, mode=mode, ef_search=ef_search, nprobe=nprobe, subset=subset,
                    where=where, hybrid=f, query_texts=texts_g, query_pooled=pooled_g, passages=passages))
            fusion = groups[0][0]
        by_stage = stage_groups(q.lengths, self.centroid_stage is not None, mode,
                                self.config.centroids.query_token_limit(len(self.doc_ids)))
        if len(by_stage) > 1:  # mode="auto": long queries take the FDE stage, the others the centroid stage
            if union_only and fusion is None:
                return None
            parts = [(idx, self._search(
                q.select(idx), k, n_candidates=n_candidates, mode=mode, ef_search=ef_search, nprobe=nprobe,
                subset=subset, where=where, hybrid=fusion if fusion is not None else False,
                query_texts=None if fusion is None else [texts[i] for i in idx],
                query_pooled=None if fusion is None or q_pooled is None else q_pooled[idx],
                union_only=union_only, passages=passages)) for _, idx in by_stage]
            if not union_only:
                return merge_query_groups(parts, len(q))
            scored = [None] * len(q)
            for idx, (_, part) in parts:
                for j, i in enumerate(idx):
                    scored[i] = part[j]
            return fusion, scored
        stage = by_stage[0][0]
        allowed = self._allowed_mask(subset, where)
        n_allowed = int(allowed.sum()) if allowed is not None else len(self.doc_ids)

        def rank(idx, depth: int, whole_union: bool = False):
            """(rows, scores, exhaustive) of the top-``depth`` rows for the queries ``idx`` (None: all)."""
            q_i = q if idx is None else q.select(idx)
            if auto:
                n_cand = max(int(depth), auto_rule(stage)(n_allowed, int(k)))
            else:
                n_cand = max(int(depth), int(n_candidates))
            exhaustive = (mode == "exact" or n_cand >= n_allowed
                          or (mode == "auto" and exhaustive_is_cheaper(q_i.lengths, n_cand, n_allowed)))
            if fusion is not None:
                union_depth = max(int(depth), fusion.depth)
                if exhaustive:
                    base, _ = search_exact(q_i, self.store, self.doc_offsets, k=union_depth, allowed=allowed)
                else:
                    base = self._candidates(q_i, n_cand, stage, ef_search, nprobe, allowed)
                texts_i = texts if idx is None else [texts[j] for j in idx]
                pooled_i = q_pooled if q_pooled is None or idx is None else q_pooled[idx]
                scored = score_union(
                    q_i, base, self.store, self.doc_offsets, depth=union_depth,
                    dense=self.dense if pooled_i is not None else None, q_pooled=pooled_i,
                    lexical=self.lexical, q_texts=texts_i if self.lexical is not None else None, allowed=allowed,
                )
                if union_only:
                    return fusion, scored
                width = max([int(depth)] + [u.size for u, _, _ in scored]) if whole_union else int(depth)
                return (*rank_fused(scored, width, fusion), exhaustive)
            if exhaustive:
                # exhaustive scoring of every allowed document is exact and (by the kernels' cost model) cheaper
                return (*search_exact(q_i, self.store, self.doc_offsets, k=int(depth), allowed=allowed), True)
            cand = self._candidates(q_i, n_cand, stage, ef_search, nprobe, allowed)
            return (*search_candidates(q_i, cand, self.store, self.doc_offsets, k=int(depth)), False)

        if union_only:
            return rank(None, int(k)) if fusion is not None else None
        if self.passages is not None and not passages:
            return self._search_documents(q, int(k), rank, fusion is not None, n_allowed)
        rows, scores, _ = rank(None, int(k))
        numbers = spans = None
        if self.passages is not None:
            numbers, spans = self.passages.info(rows)
        return SearchResults(ids=self._ids_of(rows), scores=scores, rows=rows, documents=self._fetch_documents(),
                             passages=numbers, spans=spans, passage_hits=bool(passages))

    def _search_documents(self, q: TokenEmbeddings, k: int, rank, fused: bool, n_allowed: int) -> SearchResults:
        """Documents of a chunked index by their best passage (see :func:`retriever.index.passages.rank_documents`)."""
        heads, scores, best = rank_documents(self, q, k, rank, fused, n_allowed)
        numbers, spans = self.passages.info(best)
        return SearchResults(ids=self._ids_of(heads), scores=scores, rows=heads, documents=self._fetch_documents(),
                             passages=numbers, spans=spans)

    def _candidates(self, q: TokenEmbeddings, n: int, stage: str, ef_search, nprobe, allowed) -> np.ndarray:
        """int64 (n_q, n) candidate rows (-1 padded) from the centroid stage or the FDE index."""
        if stage == "centroids":
            cfg = self.config.centroids
            return self.centroid_stage.candidates(q.vectors, q.offsets, n, int(nprobe or cfg.nprobe), cfg.probe_cells,
                                                  allowed=allowed, probe_budget=0 if nprobe else cfg.probe_budget)
        return faiss_search(self.faiss_index, self.fde_encoder.encode_queries(q), n, ef_search=ef_search,
                            nprobe=nprobe, allowed=allowed)

    def _hybrid_query_side(self, n_q: int, query_texts, query_pooled):
        """Validated (texts, pooled) of query embeddings for a hybrid search."""
        if isinstance(query_texts, str) or not isinstance(query_texts, (list, tuple)) or len(query_texts) != n_q \
                or not all(isinstance(t, str) for t in query_texts):
            raise ValueError(f"query_texts must be a list of {n_q} strings, one per query")
        pooled = None
        if "dense" in self.config.hybrid.signals:
            if query_pooled is None:
                raise ValueError("this index's 'dense' signal needs query_pooled (the queries' pooled vectors) "
                                 "with query embeddings, or text queries")
            pooled = np.ascontiguousarray(query_pooled, dtype=np.float32)
            if pooled.shape != (n_q, self.dense.shape[1]) or not np.isfinite(pooled).all():
                raise ValueError(f"query_pooled must be a finite float array of shape {(n_q, self.dense.shape[1])}, "
                                 f"got {pooled.shape}")
        return list(query_texts), pooled

    def _fusion(self, hybrid, texts: bool) -> FusionConfig | None:
        """The fusion a search uses (None: MaxSim alone); see :meth:`search`'s ``hybrid``."""
        if hybrid is None:
            return self.config.hybrid.fusion if self.config.hybrid.enabled and texts else None
        if hybrid is False:
            return None
        if hybrid is not True and not isinstance(hybrid, FusionConfig):
            raise TypeError(f"hybrid must be None, True, False or a FusionConfig, got {hybrid!r}")
        if not self.config.hybrid.enabled:
            raise ValueError("hybrid search needs an index that stores hybrid signals (built from text with "
                             "IndexConfig.hybrid 'auto' or a HybridConfig with signals); this one stores none")
        if not texts:
            raise ValueError("hybrid search needs query texts (BM25 and the pooled vector come from the text); "
                             "these queries are token embeddings (pass query_texts= and query_pooled=)")
        return self.config.hybrid.fusion if hybrid is True else hybrid

    def _fetch_documents(self):
        """``rows -> [dict | None]`` over this index's document store, for :meth:`SearchResults.hits`."""
        store = self.documents
        return None if store is None else (lambda rows, shards=None: store.get(rows))

    def _allowed_mask(self, subset, where=None) -> np.ndarray | None:
        """uint8 (n_rows,) mask of rows that may be returned, or None when all may (a chunked index: every
        passage of each document that may be)."""
        if where is not None and self.documents is None:
            raise ValueError("where= filters on stored metadata, and this index has no document store (build it "
                             "from texts with IndexConfig.store_text=True, the default)")
        mask = None
        if self.deleted.any():
            mask = (self.deleted == 0).astype(np.uint8)
        if subset is not None:
            if isinstance(subset, (str, bytes)):
                raise TypeError("subset must be a collection of document ids, not a single string")
            rows = self.rows_of(list(subset))
            if self.passages is not None:
                rows = self.passages.expand(np.unique(rows))
            sub = np.zeros(len(self.doc_ids), dtype=np.uint8)
            sub[rows] = 1
            mask = sub if mask is None else mask & sub
        if where is not None:
            sel = self.documents.select(where).astype(np.uint8)
            if self.passages is not None:  # the store holds each document at its first row
                sel = self.passages.doc_mask(sel)
            mask = sel if mask is None else mask & sel
        return mask

    def rows_of(self, ids: list) -> np.ndarray:
        """Internal rows of the live documents with external ids ``ids``, int64 (len(ids),); a chunked
        index's documents by the row of their first passage.

        Raises ``KeyError`` naming the ids that are not in the index (never added, or deleted).
        """
        from retriever.index.lifecycle import lookup_rows

        return lookup_rows(self, ids)

    def live_row_map(self) -> dict:
        """{external id: row} over the live documents (a deleted id may have been re-added at a new row); a
        chunked index maps each document to the row of its first passage."""
        with self.ids_lock:
            if self.row_of is None:
                live = self.deleted == 0
                if self.passages is not None:
                    live &= self.passages.numbers == 0
                live = np.flatnonzero(live)
                self.row_of = dict(zip(self.doc_ids[live].tolist(), live.tolist()))
            return self.row_of

    def _ids_of(self, rows: np.ndarray) -> np.ndarray:
        if self.id_type == "int":
            out = np.full(rows.shape, -1, dtype=np.int64)
        else:
            out = np.full(rows.shape, None, dtype=object)
        hit = rows >= 0
        out[hit] = self.doc_ids[rows[hit]]
        return out

    def _query_embeddings(self, queries) -> TokenEmbeddings:
        texts = texts_of_queries(queries)
        if texts is not None:
            q = self.encoder.encode_queries(texts)
        else:
            if isinstance(queries, (list, tuple)) and not queries:
                raise ValueError("no queries given (empty list)")
            q = as_token_embeddings(queries, dtype=np.float32)
        if q.dim != self.dim:
            raise ValueError(f"query embeddings have dim {q.dim}, the index has dim {self.dim}")
        if q.lengths.min() == 0:
            raise ValueError(f"query {int(np.flatnonzero(q.lengths == 0)[0])} has zero tokens")
        q.check_finite(what="query embeddings")
        return q

    @property
    def encoder(self):
        """The text encoder this index was built with (created from the manifest on first use)."""
        with self._encoder_lock:
            if self._encoder is None:
                if self.encoder_info is None:
                    raise ValueError(
                        "this index was built from token embeddings without an encoder; "
                        "search it with query embeddings, or pass encoder= to Retriever.load"
                    )
                from retriever.encoders.colbert import ColBERTEncoder, EncoderConfig

                self._encoder = ColBERTEncoder.from_config(EncoderConfig.from_dict(self.encoder_info["config"]))
                self.check_encoder(self._encoder)
            return self._encoder

    def share_encoder(self, encoder) -> None:
        """Use ``encoder`` (checked against this index) unless an encoder is already set: shards share one."""
        with self._encoder_lock:
            if self._encoder is None:
                self.check_encoder(encoder)
                self._encoder = encoder

    def check_encoder(self, encoder) -> None:
        """Raise ValueError unless ``encoder``'s token and pooled dims match this index."""
        if encoder.dim != self.dim:
            raise ValueError(f"encoder produces dim {encoder.dim}, the index has dim {self.dim}")
        if self.dense is not None and getattr(encoder, "pooled_dim", None) != self.dense.shape[1]:
            raise ValueError(f"encoder pools {getattr(encoder, 'pooled_dim', None)}-d single vectors, the index's "
                             f"dense signal has {self.dense.shape[1]}")
        if self.encoder_info is not None:
            encoder.check_identity(self.encoder_info)

    # -- lifecycle: add, upsert, delete, compact ---------------------------------------------
    def add(self, documents, doc_ids=None, *, show_progress: bool = False) -> None:
        """Append documents without re-encoding or rebuilding what the index holds.

        Parameters
        ----------
        documents :
            As for :meth:`build`: token embeddings (a ``TokenEmbeddings``, a list of ``(n_i, dim)``
            arrays, a 3-D array) or texts (strings, ``(id, text)`` pairs, BEIR dicts), which are
            encoded with the index's encoder.
        doc_ids : sequence of str or non-negative int, optional
            Ids of the new documents, of the index's id type and not already in the index
            (an id that was deleted may be added again). Default for integer-id indexes: the
            next integers after the largest id the index holds; string-id indexes need them.

        The new documents' FDEs are added to the FAISS index; a trained FAISS index (IVF, PQ)
        keeps its training (see :meth:`compact` for retraining). Validation is as in
        :meth:`build`; on any error the index is left exactly as it was. The change lives in
        this object until :meth:`save`. Not safe to run while other threads search this object.
        """
        from retriever.index.lifecycle import add_documents

        with self._write_lock:
            self.writer.begin_change()
            add_documents(self, documents, doc_ids, replace=False, show_progress=show_progress)

    def upsert(self, documents, doc_ids=None, *, show_progress: bool = False) -> None:
        """Add documents, replacing the live documents that have the same ids.

        Same arguments as :meth:`add`, but ids are required (``doc_ids``, or carried by
        ``(id, text)`` pairs / BEIR dicts) and may exist: the old version of each such document
        is deleted and the new one appended, in one step (all or nothing).
        """
        from retriever.index.lifecycle import add_documents

        with self._write_lock:
            self.writer.begin_change()
            add_documents(self, documents, doc_ids, replace=True, show_progress=show_progress)

    def delete(self, ids) -> None:
        """Remove documents by external id; from now on no search mode returns them.

        Parameters
        ----------
        ids : collection of str or int
            Ids of live documents (repeats are deleted once). ``KeyError`` naming the unknown
            ids, and nothing is deleted, if any is not in the index.

        Deleted rows keep their space until :meth:`compact`. The change lives in this object
        until :meth:`save`.
        """
        from retriever.index.lifecycle import delete_documents

        with self._write_lock:
            self.writer.begin_change()
            delete_documents(self, ids)

    def compact(self, *, retrain: bool = False) -> int:
        """Reclaim the space of deleted documents; returns the number of rows removed.

        Rewrites the token store, offsets and ids without deleted rows and rebuilds the FAISS
        index over the remaining documents (whose ids do not change). FDEs are deterministic
        functions of the stored tokens: Flat and HNSW-Flat indexes reuse their stored vectors,
        other types re-encode them. A trained FAISS index (IVF, PQ) keeps its training unless
        ``retrain=True``, which trains afresh on the remaining documents as :meth:`build` does
        (advisable after many additions, see the README); ``retrain=True`` also retrains a
        residual token codec on the live tokens and re-encodes the store (from the decoded
        vectors: the original vectors are not kept). Raises ``ValueError`` if every
        document is deleted (an index cannot be empty). Not safe while other threads search.
        """
        from retriever.index.lifecycle import compact_index

        with self._write_lock:
            self.writer.begin_change()
            return compact_index(self, retrain=retrain)

    def rebuild_centroids(self, config: CentroidConfig | None = None, *, show_progress: bool = False) -> None:
        """(Re)build the token centroid stage from the stored tokens, or remove it.

        For an index built before the stage existed (or with it off), or to change its settings:
        ``config`` (default: the index's ``CentroidConfig`` with ``enabled=True``) is trained on a
        sample of the stored tokens and every token is assigned, as a build does; with
        ``enabled=False`` the stage is dropped. Nothing else changes (tokens, FDEs, ids). Durable
        once saved; ``retriever centroids PATH`` does it on disk. Not safe while other threads search.
        """
        from retriever.index.lifecycle import rebuild_centroid_stage

        if config is not None and not isinstance(config, CentroidConfig):
            raise TypeError(f"config must be a CentroidConfig, got {type(config).__name__}")
        with self._write_lock:
            self.writer.begin_change()
            rebuild_centroid_stage(self, config, show_progress=show_progress)

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path, *, lock: bool = True) -> None:
        """Write the index to directory ``path`` atomically (temporary directory + rename).

        An existing index at ``path`` is replaced only once the new one is complete; readers that
        memory-mapped the old files keep valid data. :meth:`add`, :meth:`upsert`, :meth:`delete`
        and :meth:`compact` change only this object: they are durable once saved.

        One writer at a time: the save takes ``path``'s write lock (``IndexLockedError`` naming the
        holder if another writer has it) and holds it until :meth:`close`; it is refused with
        ``StaleIndexError`` when ``path`` holds a newer commit than the one this object loaded or
        saved there. ``lock=False`` skips both, for a caller that holds an enclosing directory's lock.
        """
        target = Path(path)
        with self._write_lock:
            if lock:
                self.writer.before_save(target)
            recover_interrupted_swap(target)  # a save that crashed here before: restore / clean up first
            tmp = make_temp_dir_beside(target)
            try:
                self._write_into(tmp, tokens_in_place=False)
                commit = fmt.commit_of(tmp)
                atomic_replace_dir(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if lock:
                self.writer.opened(target, commit)
            if self.documents is not None:  # the store as committed: nothing pending
                self.documents = self.documents.rebased(target, len(self.doc_ids))
        log.info("saved %r to %s", self, target)

    def lock_for_writing(self) -> None:
        """Take the write lock of the directory this index was loaded from now, before any change
        (``retriever serve`` does, unless read-only): ``IndexLockedError`` if another writer holds it,
        ``StaleIndexError`` if the directory holds a newer commit. Held until :meth:`close`."""
        with self._write_lock:
            self.writer.begin_change("write")

    def close(self) -> None:
        """Release the write locks this object holds (see :meth:`add`); it stays searchable. Idempotent."""
        self.writer.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_into(self, directory: Path, tokens_in_place: bool) -> None:
        names = [fmt.TOKENS, fmt.DOC_OFFSETS, fmt.DOC_IDS, fmt.FAISS]
        if not tokens_in_place:
            _copy_rows(directory / fmt.TOKENS, self.tokens, self.codec.row_dtype, 1 << 20)
        np.save(directory / fmt.DOC_OFFSETS, self.doc_offsets, allow_pickle=False)
        with open(directory / fmt.DOC_IDS, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(f"{py_scalar(i)}\n" for i in self.doc_ids)
        faiss.write_index(self.faiss_index, str(directory / fmt.FAISS))
        if self.deleted.any():
            np.save(directory / fmt.DELETED, self.deleted, allow_pickle=False)
            names.append(fmt.DELETED)
        if self.passages is not None:
            np.save(directory / fmt.PASSAGES, self.passages.array(), allow_pickle=False)
            names.append(fmt.PASSAGES)
        for key, arr in self.codec.arrays().items():
            np.save(directory / fmt.CODEC_FILES[key], arr, allow_pickle=False)
            names.append(fmt.CODEC_FILES[key])
        stage = self.centroid_stage
        if stage is not None:
            for key, arr in stage.arrays().items():
                name = fmt.IVF_PQ if key == "pq" else fmt.IVF_FILES[key]
                np.save(directory / name, arr, allow_pickle=False)
                names.append(name)
            if not tokens_in_place:  # (a build wrote them in place already)
                _copy_rows(directory / fmt.IVF_CODES, stage.codes.reshape(-1, 1), stage.code_dtype, 1 << 22)
                if stage.residuals is not None:
                    _copy_rows(directory / fmt.IVF_RESIDUALS, stage.residuals, np.uint8, 1 << 22)
            names.append(fmt.IVF_CODES)
            if stage.residuals is not None:
                names.append(fmt.IVF_RESIDUALS)
        hybrid = {}
        if self.dense is not None:
            if not tokens_in_place:  # (a build wrote it in place already)
                _copy_rows(directory / fmt.DENSE, self.dense, np.float16, 1 << 18)
            names.append(fmt.DENSE)
            hybrid["pooled_dim"] = int(self.dense.shape[1])
        if self.documents is not None:
            if not tokens_in_place:  # (a build wrote it in place already)
                self.documents.write_to(directory, self.deleted)
            names.append(fmt.DOCUMENTS)
        if self.lexical is not None:
            with open(directory / fmt.BM25_VOCAB, "w", encoding="utf-8", newline="\n") as fh:
                fh.writelines(f"{t}\n" for t in self.lexical.vocab)
            names.append(fmt.BM25_VOCAB)
            for key, arr in self.lexical.arrays().items():
                np.save(directory / fmt.BM25_FILES[key], arr, allow_pickle=False)
                names.append(fmt.BM25_FILES[key])
            hybrid["bm25_terms"] = self.lexical.n_terms
            hybrid["bm25_postings"] = int(self.lexical.post_rows.size)
        from retriever.core.version import __version__

        manifest = {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "library_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": self.config.to_dict(),
            "encoder": self.encoder_info,
            "n_docs": len(self.doc_ids),
            "n_deleted": int(self.deleted.sum()),
            "n_tokens": self.n_tokens,
            "dim": self.dim,
            "fde_dim": self.fde_encoder.output_dim,
            "id_type": self.id_type,
            "dtypes": {"tokens": self.codec.row_dtype.name, "doc_offsets": "int64"},
            "codec": self.codec.describe(),
            "hybrid": hybrid,
            "centroids": {"n_centroids": stage.n_centroids, "n_coarse": int(stage.coarse.shape[0])} if stage else None,
            "files": fmt.describe_files(directory, names),
        }
        if self.passages is not None:
            manifest["n_documents"] = self.n_docs  # live documents (n_docs counts rows: passages)
        fmt.write_manifest(directory, manifest)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True, verify: bool = False, encoder=None) -> "Retriever":
        """Load an index saved by :meth:`save`.

        Parameters
        ----------
        mmap : memory-map the token store (default) instead of reading it into memory
        verify : checksum every file (as :meth:`verify`); by default only sizes, headers and the
            checksums of the small files are checked
        encoder : optional text encoder; must match the one the index was built with
        """
        path = Path(path)
        for attempt in range(_LOAD_ATTEMPTS):
            before = fmt.commit_of(path)
            try:
                return cls._load_once(path, mmap=mmap, verify=verify, encoder=encoder)
            except (fmt.IndexFormatError, OSError):
                # a writer committed while this load read the files (the directory was swapped between two
                # reads): load the new commit; the same error on an unchanged directory is a real one
                if attempt == _LOAD_ATTEMPTS - 1 or fmt.commit_of(path) == before:
                    raise
                log.info("%s changed during load; loading its new commit", path)
        raise AssertionError("unreachable")

    @classmethod
    def _load_once(cls, path: Path, *, mmap: bool, verify: bool, encoder) -> "Retriever":
        recover_interrupted_swap(path)
        m = fmt.read_manifest(path)
        fmt.check_files(path, m, full=verify)
        try:
            config = IndexConfig.from_dict(m["config"])
        except (TypeError, ValueError) as e:
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: bad config: {e}") from None
        n_docs, n_tokens, dim = int(m["n_docs"]), int(m["n_tokens"]), int(m["dim"])
        codec = _load_codec(path, m, config, dim)
        tokens = fmt.load_array(path, fmt.TOKENS, mmap, codec.row_dtype, (n_tokens, codec.row_width))
        offsets = fmt.load_array(path, fmt.DOC_OFFSETS, False, np.int64, (n_docs + 1,))
        if offsets[0] != 0 or offsets[-1] != n_tokens or np.any(np.diff(offsets) <= 0):
            raise fmt.IndexFormatError(f"{path / fmt.DOC_OFFSETS} is not a valid CSR offset array for {n_tokens} tokens")
        deleted = None
        if fmt.DELETED in m["files"]:
            deleted = fmt.load_array(path, fmt.DELETED, False, np.uint8, (n_docs,))
            if deleted.max(initial=0) > 1 or int(deleted.sum()) != int(m.get("n_deleted", 0)):
                raise fmt.IndexFormatError(
                    f"{path / fmt.DELETED} must hold 0/1 flags, {m.get('n_deleted', 0)} of them set (the manifest's n_deleted)"
                )
        raw = fmt.read_lines(path / fmt.DOC_IDS)
        if len(raw) != n_docs:
            raise fmt.IndexFormatError(f"{path / fmt.DOC_IDS} has {len(raw)} ids, the manifest says {n_docs}")
        id_type = m["id_type"]
        ids = _parse_ids(path / fmt.DOC_IDS, raw, id_type)
        passages = load_passage_map(path, m, config, ids, deleted)
        dense, lexical = _load_hybrid(path, m, config, n_docs, mmap)
        stage = _load_centroid_stage(path, m, config, dim, n_tokens, offsets)
        # the file is opened now (a later save over this directory cannot change what is read) and, with
        # the centroid stage, read on first use: default searches never need it
        fh = open(path / fmt.FAISS, "rb")
        loader = _faiss_reader(fh, path / fmt.FAISS, n_docs, int(m["fde_dim"]))
        try:
            index = loader() if stage is None or verify else None
        except BaseException:
            fh.close()
            raise
        r = cls(
            tokens=tokens, doc_offsets=offsets, doc_ids=ids, id_type=id_type, faiss_index=index,
            config=config, codec=codec, encoder_info=m.get("encoder"), deleted=deleted,
            dense=dense, lexical=lexical, centroid_stage=stage,
            documents=DocumentStore.open(path, n_docs) if fmt.DOCUMENTS in m["files"] else None,
            passages=passages,
        )
        if index is None:
            r._faiss_loader = loader
            weakref.finalize(r, fh.close)
        if r.fde_encoder.output_dim != int(m["fde_dim"]):
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: fde_dim {m['fde_dim']} does not match its FDE config")
        if encoder is not None:
            r.check_encoder(encoder)
            r._encoder = encoder
        r.writer.opened(path, m[fmt.CHECKSUM_FIELD])
        _warmup(codec.kind)
        return r

    @staticmethod
    def verify(path: str | Path) -> dict:
        """Check an index directory fully (every checksum, every header, loadability).

        Beyond :meth:`load` with ``verify=True``: the live document ids are unique, and, for
        FAISS types that store vectors exactly (Flat, HNSW-Flat), the stored FDEs of a sample of
        documents equal those recomputed from ``tokens.npy`` under the manifest's FDE config.

        Returns the manifest; raises ``IndexFormatError`` naming the first problem.
        """
        from retriever.index.lifecycle import check_consistency

        r = Retriever.load(path, mmap=True, verify=True)
        check_consistency(r, Path(path))
        return fmt.read_manifest(Path(path))


def _parse_ids(p: Path, raw: list[str], id_type: str) -> np.ndarray:
    """The ids of doc_ids.txt lines; ``IndexFormatError`` naming the first bad line."""
    if id_type == "int":
        for lineno, x in enumerate(raw, 1):
            if not (x.isascii() and x.isdigit()) or (len(x) > 18 and int(x) > MAX_INT_ID):
                raise fmt.IndexFormatError(f"{p}:{lineno}: {x!r} is not a non-negative int64 id")
        return np.array([int(x) for x in raw], dtype=np.int64)
    for lineno, x in enumerate(raw, 1):
        if not x or x != x.strip():
            raise fmt.IndexFormatError(f"{p}:{lineno}: {x!r} is not a valid document id (empty or padded)")
    return ids_array(raw, id_type)


def _built_dense(workdir: Path, builder, n_docs: int):
    """The pooled vectors a build streamed to ``workdir`` (memory-mapped), or None."""
    if builder.dense is None:
        return None
    return fmt.load_array(workdir, fmt.DENSE, True, np.float16, (n_docs, builder.pooled_dim))


def _load_hybrid(path: Path, m: dict, config: IndexConfig, n_docs: int, mmap: bool = True):
    """The stored hybrid signals (float16 pooled vectors, BM25 index; None where not stored)."""
    signals = config.hybrid.signals
    files = m["files"]
    dense = lexical = None
    if "dense" in signals:
        if fmt.DENSE not in files:
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: the 'dense' hybrid signal needs {fmt.DENSE!r}, which is not listed")
        want = (m.get("hybrid") or {}).get("pooled_dim")
        if isinstance(want, bool) or not isinstance(want, int) or want < 1:
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: hybrid.pooled_dim must be a positive integer, got {want!r}")
        dense = fmt.load_array(path, fmt.DENSE, mmap, np.float16, (n_docs, want))
    if "bm25" in signals:
        missing = [n for n in (fmt.BM25_VOCAB, *fmt.BM25_FILES.values()) if n not in files]
        if missing:
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: the 'bm25' hybrid signal needs {missing}, not listed")
        vocab = fmt.read_lines(path / fmt.BM25_VOCAB)
        h = m.get("hybrid") or {}
        n_terms, n_post = h.get("bm25_terms"), h.get("bm25_postings")
        for name, v in (("bm25_terms", n_terms), ("bm25_postings", n_post)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: hybrid.{name} must be a non-negative integer, got {v!r}")
        if len(vocab) != n_terms:
            raise fmt.IndexFormatError(f"{path / fmt.BM25_VOCAB} has {len(vocab)} terms, the manifest says {n_terms}")
        shapes = {"term_offsets": (np.int64, (n_terms + 1,)), "post_rows": (np.uint32, (n_post,)),
                  "post_tf": (np.uint32, (n_post,)), "doc_len": (np.uint32, (n_docs,))}
        arrays = {key: fmt.load_array(path, fmt.BM25_FILES[key], False, dt, shape) for key, (dt, shape) in shapes.items()}
        try:
            lexical = LexicalIndex(config.hybrid.bm25, vocab, **arrays)
            lexical.check(n_docs)
        except ValueError as e:
            raise fmt.IndexFormatError(f"{path}: bad BM25 index: {e}") from None
    return dense, lexical


def _load_codec(path: Path, m: dict, config: IndexConfig, dim: int) -> TokenCodec:
    """The index's token codec from its config and (residual codes) its parameter files."""
    arrays = {}
    if config.codec.kind == "residual":
        b = 1 << config.codec.nbits
        shapes = {"cutoffs": (dim, b - 1), "weights": (dim, b)}
        n_cent = (m.get("codec") or {}).get("n_centroids")
        if isinstance(n_cent, bool) or not isinstance(n_cent, int) or n_cent < 1:
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: codec.n_centroids must be a positive integer, got {n_cent!r}")
        shapes["centroids"] = (n_cent, dim)
        for key, name in fmt.CODEC_FILES.items():
            if name not in m["files"]:
                raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: the residual codec needs {name!r}, which is not listed")
            arrays[key] = fmt.load_array(path, name, False, np.float32, shapes[key])
            if not np.isfinite(arrays[key]).all():
                raise fmt.IndexFormatError(f"{path / name} holds NaN or infinite values")
        if np.any(np.diff(arrays["cutoffs"], axis=1) < 0):
            raise fmt.IndexFormatError(f"{path / fmt.CODEC_FILES['cutoffs']}: cut-offs must ascend along each row")
    try:
        return TokenCodec.from_arrays(config.codec, dim, arrays)
    except ValueError as e:
        raise fmt.IndexFormatError(f"{path}: bad codec: {e}") from None


def _copy_rows(path: Path, rows, dtype, step: int) -> None:
    """Write the 2-D array (or memory map) ``rows`` to a new ``.npy`` file, ``step`` rows at a time."""
    with NpyAppender(path, rows.shape[1], dtype) as w:
        for s in range(0, rows.shape[0], step):
            w.append(np.asarray(rows[s : s + step]))


def _faiss_reader(fh, name: Path, n_docs: int, fde_dim: int):
    """A function reading the FAISS index from the open file ``fh`` (then closing it), checking its shape."""

    def read():
        try:
            fh.seek(0)
            data = np.frombuffer(fh.read(), dtype=np.uint8)
            index = faiss.deserialize_index(data)
        except RuntimeError as e:
            raise fmt.IndexFormatError(f"{name} is not a readable FAISS index: {e}") from None
        finally:
            fh.close()
        if index.ntotal != n_docs or index.d != fde_dim:
            raise fmt.IndexFormatError(
                f"{name} holds {index.ntotal} vectors of dim {index.d}, the manifest says {n_docs} of dim {fde_dim}"
            )
        return index

    return read


def _load_codes(path: Path, stage: CentroidIndex, n_tokens: int) -> np.ndarray:
    """The memory-mapped per-token centroid ids (n_tokens,) of an index directory."""
    return fmt.load_array(path, fmt.IVF_CODES, True, stage.code_dtype, (n_tokens, 1)).reshape(-1)


def _load_centroid_stage(path: Path, m: dict, config: IndexConfig, dim: int, n_tokens: int,
                         offsets: np.ndarray) -> CentroidIndex | None:
    """The token centroid stage of an index directory (lists built from its codes), or None."""
    if not config.centroids.enabled:
        return None
    if config.centroids.enabled == "auto":
        raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: config.centroids.enabled must be decided (true or false), "
                                   f"not 'auto'")
    if config.centroids.residual_pq == "auto":
        raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: config.centroids.residual_pq must be decided (an integer), "
                                   f"not 'auto'")
    info = m.get("centroids") or {}
    k, k1 = info.get("n_centroids"), info.get("n_coarse")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (k, k1)):
        raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: centroids.n_centroids and centroids.n_coarse must be positive "
                                   f"integers, got {k!r} and {k1!r}")
    shapes = {"centroids": ((k, dim), np.float32), "coarse": ((k1, dim), np.float32), "cells": ((k1 + 1,), np.int64)}
    arrays = {}
    for key, name in fmt.IVF_FILES.items():
        if name not in m["files"]:
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: the centroid stage needs {name!r}, which is not listed")
        arrays[key] = fmt.load_array(path, name, False, shapes[key][1], shapes[key][0])
        if not np.isfinite(arrays[key]).all():
            raise fmt.IndexFormatError(f"{path / name} holds NaN or infinite values")
    if fmt.IVF_CODES not in m["files"]:
        raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: the centroid stage needs {fmt.IVF_CODES!r}, which is not listed")
    mq = config.centroids.residual_pq
    pq = residuals = None
    if mq:
        for name in (fmt.IVF_PQ, fmt.IVF_RESIDUALS):
            if name not in m["files"]:
                raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: residual_pq={mq} needs {name!r}, which is not listed")
        if dim % mq:
            raise fmt.IndexFormatError(f"{path / fmt.MANIFEST}: residual_pq={mq} does not divide the dimension {dim}")
        pq = fmt.load_array(path, fmt.IVF_PQ, False, np.float32, (mq, 256, dim // mq))
        if not np.isfinite(pq).all():
            raise fmt.IndexFormatError(f"{path / fmt.IVF_PQ} holds NaN or infinite values")
        residuals = fmt.load_array(path, fmt.IVF_RESIDUALS, True, np.uint8, (n_tokens, mq))
    try:
        stage = CentroidIndex(arrays["centroids"], arrays["coarse"], arrays["cells"], pq=pq)
    except ValueError as e:
        raise fmt.IndexFormatError(f"{path}: bad centroid stage: {e}") from None
    codes = _load_codes(path, stage, n_tokens)
    top = int(codes.max(initial=0))
    if top >= k:
        raise fmt.IndexFormatError(f"{path / fmt.IVF_CODES}: a token names centroid {top}, the stage has {k}")
    stage.set_codes(codes, offsets, residuals)
    return stage


def _warmup(kind: str = "float16") -> None:
    from retriever_kernels.maxsim import warmup

    warmup((kind,))


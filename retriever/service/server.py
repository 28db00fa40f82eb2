"""HTTP search service over one index directory: ``retriever serve --index IDX``.

Built on FastAPI (request models validated by pydantic, an OpenAPI page at ``/docs`` and the
schema at ``/openapi.json``) served by uvicorn. Endpoints:

- ``POST /search``: one or many query texts (``queries``) or token embeddings (``embeddings``), with
  ``k``, ``n_candidates``, ``mode`` and an optional ``subset`` of document ids; returns ids, scores and
  timings per request. An index built with ``chunk_tokens`` adds each hit's (best) ``passage`` and its
  character ``span``; ``"passages": true`` returns passages instead of documents.
- ``POST /documents`` (add, or replace with ``upsert``), ``DELETE /documents`` (ids), ``POST /compact``,
  ``POST /save`` (durable when it returns: the index directory is replaced atomically).
- ``GET /health`` (no key needed), ``GET /stats`` (counts, config, index bytes, latency so far).

Searches run concurrently; a mutation waits for the searches in flight and holds new ones back
until it is done (a writer-preferring readers-writer lock), because the index may be searched by
many threads but mutated only while nobody searches. Every request is bounded (body bytes, queries
per request, ``k``, documents per request, characters per text) and answered 4xx with the field
named when it breaks a bound or is malformed; nothing is changed by a rejected request. An optional
API key (``--api-key`` or ``RETRIEVER_API_KEY``) is compared in constant time.

With ``--workers`` > 1 each worker process loads its own copy of the index, so the service is
read-only: the mutating endpoints answer 409.
"""


import contextlib
import hmac
import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np

log = logging.getLogger(__name__)

API_KEY_ENV = "RETRIEVER_API_KEY"


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one request may ask for (a request beyond them is answered 4xx)."""

    max_body_bytes: int = 16 << 20
    max_queries: int = 256
    max_k: int = 1000
    max_candidates: int = 100_000
    max_documents: int = 1000
    max_text_chars: int = 100_000
    max_subset: int = 100_000

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ServerLimits.{name} must be an int >= 1, got {v!r}")


class RWLock:
    """Readers-writer lock that prefers writers: a waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def reading(self):
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextlib.contextmanager
    def writing(self):
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and a message naming the bad field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def _library_errors():
    """The library's refusals as request errors: unknown ids 404, bad values or types 422."""
    try:
        yield
    except KeyError as e:
        raise RequestError(404, str(e.args[0]) if e.args else str(e)) from None
    except (ValueError, TypeError) as e:
        raise RequestError(422, str(e)) from None


class SearchService:
    """The index behind the HTTP API: searches, mutations and statistics, thread-safe.

    Usable without HTTP (the tests and ``bench/user_path/serve.py`` compare against it).
    """

    def __init__(self, index_path: str | os.PathLike, *, encoder=None, limits: ServerLimits | None = None,
                 read_only: bool = False) -> None:
        from retriever.index.retriever import Retriever

        self.path = Path(index_path)
        self.limits = limits or ServerLimits()
        self.read_only = read_only
        self.retriever = Retriever.load(self.path, encoder=encoder)
        if not read_only:  # a writable service is the index's one writer until it stops (IndexLockedError otherwise)
            self.retriever.lock_for_writing()
        # one throw-away search before the server listens (so before /health answers): the text
        # encoder is loaded and the kernels compiled or read from numba's cache now, not on the
        # first request
        self.retriever.warmup()
        self._lock = RWLock()
        self._lat = deque(maxlen=100_000)
        self._lat_lock = threading.Lock()
        self.counts = {"search_requests": 0, "queries": 0, "documents_added": 0, "documents_deleted": 0,
                       "compactions": 0, "saves": 0}
        self.started = time.time()

    def close(self) -> None:
        """Release the index's write lock (a writable service holds it from start to stop)."""
        self.retriever.close()

    # -- reads -------------------------------------------------------------------------------
    def n_live(self) -> int:
        """Documents searchable now (not deleted; a chunked index counts documents, not passages)."""
        return self.retriever.n_docs

    def search(self, *, queries=None, embeddings=None, k: int = 10, n_candidates="auto", mode: str = "auto",
               subset=None, hybrid: bool | None = None, where: dict | None = None, documents: bool = False,
               passages: bool = False) -> dict:
        lim = self.limits
        if (queries is None) == (embeddings is None):
            raise RequestError(422, "give exactly one of 'queries' (texts) or 'embeddings' (token vectors)")
        batch = queries if queries is not None else embeddings
        if len(batch) == 0:
            raise RequestError(422, "'queries' / 'embeddings' is empty")
        if len(batch) > lim.max_queries:
            raise RequestError(413, f"{len(batch)} queries in one request; the limit is {lim.max_queries}")
        if k > lim.max_k:
            raise RequestError(422, f"k={k} is above this server's limit {lim.max_k}")
        if n_candidates != "auto" and n_candidates > lim.max_candidates:
            raise RequestError(422, f"n_candidates={n_candidates} is above this server's limit {lim.max_candidates}")
        if subset is not None and len(subset) > lim.max_subset:
            raise RequestError(413, f"subset of {len(subset)} ids; the limit is {lim.max_subset}")
        if queries is not None:
            for i, t in enumerate(queries):
                if len(t) > lim.max_text_chars:
                    raise RequestError(413, f"queries[{i}] has {len(t)} characters; the limit is {lim.max_text_chars}")
            q = list(queries)
        else:
            q = []
            for i, e in enumerate(embeddings):
                try:
                    a = np.asarray(e, dtype=np.float32)
                except ValueError:  # ragged: token vectors of different lengths
                    raise RequestError(422, f"embeddings[{i}]: token vectors of different lengths") from None
                if a.ndim != 2 or a.shape[0] == 0:
                    raise RequestError(422, f"embeddings[{i}] must be a non-empty list of token vectors")
                q.append(a)
        t0 = time.perf_counter()
        with self._lock.reading():
            t1 = time.perf_counter()
            with _library_errors():
                res = self.retriever.search(q, k=k, n_candidates=n_candidates, mode=mode, subset=subset, hybrid=hybrid,
                                            where=where, passages=passages)
                if documents:  # title, text and metadata from the store, read under the same lock
                    hits = res.hits()
        t2 = time.perf_counter()
        if not documents:
            hits = []
            for q_i, (ids, scores, rows) in enumerate(zip(res.ids.tolist(), res.scores.tolist(), res.rows.tolist())):
                hits.append([{"id": i, "score": s} for i, s, w in zip(ids, scores, rows) if w >= 0])
                if res.passages is not None:  # a chunked index: the (best) passage of each hit
                    for hit, n, span in zip(hits[-1], res.passages[q_i].tolist(), res.spans[q_i].tolist()):
                        hit.update(passage=n, span=span)
        with self._lat_lock:
            self._lat.append(t2 - t0)
            self.counts["search_requests"] += 1
            self.counts["queries"] += len(q)
        return {"results": hits, "timings_ms": {"wait": round((t1 - t0) * 1e3, 3), "search": round((t2 - t1) * 1e3, 3)}}

    def stats(self) -> dict:
        with self._lock.reading():
            r = self.retriever
            with self._lat_lock:
                lat = np.array(self._lat) * 1e3
                counts = dict(self.counts)
            files = [f for f in self.path.iterdir() if f.is_file()] if self.path.is_dir() else []
            return {
                "index": str(self.path), "n_docs": self.n_live(), "n_rows": r.n_live_rows,
                "n_deleted": int(r.deleted.sum()), "n_tokens": r.n_tokens, "dim": r.dim,
                "config": r.config.to_dict(), "codec": r.codec.describe(),
                "index_bytes_on_disk": int(sum(f.stat().st_size for f in files)),
                "faiss_bytes_in_memory": int(r.faiss_index.sa_code_size() * r.faiss_index.ntotal)
                if r.faiss_loaded else 0,
                "centroid_stage_bytes_in_memory": r.centroid_stage.nbytes_resident() if r.centroid_stage else 0,
                "read_only": self.read_only, "uptime_s": round(time.time() - self.started, 1),
                "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
                               "p99": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
                               "n": int(lat.size)},
                "counts": counts, "limits": asdict(self.limits),
            }

    # -- writes ------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise RequestError(409, "this server is read-only (started with --workers > 1 or --read-only)")

    def add(self, documents: list, *, upsert: bool = False) -> dict:
        """Add ``(id, text)`` pairs or BEIR dicts (``_id``, ``title``, ``text``, ``metadata``)."""
        self._writable()
        if not documents:
            raise RequestError(422, "'documents' is empty")
        if len(documents) > self.limits.max_documents:
            raise RequestError(413, f"{len(documents)} documents in one request; the limit is {self.limits.max_documents}")
        for i, d in enumerate(documents):
            text = d["text"] if isinstance(d, dict) else d[1]
            if len(text) > self.limits.max_text_chars:
                raise RequestError(413, f"documents[{i}].text has {len(text)} characters; the limit is "
                                        f"{self.limits.max_text_chars}")
        with self._lock.writing():
            r = self.retriever
            with _library_errors():
                (r.upsert if upsert else r.add)(documents)
            self.counts["documents_added"] += len(documents)
            return {"added": len(documents), "n_docs": self.n_live()}

    def delete(self, ids: list) -> dict:
        self._writable()
        if not ids:
            raise RequestError(422, "'ids' is empty")
        if len(ids) > self.limits.max_subset:
            raise RequestError(413, f"{len(ids)} ids in one request; the limit is {self.limits.max_subset}")
        with self._lock.writing():
            with _library_errors():
                self.retriever.delete(ids)
            self.counts["documents_deleted"] += len(ids)
            return {"deleted": len(ids), "n_docs": self.n_live()}

    def compact(self) -> dict:
        self._writable()
        with self._lock.writing():
            removed = self.retriever.compact()
            self.counts["compactions"] += 1
            return {"removed_rows": int(removed), "n_docs": self.retriever.n_docs}

    def save(self) -> dict:
        self._writable()
        with self._lock.writing():
            t = time.perf_counter()
            self.retriever.save(self.path)
            self.counts["saves"] += 1
            return {"saved": str(self.path), "seconds": round(time.perf_counter() - t, 3)}


# -- HTTP ------------------------------------------------------------------------------------------


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by Content-Length or as chunks arrive."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, int(limit)
        # an over-limit body up to this size is read and dropped before the 413, so that a client still
        # sending it gets the answer instead of a broken pipe; a larger one gets the 413 and a closed socket
        self.drain = 4 * self.limit

    async def _drain(self, receive, size: int) -> None:
        while size <= self.drain:
            msg = await receive()
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                return
            size += len(msg.get("body", b""))

    async def _reply(self, send, status: int, detail: str) -> None:
        import json

        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._reply(send, 400, "bad Content-Length header")
            if n > self.limit:
                if n <= self.drain:
                    await self._drain(receive, 0)
                return await self._reply(send, 413, f"body of {n} bytes; the limit is {self.limit}")
            return await self.app(scope, receive, send)
        # no length given (chunked): read it here, bounded, then hand it on
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                if msg.get("more_body", False):
                    await self._drain(receive, size)
                return await self._reply(send, 413, f"body over the limit of {self.limit} bytes")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(service: SearchService, *, api_key: str | None = None):
    """The FastAPI application serving ``service``."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

    from retriever.core.version import __version__

    lim = service.limits
    # strict types: "5" is not 5 and true is not 1 (a client's type error is reported, not guessed at)
    Id = Union[StrictStr, StrictInt]
    Num = Union[StrictFloat, StrictInt]

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        queries: list[StrictStr] | None = Field(None, description="query texts (encoded by the index's encoder)")
        embeddings: list[list[list[Num]]] | None = Field(None, description="per query, its token vectors")
        k: StrictInt = Field(10, ge=1, le=lim.max_k)
        n_candidates: StrictInt | Literal["auto"] = Field("auto", description="candidates reranked, or 'auto'")
        mode: Literal["auto", "fde", "centroids", "exact"] = "auto"
        subset: list[Id] | None = Field(None, description="only these document ids may be returned")
        hybrid: StrictBool | None = Field(None, description="fuse with the index's dense / BM25 signals "
                                          "(default: when it stores any and the queries are texts)")
        where: dict | None = Field(None, description='metadata filter, e.g. {"year": {"$gte": 2020}} (operators '
                                   "$eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $nor)")
        documents: StrictBool = Field(False, description="return each hit's title, text and metadata (indexes "
                                      "that store documents)")
        passages: StrictBool = Field(False, description="indexes built with chunk_tokens: return the top passages "
                                     "(id, passage, span, score; with documents: the passage's text) instead of "
                                     "documents ranked by their best passage")

    class Document(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: Id
        text: StrictStr
        title: StrictStr | None = None
        metadata: dict | None = Field(None, description="a JSON object stored with the document (filters)")

    class DocumentsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        documents: list[Document]
        upsert: StrictBool = False

    class DeleteRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: list[Id]

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                    api_key.encode("utf-8", "surrogateescape")):
            raise RequestError(401, "missing or wrong API key (send 'X-API-Key' or 'Authorization: Bearer')")

    app = FastAPI(title="retriever", version=__version__,
                  description="Multi-vector (ColBERT-style) search over one index: candidates (token centroids or "
                              "FDEs) + exact MaxSim.")
    app.state.service = service

    async def internal_error(request: Request, exc: Exception):  # a bug answers 500; the server lives on
        log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(_BodyLimit, limit=lim.max_body_bytes)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": errs}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "n_docs": service.n_live()}

    @app.get("/stats", dependencies=[Depends(check_key)])
    def stats() -> dict:
        return service.stats()

    @app.post("/search", dependencies=[Depends(check_key)])
    def search(req: SearchRequest) -> dict:
        return service.search(queries=req.queries, embeddings=req.embeddings, k=req.k,
                              n_candidates=req.n_candidates, mode=req.mode, subset=req.subset, hybrid=req.hybrid,
                              where=req.where, documents=req.documents, passages=req.passages)

    @app.post("/documents", dependencies=[Depends(check_key)])
    def add_documents(req: DocumentsRequest) -> dict:
        docs = [(d.id, d.text) if d.title is None and d.metadata is None
                else {"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata or {}} for d in req.documents]
        return service.add(docs, upsert=req.upsert)

    @app.delete("/documents", dependencies=[Depends(check_key)])
    def delete_documents(req: DeleteRequest) -> dict:
        return service.delete(list(req.ids))

    @app.post("/compact", dependencies=[Depends(check_key)])
    def compact() -> dict:
        return service.compact()

    @app.post("/save", dependencies=[Depends(check_key)])
    def save() -> dict:
        return service.save()

    return app


def _service_encoder(index, model: str | None, device: str | None, dtype: str | None):
    """The encoder the service searches with (:func:`retriever.cluster.shards.search_encoder`)."""
    from retriever.cluster.shards import search_encoder

    return search_encoder(index, model=model, device=device, **({"dtype": dtype} if dtype else {}))


def app_from_env():
    """uvicorn factory for ``--workers`` > 1: settings come from ``RETRIEVER_SERVE_*`` variables."""
    env = {k: os.environ.get(f"RETRIEVER_SERVE_{k.upper()}") or None for k in ("model", "device", "dtype")}
    index = os.environ["RETRIEVER_SERVE_INDEX"]
    service = SearchService(index, encoder=_service_encoder(index, **env), read_only=True)
    return create_app(service, api_key=os.environ.get(API_KEY_ENV) or None)


def serve(index: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          model: str | None = None, api_key: str | None = None, read_only: bool = False,
          device: str | None = None, dtype: str | None = None) -> None:
    """Run the service until interrupted (blocking). ``device`` / ``dtype``: where and at which
    precision the text encoder runs (default: the CPU, the precision the index records)."""
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if workers > 1:
        os.environ["RETRIEVER_SERVE_INDEX"] = str(index)
        for key, value in (("MODEL", model), ("DEVICE", device), ("DTYPE", dtype)):
            if value:
                os.environ[f"RETRIEVER_SERVE_{key}"] = value
        if api_key:
            os.environ[API_KEY_ENV] = api_key
        uvicorn.run("retriever.service.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="info")
        return
    service = SearchService(index, encoder=_service_encoder(index, model, device, dtype), read_only=read_only)
    try:
        uvicorn.run(create_app(service, api_key=api_key), host=host, port=port, log_level="info")
    finally:
        service.close()

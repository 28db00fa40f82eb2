"""What callers may pass as documents, ids and queries: shape checks and conversions.

Shared by the build (``retriever.index.builder``), the facade, the lifecycle (add / upsert) and the
sharded index; imports only the token store and the corpus readers.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np

from retriever.core.beir import doc_text
from retriever.index.documents import DocumentRecord, check_metadata
from retriever.store.tokens import TokenEmbeddings


def py_scalar(x):
    return x.item() if isinstance(x, np.generic) else x


# -- ids -------------------------------------------------------------------------------------


def check_ids(ids: list, id_type: str | None) -> str:
    """Validate a batch of external ids; returns the id type ("int" or "str")."""
    for pos, i in enumerate(ids):
        if isinstance(i, (bool, np.bool_)):
            raise TypeError(f"document id at position {pos} is a bool ({i!r}); ids are str or non-negative int")
        if isinstance(i, (int, np.integer)):
            t = "int"
            if i < 0:
                raise ValueError(f"document id at position {pos} is negative ({i}); -1 marks padding in results")
            if i > MAX_INT_ID:
                raise ValueError(f"document id at position {pos} ({i}) does not fit in int64 (max {MAX_INT_ID})")
        elif isinstance(i, str):
            t = "str"
            if not i or "\n" in i or "\r" in i or i != i.strip():
                raise ValueError(
                    f"document id at position {pos} ({i!r}) is empty, has surrounding whitespace or a line break"
                )
            try:
                i.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"document id at position {pos} ({i!r}) cannot be written as UTF-8 (lone surrogate)") from None
        else:
            raise TypeError(f"document id at position {pos} has type {type(i).__name__}; ids are str or non-negative int")
        if id_type is None:
            id_type = t
        elif t != id_type:
            raise TypeError(f"document id at position {pos} ({i!r}) is {t}, earlier ids are {id_type}: do not mix types")
    return id_type or "int"


MAX_INT_ID = np.iinfo(np.int64).max


def validate_batch(emb: TokenEmbeddings, ids: list, dim: int, id_type: str | None, taken: set, pos0: int = 0,
                    in_index=None, numbers: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """Check a batch of documents and their ids exactly as :meth:`Retriever.build` does.

    ``taken`` holds the ids seen earlier in the same call; ``in_index(id)`` (optional) tells
    whether an id is already a live document of the index. ``numbers`` (a chunked index: the
    passage number of each row) marks rows that continue the document of the row before: they
    carry its id, and only a document's first row counts for uniqueness. Nothing is modified.

    Returns
    -------
    id_type : "int" or "str"
    half : float16 (n_tokens, dim) token vectors as they will be stored
    """
    if emb.dim != dim:
        raise ValueError(f"document embeddings have dim {emb.dim}, the index has dim {dim}")
    if len(ids) != len(emb):
        raise ValueError(f"{len(ids)} ids for {len(emb)} documents")
    id_type = check_ids(ids, id_type)
    batch: set = set()
    for pos, i in enumerate(ids):
        key = py_scalar(i)
        if numbers is not None and numbers[pos] != 0:
            if pos == 0 or key != py_scalar(ids[pos - 1]):
                raise ValueError(f"row {pos0 + pos} is passage {int(numbers[pos])} of document {i!r}, which does not "
                                 f"start on the row before")
            continue
        if key in taken or key in batch:
            raise ValueError(f"duplicate document id {i!r} (position {pos0 + pos})")
        if in_index is not None and in_index(key):
            raise ValueError(f"document id {i!r} (position {pos0 + pos}) is already in the index; use upsert() to replace it")
        batch.add(key)
    lengths = emb.lengths
    if lengths.size and lengths.min() == 0:
        j = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"document {ids[j]!r} has zero tokens")
    emb.check_finite(what="document embeddings")
    with np.errstate(over="ignore"):
        half = emb.vectors.astype(np.float16)
    if not np.isfinite(half).all():
        raise ValueError("document embeddings hold values too large for the float16 token store (|x| > 65504)")
    return id_type, half


def ids_array(ids: list, id_type: str) -> np.ndarray:
    if id_type == "int":
        return np.asarray(ids, dtype=np.int64).reshape(-1)
    arr = np.empty(len(ids), dtype=object)
    arr[:] = ids
    return arr


def peek(iterable) -> tuple[object, Iterator]:
    it = iter(iterable)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("cannot build an index from an empty corpus") from None
    return first, itertools.chain([first], it)


def is_embeddings(documents) -> bool:
    """Token embeddings given whole (a ``TokenEmbeddings``, an array, a torch tensor), not an iterable of items."""
    return isinstance(documents, (TokenEmbeddings, np.ndarray)) or hasattr(documents, "detach")


def is_batch_item(x) -> bool:
    """A ``(TokenEmbeddings, ids)`` pair: one block of a streamed build from token embeddings."""
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], TokenEmbeddings)


def is_text_item(x) -> bool:
    return (isinstance(x, (str, dict, DocumentRecord))
            or (isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str)))


_BEIR_FIELDS = ("_id", "title", "text", "metadata")


def beir_metadata(doc: dict, pos: int) -> dict:
    """The metadata of a BEIR corpus entry: the fields of its ``metadata`` object, then every field besides
    ``_id``, ``title``, ``text`` and ``metadata`` (a name in both is an error)."""
    meta = doc.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"corpus item {pos} (id {doc.get('_id')!r}): 'metadata' must be a JSON object, got "
                         f"{type(meta).__name__}")
    out = dict(meta or {})
    for k, v in doc.items():
        if k in _BEIR_FIELDS:
            continue
        if k in out:
            raise ValueError(f"corpus item {pos} (id {doc.get('_id')!r}): field {k!r} is both a top-level field and "
                             f"a key of 'metadata'")
        out[k] = v
    return check_metadata(out, doc.get("_id"))


def text_items(items: Iterable, doc_ids) -> Iterator[DocumentRecord]:
    """Documents as :class:`DocumentRecord` (id, the text to encode, title, body, metadata) from strings,
    ``(id, text)`` tuples, BEIR dicts (``_id``, ``title``, ``text``, any other field: metadata) or records."""

    ids_iter = iter(doc_ids) if doc_ids is not None else None
    pos, used = -1, 0
    for pos, x in enumerate(items):
        if isinstance(x, DocumentRecord):
            rec = x
        elif isinstance(x, str):
            if ids_iter is None:
                i = pos
            else:
                i = next(ids_iter, _NO_ID)
                if i is _NO_ID:
                    raise ValueError(f"doc_ids has {used} ids, fewer than the documents")
                used += 1
            rec = DocumentRecord(i, x)
        elif isinstance(x, tuple) and len(x) == 2:
            rec = DocumentRecord(x[0], x[1])
        elif isinstance(x, dict):
            if "_id" not in x:
                raise ValueError(f"corpus item {pos} has no '_id' field")
            title, body = x.get("title"), x.get("text")
            if title is not None and not isinstance(title, str):
                raise TypeError(f"corpus item {pos} (id {x['_id']!r}): title is {type(title).__name__}, not str")
            if not isinstance(body, str):
                raise TypeError(f"corpus item {pos} (id {x['_id']!r}): text is {type(body).__name__}, not str")
            rec = DocumentRecord(x["_id"], doc_text(x), title or None, body, beir_metadata(x, pos))
        else:
            raise TypeError(f"corpus item {pos} is a {type(x).__name__}; expected str, (id, text) or a BEIR dict")
        if not isinstance(rec.text, str):
            raise TypeError(f"corpus item {pos} (id {rec.id!r}): text is {type(rec.text).__name__}, not str")
        yield rec
    if used and next(ids_iter, _NO_ID) is not _NO_ID:
        raise ValueError(f"doc_ids has more ids than the {pos + 1} documents")


_NO_ID = object()


def texts_of_queries(queries) -> list[str] | None:
    """The queries as a list of texts, or None when they are token embeddings."""
    if isinstance(queries, str):
        return [queries]
    if isinstance(queries, (list, tuple)) and queries and all(isinstance(x, str) for x in queries):
        return list(queries)
    return None

"""The document store: each document's id, title, text and JSON metadata, in SQLite, keyed by row.

One file in the index directory, ``documents.sqlite`` (the standard library's ``sqlite3``)::

    documents(row INTEGER PRIMARY KEY, id TEXT, title TEXT, text TEXT, metadata TEXT)   -- metadata: JSON
    fields(key, type, value, row)       -- one line per metadata value, for filters: a WITHOUT ROWID table whose
                                        -- primary key (key, type, value, row) is the index a filter reads
    info(name PRIMARY KEY, value)       -- store format version

``row`` is the index row of the document (the row of ``tokens.npy`` / ``doc_ids.txt``), so a hit's row finds
its text directly and a filter's rows make the search's allowed-row mask. ``fields`` flattens metadata:
nested objects as dotted keys (``{"a": {"b": 1}}`` -> ``a.b``), lists as one line per element under the
list's key (plus a presence line), with ``type`` one of ``num``, ``text``, ``bool``, ``null``, ``array``,
``object``, so that comparisons stay within one kind (see ``retriever.index.filters``).

Files of a saved index never change: the store is opened read-only and ``immutable`` (no locking, no
journal). Changes before a save live in this object: added documents in an in-memory SQLite database of
the same schema (``pending``), deletions in the index's deleted-row mask. A save writes a new file in the
new index directory (a copy of the committed one, the pending rows added, deleted rows dropped), inside
the index's atomic directory swap, so a crash leaves the old or the new store like every other file; a
compaction writes a new file with the rows renumbered. SQLite's WAL mode serves files that are written in
place while others read them; no file here is, so none needs it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retriever.index.filters import Leaf, compile_filter, scalar_kind
from retriever.index.format import DOCUMENTS, IndexFormatError

log = logging.getLogger(__name__)

__all__ = ["DOCUMENTS", "DocumentRecord", "DocumentStore", "StoreFormatError", "flatten_metadata"]

STORE_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS documents (row INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT, text TEXT NOT NULL, "
    "metadata TEXT)",
    # the table is its own covering index: a filter leaf reads its rows from one range of the primary key
    "CREATE TABLE IF NOT EXISTS fields (key TEXT NOT NULL, type TEXT NOT NULL, value NOT NULL, row INTEGER NOT NULL, "
    "PRIMARY KEY (key, type, value, row)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_FIELD_COLUMNS = "row, key, type, value"
_MASK_CACHE = 64  # filter leaves whose row sets a store keeps (dropped on every change)
_BATCH = 4096


class StoreFormatError(IndexFormatError):
    """The document store file is missing, damaged or does not match the index."""


@dataclass(frozen=True)
class DocumentRecord:
    """One document as given: its id, the text the encoder reads, and what the store keeps."""

    id: object
    text: str  # what is encoded (title and body joined, for BEIR dicts)
    title: str | None = None
    body: str | None = None  # the text as given, without the title (None: same as ``text``)
    metadata: dict = field(default_factory=dict)


def _check_json(value, where: str, depth: int = 0):
    if depth > 64:
        raise ValueError(f"metadata {where}: nested deeper than 64 levels")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metadata {where}: {value!r} is not a finite number (JSON has no NaN or infinity)")
        return
    if isinstance(value, (list, tuple)):
        for i, x in enumerate(value):
            _check_json(x, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, x in value.items():
            if not isinstance(k, str):
                raise ValueError(f"metadata {where}: key {k!r} is not a string")
            _check_json(x, f"{where}.{k}", depth + 1)
        return
    raise ValueError(f"metadata {where}: {type(value).__name__} {value!r} is not JSON (str, number, bool, null, list, dict)")


def check_metadata(metadata, doc_id) -> dict:
    """``metadata`` if it is a JSON object of JSON values; ``ValueError`` naming the document and field."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"document {doc_id!r}: metadata must be a JSON object (dict), got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"document {doc_id!r}: metadata key {k!r} is not a non-empty string")
        _check_json(v, f"of document {doc_id!r} field {k!r}")
    return metadata


def flatten_metadata(metadata: dict) -> list[tuple[str, str, object]]:
    """(key, type, value) lines of the ``fields`` table for one document's metadata."""
    out: list[tuple[str, str, object]] = []

    def walk(prefix: str, v, in_list: bool) -> None:
        if isinstance(v, dict):
            out.append((prefix, "object", None))
            for k, x in v.items():
                walk(f"{prefix}.{k}", x, False)
        elif isinstance(v, (list, tuple)):
            if not in_list:
                out.append((prefix, "array", None))
            for x in v:
                walk(prefix, x, True)
        else:
            out.append((prefix, *scalar_kind(v)))  # checked JSON: a scalar here

    for k, v in metadata.items():
        walk(k, v, False)
    return out


def _connect_new(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=OFF")  # a new file in a temporary directory: made whole or thrown away
    conn.execute("PRAGMA synchronous=OFF")  # the index's save fsyncs the file before its directory swap
    for stmt in _SCHEMA:
        conn.execute(stmt)
    conn.execute("INSERT OR REPLACE INTO info VALUES ('store_version', ?)", (str(STORE_VERSION),))
    return conn


def _memory() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    for stmt in _SCHEMA:
        conn.execute(stmt)
    return conn


def _insert(conn: sqlite3.Connection, rows: list[tuple[int, DocumentRecord]]) -> None:
    docs, fields = [], []
    for row, rec in rows:
        meta = rec.metadata or {}
        docs.append((row, str(rec.id), rec.title, rec.body if rec.body is not None else rec.text,
                     json.dumps(meta, ensure_ascii=False, separators=(",", ":")) if meta else None))
        # value '' for null / array / object lines (the primary key has no NULL); the type tells them apart
        fields.extend((row, k, t, "" if v is None else v) for k, t, v in flatten_metadata(meta))
    conn.execute("BEGIN")
    try:
        conn.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)", docs)
        conn.executemany(f"INSERT OR IGNORE INTO fields ({_FIELD_COLUMNS}) VALUES (?, ?, ?, ?)", fields)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _copy_rows(src: sqlite3.Connection, dst: sqlite3.Connection, new_row) -> None:
    """Every document and metadata line of ``src`` into ``dst``, row ``r`` written as ``new_row(r)`` (None:
    left out)."""
    for table, cols in (("documents", "row, id, title, text, metadata"), ("fields", _FIELD_COLUMNS)):
        marks = ",".join("?" * len(cols.split(",")))
        cur = src.execute(f"SELECT {cols} FROM {table}")
        while batch := cur.fetchmany(_BATCH):
            out = [(n, *r[1:]) for r in batch if (n := new_row(r[0])) is not None]
            dst.executemany(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", out)


def _rows_from(conn: sqlite3.Connection, leaf: Leaf, lo: int = 0) -> np.ndarray:
    """Rows satisfying ``leaf`` (a row may repeat: a list field; ``lo`` added: the pending database numbers
    from 0). One SQL statement; the rows come back as one comma-separated string, parsed by numpy."""
    (csv,) = conn.execute(f"SELECT group_concat(row) FROM fields WHERE {leaf.sql}", leaf.params).fetchone()
    if not csv:
        return np.zeros(0, dtype=np.int64)
    return np.fromstring(csv, dtype=np.int64, sep=",") + lo


class DocumentStore:
    """Title, text and metadata per index row, and metadata filters (see the module docstring).

    ``base``: the committed file (read-only) holding rows ``[0, n_base)``, or None; rows from
    ``n_base`` on are pending (added since the last save) in an in-memory database.
    """

    def __init__(self, base: Path | None, n_base: int) -> None:
        self.base_path = Path(base) if base is not None else None
        self.n_base = int(n_base)
        self._base = _open_read_only(self.base_path) if self.base_path is not None else None
        self._pending = _memory()
        self.n_pending = 0
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # one statement at a time on this store's connections (search threads)

    @property
    def n_rows(self) -> int:
        return self.n_base + self.n_pending

    # -- building ----------------------------------------------------------------------------
    @staticmethod
    def writer(directory: Path) -> "StoreWriter":
        """A new store file in ``directory`` for a build (rows appended in order)."""
        return StoreWriter(Path(directory) / DOCUMENTS)

    @classmethod
    def open(cls, directory: Path, n_rows: int) -> "DocumentStore":
        """The committed store of an index directory (checked against the index's row count)."""
        p = Path(directory) / DOCUMENTS
        if not p.is_file():
            raise StoreFormatError(f"{p} is missing")
        store = cls(p, n_rows)
        store.check_header(n_rows)
        return store

    def check_header(self, n_rows: int) -> None:
        try:
            (version,) = self._base.execute("SELECT value FROM info WHERE name = 'store_version'").fetchone()
            (n, top) = self._base.execute("SELECT count(*), max(row) FROM documents").fetchone()
        except (sqlite3.DatabaseError, TypeError) as e:
            raise StoreFormatError(f"{self.base_path}: not a document store ({e})") from None
        if int(version) != STORE_VERSION:
            raise StoreFormatError(f"{self.base_path}: store version {version}, this library reads {STORE_VERSION}")
        if top is not None and top >= n_rows:
            raise StoreFormatError(f"{self.base_path}: holds row {top}, the index has {n_rows} rows")

    # -- changes (before a save) ------------------------------------------------------------
    def append(self, records: list[DocumentRecord | None]) -> None:
        """Add documents as the next rows (pending until the index is saved); None: a row without a
        document (token embeddings added without their texts)."""
        with self._lock:
            start = self.n_pending
            _insert(self._pending, [(start + j, rec) for j, rec in enumerate(records) if rec is not None])
            self.n_pending += len(records)
            self._cache.clear()

    def truncate(self, n_rows: int) -> None:
        """Drop pending rows from ``n_rows`` on (the rollback of a failed add)."""
        if n_rows < self.n_base:
            raise ValueError("cannot drop committed rows")
        keep = n_rows - self.n_base
        with self._lock:
            self._pending.execute("DELETE FROM documents WHERE row >= ?", (keep,))
            self._pending.execute("DELETE FROM fields WHERE row >= ?", (keep,))
            self.n_pending = keep
            self._cache.clear()

    # -- reads -------------------------------------------------------------------------------
    def get(self, rows) -> list[dict | None]:
        """Per row: ``{"title", "text", "metadata"}`` (None for a row the store lacks, such as -1 padding)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        with self._lock:
            found = self._get(rows)
        return [found.get(int(r)) for r in rows]

    def _get(self, rows: np.ndarray) -> dict[int, dict]:
        found: dict[int, dict] = {}
        for conn, lo, hi in self._parts():
            want = sorted({int(r) - lo for r in rows if lo <= r < hi})
            for i in range(0, len(want), 900):  # SQLite's bound-parameter limit
                part = want[i:i + 900]
                q = f"SELECT row, title, text, metadata FROM documents WHERE row IN ({','.join('?' * len(part))})"
                for row, title, text, meta in conn.execute(q, part):
                    found[row + lo] = {"title": title, "text": text, "metadata": json.loads(meta) if meta else {}}
        return found

    def _parts(self):
        if self._base is not None:
            yield self._base, 0, self.n_base
        yield self._pending, self.n_base, self.n_rows

    def _leaf_rows(self, leaf: Leaf) -> np.ndarray:
        hit = self._cache.get(leaf.key)
        if hit is not None:
            self._cache.move_to_end(leaf.key)
            return hit
        rows = np.concatenate([_rows_from(conn, leaf, lo) for conn, lo, _ in self._parts()])
        self._cache[leaf.key] = rows
        if len(self._cache) > _MASK_CACHE:
            self._cache.popitem(last=False)
        return rows

    def _mask(self, node) -> np.ndarray:
        if isinstance(node, Leaf):
            m = np.zeros(self.n_rows, dtype=bool)
            m[self._leaf_rows(node)] = True
            return m
        if node.op == "all":
            return np.ones(self.n_rows, dtype=bool)
        if node.op == "not":
            return ~self._mask(node.children[0])
        masks = [self._mask(c) for c in node.children]
        out = masks[0].copy()
        for m in masks[1:]:
            if node.op == "and":
                out &= m
            else:
                out |= m
        return out

    def select(self, where) -> np.ndarray:
        """bool (n_rows,) mask of the rows whose metadata satisfies ``where`` (deleted rows included)."""
        node = compile_filter(where)
        with self._lock:
            return self._mask(node)

    # -- writing a commit --------------------------------------------------------------------
    def write_to(self, directory: Path, deleted: np.ndarray, keep_rows: np.ndarray | None = None) -> None:
        """Write ``documents.sqlite`` into ``directory`` (a save's new index directory).

        Without ``keep_rows``: every row, deleted ones dropped (rows keep their numbers). With it
        (a compaction): only rows ``keep_rows``, renumbered 0..len-1 in that order.
        """
        with self._lock:
            self._write_to(Path(directory) / DOCUMENTS, deleted, keep_rows)

    def _write_to(self, dst_path: Path, deleted: np.ndarray, keep_rows) -> None:
        dst = _connect_new(dst_path)
        try:
            if keep_rows is None:
                if self._base is not None:
                    self._base.backup(dst)
                    dst.execute("PRAGMA journal_mode=OFF")
                    dst.execute("PRAGMA synchronous=OFF")
                lo = self.n_base
                dst.execute("BEGIN")
                _copy_rows(self._pending, dst, lambda r: r + lo)
                dead = np.flatnonzero(np.asarray(deleted)[: self.n_rows] != 0).tolist()
                if dead:
                    dst.execute("CREATE TEMP TABLE dead (row INTEGER PRIMARY KEY)")
                    dst.executemany("INSERT INTO dead VALUES (?)", [(r,) for r in dead])
                    dst.execute("DELETE FROM documents WHERE row IN (SELECT row FROM dead)")
                    dst.execute("DELETE FROM fields WHERE row IN (SELECT row FROM dead)")
                dst.execute("COMMIT")
            else:
                new_of = {int(old): new for new, old in enumerate(np.asarray(keep_rows).tolist())}
                dst.execute("BEGIN")
                for conn, lo, _ in self._parts():
                    _copy_rows(conn, dst, lambda r, lo=lo: new_of.get(r + lo))
                dst.execute("COMMIT")
            dst.execute("ANALYZE")
            dst.close()
        except BaseException:
            dst.close()
            dst_path.unlink(missing_ok=True)
            raise
        _fsync(dst_path)

    def rebased(self, directory: Path, n_rows: int) -> "DocumentStore":
        """This store as committed in ``directory`` (after a save or a compaction): nothing pending."""
        self.close()
        return DocumentStore.open(directory, n_rows)

    def stored_rows(self) -> np.ndarray:
        """int64 ascending rows that hold a document (committed and pending)."""
        with self._lock:
            parts = [np.fromiter((r + lo for (r,) in conn.execute("SELECT row FROM documents ORDER BY row")),
                                 dtype=np.int64) for conn, lo, _ in self._parts()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # -- checks ------------------------------------------------------------------------------
    def check(self, doc_ids: np.ndarray, live: np.ndarray, full: bool = False) -> None:
        """``StoreFormatError`` unless every stored document sits at a live row under that row's id, every
        ``fields`` line belongs to a stored document (and, with ``full``, SQLite's integrity check passes)."""
        if self._base is None:
            return
        if full:
            (res,) = self._base.execute("PRAGMA integrity_check").fetchone()
            if res != "ok":
                raise StoreFormatError(f"{self.base_path}: integrity check failed: {res}")
        for row, doc_id in self._base.execute("SELECT row, id FROM documents"):
            if not 0 <= row < len(doc_ids) or not live[row]:
                raise StoreFormatError(f"{self.base_path}: holds a document at row {row}, which is not a live row")
            if doc_id != str(doc_ids[row]):
                raise StoreFormatError(f"{self.base_path}: row {row} holds document {doc_id!r}, the index has "
                                       f"{doc_ids[row]!r}")
        (orphans,) = self._base.execute(
            "SELECT count(*) FROM fields WHERE row NOT IN (SELECT row FROM documents)").fetchone()
        if orphans:
            raise StoreFormatError(f"{self.base_path}: {orphans} metadata lines belong to no document")

    def close(self) -> None:
        with self._lock:
            if self._base is not None:
                self._base.close()
                self._base = None
            self._pending.close()


class StoreWriter:
    """Appends a build's documents to a new store file, in row order; :meth:`finish` indexes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = _connect_new(path)
        self.n_rows = 0

    def append(self, records: list[DocumentRecord | None]) -> None:
        """Add documents as the next rows; None: a row without a document of its own (a passage after
        its document's first, in a chunked index)."""
        _insert(self.conn, [(self.n_rows + j, rec) for j, rec in enumerate(records) if rec is not None])
        self.n_rows += len(records)

    def finish(self) -> None:
        self.conn.execute("ANALYZE")
        self.conn.close()
        _fsync(self.path)

    def abort(self) -> None:
        self.conn.close()
        self.path.unlink(missing_ok=True)


def _open_read_only(path: Path) -> sqlite3.Connection:
    # immutable: a committed index file never changes (a save writes a new directory), so SQLite needs no
    # locks or journal to read it; the connection keeps the file open if a later save replaces the directory
    uri = f"file:{urllib.parse.quote(path.absolute().as_posix())}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.execute("SELECT 1 FROM info LIMIT 1")
    except sqlite3.DatabaseError as e:
        raise StoreFormatError(f"{path}: cannot open the document store ({e})") from None
    return conn


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""BEIR collections: read the standard on-disk layout and download the official archives.

A BEIR collection is a directory holding::

    corpus.jsonl[.gz]   one JSON object a line: {"_id", "title", "text", "metadata"}
    queries.jsonl       one JSON object a line: {"_id", "text", "metadata"}
    qrels/<split>.tsv   header ``query-id<TAB>corpus-id<TAB>score``, then one judgment a row

Readers stream the files line by line and reject malformed input with a ``ValueError`` naming the
file and the 1-based line number, rather than skipping lines silently: a dropped qrels row or document
changes every metric computed downstream.

Relevance grades are kept as written (graded, possibly 0 or negative). A grade ``<= 0`` means "judged
not relevant"; the metrics in :mod:`retriever.evaluation.metrics` count only grades ``> 0`` as relevant and use the
grade itself as the nDCG gain, like ``trec_eval``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Iterator

__all__ = [
    "BeirDataset",
    "DownloadError",
    "DEFAULT_BEIR_URL",
    "load_beir",
    "iter_corpus",
    "read_queries",
    "read_qrels",
    "doc_text",
    "download_beir",
]

logger = logging.getLogger(__name__)

#: Base URL of the official BEIR archives (``<base>/<name>.zip``); ``RETRIEVER_BEIR_URL`` overrides it.
DEFAULT_BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"

_CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz")
_QUERIES_FILE = "queries.jsonl"
_QRELS_HEADER = ("query-id", "corpus-id", "score")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BeirDataset:
    """One BEIR collection with the qrels of one split.

    Parameters
    ----------
    name : str
        Collection name (the directory name, e.g. ``"scifact"``).
    corpus : dict[str, dict]
        Document id -> ``{"title": str, "text": str}``, in file order.
    queries : dict[str, str]
        Query id -> query text, in file order. Only queries with at least one qrels row in the split
        (``split=None``: all queries).
    qrels : dict[str, dict[str, int]]
        Query id -> {document id: graded relevance}. Grades ``<= 0`` are kept (they are judgments) but
        do not count as relevant.
    """

    name: str
    corpus: dict
    queries: dict
    qrels: dict

    def __repr__(self) -> str:  # the default repr would print the whole corpus
        return (
            f"BeirDataset(name={self.name!r}, corpus=<{len(self.corpus)} docs>, "
            f"queries=<{len(self.queries)} queries>, qrels=<{len(self.qrels)} queries, "
            f"{sum(len(v) for v in self.qrels.values())} judgments>)"
        )


# -- readers ----------------------------------------------------------------------------------


def doc_text(doc: dict) -> str:
    """The text BEIR encodes for a document: ``title + " " + text``, stripped.

    Parameters
    ----------
    doc : dict
        A corpus entry with ``"text"`` and optionally ``"title"`` (missing or ``None`` means no title).

    Returns
    -------
    str
        ``(title + " " + text).strip()``, so a document without a title has no leading space.

    Examples
    --------
    >>> doc_text({"title": "Aspirin", "text": "reduces fever."})
    'Aspirin reduces fever.'
    >>> doc_text({"title": "", "text": "No title."})
    'No title.'
    """
    title = doc.get("title") or ""
    return (title + " " + (doc.get("text") or "")).strip()


def _find_file(path: pathlib.Path, candidates: tuple[str, ...], what: str) -> pathlib.Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in candidates:
            if (path / name).is_file():
                return path / name
    looked = [str(path)] if not path.is_dir() else [str(path / c) for c in candidates]
    raise FileNotFoundError(f"no BEIR {what} file found; looked for: {', '.join(looked)}")


def _open_binary(path: pathlib.Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _iter_json_lines(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; lines are split on ``\\n`` only."""
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({e})") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # too deeply nested, or an integer over 4300 digits
                raise ValueError(f"{path}:{lineno}: invalid JSON ({type(e).__name__}: {str(e)[:200]})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _get_id(obj: dict, path: pathlib.Path, lineno: int) -> str:
    if "_id" not in obj:
        raise ValueError(f"{path}:{lineno}: missing '_id'")
    raw = obj["_id"]
    # Integer ids are accepted (hand-made BEIR-style files use them); BEIR itself writes strings.
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"{path}:{lineno}: '_id' must be a non-empty string, got {raw!r}")
    return raw


def _get_str(obj: dict, key: str, path: pathlib.Path, lineno: int, *, required: bool) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValueError(f"{path}:{lineno}: missing '{key}'")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{path}:{lineno}: '{key}' must be a string, got {type(value).__name__}")
    return value


def iter_corpus(path: str | os.PathLike) -> Iterator[dict]:
    """Stream the documents of a BEIR corpus without loading it all.

    Parameters
    ----------
    path : str or PathLike
        A collection directory (``corpus.jsonl`` is preferred over ``corpus.jsonl.gz``) or the corpus
        file itself.

    Yields
    ------
    dict
        ``{"_id": str, "title": str, "text": str, ...}`` in file order; a missing title becomes ``""``;
        every other field of the line (``metadata`` and the rest: the document's metadata) is kept as given.

    Raises
    ------
    FileNotFoundError
        No corpus file.
    ValueError
        A malformed line (bad JSON, missing ``_id``, missing or non-string ``text``, non-string
        ``title``) or a duplicate document id; the message names the file and line.
    """
    file = _find_file(pathlib.Path(path), _CORPUS_FILES, "corpus")
    seen: dict[str, int] = {}
    for lineno, obj in _iter_json_lines(file):
        doc_id = _get_id(obj, file, lineno)
        if doc_id in seen:
            raise ValueError(f"{file}:{lineno}: duplicate document id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        doc = {
            "_id": doc_id,
            "title": _get_str(obj, "title", file, lineno, required=False),
            "text": _get_str(obj, "text", file, lineno, required=True),
        }
        for key, value in obj.items():  # metadata: a "metadata" object and any other field, as given
            if key not in doc:
                doc[key] = value
        yield doc


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read ``queries.jsonl``.

    Parameters
    ----------
    path : str or PathLike
        A collection directory or the queries file itself.

    Returns
    -------
    dict[str, str]
        Query id -> text, in file order.

    Raises
    ------
    FileNotFoundError
        No queries file.
    ValueError
        A malformed line or a duplicate query id (message names file and line).
    """
    file = _find_file(pathlib.Path(path), (_QUERIES_FILE,), "queries")
    queries: dict[str, str] = {}
    first: dict[str, int] = {}
    for lineno, obj in _iter_json_lines(file):
        qid = _get_id(obj, file, lineno)
        if qid in queries:
            raise ValueError(f"{file}:{lineno}: duplicate query id {qid!r} (first on line {first[qid]})")
        first[qid] = lineno
        queries[qid] = _get_str(obj, "text", file, lineno, required=True)
    return queries


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV file (LF or CRLF line endings).

    Parameters
    ----------
    path : str or PathLike
        The ``qrels/<split>.tsv`` file. An optional first line ``query-id<TAB>corpus-id<TAB>score``
        is the header; every other non-blank line must hold exactly three tab-separated fields with
        an integer score.

    Returns
    -------
    dict[str, dict[str, int]]
        Query id -> {document id: grade}, in file order. Zero and negative grades are kept.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        A row with the wrong number of fields, an empty id, a non-integer score, or the same
        (query, document) pair judged twice with different grades (message names file and line).
    """
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no BEIR qrels file found; looked for: {file}")
    qrels: dict[str, dict[str, int]] = {}
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}:{lineno}: not valid UTF-8 ({e})") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
                if tuple(c.strip() for c in line.split("\t")) == _QRELS_HEADER:
                    continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise ValueError(
                    f"{file}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                    f"got {len(fields)}: {line!r}"
                )
            qid, did, score_s = (s.strip() for s in fields)
            if not qid or not did:
                raise ValueError(f"{file}:{lineno}: empty query or corpus id: {line!r}")
            try:
                score = int(score_s)
            except ValueError:
                raise ValueError(f"{file}:{lineno}: score must be an integer, got {score_s!r}") from None
            judged = qrels.setdefault(qid, {})
            if did in judged and judged[did] != score:
                raise ValueError(
                    f"{file}:{lineno}: ({qid!r}, {did!r}) judged twice with different scores "
                    f"({judged[did]} and {score})"
                )
            judged[did] = score
    return qrels


def load_beir(path: str | os.PathLike, split: str | None = "test") -> BeirDataset:
    """Load a BEIR collection directory.

    Parameters
    ----------
    path : str or PathLike
        The collection directory (``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``).
    split : str or None
        Qrels split to load (``"test"``, ``"dev"``, ``"train"``). ``None`` loads no qrels and keeps
        every query.

    Returns
    -------
    BeirDataset
        With ``queries`` restricted to the queries judged in ``split``. Qrels rows whose query is
        not in ``queries.jsonl`` are dropped with a warning (nobody could search them). Judged
        documents missing from the corpus are kept, so recall denominators stay those of the qrels,
        and reported as a warning.

    Raises
    ------
    FileNotFoundError, ValueError
        See :func:`iter_corpus`, :func:`read_queries`, :func:`read_qrels`.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"BEIR collection directory not found: {root}")
    qrels: dict[str, dict[str, int]] = {}
    if split is not None:
        qrels = read_qrels(root / "qrels" / f"{split}.tsv")
    all_queries = read_queries(root)
    corpus = {d["_id"]: {"title": d["title"], "text": d["text"]} for d in iter_corpus(root)}
    if split is None:
        queries = all_queries
    else:
        unknown = [q for q in qrels if q not in all_queries]
        if unknown:
            logger.warning(
                "%s: %d qrels queries are not in queries.jsonl and are dropped (e.g. %r)",
                root.name, len(unknown), unknown[:3],
            )
            for q in unknown:
                del qrels[q]
        queries = {q: t for q, t in all_queries.items() if q in qrels}
        missing = {d for judged in qrels.values() for d in judged if d not in corpus}
        if missing:
            logger.warning(
                "%s: %d judged documents are not in the corpus (e.g. %r)",
                root.name, len(missing), sorted(missing)[:3],
            )
    return BeirDataset(name=root.name, corpus=corpus, queries=queries, qrels=qrels)


# -- download ---------------------------------------------------------------------------------


class DownloadError(OSError):
    """Fetching a BEIR archive failed (HTTP error, unreachable host, truncated transfer)."""


def _default_cache_dir() -> pathlib.Path:
    root = os.environ.get("RETRIEVER_CACHE")
    base = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "retriever"
    return base / "beir"


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest_dir: pathlib.Path, progress: bool) -> pathlib.Path:
    """Download ``url`` into a fresh temporary file in ``dest_dir`` and return its path."""
    from tqdm import tqdm  # only needed here; keeps `import retriever.beir` light

    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=dest_dir)
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=60)
            except urllib.error.HTTPError as e:
                raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
            except (urllib.error.URLError, OSError) as e:
                raise DownloadError(f"download of {url} failed: {getattr(e, 'reason', e)}") from e
            with resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                done = 0
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=url.rsplit("/", 1)[-1], disable=not progress,
                ) as bar:
                    while True:
                        chunk = resp.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        done += len(chunk)
                        bar.update(len(chunk))
            if total is not None and done != total:
                raise DownloadError(f"download of {url} truncated: got {done} of {total} bytes")
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _verify_zip(archive: pathlib.Path, sha256: str | None) -> None:
    if sha256 is not None:
        got = _sha256_file(archive)
        if got.lower() != sha256.lower():
            raise ValueError(f"sha256 mismatch for {archive.name}: expected {sha256.lower()}, got {got}")
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise ValueError(f"{archive.name} is not a valid zip archive: {e}") from None
    if bad is not None:
        raise ValueError(f"{archive.name} is corrupt: CRC check failed for member {bad!r}")


def _check_member(info: zipfile.ZipInfo, target: pathlib.Path) -> pathlib.Path:
    """Return where a member may be extracted, or raise if it would escape ``target``."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"unsafe zip member {name!r}: absolute path")
    if ".." in parts:
        raise ValueError(f"unsafe zip member {name!r}: '..' path component")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError(f"unsafe zip member {name!r}: symbolic link")
    dest = (target / "/".join(p for p in parts if p not in ("", "."))).resolve()
    root = target.resolve()
    if dest != root and root not in dest.parents:
        raise ValueError(f"unsafe zip member {name!r}: resolves outside the extraction directory")
    return dest


def _safe_extract(archive: pathlib.Path, target: pathlib.Path) -> None:
    """Extract every member of ``archive`` under ``target`` after checking all of them first."""
    with zipfile.ZipFile(archive) as zf:
        plan = [(info, _check_member(info, target)) for info in zf.infolist()]
        for info, dest in plan:
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)


def _collection_root(extracted: pathlib.Path, name: str) -> pathlib.Path:
    """The directory inside a fresh extraction that holds the collection.

    Official archives hold one top-level folder ``<name>/``; an archive with the files at its root
    is accepted too.
    """
    entries = [p for p in extracted.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    if (extracted / name).is_dir():
        return extracted / name
    return extracted


def download_beir(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
    *,
    sha256: str | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Download and unpack a BEIR collection, or reuse an earlier download.

    Parameters
    ----------
    name : str
        Collection name, e.g. ``"scifact"`` (letters, digits, ``_``, ``.``, ``-``).
    cache_dir : str or PathLike, optional
        Where collections live. Default ``$RETRIEVER_CACHE/beir`` if ``RETRIEVER_CACHE`` is set,
        else ``~/.cache/retriever/beir``.
    url : str, optional
        Archive URL. Default ``<base>/<name>.zip`` with base ``$RETRIEVER_BEIR_URL`` or
        :data:`DEFAULT_BEIR_URL`.
    sha256 : str, optional
        Expected hex SHA-256 of the archive. Checked before anything is extracted.
    progress : bool
        Show a tqdm progress bar while downloading.

    Returns
    -------
    pathlib.Path
        ``<cache_dir>/<name>``, the collection directory.

    Raises
    ------
    DownloadError
        HTTP error, unreachable server, truncated transfer.
    ValueError
        Bad ``name``, SHA-256 mismatch, corrupt zip, or a member that is a symlink, an absolute
        path, contains ``..`` or resolves outside the target. Nothing is left in the cache then.

    Notes
    -----
    The archive is written to a temporary file and renamed to ``<name>.zip`` once verified; it is
    extracted into a temporary directory that is renamed to ``<name>`` at the end, so the
    collection directory exists only when complete, and its existence means "done" on later
    calls (a verified ``<name>.zip`` left by an interrupted run is extracted without downloading
    again). ``sha256`` is therefore checked only when an archive is downloaded or resumed, not
    against an existing collection directory. The archive is deleted after extraction.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name must be a plain collection name like 'scifact', got {name!r}")
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    final = cache / name
    if final.is_dir():
        logger.info("reusing %s", final)
        return final
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{name}.zip"
    if archive.is_file():
        try:
            _verify_zip(archive, sha256)
            logger.info("reusing verified archive %s", archive)
        except ValueError as e:
            logger.warning("discarding leftover archive %s: %s", archive, e)
            archive.unlink()
    if not archive.is_file():
        if url is None:
            base = os.environ.get("RETRIEVER_BEIR_URL") or DEFAULT_BEIR_URL
            url = f"{base.rstrip('/')}/{name}.zip"
        logger.info("downloading %s", url)
        tmp = _fetch(url, cache, progress)
        try:
            _verify_zip(tmp, sha256)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, archive)
    # Not tempfile.mkdtemp: its 0700 mode would stick to a flat archive's collection directory.
    staging = cache / f".extract-{name}-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        try:
            _safe_extract(archive, staging)
        except ValueError:
            archive.unlink(missing_ok=True)  # an unsafe archive is not worth keeping
            raise
        root = _collection_root(staging, name)
        try:
            os.rename(root, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("%s was completed concurrently; using it", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink(missing_ok=True)
    if not any((final / f).is_file() for f in _CORPUS_FILES):
        logger.warning("%s holds no corpus.jsonl[.gz] at its top level", final)
    return final

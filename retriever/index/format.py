"""The on-disk index format: file names, the manifest, and consistency checks.

An index is a directory of plain files::

    manifest.json     format name and version, library version, build configs, encoder identity,
                      counts, dims, dtypes, and the size and sha256 of every other file
    tokens.npy        (n_tokens, row_width) token store, memory-mapped for the exact rerank: float16
                      vectors, or uint8 rows of a compressed codec (retriever/codecs.py)
    codec_*.npy       trained codec parameters (residual codes only: centroids, cutoffs, weights)
    doc_offsets.npy   (n_docs + 1,) int64 CSR offsets into tokens.npy
    doc_ids.txt       one external document id per line; line i = document row i
    fde.faiss         FAISS inner-product index over the documents' FDE vectors (row i = document i)
    deleted.npy       (n_docs,) uint8, 1 = deleted (only when documents were deleted)
    ivf_*.npy         the token centroid candidate stage (retriever/centroids.py), when built:
                      fine centroids (float32, grouped by coarse cell), coarse centroids, the
                      CSR offsets of each cell's fine centroids, and ivf_codes.npy: the fine
                      centroid of every stored token (row t = token t of tokens.npy); with
                      residual codes also ivf_pq.npy (float32 codebooks (m, 256, dim / m)) and
                      ivf_residuals.npy ((n_tokens, m) uint8, row t = token t of tokens.npy)
    dense.npy         hybrid indexes with the "dense" signal: (n_docs, d) float16 pooled single
                      vectors of the documents (row i = document i)
    bm25_*.npy, bm25_vocab.txt
                      hybrid indexes with the "bm25" signal: the inverted index of
                      retriever/lexical.py (term-major CSR postings, document lengths; one term
                      per line of the vocabulary, line t = term id t)

    documents.sqlite  builds with texts (IndexConfig.store_text): each document's id, title, text and
                      JSON metadata by row, and its metadata flattened for filters (SQLite;
                      retriever/index/documents.py); deleted rows are dropped at save
    passages.npy      chunked indexes (IndexConfig.chunk_tokens; retriever/index/passages.py): every
                      row is a passage, (n_rows, 3) int64 = passage number within its document (0 at
                      the document's first row, where the document store keeps it), start and end
                      character of the passage; doc_ids.txt repeats the document's id on its rows

No pickle anywhere. ``manifest.json`` is written last, so a directory without it is incomplete.
The manifest carries the sha256 of its own content (``manifest_sha256``, computed over the
canonical JSON of every other field), so an edited or damaged manifest is detected at load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from retriever.core.storage import file_sha256

FORMAT_NAME = "retriever-index"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
SHARDED_MANIFEST = "sharded.json"  # the top manifest of a sharded index (retriever/shards.py)
TOKENS = "tokens.npy"
DOC_OFFSETS = "doc_offsets.npy"
DOC_IDS = "doc_ids.txt"
FAISS = "fde.faiss"
DELETED = "deleted.npy"
# trained token codec parameters (residual codes only; see retriever/codecs.py)
CODEC_FILES = {"centroids": "codec_centroids.npy", "cutoffs": "codec_cutoffs.npy", "weights": "codec_weights.npy"}

# the token centroid stage (see retriever/centroids.py)
IVF_FILES = {"centroids": "ivf_centroids.npy", "coarse": "ivf_coarse.npy", "cells": "ivf_cells.npy"}
IVF_CODES = "ivf_codes.npy"
IVF_PQ = "ivf_pq.npy"  # residual codebooks (CentroidConfig.residual_pq > 0)
IVF_RESIDUALS = "ivf_residuals.npy"

DENSE = "dense.npy"
DOCUMENTS = "documents.sqlite"  # titles, texts and metadata by row (retriever/index/documents.py)
PASSAGES = "passages.npy"  # chunked indexes: passage number and character span of every row
BM25_VOCAB = "bm25_vocab.txt"
BM25_FILES = {"term_offsets": "bm25_term_offsets.npy", "post_rows": "bm25_post_rows.npy",
              "post_tf": "bm25_post_tf.npy", "doc_len": "bm25_doc_len.npy"}

# Files whose checksum load() always checks (small); tokens.npy and fde.faiss are checked
# by size and header at load and by checksum in verify().
SMALL_FILES = (DOC_OFFSETS, DOC_IDS, DELETED, *CODEC_FILES.values(), *IVF_FILES.values(), IVF_PQ, BM25_VOCAB, BM25_FILES["term_offsets"],
               BM25_FILES["doc_len"], PASSAGES)


class IndexFormatError(ValueError):
    """The index directory is missing, incomplete, corrupt or of another format version."""


def describe_files(directory: Path, names: list[str], checksum: bool = True) -> dict:
    """{name: {"bytes": size, "sha256": hex}} for the files of a directory being saved."""
    out = {}
    for name in names:
        p = directory / name
        out[name] = {"bytes": p.stat().st_size}
        if checksum:
            out[name]["sha256"] = file_sha256(p)
    return out


REQUIRED_FILES = (TOKENS, DOC_OFFSETS, DOC_IDS, FAISS)
KNOWN_FILES = REQUIRED_FILES + (DELETED, *CODEC_FILES.values(), *IVF_FILES.values(), IVF_CODES, IVF_PQ,
               IVF_RESIDUALS, DENSE, BM25_VOCAB, *BM25_FILES.values(), DOCUMENTS, PASSAGES)
CHECKSUM_FIELD = "manifest_sha256"
_COUNT_FIELDS = ("n_docs", "n_tokens", "dim", "fde_dim")


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the canonical JSON of a manifest without its own checksum field."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_FIELD}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canon.encode("ascii")).hexdigest()


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest.json`` (with its ``manifest_sha256``), flushed and fsynced."""
    manifest = dict(manifest)
    manifest[CHECKSUM_FIELD] = manifest_checksum(manifest)
    p = directory / MANIFEST
    with open(p, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def commit_of(directory: Path, names: tuple[str, ...] = (MANIFEST,)) -> str | None:
    """The commit id of the index at ``directory``: the ``manifest_sha256`` of the first of ``names``
    there (every save writes its manifest last), None when none is there, ``"unreadable"`` when it is damaged.
    Compared, never trusted: :func:`read_manifest` is what checks a manifest."""
    for name in names:
        p = Path(directory) / name
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8")).get(CHECKSUM_FIELD, "unreadable")
            except (OSError, ValueError, AttributeError):
                return "unreadable"
    return None


def read_manifest(directory: Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFormatError(f"no index at {directory}: not a directory")
    p = directory / MANIFEST
    if not p.is_file() and (directory / SHARDED_MANIFEST).is_file():
        raise IndexFormatError(f"{directory} is a sharded index: load it with retriever.cluster.shards.ShardedRetriever.load "
                               f"(the CLI reads both)")
    if not p.is_file():
        raise IndexFormatError(f"no index at {directory}: {MANIFEST} is missing (not an index, or an incomplete save)")
    try:
        with open(p, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{p} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{p}: format_version {version!r} is not supported by this library (it reads version {FORMAT_VERSION}); "
            f"rebuild the index or use the library version that wrote it ({manifest.get('library_version')})"
        )
    for key in ("n_docs", "n_tokens", "dim", "fde_dim", "files", "config", "id_type", CHECKSUM_FIELD):
        if key not in manifest:
            raise IndexFormatError(f"{p}: field {key!r} is missing")
    try:
        expected = manifest_checksum(manifest)
    except ValueError as e:  # NaN/inf smuggled into the JSON
        raise IndexFormatError(f"{p}: {e}") from None
    if manifest[CHECKSUM_FIELD] != expected:
        raise IndexFormatError(f"{p} does not match its {CHECKSUM_FIELD} (the manifest was edited or damaged)")
    _check_manifest_fields(p, manifest)
    return manifest


def _check_manifest_fields(p: Path, m: dict) -> None:
    """Types and ranges of the fields load() relies on, so that a bad value is named, not crashed on."""
    for key in _COUNT_FIELDS:
        v = m[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key in ("dim", "fde_dim") else 0):
            raise IndexFormatError(f"{p}: field {key!r} must be a {'positive' if key in ('dim', 'fde_dim') else 'non-negative'} integer, got {v!r}")
    if m["n_docs"] > m["n_tokens"]:
        raise IndexFormatError(f"{p}: n_docs {m['n_docs']} exceeds n_tokens {m['n_tokens']} (every document has a token)")
    if m["id_type"] not in ("int", "str"):
        raise IndexFormatError(f"{p}: field 'id_type' must be 'int' or 'str', got {m['id_type']!r}")
    if not isinstance(m["config"], dict):
        raise IndexFormatError(f"{p}: field 'config' must be an object, got {type(m['config']).__name__}")
    n_deleted = m.get("n_deleted", 0)
    if isinstance(n_deleted, bool) or not isinstance(n_deleted, int) or not 0 <= n_deleted <= m["n_docs"]:
        raise IndexFormatError(f"{p}: field 'n_deleted' must be an integer in [0, n_docs], got {n_deleted!r}")
    files = m["files"]
    if not isinstance(files, dict):
        raise IndexFormatError(f"{p}: field 'files' must be an object, got {type(files).__name__}")
    for name, info in files.items():
        if name not in KNOWN_FILES:
            raise IndexFormatError(f"{p}: 'files' lists {name!r}, which is not a file of this format")
        if (
            not isinstance(info, dict)
            or isinstance(info.get("bytes"), bool)
            or not isinstance(info.get("bytes"), int)
            or not isinstance(info.get("sha256"), str)
        ):
            raise IndexFormatError(f"{p}: 'files' entry {name!r} must hold an integer 'bytes' and a string 'sha256', got {info!r}")
    for name in REQUIRED_FILES:
        if name not in files:
            raise IndexFormatError(f"{p}: 'files' does not list {name!r}")
    if (DELETED in files) != (n_deleted > 0):
        raise IndexFormatError(f"{p}: n_deleted is {n_deleted} but {DELETED!r} is {'' if DELETED in files else 'not '}listed")


def check_files(directory: Path, manifest: dict, full: bool) -> None:
    """Check that every file of the manifest exists with its recorded size (and checksum).

    ``full=False`` checksums the small files only; ``full=True`` checksums everything.
    Raises ``IndexFormatError`` naming the file.
    """
    for name, info in manifest["files"].items():
        p = directory / name
        if not p.is_file():
            raise IndexFormatError(f"{p} is missing")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise IndexFormatError(f"{p} has {size} bytes, the manifest says {info['bytes']} (truncated or replaced)")
        if (full or name in SMALL_FILES) and "sha256" in info:
            if file_sha256(p) != info["sha256"]:
                raise IndexFormatError(f"{p} does not match its checksum in {MANIFEST} (the file was altered)")


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file of the index (one item per line, a final newline optional);
    ``IndexFormatError`` naming the file when it is not UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except UnicodeDecodeError as e:
        raise IndexFormatError(f"{path} is not valid UTF-8: {e}") from None
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_array(directory: Path, name: str, mmap: bool, dtype, shape: tuple) -> np.ndarray:
    """np.load without pickle, checking dtype and shape against the manifest."""
    p = directory / name
    try:
        arr = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise IndexFormatError(f"{p} is not a readable .npy file: {e}") from None
    if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
        raise IndexFormatError(
            f"{p} holds {arr.dtype} {tuple(arr.shape)}, the manifest says {np.dtype(dtype)} {tuple(shape)}"
        )
    if arr.ndim > 1 and not arr.flags.c_contiguous:  # a header claiming Fortran order would transpose the data
        raise IndexFormatError(f"{p} is not stored in C order (its header says fortran_order)")
    return arr

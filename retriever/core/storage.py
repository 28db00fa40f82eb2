"""On-disk primitives: a streaming ``.npy`` writer, atomic directory replacement, file checksums.

Everything the index writes is a plain file (JSON, ``.npy``, FAISS, text). A save goes to a
temporary directory next to the target and is swapped into place in one step, so an interrupted
save never leaves a half-written index where a good one was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "NpyAppender",
    "NpyRowReader",
    "atomic_replace_dir",
    "file_sha256",
    "iter_npy_rows",
    "fsync_dir",
    "make_temp_dir_beside",
    "recover_interrupted_swap",
    "remove_stale_temp_dirs",
]

_HEADER_LEN = 128  # bytes reserved for the .npy header (magic + len + dict), a multiple of 64


class NpyAppender:
    """Write a 2-D ``.npy`` file row block by row block without knowing the final row count.

    The header is written with room to spare and rewritten with the real shape on ``close()``,
    so the file is a standard ``.npy`` that ``np.load(..., mmap_mode="r")`` reads.

    Parameters
    ----------
    path : path of the file to create (truncated if it exists)
    n_cols : number of columns
    dtype : numpy dtype of the stored rows
    """

    def __init__(self, path: str | os.PathLike, n_cols: int, dtype, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.n_cols = int(n_cols)
        self.dtype = np.dtype(dtype)
        self.n_rows = 0
        self.durable = durable
        self._fh = open(self.path, "wb")
        self._fh.write(self._header(0))

    @classmethod
    def resume(cls, path: str | os.PathLike, n_cols: int, dtype, n_rows: int, *, durable: bool = False) -> "NpyAppender":
        """Reopen a file written by ``NpyAppender`` to append after its first ``n_rows`` rows.

        Bytes after those rows (left by an append that was rolled back) are discarded. The
        header keeps the old shape until :meth:`close`, so readers that map the first
        ``n_rows`` rows are unaffected by the appends. Raises ``ValueError`` if the file is
        not such a file or is shorter than ``n_rows`` rows.
        """
        self = cls.__new__(cls)
        self.path, self.n_cols, self.dtype, self.durable = Path(path), int(n_cols), np.dtype(dtype), durable
        self.n_rows = int(n_rows)
        fh = open(self.path, "r+b")
        try:
            with open(self.path, "rb") as rd:
                major, _ = np.lib.format.read_magic(rd)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype_on_disk = read_header(rd)
                if rd.tell() != _HEADER_LEN or fortran or dtype_on_disk != self.dtype or len(shape) != 2 or shape[1] != self.n_cols:
                    raise ValueError(f"{self.path} was not written by NpyAppender with {self.dtype} rows of {self.n_cols} columns")
            end = _HEADER_LEN + self.n_rows * self.n_cols * self.dtype.itemsize
            if os.fstat(fh.fileno()).st_size < end:
                raise ValueError(f"{self.path} holds fewer than {self.n_rows} rows")
            fh.truncate(end)
            fh.seek(end)
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return self

    def _header(self, n_rows: int) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (n_rows, self.n_cols)}
        body = repr(d).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        room = _HEADER_LEN - len(prefix) - 2 - 1  # 2 bytes of length, 1 newline
        if len(body) > room:
            raise ValueError(f"npy header too long for {self.path}")
        body = body + b" " * (room - len(body)) + b"\n"
        return prefix + len(body).to_bytes(2, "little") + body

    def append(self, rows: np.ndarray) -> None:
        """Append rows of shape (n, n_cols); converted to this file's dtype."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.n_cols:
            raise ValueError(f"expected rows of shape (n, {self.n_cols}), got {rows.shape}")
        self._fh.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.n_rows += rows.shape[0]

    def close(self) -> None:
        """Rewrite the header with the final shape, flush (and fsync unless ``durable=False``)."""
        if self._fh.closed:
            return
        self._fh.seek(0)
        self._fh.write(self._header(self.n_rows))
        self._fh.flush()
        if self.durable:
            os.fsync(self._fh.fileno())
        self._fh.close()

    def discard(self) -> None:
        """Close the file without finishing its header (its rows are being thrown away)."""
        self._fh.close()

    def truncate_to(self, n_rows: int) -> None:
        """Cut a file back to its first ``n_rows`` rows and rewrite its header (rollback of appends)."""
        if not self._fh.closed:
            self._fh.close()
        self.n_rows = int(n_rows)
        with open(self.path, "r+b") as fh:
            fh.truncate(_HEADER_LEN + int(n_rows) * self.n_cols * self.dtype.itemsize)
            fh.seek(0)
            fh.write(self._header(int(n_rows)))

    def __enter__(self) -> "NpyAppender":
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close() if exc[0] is not None else self.close()


def iter_npy_rows(path: str | os.PathLike, chunk_rows: int):
    """Yield consecutive row blocks of a 2-D ``.npy`` file with plain reads (no memory map).

    Peak memory is one block, whatever the file size: the pages of a memory map would count
    towards the process's resident memory until unmapped.
    """
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {shape}")
        n, d = shape
        for s in range(0, n, chunk_rows):
            m = min(chunk_rows, n - s)
            block = np.fromfile(fh, dtype=dtype, count=m * d)
            if block.size != m * d:
                raise ValueError(f"{path} is truncated at row {s}")
            yield block.reshape(m, d)


class NpyRowReader:
    """Rows of a 2-D ``.npy`` file read on demand with ``os.pread`` (no memory map).

    ``reader[a:b]`` (a contiguous block) and ``reader[rows]`` (sorted or not, an int array) return
    fresh arrays. A build reads its whole token store through this: the pages of a memory map
    would count towards the process's resident memory until unmapped (a 1M-document build read
    8.8 GB of int8 tokens through a map and peaked at 11.9 GB RSS).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self._offset = fh.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {shape}")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, a: int, b: int) -> np.ndarray:
        n = (b - a) * self._row_bytes
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = os.preadv(self._fd, [view[got:]], self._offset + a * self._row_bytes + got)
            if k == 0:
                raise ValueError(f"{self.path} is truncated before row {b}")
            got += k
        return np.frombuffer(buf, dtype=self.dtype).reshape(b - a, self.shape[1])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            a, b, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("NpyRowReader reads contiguous slices (step 1) or row arrays")
            return self._read(a, max(a, b))
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row out of range [0, {self.shape[0]})")
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        for run in np.split(np.arange(srt.size), breaks):
            if run.size:
                out[order[run]] = self._read(int(srt[run[0]]), int(srt[run[-1]]) + 1)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "NpyRowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def make_temp_dir_beside(target: str | os.PathLike) -> Path:
    """A fresh temporary directory in the same parent as ``target`` (same filesystem, so renames are atomic).

    Its name, ``.NAME.tmp-HOST-PID-XXXX``, records the writing process, so that the directory of
    a writer that died (a crash, SIGKILL) can be recognised and removed later (see
    :func:`remove_stale_temp_dirs`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_host_tag()}-{os.getpid()}-", dir=target.parent))


def _writer_is_gone(name: str, prefix: str) -> bool:
    """True when a temp dir name says it was made on this host by a process that no longer exists."""
    m = re.fullmatch(re.escape(prefix) + r"(.+)-(\d+)-[^-]*", name)
    if m is None or m.group(1) != _host_tag():
        return False  # another host, or an older naming scheme: leave it alone
    pid = int(m.group(2))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False  # alive under another user (or unknown): not ours to judge
    return False  # alive (or its pid was reused): keep


def remove_stale_temp_dirs(target: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` directories beside ``target`` left by writers that died.

    Only directories made on this host by processes that no longer exist are removed; those of
    live processes (a save in progress) and of other hosts are kept. Returns the removed paths.
    """
    target = Path(target)
    prefix = f".{target.name}.tmp-"
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(glob_escape(prefix) + "*"):
        if p.is_dir() and _writer_is_gone(p.name, prefix):
            log.info("removing %s, left by a save that did not finish", p)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def glob_escape(s: str) -> str:
    """``s`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", s)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux renameat2(RENAME_EXCHANGE). False if unsupported."""
    global _libc
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL (filesystem without exchange), EOPNOTSUPP
        return False
    raise OSError(err, os.strerror(err), str(a))


def _old_name(target: Path) -> Path:
    return target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"


def atomic_replace_dir(src: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the complete directory ``src`` to ``target``, replacing any existing ``target``.

    On Linux the swap is one atomic ``renameat2(RENAME_EXCHANGE)``: at every instant ``target``
    is either the old complete directory or the new one. Elsewhere the old directory is first
    renamed aside (``.NAME.old-XXXX``); if the process dies between the two renames,
    :func:`recover_interrupted_swap` (called by ``load``) puts it back.
    Files of the old directory that are memory-mapped stay valid for their readers (POSIX
    keeps unlinked files alive while mapped).
    """
    src, target = Path(src), Path(target)
    fsync_dir(src)
    if not target.exists():
        os.rename(src, target)
    elif _renameat2_exchange(src, target):
        # src now holds the old index
        shutil.rmtree(src, ignore_errors=True)
    else:
        old = _old_name(target)
        os.rename(target, old)
        os.rename(src, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


def recover_interrupted_swap(target: str | os.PathLike) -> None:
    """If ``target`` is missing but an old copy was renamed aside by an interrupted save, restore it.

    Old copies left beside an intact ``target`` are removed, and so are temporary
    ``.NAME.tmp-*`` directories whose writer died (:func:`remove_stale_temp_dirs`); those of
    live writers are left alone.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not target.exists() and olds:
        log.warning("restoring %s from %s left by an interrupted save", target, olds[0])
        os.rename(olds[0], target)
        olds = olds[1:]
    if target.exists():
        for p in olds:
            shutil.rmtree(p, ignore_errors=True)
    remove_stale_temp_dirs(target)

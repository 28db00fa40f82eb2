"""One writer per index directory: an exclusive OS lock held from a process's first change until it closes.

The lock is ``fcntl.flock`` on a file beside the index directory, ``.NAME.lock`` (not inside it: a
save replaces the whole directory by an atomic rename, which would swap a lock file inside it away).
``flock`` locks belong to the open file, so

- a second writer, in another process or through another object of the same process, fails at once
  with :class:`IndexLockedError`, which names the holder (pid, host, since when) from the lock file;
- readers never take it and never wait;
- a killed writer's lock disappears with its process (the kernel closes its files); the file itself
  stays, and a later writer simply locks it again.

POSIX only (``fcntl``); on a system without it :class:`WriteLock` raises ``OSError`` on acquire.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

log = logging.getLogger(__name__)

__all__ = ["IndexLockedError", "StaleIndexError", "WriteLock", "lock_path"]


class IndexLockedError(RuntimeError):
    """Another writer holds the index's write lock."""


class StaleIndexError(RuntimeError):
    """This object's view of an index is older than the index's last commit on disk: reload it first."""


def lock_path(index_dir: str | os.PathLike) -> Path:
    """The lock file of an index directory: ``.NAME.lock`` in the same parent."""
    p = Path(index_dir).absolute()
    return p.parent / f".{p.name}.lock"


class WriteLock:
    """The exclusive write lock of one index directory (not re-entrant across objects: one per writer)."""

    def __init__(self, index_dir: str | os.PathLike) -> None:
        self.index_dir = Path(index_dir).absolute()
        self.path = lock_path(self.index_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str = "change") -> None:
        """Take the lock now or raise :class:`IndexLockedError` naming the holder; no waiting."""
        if self._fd is not None:
            return
        if fcntl is None:  # pragma: no cover
            raise OSError("index write locks need fcntl (POSIX)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise IndexLockedError(
                f"cannot {what} {self.index_dir}: another writer holds its lock ({self.path}: {holder}); "
                f"one process writes an index at a time - close the other writer or wait for it to finish"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        log.debug("took the write lock of %s", self.index_dir)

    def release(self) -> None:
        """Give the lock back (idempotent). The lock file stays; its content is cleared."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "WriteLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # an object dropped without close(): do not keep the lock until exit
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        info = json.loads(raw)
        return f"held by pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "held by another process"

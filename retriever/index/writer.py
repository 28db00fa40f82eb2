"""Who may change an index directory: the write locks an index object holds and the commit it last saw.

Every change (``add``, ``upsert``, ``delete``, ``compact``, a centroid rebuild) first takes the write
lock of the directory the object was loaded from (``retriever.core.locks``) and checks that the
directory's last commit (its manifest checksum) is still the one this object loaded or saved: a writer
whose view is older is refused with :class:`StaleIndexError` instead of overwriting the newer commit
(no lost update). ``save(path)`` and ``build(path=...)`` lock ``path`` the same way. The locks are held
until :meth:`WriteGuard.close` (``Retriever.close()``, the end of a ``with`` block, or the process's exit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from retriever.core.locks import StaleIndexError, WriteLock

log = logging.getLogger(__name__)

__all__ = ["WriteGuard"]


class WriteGuard:
    """Write locks and last-seen commits of one index object.

    ``read_commit(path)`` returns the commit id of the index at ``path`` now (its manifest checksum), or
    None when no index is there. ``managed=False`` (the shards of a sharded index, whose top directory is
    locked instead) turns every check off.
    """

    def __init__(self, read_commit: Callable[[Path], str | None], managed: bool = True) -> None:
        self.read_commit = read_commit
        self.managed = managed
        self.source: Path | None = None  # the directory this object was loaded from or last saved to
        self.seen: dict[Path, str | None] = {}
        self.locks: dict[Path, WriteLock] = {}

    def opened(self, path, commit: str | None) -> None:
        """This object now reflects the index at ``path`` as of ``commit`` (a load or a save)."""
        p = Path(path).absolute()
        self.source = p
        self.seen[p] = commit

    def lock(self, path, what: str) -> None:
        """Hold ``path``'s write lock (taken now unless held); ``IndexLockedError`` if another writer has it."""
        if not self.managed:
            return
        p = Path(path).absolute()
        if p not in self.locks:
            lock = WriteLock(p)
            lock.acquire(what)
            self.locks[p] = lock

    def check_fresh(self, path) -> None:
        """Raise :class:`StaleIndexError` if ``path`` has a commit newer than the one this object saw there."""
        if not self.managed:
            return
        p = Path(path).absolute()
        if p not in self.seen:
            return  # never loaded from or saved to: writing there replaces whatever is there (build semantics)
        now = self.read_commit(p)
        if now is not None and now != self.seen[p]:
            held = self.locks.pop(p, None)
            if held is not None:
                held.release()
            raise StaleIndexError(
                f"{p} was changed by another writer after this object loaded or saved it (commit {str(now)[:12]}, "
                f"this object has {str(self.seen[p])[:12]}): load it again and redo the change"
            )

    def begin_change(self, what: str = "change") -> None:
        """Before a change of the in-memory index: lock its source directory and check it is not stale."""
        if self.managed and self.source is not None:
            self.lock(self.source, what)
            self.check_fresh(self.source)

    def before_save(self, path) -> None:
        self.lock(path, "save to")
        self.check_fresh(path)

    def close(self) -> None:
        """Release every lock (idempotent)."""
        locks, self.locks = self.locks, {}
        for lock in locks.values():
            lock.release()

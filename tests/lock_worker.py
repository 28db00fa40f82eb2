"""Subprocess for tests/test_write_lock.py: a second writer of one index directory.

Usage:
  ``python tests/lock_worker.py hold INDEX_DIR``   load, add one document (taking the write lock), print
      ``LOCKED <pid>``, then wait for a line on stdin: ``save`` saves and exits, anything else exits without saving
  ``python tests/lock_worker.py loop INDEX_DIR NAME N SECONDS``   up to N rounds (and at most SECONDS): load, add
      document ``NAME-i``, save, close; prints ``ACCEPTED NAME-i`` or ``REFUSED NAME-i <error class>`` per round
"""

from __future__ import annotations

import os
import sys
import time

from lifecycle_util import make_docs
from retriever.core.locks import IndexLockedError, StaleIndexError
from retriever.index.retriever import Retriever


def main() -> int:
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "hold":
        r = Retriever.load(path)
        r.add(make_docs(1, seed=99), ["held-doc"])
        print(f"LOCKED {os.getpid()}", flush=True)
        if sys.stdin.readline().strip() == "save":
            r.save(path)
            print("SAVED", flush=True)
        return 0
    name, n, seconds = sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    t_end = time.monotonic() + seconds
    i = 0
    while i < n and time.monotonic() < t_end:
        doc_id = f"{name}-{i}"
        try:
            with Retriever.load(path) as r:
                r.add(make_docs(1, seed=i), [doc_id])
                r.save(path)
            print(f"ACCEPTED {doc_id}", flush=True)
            i += 1
        except (IndexLockedError, StaleIndexError) as e:
            print(f"REFUSED {doc_id} {type(e).__name__}", flush=True)
            time.sleep(0.01)
    return 0


if __name__ == "__main__":
    sys.exit(main())

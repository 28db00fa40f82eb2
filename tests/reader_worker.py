"""Subprocess for tests/test_concurrency.py: holds an index open (memory-mapped) and keeps answering.

Usage: ``python tests/reader_worker.py INDEX_DIR``

Loads the index, answers the fixed query set once (its baseline), prints ``READY``, then a
background thread searches continuously and compares every answer with the baseline. Commands
on stdin, one per line: ``query`` prints the current answers as JSON; ``stats`` prints
``{"rounds": n, "mismatches": m, "errors": [...]}``; ``quit`` exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from lifecycle_util import make_queries

QUERIES = make_queries(6, seed=21)


def answers(r) -> list:
    out = []
    for kw in ({"mode": "exact"}, {"n_candidates": 10}):
        res = r.search(QUERIES, k=5, **kw)
        out.append([res.ids.tolist(), res.scores.tolist()])
    return out


def main(index_dir: str) -> int:
    from retriever.index.retriever import Retriever

    r = Retriever.load(index_dir, mmap=True)
    baseline = answers(r)
    stats = {"rounds": 0, "mismatches": 0, "errors": []}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                if answers(r) != baseline:
                    stats["mismatches"] += 1
            except Exception as e:  # reported to the test, which fails on any
                stats["errors"].append(repr(e))
            stats["rounds"] += 1
            time.sleep(0.002)  # leave the CPU to the writer (the test machine has two cores)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "query":
            print(json.dumps(answers(r)), flush=True)
        elif cmd == "stats":
            deadline = time.monotonic() + 60  # on a loaded machine the thread may not have finished a round yet
            while stats["rounds"] == 0 and not stats["errors"] and time.monotonic() < deadline:
                time.sleep(0.01)
            print(json.dumps(stats), flush=True)
        elif cmd == "quit":
            break
    stop.set()
    t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

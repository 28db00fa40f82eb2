"""The user's path, timed as processes: text in, results out (the README's headline numbers).

Usage::

    .venv/bin/python bench/user_path/end_to_end.py             # SciFact and NFCorpus, every stage
    .venv/bin/python bench/user_path/end_to_end.py --datasets scifact --reuse-index --stages first,single,batch

For each BEIR collection (read from ``../shared/beir``), in fresh processes as a user runs them:

- ``index``: ``retriever index --corpus ... --out ...`` (the README's main job), wall time from process
  start, and the build's own stage timings (encoding docs/s among them);
- ``first``: the first answer of ``retriever search --query ...`` from process start, beside the time a
  fresh process takes to ``import retriever`` and load the encoder (median of ``--repeats`` runs each);
  the target is first / load <= 1.5;
- ``batch``: ``retriever search --queries ... --k 100 --out run.trec`` over every query, wall time and
  queries/s;
- ``single``: one process (``Retriever.load``) answers sampled text queries one at a time (encode +
  search, k=10) and the same queries pre-encoded (search only, with their texts and pooled vectors for
  the hybrid signals): p50 / p99 of both and their ratio (the target is <= 2x), and the in-process
  batch queries/s of every query at k=100.

Each stage appends one row to ``bench/results/end_to_end.jsonl`` with the common envelope (CPU model and
core count under ``machine``, git revision; ``bench/common.py``), the load average before and after and the
thread settings; nothing else runs in those
processes. ``--report`` prints the latest row of each (dataset, stage) as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows  # noqa: E402  (also puts the repository root on sys.path)

log = logging.getLogger("bench.end_to_end")

RESULTS = RESULTS_DIR / "end_to_end.jsonl"
BEIR = Path(os.environ.get("RETRIEVER_TEST_BEIR", ROOT.parent / "shared" / "beir"))
STAGES = ("index", "first", "batch", "single")
PROBE_QUERY = "smoking increases the risk of lung cancer"

LOAD_ENCODER = """
import retriever
from retriever.encoder import ColBERTEncoder
ColBERTEncoder.from_pretrained().encode_queries(["warm"])
"""

SINGLE = r"""
import json, sys, time
import numpy as np
from retriever import Retriever
from retriever.beir import read_queries

index, queries, n_timed, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
q = read_queries(queries)
texts = list(q.values())
rng = np.random.default_rng(0)
sample = [texts[i] for i in sorted(rng.choice(len(texts), size=min(n_timed, len(texts)), replace=False))]
t0 = time.perf_counter()
r = Retriever.load(index)
load_s = time.perf_counter() - t0
for t in sample[:warm]:
    r.search([t], k=10)
text_ms = []
for t in sample:
    s = time.perf_counter()
    r.search([t], k=10)
    text_ms.append((time.perf_counter() - s) * 1e3)
hybrid = r.config.hybrid is not None and bool(getattr(r.config.hybrid, "signals", ()))
pooled = "dense" in getattr(r.config.hybrid, "signals", ()) if hybrid else False
enc_ms, search_ms = [], []
for t in sample:
    s = time.perf_counter()
    out = r.encoder.encode_queries([t], return_pooled=pooled)
    enc_ms.append((time.perf_counter() - s) * 1e3)
    emb, pv = out if pooled else (out, None)
    kw = {}
    if hybrid:
        kw["query_texts"] = [t]
        if pooled:
            kw["query_pooled"] = pv
    s = time.perf_counter()
    r.search(emb, k=10, **kw)
    search_ms.append((time.perf_counter() - s) * 1e3)
s = time.perf_counter()
r.search(texts, k=100)
batch_s = time.perf_counter() - s
pct = lambda a, p: float(np.percentile(a, p))
print(json.dumps({
    "load_s": load_s, "timed_queries": len(sample), "warmup_queries": warm,
    "text_p50_ms": pct(text_ms, 50), "text_p99_ms": pct(text_ms, 99),
    "encode_p50_ms": pct(enc_ms, 50), "search_p50_ms": pct(search_ms, 50), "search_p99_ms": pct(search_ms, 99),
    "text_over_search_p50": pct(text_ms, 50) / pct(search_ms, 50),
    "batch_queries": len(texts), "batch_k": 100, "batch_s": batch_s, "batch_qps": len(texts) / batch_s,
}))
"""


def threads_env() -> dict:
    """The thread settings of this process's environment (the measured processes inherit them)."""
    return {"threads_env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                       "NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS") if k in os.environ}}


EXTRA_ENV: dict[str, str] = {}  # --env: variables set in every measured process (a reference variant)


def run(cmd: list[str], timeout: float) -> tuple[float, str]:
    """Wall seconds of ``cmd`` from process start, and its stdout; raises on failure."""
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **EXTRA_ENV},
                         cwd=ROOT)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall, out.stdout


def append(row: dict, results: Path) -> None:
    log.info("%s", json.dumps(append_rows(results, [row], bench="user_path/end_to_end")[0]))


def bench_dataset(name: str, args, base_row: dict) -> None:
    data = BEIR / name
    corpus, queries = data / "corpus.jsonl.gz", data / "queries.jsonl"
    if not corpus.is_file():
        corpus = data / "corpus.jsonl"
    index = Path(args.work) / name
    cli = [sys.executable, "-m", "retriever"]
    extra = list(args.index_args)
    stages = args.stages

    def row(stage: str, **fields) -> dict:
        return {"dataset": name, "stage": stage, "env": dict(EXTRA_ENV), **base_row, **fields,
                "loadavg_after": os.getloadavg()[0]}

    if "index" in stages or not (index / "manifest.json").is_file():
        if index.exists():
            shutil.rmtree(index)
        load0 = os.getloadavg()[0]
        wall, out = run(cli + ["--quiet", "index", "--corpus", str(corpus), "--out", str(index), *extra], 7200)
        built = json.loads(out.strip().splitlines()[-1])
        t = built.get("timings_s", {})
        enc = next((v for k, v in t.items() if k.startswith("encode")), None)
        append(row("index", loadavg_before=load0, wall_s=wall, n_docs=built["n_docs"], n_tokens=built["n_tokens"],
                   build_timings_s=t, encode_docs_per_s=(built["n_docs"] / enc) if enc else None,
                   docs_per_s=built["n_docs"] / wall, index_args=extra), args.results)
    if "first" in stages:
        load0 = os.getloadavg()[0]
        loads = [run([sys.executable, "-c", LOAD_ENCODER], 600)[0] for _ in range(args.repeats)]
        firsts = [run(cli + ["search", "--index", str(index), "--query", PROBE_QUERY, "--k", "10"], 600)[0]
                  for _ in range(args.repeats)]
        load, first = statistics.median(loads), statistics.median(firsts)
        append(row("first", loadavg_before=load0, import_and_load_encoder_s=load, first_answer_s=first,
                   first_over_load=first / load, runs=args.repeats, all_load_s=loads, all_first_s=firsts),
               args.results)
    if "batch" in stages:
        load0 = os.getloadavg()[0]
        n_q = sum(1 for line in open(queries, encoding="utf-8") if line.strip())
        with tempfile.TemporaryDirectory() as tmp:
            wall, _ = run(cli + ["--quiet", "search", "--index", str(index), "--queries", str(queries), "--k", "100",
                                 "--out", str(Path(tmp) / "run.trec")], 7200)
        append(row("batch", loadavg_before=load0, queries=n_q, k=100, wall_s=wall, queries_per_s=n_q / wall),
               args.results)
    if "single" in stages:
        load0 = os.getloadavg()[0]
        _, out = run([sys.executable, "-c", SINGLE, str(index), str(queries), str(args.timed), "5"], 7200)
        append(row("single", loadavg_before=load0, **json.loads(out.strip().splitlines()[-1])), args.results)


def report(results: Path) -> str:
    latest: dict = {}
    for line in open(results, encoding="utf-8"):
        r = json.loads(line)
        env = " ".join(f"{k}={v}" for k, v in sorted(r.get("env", {}).items())) or "defaults"
        latest[(r["dataset"], r["stage"], env)] = r
    lines = ["| dataset | stage | environment | figure | CPU | load |", "|---|---|---|---|---|---|"]
    for (ds, stage, env), r in sorted(latest.items()):
        if stage == "index":
            fig = f"{r['wall_s']:.0f} s wall, {r['docs_per_s']:.1f} docs/s overall, encoding {r['encode_docs_per_s'] or 0:.1f} docs/s"
        elif stage == "first":
            fig = (f"first answer {r['first_answer_s']:.2f} s vs import + load encoder {r['import_and_load_encoder_s']:.2f} s"
                   f" ({r['first_over_load']:.2f}x)")
        elif stage == "batch":
            fig = f"{r['queries']} queries k=100: {r['wall_s']:.1f} s wall, {r['queries_per_s']:.1f} q/s"
        else:
            fig = (f"text p50 {r['text_p50_ms']:.1f} / p99 {r['text_p99_ms']:.1f} ms; search-only p50 "
                   f"{r['search_p50_ms']:.1f} ms ({r['text_over_search_p50']:.2f}x); in-process batch "
                   f"{r['batch_qps']:.1f} q/s")
        m = r.get("machine") or r  # rows before the common envelope: the machine's fields at the top level
        lines.append(f"| {ds} | {stage} | {env} | {fig} | {m['cpu']} ({m['cores']} cores) | {r['loadavg_before']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="scifact,nfcorpus")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--work", default=str(ROOT / "index_data" / "end_to_end"), help="where the indexes are built")
    p.add_argument("--reuse-index", action="store_true", help="skip the index stage when the index exists")
    p.add_argument("--timed", type=int, default=200, help="queries timed one at a time (sampled, seed 0)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per 'first' measurement")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set in every measured process, e.g. GOMP_SPINCOUNT=300000 (libgomp's own default wait, "
                        "which also keeps retriever's OMP_WAIT_POLICY=PASSIVE default off); repeatable")
    p.add_argument("--report", action="store_true", help="print the latest rows as a Markdown table and exit")
    p.add_argument("index_args", nargs="*", help="extra arguments for 'retriever index' (after --)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.report:
        print(report(args.results))
        return 0
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --env expects NAME=VALUE, got {item!r}")
        EXTRA_ENV[name] = value
    args.stages = [s for s in args.stages.split(",") if s]
    bad = sorted(set(args.stages) - set(STAGES))
    if bad:
        raise SystemExit(f"error: unknown stages {bad}; choose from {STAGES}")
    if args.reuse_index and "index" in args.stages:
        args.stages.remove("index")
    base = threads_env()
    for name in [d for d in args.datasets.split(",") if d]:
        if not (BEIR / name).is_dir():
            raise SystemExit(f"error: BEIR collection {BEIR / name} is missing")
        bench_dataset(name, args, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())

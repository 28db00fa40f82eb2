"""Cost and Chamfer recall against corpus size: synthetic MS MARCO-length corpora of 100k-1M documents.

Usage::

    .venv/bin/python bench/scale/scale.py --sizes 100000 300000      # build (cached) + measure -> scale.jsonl
    .venv/bin/python bench/scale/scale.py --sizes 100000 --split tune --nprobe 8 16 --n-candidates 500 1000 2000
    .venv/bin/python bench/scale/scale.py --sizes 100000 --centroids off --n-candidates auto 4000 8000  # FDE stage
    .venv/bin/python bench/scale/scale.py --sizes 100000 --split longq-tune --stage fde   # long queries, FDE stage
    .venv/bin/python bench/scale/scale.py --report                    # scale.md + scale.png

Corpora come from :mod:`synthetic` (real token windows of the cached SciFact/NFCorpus float16 stores,
2-4 windows per document, seeded noise; see its docstring). Each is built once with the library's
streaming build from ``(TokenEmbeddings, ids)`` batches under ``index_data/scale/`` (the encoder is
not involved: "build" here is store + codec + FDE + FAISS + the token centroid stage; ``-ivf`` in
the directory name marks indexes built with the stage allowed, ``--centroids off`` the FDE-only ones). Queries are the real queries of both
collections, encoded once and cached: ``--split report`` (SciFact test + NFCorpus test, 623
queries) for the quoted numbers, ``--split tune`` (SciFact train + NFCorpus dev, 1,133) for choosing
defaults, ``--split longq-tune`` (the tune half of ``bench/beir/long_query_set.py``'s set: 300 queries of
64-398 token vectors) for long queries.

Per corpus size, in fresh child processes (so memory figures are the process's own):

- ``build``: seconds by stage (``codec_s``, ``fde_s``, ``faiss_s``, ``write_s``; generation is
  reported apart as ``gen_s``), peak RSS, disk bytes per document;
- ``search``: RSS before loading, after loading, and after the timed queries; resident bytes per
  document = (after queries - before load) / n_docs. Ground truth: exact MaxSim top-10 over the
  same stored tokens (``mode="exact"``) for the first ``--gt-queries`` queries, cached beside the
  index. For each N in ``--n-candidates``: Chamfer recall@10 (mean |top10 ∩ exact top10| / 10),
  single-query p50/p99 over ``--timed`` queries (one query per call, after a warm-up), and batch
  QPS (all queries in one call, both cores).

Each row records the 1-minute load average before and after the child (``load_before``, ``load_after``;
rows before the common envelope held the first as ``machine.load_1m``); rows are appended to
``bench/results/scale.jsonl`` with the common envelope (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from build_memory import rss_bytes as rss  # noqa: E402  (this script's folder)
from common import RESULTS_DIR, ROOT, append_rows, collection_dir, single_latencies_ms  # noqa: E402  (also puts the repository root on sys.path)

from retriever.cli.args import auto_or_int  # noqa: E402
from retriever.index.search import auto_rule, candidate_stage  # noqa: E402

log = logging.getLogger("bench.scale")

OUT = ROOT / "index_data" / "scale"
RESULTS = RESULTS_DIR / "scale.jsonl"
SPLITS = {"report": [("scifact", "test"), ("nfcorpus", "test")], "tune": [("scifact", "train"), ("nfcorpus", "dev")],
          # long queries (64-398 token vectors): the tuning half of bench/beir/long_query_set.py's set
          "longq-tune": [(ROOT / "index_data" / "longq" / "set", "tune")]}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def index_dir(n_docs: int, codec: str, seed: int, centroids: str = "auto", factory: str = "auto",
              fde_final_dim: int | None = None) -> Path:
    """Cached synthetic index; ``-ivf`` marks builds with the token centroid stage allowed (auto / on), a
    suffix the FAISS factory when it is not ``auto`` (e.g. ``-HNSW32_PQ1280``) and ``-fdeD`` an FDE with
    MUVERA's final projection to D dimensions."""
    tag = "" if factory == "auto" else "-" + "".join(c if c.isalnum() or c in "_," else "_" for c in factory).replace(",", "+")
    tag += f"-fde{fde_final_dim}" if fde_final_dim else ""
    return OUT / f"synth-{n_docs}-{codec}-s{seed}{'' if centroids == 'off' else '-ivf'}{tag}"


def centroids_arg(spec: str):
    return {"auto": "auto", "on": True, "off": False}[spec]


def queries(split: str):
    """Query token embeddings of ``split`` (cached in index_data/scale/queries-SPLIT.npz)."""
    from retriever.store.tokens import TokenEmbeddings

    path = OUT / f"queries-{split}.npz"
    if not path.is_file():
        from retriever.core.beir import read_qrels, read_queries
        from retriever.encoders.colbert import ColBERTEncoder

        enc = ColBERTEncoder.from_pretrained("default")
        vecs, lens = [], []
        for name, sp in SPLITS[split]:
            d = name if isinstance(name, Path) else collection_dir(name)
            q, rel = read_queries(d / "queries.jsonl"), read_qrels(d / "qrels" / f"{sp}.tsv")
            e = enc.encode_queries([q[i] for i in q if i in rel])
            vecs.append(e.vectors.astype(np.float32))
            lens.append(e.lengths)
        lengths = np.concatenate(lens)
        offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        OUT.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, vectors=np.concatenate(vecs), offsets=offsets)
        os.replace(tmp, path)
    with np.load(path) as z:
        return TokenEmbeddings(z["vectors"], z["offsets"])

# -- child: build ------------------------------------------------------------------------------


def child_build(args) -> dict:
    from synthetic import TokenSources, find_sources, synthetic_batches

    from retriever import IndexConfig, Retriever

    src = TokenSources(find_sources(ROOT / "index_data" / "bench"))
    path = index_dir(args.n, args.codec, args.seed, args.centroids, args.faiss_factory, args.fde_final_dim)
    from retriever.candidates.fde import FDEConfig

    config = IndexConfig(codec=args.codec, faiss_factory=args.faiss_factory, centroids=centroids_arg(args.centroids),
                         fde=FDEConfig(final_projection_dimension=args.fde_final_dim))
    gen_s = 0.0

    def batches():
        nonlocal gen_s
        it = synthetic_batches(src, args.n, seed=args.seed)
        while True:
            t = time.perf_counter()
            b = next(it, None)
            gen_s += time.perf_counter() - t
            if b is None:
                return
            yield b

    rss0 = rss()
    t0 = time.perf_counter()
    r = Retriever.build(batches(), config=config, path=path, show_progress=True)
    wall = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in path.iterdir())
    return {"stage": "build", "corpus": args.corpus_name, "n_docs": r.n_docs, "n_tokens": r.n_tokens, "faiss_factory": r.config.faiss_factory,
            "fde_final_dim": args.fde_final_dim,
            "codec": args.codec, "wall_s": round(wall, 1), "gen_s": round(gen_s, 1),
            "timings": {k: round(v, 1) for k, v in r.build_timings.items()},
            "build_s_excl_gen": round(wall - gen_s, 1), "peak_rss_gb": round(peak_rss() / 1e9, 2),
            "rss_before_gb": round(rss0 / 1e9, 2), "disk_bytes_per_doc": round(disk / r.n_docs),
            "faiss_bytes_per_doc": round((path / "fde.faiss").stat().st_size / r.n_docs)}


# -- child: search -----------------------------------------------------------------------------


def measure_search(r, q_gt, gt: np.ndarray, q_t, singles: list, **kw) -> dict:
    """Chamfer recall@10 of ``r.search(q_gt, **kw)`` against the exact top-10 rows ``gt``; single-query p50 /
    p99 over ``singles`` (one query per call, after a warm-up of 10); batch QPS of ``q_t`` in one call."""
    res = r.search(q_gt, **kw)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res.rows.tolist(), np.asarray(gt).tolist())]))
    lat = np.array(single_latencies_ms(lambda one: r.search(one, **kw), singles, warmup=10))
    t = time.perf_counter()
    r.search(q_t, **kw)
    qps = len(q_t) / (time.perf_counter() - t)
    return {"chamfer_recall_at_10": round(recall, 4), "p50_ms": round(float(np.median(lat)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "batch_qps": round(qps, 1)}


def faiss_bytes_per_doc(r, path: Path) -> int:
    """The FAISS index's code bytes per document, or (graphs, which have no standalone codec) its file size per
    document, links included."""
    try:
        return round(r.faiss_index.sa_code_size())
    except RuntimeError:
        return round((path / "fde.faiss").stat().st_size / max(1, r.n_docs))


def child_search(args) -> list[dict]:
    from retriever import Retriever
    from retriever.index.retriever import _warmup

    path = args.index_dir or index_dir(args.n, args.codec, args.seed, args.centroids, args.faiss_factory, args.fde_final_dim)
    if args.queries_file:
        from retriever.store.tokens import TokenEmbeddings

        with np.load(args.queries_file) as z:
            q_all = TokenEmbeddings(z["vectors"], z["offsets"])
    else:
        q_all = queries(args.split)
    from retriever.store.codecs import CodecConfig

    _warmup(CodecConfig.parse(args.codec).kind)  # the kernels' store kind: "residual" for residual1/2/4
    rss0 = rss()
    r = Retriever.load(path)
    rss_loaded = rss()
    q_gt = q_all.select(range(min(args.gt_queries, len(q_all))))
    split = "heldout" if args.queries_file else args.split
    store_sha = json.loads((path / "manifest.json").read_text())["files"]["tokens.npy"]["sha256"][:12]
    gt_file = path.parent / f"{path.name}.gt-{split}-{len(q_gt)}-{store_sha}.npy"
    if gt_file.is_file():
        gt = np.load(gt_file)
    else:
        t = time.perf_counter()
        gt = r.search(q_gt, k=10, mode="exact").rows
        log.info("exact top-10 of %d queries: %.1f s", len(q_gt), time.perf_counter() - t)
        np.save(gt_file, gt)
    # exhaustive single-query latency (a few queries: the reference the pipeline is compared to)
    ex = []
    for one in [q_gt.select([i]) for i in range(min(args.timed_exact, len(q_gt)))]:
        t = time.perf_counter()
        r.search(one, k=10, mode="exact")
        ex.append(time.perf_counter() - t)
    rows = []
    q_t = q_all.select(range(min(args.timed, len(q_all))))
    singles = [q_t.select([i]) for i in range(len(q_t))]  # one query per call, split before any timing
    if args.index_nprobe:
        import dataclasses

        r.config = dataclasses.replace(r.config, centroids=dataclasses.replace(r.config.centroids,
                                                                               nprobe=args.index_nprobe))
    stage = args.stage if args.stage != "auto" else candidate_stage(r.centroid_stage is not None, "auto")
    probes = args.nprobe if stage == "centroids" else [None]
    efs = args.ef_search if stage == "fde" else [None]
    for n_spec, nprobe, ef in [(n, p, e) for p in probes for e in efs for n in args.n_candidates]:
        n_cand = auto_rule(stage)(r.n_docs, 10) if n_spec == "auto" else n_spec
        if ef is not None and ef < n_cand:
            continue  # FAISS's HNSW search explores max(efSearch, N): a smaller ef would repeat a row
        kw = dict(k=10, n_candidates=n_cand, mode=stage, nprobe=nprobe, ef_search=ef)
        rows.append({"candidate_stage": stage, "ef_search": ef,
                     "nprobe": nprobe if stage == "fde" else (nprobe or r.config.centroids.nprobe),
                     "probe_budget": 0 if nprobe or stage != "centroids" else r.config.centroids.probe_budget,
                     "n_candidates": n_cand, "n_candidates_auto": n_spec == "auto",
                     **measure_search(r, q_gt, gt, q_t, singles, **kw)})
        log.info("N=%d: %s", n_cand, rows[-1])
    rss_after = rss()
    common = {"stage": "search", "corpus": args.corpus_name, "n_docs": r.n_docs, "n_tokens": r.n_tokens, "faiss_factory": r.config.faiss_factory,
              "fde_final_dim": args.fde_final_dim,
              "codec": args.codec, "split": split, "gt_queries": len(q_gt), "timed_queries": len(q_t),
              "exact_p50_ms": round(float(np.median(ex)) * 1e3, 1) if ex else None,
              "rss_before_load_gb": round(rss0 / 1e9, 2), "rss_loaded_gb": round(rss_loaded / 1e9, 2),
              "rss_after_gb": round(rss_after / 1e9, 2),
              "resident_bytes_per_doc": round((rss_after - rss0) / r.n_docs),
              "centroid_stage_bytes_per_doc": round(r.centroid_stage.nbytes_resident() / r.n_docs) if r.centroid_stage else 0,
              "faiss_bytes_per_doc": faiss_bytes_per_doc(r, path)}
    return [dict(common, **row) for row in rows]


# -- driver ------------------------------------------------------------------------------------


def run_child(argv: list[str]) -> list[dict]:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--codec", default="int8")
    ap.add_argument("--faiss-factory", default="auto")
    ap.add_argument("--fde-final-dim", type=int, default=None,
                    help="MUVERA's final projection of the FDE to this many dimensions (default: none, 10,240)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=sorted(SPLITS), default="report")
    ap.add_argument("--n-candidates", type=auto_or_int, nargs="+", default=["auto", 1000, 2000, 4000],
                    help="candidates reranked (the FDE stage needs ~10x more: e.g. auto 4000 8000 16000)")
    ap.add_argument("--gt-queries", type=int, default=200)
    ap.add_argument("--timed", type=int, default=300, help="queries timed one by one (and batched)")
    ap.add_argument("--timed-exact", type=int, default=5, help="queries timed with exhaustive MaxSim")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--report", action="store_true", help="write scale.md and scale.png from the results")
    ap.add_argument("--rebuild", action="store_true", help="delete a cached synthetic index and build it again")
    ap.add_argument("--build-only", action="store_true", help="build (if needed) without measuring search")
    ap.add_argument("--target", type=float, default=0.95, help="Chamfer recall@10 the report's fit is made at")
    ap.add_argument("--child", choices=["build", "search"])
    ap.add_argument("--n", type=int)
    ap.add_argument("--index-dir", type=Path, help="measure this (already built) index instead of synthetic ones")
    ap.add_argument("--queries-file", type=Path, help="query token embeddings (.npz: vectors, offsets) for --index-dir")
    ap.add_argument("--corpus-name", default="synthetic")
    ap.add_argument("--centroids", choices=["auto", "on", "off"], default="auto",
                    help="build with the token centroid stage (IndexConfig.centroids); 'off' = the FDE-only indexes")
    ap.add_argument("--stage", choices=["auto", "fde", "centroids"], default="auto",
                    help="candidate stage searched (auto: the centroid stage when the index has one)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[None],
                    help="FDE stage over an HNSW factory: efSearch values swept (rows with efSearch < N are skipped)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[None],
                    help="centroid stage: lists probed per query token (default: the index's)")
    ap.add_argument("--index-nprobe", type=int, default=None,
                    help="centroid stage: the index's default lists per token for this run (as if built with it: "
                         "unlike --nprobe, its probe budget still gives short queries more lists)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.child == "build":
        print(json.dumps(child_build(args)), flush=True)
        return 0
    if args.child == "search":
        for row in child_search(args):
            print(json.dumps(row), flush=True)
        return 0
    if args.report:
        report(args.results, args.split, args.target)
        return 0
    common = ["--codec", args.codec, "--faiss-factory", args.faiss_factory, "--seed", str(args.seed),
              *(["--fde-final-dim", str(args.fde_final_dim)] if args.fde_final_dim else []),
              "--corpus-name", args.corpus_name, "--centroids", args.centroids]
    if args.index_dir:
        common += ["--index-dir", str(args.index_dir), "--queries-file", str(args.queries_file)]
    for n in [0] if args.index_dir else args.sizes:
        cached = None if args.index_dir else index_dir(n, args.codec, args.seed, args.centroids, args.faiss_factory,
                                                        args.fde_final_dim)
        if args.rebuild and cached is not None and cached.is_dir():
            import shutil

            shutil.rmtree(cached)  # ground truth is keyed by the store's sha256
        if cached is not None and not (cached / "manifest.json").is_file():
            load0 = load_1m()
            for row in run_child(["--child", "build", "--n", str(n), *common]):
                row.update(load_before=load0, load_after=load_1m())
                print(json.dumps(append_rows(args.results, [row], bench="scale/scale")[0]))
        if args.build_only:
            continue
        load0 = load_1m()
        rows = run_child(["--child", "search", "--n", str(n), *common, "--split", args.split,
                          "--gt-queries", str(args.gt_queries), "--timed", str(args.timed),
                          "--timed-exact", str(args.timed_exact),
                          "--stage", args.stage, "--n-candidates", *map(str, args.n_candidates),
                          *(["--nprobe", *map(str, args.nprobe)] if args.nprobe != [None] else []),
                          *(["--ef-search", *map(str, args.ef_search)] if args.ef_search != [None] else []),
                          *(["--index-nprobe", str(args.index_nprobe)] if args.index_nprobe else [])])
        for row in rows:
            row.update(load_before=load0, load_after=load_1m())
            print(json.dumps(append_rows(args.results, [row], bench="scale/scale")[0]))
    return 0


def _latest(rows: list[dict], stage: str, split: str | None = None) -> dict:
    out = {}
    for r in rows:
        if r.get("stage") != stage or (split and r.get("split") != split):
            continue
        out[(r.get("corpus", "synthetic"), r["n_docs"], r["codec"], _stage(r), r.get("nprobe") or 0,
             r.get("n_candidates"), r.get("faiss_factory") if stage == "search" else None, r.get("ef_search") or 0,
             r.get("fde_final_dim") or 0)] = r
    return out


def _load_before(r: dict):
    """The load average before a row's child ran (older rows: ``machine.load_1m``)."""
    return r["load_before"] if "load_before" in r else (r.get("machine") or {}).get("load_1m")


def _stage(r: dict) -> str:
    """The candidate stage of a search row (rows written before the centroid stage existed: FDE)."""
    return r.get("candidate_stage", "fde") if r.get("stage") == "search" else r.get("faiss_factory")


def _graph(r: dict) -> bool:
    """A search row of the FDE stage over a FAISS graph (HNSW) index."""
    return "HNSW" in (r.get("faiss_factory") or "")


def report(results: Path, split: str, target: float) -> None:
    """Markdown table + log-log plot of the latest rows; prints the fitted latency growth exponent."""
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    builds = _latest(rows, "build")
    search = {**_latest(rows, "search", split), **_latest(rows, "search", "heldout")}
    lines = [f"# Scale benchmark ({split} queries; `bench/scale/scale.py`)", "",
             "| corpus | docs | codec | candidates | N | Chamfer R@10 | p50 ms | p99 ms | batch QPS | exhaustive p50 ms | "
             "resident B/doc | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(search):
        r = search[key]
        auto = " (auto)" if r.get("n_candidates_auto") else ""
        cand = (f"token centroids, nprobe {r['nprobe']}" if _stage(r) == "centroids"
                else f"FDE{' ' + str(r['fde_final_dim']) + '-d' if r.get('fde_final_dim') else ''} {r['faiss_factory']}"
                + (f", efSearch {r['ef_search']}" if r.get("ef_search") else ""))
        lines.append(f"| {r.get('corpus', 'synthetic')} | {r['n_docs']:,} | {r['codec']} | {cand} | "
                     f"{r['n_candidates']:,}{auto} | "
                     f"{r['chamfer_recall_at_10']:.3f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['batch_qps']:.0f} | "
                     f"{r['exact_p50_ms']} | {r['resident_bytes_per_doc']:,} | {_load_before(r)} |")
    lines += ["", "| corpus | docs | codec | FAISS | build s (excl. generation / encoding) | codec_s | fde_s | faiss_s | "
              "centroids_s | write_s | peak RSS GB | disk B/doc | FAISS B/doc |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(builds):
        b = builds[key]
        t = b["timings"]
        fde = f" (FDE {b['fde_final_dim']}-d)" if b.get("fde_final_dim") else ""
        lines.append(f"| {b.get('corpus', 'synthetic')} | {b['n_docs']:,} | {b['codec']} | {b['faiss_factory']}{fde} | "
                     f"{b['build_s_excl_gen']} | "
                     f"{t.get('codec_s')} | {t.get('fde_s')} | {t.get('faiss_s')} | {t.get('centroids_s', '–')} | "
                     f"{t.get('write_s')} | "
                     f"{b.get('peak_rss_gb', '–')} | {b['disk_bytes_per_doc']:,} | {b['faiss_bytes_per_doc']:,} |")
    # per candidate stage, the fastest measured setting reaching the target at each size, and the
    # growth of its p50 with corpus size
    graphs = sorted({r["faiss_factory"] for r in search.values() if _stage(r) == "fde" and _graph(r)})
    for stage_name, want in (("FDE (flat scan)", lambda r: _stage(r) == "fde" and not _graph(r) and not r.get("fde_final_dim")),
                             *((f"FDE {f}", lambda r, f=f: _stage(r) == "fde" and r["faiss_factory"] == f) for f in graphs),
                             ("token centroids (default nprobe 16)", lambda r: _stage(r) == "centroids"
                              and r.get("nprobe") == 16)):
        best = {}
        for (corpus, n, *_), r in sorted(search.items()):
            if corpus == "synthetic" and want(r) and r["chamfer_recall_at_10"] >= target:
                if n not in best or r["p50_ms"] < best[n]["p50_ms"]:
                    best[n] = r
        lines += ["", f"{stage_name}, synthetic corpora, fastest measured N reaching Chamfer recall@10 >= {target}: " +
                  (", ".join(f"{n:,} docs: N={r['n_candidates']:,} ({r['p50_ms']:.1f} ms p50)"
                             for n, r in sorted(best.items())) or "none")]
        if len(best) >= 2:
            x = np.log([n for n in sorted(best)])
            y = np.log([best[n]["p50_ms"] for n in sorted(best)])
            slope = float(np.polyfit(x, y, 1)[0])
            lines.append(f"Fitted p50 growth at that recall: latency ~ n_docs^{slope:.2f}")
            print(f"{stage_name}: p50 latency growth exponent at recall {target}: {slope:.2f}")
    md = results.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    by_n = {}
    search = {key: r for key, r in search.items() if not _graph(r)}  # the plot follows the flat FDE scan
    for (corpus, n, codec, stage, nprobe, n_cand, *_), r in search.items():
        if corpus == "synthetic" and not r.get("n_candidates_auto") and (stage == "fde" or nprobe == 16):
            by_n.setdefault((stage, n_cand), []).append(r)
    for stage, style in (("fde", "k^:"), ("centroids", "k^-")):
        autos = sorted((r for (c, _n, _c, st, npb, *_), r in search.items()
                        if c == "synthetic" and st == stage and r.get("n_candidates_auto") and (st == "fde" or npb == 16)),
                       key=lambda r: r["n_docs"])
        if autos:
            name = "FDE" if stage == "fde" else "centroids"
            ax[0].plot([r["n_docs"] for r in autos], [r["p50_ms"] for r in autos], style, label=f"{name} N=auto")
            ax[2].plot([r["n_docs"] for r in autos], [r["chamfer_recall_at_10"] for r in autos], style,
                       label=f"{name} N=auto")
    for (stage, n_cand), rs in sorted(by_n.items()):
        rs.sort(key=lambda r: r["n_docs"])
        xs = [r["n_docs"] for r in rs]
        style = "o:" if stage == "fde" else "o-"
        name = "FDE" if stage == "fde" else "centroids"
        ax[0].plot(xs, [r["p50_ms"] for r in rs], style, label=f"{name} N={n_cand:,}")
        ax[2].plot(xs, [r["chamfer_recall_at_10"] for r in rs], style, label=f"{name} N={n_cand:,}")
    syn = [r for (c, *_), r in search.items() if c == "synthetic"]
    ex = sorted({r["n_docs"]: r["exact_p50_ms"] for r in syn if r["exact_p50_ms"]}.items())
    if ex:
        ax[0].plot([a for a, _ in ex], [b for _, b in ex], "k--", label="exhaustive MaxSim")
    mem = sorted({r["n_docs"]: r["resident_bytes_per_doc"] for r in syn}.items())
    ax[1].plot([a for a, _ in mem], [b / 1024 for _, b in mem], "o-", label="resident (search)")
    disk = sorted({b["n_docs"]: b["disk_bytes_per_doc"] for (c, *_), b in builds.items() if c == "synthetic"}.items())
    ax[1].plot([a for a, _ in disk], [b / 1024 for _, b in disk], "s--", label="disk")
    fx = sorted({b["n_docs"]: b["faiss_bytes_per_doc"] for (c, *_), b in builds.items() if c == "synthetic"}.items())
    ax[1].plot([a for a, _ in fx], [b / 1024 for _, b in fx], "d:", label="FAISS (FDE candidate stage)")
    cs = sorted({r["n_docs"]: r["centroid_stage_bytes_per_doc"] for r in syn if r.get("centroid_stage_bytes_per_doc")}.items())
    if cs:
        ax[1].plot([a for a, _ in cs], [b / 1024 for _, b in cs], "v-", label="token centroid stage (lists)")
    for a, t in zip(ax, ["single-query p50 (ms)", "KB per document", f"Chamfer recall@10 ({split})"]):
        a.set_xscale("log")
        a.set_xlabel("documents")
        a.set_title(t)
        a.legend(fontsize=7)
    ax[0].set_yscale("log")
    ax[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(results.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())

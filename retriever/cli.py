"""Command line: ``retriever index | search | verify | bench`` (also ``python -m retriever``).

The CLI only parses arguments and calls the Python API.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("retriever.cli")


def _corpus_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (path / name).is_file():
                return path / name
        raise SystemExit(f"error: {path} holds no corpus.jsonl or corpus.jsonl.gz")
    if not path.is_file():
        raise SystemExit(f"error: corpus file {path} does not exist")
    return path


def encoder_from_args(args):
    from .encoder import ColBERTEncoder

    overrides = {}
    if getattr(args, "dtype", None):
        overrides["dtype"] = args.dtype
    if getattr(args, "batch_size", None):
        overrides["batch_size"] = args.batch_size
    if getattr(args, "batch_tokens", None):
        overrides["batch_tokens"] = args.batch_tokens
    return ColBERTEncoder.from_pretrained(args.model, **overrides)


def add_index_config_args(p) -> None:
    """Build-time index options (FAISS factory and FDE fields), shared by ``index`` and ``bench``."""
    p.add_argument("--faiss-factory", default="Flat", help="FAISS factory string of the candidate index")
    p.add_argument("--num-repetitions", dest="num_repetitions", type=int)
    p.add_argument("--num-simhash-projections", dest="num_simhash_projections", type=int)
    p.add_argument("--projection-dimension", dest="projection_dimension", type=int)
    p.add_argument("--projection-type", dest="projection_type", choices=["identity", "dense", "ams_sketch"])
    p.add_argument("--codec", default="int8", choices=["int8", "float16", "residual1", "residual2", "residual4"],
                   help="token store encoding (default int8; residualN = PLAID-style N-bit residual codes)")
    p.add_argument("--n-centroids", dest="n_centroids", type=int, default=None,
                   help="residual codec centroids (default: chosen from the corpus's token count)")
    p.add_argument("--pool-factor", dest="pool_factor", type=int, default=1,
                   help="token pooling at index time: keep ~1/N of each document's vectors (default 1 = off)")
    p.add_argument("--word-pooling", dest="word_pooling", action="store_true",
                   help="one vector per whole word (mean of its sub-word tokens) before --pool-factor")


def index_config_from_args(args):
    """The ``IndexConfig`` named by :func:`add_index_config_args` options (unset fields keep defaults)."""
    from .fde import FDEConfig
    from .index import IndexConfig

    fde_kwargs = {n: getattr(args, n) for n in ("num_repetitions", "num_simhash_projections", "projection_dimension",
                                                "projection_type") if getattr(args, n) is not None}
    if fde_kwargs.get("projection_type") == "identity":
        fde_kwargs["projection_dimension"] = None  # identity keeps the token dimension
    from dataclasses import replace

    from .codecs import CodecConfig

    codec = CodecConfig.parse(args.codec)
    if args.n_centroids is not None:
        codec = replace(codec, n_centroids=args.n_centroids)
    return IndexConfig(fde=FDEConfig(**fde_kwargs), faiss_factory=args.faiss_factory, codec=codec,
                       pool_factor=args.pool_factor, word_pooling=args.word_pooling)


def cmd_index(args) -> int:
    from .beir import iter_corpus
    from .index import Retriever

    corpus = _corpus_file(Path(args.corpus))
    config = index_config_from_args(args)
    encoder = encoder_from_args(args)
    r = Retriever.build(iter_corpus(corpus), config=config, encoder=encoder, path=args.out, show_progress=not args.quiet)
    log.info("wrote %r to %s", r, args.out)
    print(json.dumps({"index": str(args.out), "n_docs": r.n_docs, "n_tokens": r.n_tokens, "dim": r.dim,
                      "timings_s": {k: round(v, 2) for k, v in r.build_timings.items()}}))
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
    from .beir import read_queries

    q = read_queries(path)
    return list(q), list(q.values())


def cmd_search(args) -> int:
    from .eval import write_trec_run
    from .index import Retriever

    encoder = encoder_from_args(args) if args.model else None
    r = Retriever.load(args.index, encoder=encoder)
    if args.query is not None:
        qids, texts = ["q0"], [args.query]
    else:
        if args.queries is None:
            raise SystemExit("error: give --queries FILE or --query TEXT")
        qids, texts = _read_queries(Path(args.queries))
    res = r.search(texts, k=args.k, n_candidates=args.n_candidates, mode=args.mode,
                   ef_search=args.ef_search, nprobe=args.nprobe)
    if args.out:
        write_trec_run(args.out, qids, res.ids, res.scores, tag=args.tag)
        log.info("wrote %d queries x top-%d to %s", len(qids), args.k, args.out)
    else:
        for qid, hits in zip(qids, res.to_list()):
            for rank, (doc, score) in enumerate(hits, 1):
                print(f"{qid}\t{rank}\t{doc}\t{score:.4f}")
    return 0


def cmd_verify(args) -> int:
    from .format import IndexFormatError
    from .index import Retriever

    try:
        m = Retriever.verify(args.index)
    except IndexFormatError as e:
        print(f"FAILED: {e}")
        return 1
    print(f"OK: {args.index}: {m['n_docs']} documents, {m['n_tokens']} tokens, dim {m['dim']}, "
          f"{len(m['files'])} files checked")
    return 0


def add_encoder_args(p, default_model):
    p.add_argument("--model", default=default_model, help="encoder: 'default' (bundled MiniLM), a local dir or a hub id")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="encoder compute dtype")
    p.add_argument("--batch-size", type=int, default=None, help="encoder batch size (most texts per forward pass)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="most padded tokens per encoder forward pass (bounds memory; default 2048)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retriever", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("index", help="build an index from a corpus of texts")
    pi.add_argument("--corpus", required=True, help="corpus.jsonl[.gz] (BEIR: _id, title, text) or a BEIR directory")
    pi.add_argument("--out", required=True, help="index directory to write (e.g. index_data/NAME)")
    add_encoder_args(pi, "default")
    add_index_config_args(pi)
    pi.set_defaults(func=cmd_index)

    ps = sub.add_parser("search", help="search an index; writes a TREC run file or prints hits")
    ps.add_argument("--index", required=True)
    ps.add_argument("--queries", help="queries.jsonl (BEIR: _id, text) or a .tsv of id<TAB>text")
    ps.add_argument("--query", help="one query text (hits are printed)")
    ps.add_argument("--k", type=int, default=10)
    ps.add_argument("--n-candidates", type=int, default=None)
    ps.add_argument("--mode", choices=["fde", "exact"], default="fde")
    ps.add_argument("--ef-search", type=int, default=None)
    ps.add_argument("--nprobe", type=int, default=None)
    ps.add_argument("--out", help="TREC run file to write (default: print hits)")
    ps.add_argument("--tag", default="retriever", help="run tag in the TREC file")
    add_encoder_args(ps, None)
    ps.set_defaults(func=cmd_search)

    pv = sub.add_parser("verify", help="check an index directory fully (sizes, checksums, loadability)")
    pv.add_argument("index")
    pv.set_defaults(func=cmd_verify)

    try:
        from .benchmark import add_bench_parser
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
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        log.debug("failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

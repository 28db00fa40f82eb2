"""Command-line options shared by ``retriever index / search`` (``cli``) and ``retriever bench``
(``benchmark``): both import this module, which imports neither."""

from __future__ import annotations

import argparse


def _encoder_overrides(args) -> dict:
    """The encoder settings the command line gives (``--dtype``, ``--batch-size``, ``--batch-tokens``)."""
    return {k: getattr(args, k) for k in ("dtype", "batch_size", "batch_tokens") if getattr(args, k, None)}


def encoder_from_args(args):
    from retriever.encoders.colbert import ColBERTEncoder

    return ColBERTEncoder.from_pretrained(args.model, device=getattr(args, "device", None) or "cpu",
                                          **_encoder_overrides(args))


def index_encoder_from_args(args, index):
    """The encoder for searching ``index`` (a single or sharded index directory), see
    :func:`retriever.cluster.shards.search_encoder`: ``--model`` when given; else, when ``--device`` or
    ``--dtype`` is, the encoder the index was built with on that device / at that precision; else
    None. A ``ValueError`` (exit 2) names what is wrong."""
    from retriever.cluster.shards import search_encoder

    return search_encoder(index, model=getattr(args, "model", None), device=getattr(args, "device", None),
                          **_encoder_overrides(args))


def add_index_config_args(p) -> None:
    """Build-time index options (FAISS factory and FDE fields), shared by ``index`` and ``bench``."""
    p.add_argument("--faiss-factory", default="auto",
                   help="FAISS factory string of the candidate index (default auto: chosen from the corpus size)")
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
    p.add_argument("--centroids", dest="centroids", default="auto", choices=["auto", "on", "off"],
                   help="token centroid candidate stage (PLAID-style lists; default auto: built for corpora of "
                        "2,048+ documents)")
    p.add_argument("--ivf-centroids", dest="ivf_centroids", type=int, default=None,
                   help="centroids of the token centroid stage (default: chosen from the corpus's token count)")
    p.add_argument("--ivf-nprobe", dest="ivf_nprobe", type=int, default=16,
                   help="token centroid stage: lists probed per query token by default (16)")
    p.add_argument("--ivf-residual-pq", dest="ivf_residual_pq", type=auto_or_int, default="auto",
                   help="token centroid stage: bytes of product-quantised residual per token that refine its "
                        "centroid's score (0 = centroid scores only; default auto: 4 up to 4.2M stored tokens)")
    p.add_argument("--hybrid", dest="hybrid", default="auto", type=_hybrid_arg,
                   help="signals stored for hybrid scoring: auto (default: dense and bm25 for text), none, dense, "
                        "bm25 or dense,bm25")
    p.add_argument("--no-store-text", dest="store_text", action="store_false",
                   help="do not keep the documents' text and metadata (documents.sqlite): hits are ids and scores "
                        "only, and searches take no --where filters")


def index_config_from_args(args):
    """The ``IndexConfig`` named by :func:`add_index_config_args` options (and ``retriever index``'s
    ``--chunk-tokens`` / ``--chunk-overlap``; unset fields keep defaults)."""
    from retriever.candidates.fde import FDEConfig
    from retriever.index.config import IndexConfig

    fde_kwargs = {n: getattr(args, n) for n in ("num_repetitions", "num_simhash_projections", "projection_dimension",
                                                "projection_type") if getattr(args, n) is not None}
    if fde_kwargs.get("projection_type") == "identity":
        fde_kwargs["projection_dimension"] = None  # identity keeps the token dimension
    from dataclasses import replace

    from retriever.store.codecs import CodecConfig

    codec = CodecConfig.parse(args.codec)
    if args.n_centroids is not None:
        codec = replace(codec, n_centroids=args.n_centroids)
    hybrid = args.hybrid
    if hybrid != "auto":
        from retriever.hybrid.fusion import HybridConfig

        hybrid = HybridConfig(signals=hybrid)
    from retriever.candidates.centroids import CentroidConfig

    centroids = CentroidConfig(enabled={"auto": "auto", "on": True, "off": False}[args.centroids],
                               n_centroids=args.ivf_centroids, nprobe=args.ivf_nprobe,
                               residual_pq=args.ivf_residual_pq)
    return IndexConfig(fde=FDEConfig(**fde_kwargs), faiss_factory=args.faiss_factory, codec=codec,
                       pool_factor=args.pool_factor, word_pooling=args.word_pooling, hybrid=hybrid,
                       centroids=centroids, store_text=args.store_text,
                       chunk_tokens=getattr(args, "chunk_tokens", None), chunk_overlap=getattr(args, "chunk_overlap", 0))


def auto_or_int(text: str) -> int | str:
    """argparse type of ``--n-candidates`` and ``--ivf-residual-pq``: ``"auto"`` or an integer (range checks
    are the config's and the search's, which name the field)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {text!r}") from None


def _hybrid_arg(text: str):
    """argparse type of ``--hybrid``: ``auto``, ``none`` or comma-separated signal names."""
    from retriever.hybrid.fusion import SIGNALS

    if text in ("auto",):
        return text
    if text == "none":
        return ()
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in SIGNALS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected auto, none or a comma-separated subset of {','.join(SIGNALS)}, "
                                         f"got {text!r}")
    return names


def add_encoder_args(p, default_model):
    p.add_argument("--model", default=default_model, help="encoder: 'default' (bundled MiniLM), a local dir or a hub id")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="encoder compute precision (default: the model's setting, bfloat16 for the bundled one; "
                        "an index's queries are encoded as its manifest records unless this is given)")
    p.add_argument("--device", default=None,
                   help="torch device of the encoder: cpu (default), cuda, cuda:1, mps, ...")
    p.add_argument("--batch-size", type=int, default=None, help="encoder batch size (most texts per forward pass)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="most padded tokens per encoder forward pass (bounds memory; default 2048)")


def n_candidates_help() -> str:
    """The ``n_candidates='auto'`` rules, spelled from the constants the code uses (never stale)."""
    from retriever.candidates.centroids import AUTO_FLOOR, AUTO_SCALE
    from retriever.index.search import AUTO_N_SCALE

    return (f"{AUTO_SCALE:g} n_docs^0.25 (at least {AUTO_FLOOR}) from the token centroid stage, "
            f"{AUTO_N_SCALE:g} sqrt(n_docs) FDE candidates; at least 10 k")

"""Token codecs and pooling: kernels against numpy twins, the index with every codec, lifecycle, errors."""

from __future__ import annotations

import json

import numpy as np
from numba import njit
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retriever_kernels.codes import (
    Int8Rows,
    ResidualRows,
    _make_residual_row_decoder,
    decode_residual_rows_scalar,
    decode_rows,
    int8_encode,
    residual_lanes,
    residual_pack,
    residual_rows,
    residual_table,
)
from retriever_kernels import codes as codes_mod
from retriever_kernels.maxsim import maxsim_exhaustive, maxsim_exhaustive_topk, maxsim_scores, maxsim_scores_batch
from lifecycle_util import CFG, DIM, build, make_docs, make_queries
from reference import (
    int8_decode_ref,
    int8_encode_ref,
    maxsim_exhaustive_ref,
    residual_decode_ref,
    residual_encode_ref,
    split,
)
from retriever.index import format as fmt
from retriever.store.codecs import CodecConfig, TokenCodec, auto_n_centroids
from retriever.hybrid.fusion import HybridConfig
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever
from retriever.store.tokens import TokenEmbeddings

CODECS = ["float16", "int8", "residual1", "residual2", "residual4"]
DOCS = make_docs(120, seed=3)
IDS = [f"d{i}" for i in range(len(DOCS))]
QUERIES = make_queries(10, seed=4)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _cfg(codec: str, pool_factor: int = 1) -> IndexConfig:
    return IndexConfig(fde=CFG.fde, codec=codec, pool_factor=pool_factor)


# -- kernels vs numpy twins ---------------------------------------------------------------------


def test_int8_encode_decode_match_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((257, 24)).astype(np.float32) * rng.uniform(1e-3, 50, size=(257, 1)).astype(np.float32)
    x[3] = 0.0  # an all-zero vector decodes to zeros
    rows = int8_encode(x)
    np.testing.assert_array_equal(rows, int8_encode_ref(x))
    dec = decode_rows(Int8Rows(rows), 0, x.shape[0])
    np.testing.assert_allclose(dec, int8_decode_ref(rows), rtol=0, atol=0)
    assert np.all(dec[3] == 0)
    # error within half a quantisation step of each token's scale (plus the float16 rounding of the scale)
    step = np.abs(x).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(dec - x) <= 0.5 * step * (1 + 2e-3) + 1e-6)


def _random_residual_problem(rng, n, n_cent, dim, nbits, id_bytes):
    """Random unit tokens, centroids, assignments, cut-offs and bucket weights, and the packed rows."""
    x = _unit(rng.standard_normal((n, dim)))
    cent = rng.standard_normal((n_cent, dim)).astype(np.float32)
    ids = rng.integers(0, n_cent, n)
    cut = np.sort(rng.standard_normal((dim, 2**nbits - 1)), axis=1).astype(np.float32)
    w = rng.standard_normal((dim, 2**nbits)).astype(np.float32)
    return x, cent, ids, cut, w, residual_pack(x, ids, cent, cut, nbits, id_bytes)


@pytest.mark.parametrize("nbits", [1, 2, 4])
@pytest.mark.parametrize("id_bytes", [2, 4])
@pytest.mark.parametrize("dim", [16, 24, 128])  # SIMD loop, scalar tail where 24 is not a multiple of the width, unrolled
def test_residual_pack_and_decode_match_reference(nbits, id_bytes, dim):
    rng = np.random.default_rng(nbits * 10 + id_bytes + dim)
    n, n_cent = 301, 70
    x, cent, ids, cut, w, rows = _random_residual_problem(rng, n, n_cent, dim, nbits, id_bytes)
    np.testing.assert_array_equal(rows, residual_encode_ref(x, ids, cent, cut, nbits, id_bytes))
    store = residual_rows(rows, cent, w)
    np.testing.assert_allclose(decode_rows(store, 0, n), residual_decode_ref(rows, cent, w, nbits), rtol=0, atol=1e-6)
    np.testing.assert_allclose(decode_rows(store, 17, 40), residual_decode_ref(rows[17:40], cent, w, nbits),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(decode_rows(store, 0, n), axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("width", [8, 16])  # both vector widths compile on any x86 CPU (LLVM splits what it lacks)
@pytest.mark.parametrize("nbits", [1, 2, 4])
@pytest.mark.parametrize("dim", [16, 48, 128])
def test_simd_row_decoder_matches_reference_and_scalar_twin(width, nbits, dim):
    rng = np.random.default_rng(width + nbits + dim)
    n, n_cent, id_bytes = 97, 40, 2
    x, cent, ids, cut, w, rows = _random_residual_problem(rng, n, n_cent, dim, nbits, id_bytes)
    table = residual_table(w)
    decoder = _make_residual_row_decoder(nbits, width)

    @njit
    def simd(rows, centroids, table, out):
        for r in range(rows.shape[0]):
            c = np.int64(rows[r, 0]) | (np.int64(rows[r, 1]) << 8)
            decoder(rows, r, 2, centroids, c, table, out, r)

    got = np.empty((n, dim), dtype=np.float32)
    simd(rows, cent, table, got)
    scalar = np.empty((n, dim), dtype=np.float32)
    decode_residual_rows_scalar(rows, cent, table, 0, n, scalar)
    want = residual_decode_ref(rows, cent, w, nbits)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scalar, want, rtol=0, atol=1e-6)
    zero = residual_pack(np.zeros((1, dim), np.float32), np.zeros(1, np.int64), np.zeros((1, dim), np.float32), cut, nbits, 2)
    out = np.full((1, dim), np.nan, dtype=np.float32)
    simd(zero, np.zeros((1, dim), np.float32), np.zeros_like(table), out)
    np.testing.assert_array_equal(out, 0.0)  # a zero row stays zero (no division by its norm)


def test_residual_lanes_repeat_each_dimensions_buckets():
    for n_buckets in (2, 4, 16):
        table = np.random.default_rng(n_buckets).standard_normal((n_buckets, 24)).astype(np.float32)
        lanes = residual_lanes(table)
        assert lanes.shape == (24, 16) and lanes.dtype == np.float32 and lanes.flags.c_contiguous
        for i in range(16):
            np.testing.assert_array_equal(lanes[:, i], table[i % n_buckets])


@pytest.mark.skipif(codes_mod._decode_block_4 is None, reason="the dimension-major 4-bit decoder needs AVX-512")
@pytest.mark.parametrize("id_bytes", [1, 2, 4])
def test_dimension_major_block_decoder_is_bit_identical_to_the_row_decoder(id_bytes):
    """4-bit, dim 128: rows decoded 16 at a time equal the row decoder's bit for bit, wherever the range starts."""
    rng = np.random.default_rng(40 + id_bytes)
    n, n_cent, dim = 16 * 5 + 7, 70 if id_bytes > 1 else 50, 128
    x, cent, ids, cut, w, rows = _random_residual_problem(rng, n, n_cent, dim, 4, id_bytes)
    rows[3, id_bytes:] = 0  # a row whose codes are all bucket 0
    store = residual_rows(rows, cent, w)
    decoder = _make_residual_row_decoder(4, 16)

    @njit
    def by_row(rows, centroids, table, out):
        for r in range(rows.shape[0]):
            c = codes_mod._centroid_id(rows, r, id_bytes, centroids.shape[0])
            decoder(rows, r, id_bytes, centroids, c, table, out, r)

    want = np.empty((n, dim), dtype=np.float32)
    by_row(rows, cent, store.table, want)
    for start, m in [(0, n), (5, 16), (1, 40), (9, n - 9)]:
        got = np.full((m, dim), np.nan, dtype=np.float32)
        codes_mod.decode_residual_block(rows, cent, store.table, store.lanes, start, m, got)
        np.testing.assert_array_equal(got, want[start:start + m])
    np.testing.assert_allclose(want, residual_decode_ref(rows, cent, w, 4), rtol=0, atol=1e-6)
    zero = residual_rows(np.zeros((16, id_bytes + 64), np.uint8), np.zeros((1, dim), np.float32),
                         np.zeros((dim, 16), np.float32))
    out = np.full((16, dim), np.nan, dtype=np.float32)
    codes_mod.decode_residual_block(zero.rows, zero.centroids, zero.table, zero.lanes, 0, 16, out)
    np.testing.assert_array_equal(out, 0.0)  # a zero row stays zero (no division by its norm)
    with pytest.raises(ValueError, match="store.lanes must have shape"):
        decode_rows(store._replace(lanes=store.lanes[:, :8].copy()), 0, 1)


def _stores(rng, dim=16, n=400):
    x = _unit(rng.standard_normal((n, dim)))
    codec = TokenCodec.train(CodecConfig(kind="residual", nbits=2, n_centroids=32), x, n)
    rows = codec.encode(x)
    return {"int8": (Int8Rows(int8_encode(x)), int8_decode_ref(int8_encode(x))),
            "residual": (codec.store(rows), residual_decode_ref(rows, codec.centroids, codec.weights, 2))}


@pytest.mark.parametrize("kind", ["int8", "residual"])
def test_maxsim_kernels_over_codes_equal_decoded_float32(kind):
    rng = np.random.default_rng(5)
    store, dec = _stores(rng)[kind]
    offsets = np.array([0, 1, 40, 41, 200, 390, 400], dtype=np.int64)
    q = _unit(rng.standard_normal((45, 16)))  # a query of > 32 tokens spans two lanes chunks
    q_off = np.array([0, 5, 45], dtype=np.int64)
    cand = np.array([[0, 3, -1, 5, 5], [1, 2, 4, 0, -1]], dtype=np.int64)
    got = maxsim_scores_batch(q, q_off, store, offsets, cand)
    want = maxsim_scores_batch(q, q_off, dec, offsets, cand)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(maxsim_scores(q[:5], store, offsets, cand[0]), want[0], rtol=1e-6, atol=1e-5)
    ref, _ = maxsim_exhaustive_ref(q, q_off, dec, offsets)
    np.testing.assert_allclose(maxsim_exhaustive(q, q_off, store, offsets), ref, rtol=1e-5, atol=1e-4)
    ids, scores = maxsim_exhaustive_topk(q, q_off, store, offsets, 3)
    np.testing.assert_array_equal(ids, np.argsort(-ref, axis=1, kind="stable")[:, :3])


def test_compressed_store_validation_names_the_array():
    rng = np.random.default_rng(6)
    store, _ = _stores(rng)["residual"]
    offsets = np.array([0, 400], dtype=np.int64)
    q = _unit(rng.standard_normal((3, 16)))
    bad_table = ResidualRows(store.rows, store.centroids, np.ascontiguousarray(store.table[:3]), store.lanes)
    with pytest.raises(ValueError, match="tokens.table"):
        maxsim_scores(q, bad_table, offsets, np.array([0]))
    stale = store._replace(lanes=np.ascontiguousarray(store.lanes[:, ::-1]))
    with pytest.raises(ValueError, match="tokens.lanes"):
        maxsim_scores(q, stale, offsets, np.array([0]))
    with pytest.raises(TypeError, match="tokens.rows"):
        maxsim_scores(q, Int8Rows(store.rows.astype(np.int16)), offsets, np.array([0]))
    with pytest.raises(ValueError, match="query dim"):
        maxsim_scores(q[:, :8].copy(), store, offsets, np.array([0]))


def test_damaged_centroid_id_never_reads_outside_the_centroids():
    rng = np.random.default_rng(7)
    store, _ = _stores(rng)["residual"]
    rows = store.rows.copy()
    rows[0, :2] = 255  # id 65535, far past the 32 centroids
    out = decode_rows(ResidualRows(rows, store.centroids, store.table, store.lanes), 0, 1)
    assert np.isfinite(out).all()


# -- codec training -------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_residual_codec_error_shrinks_with_bits(nbits):
    x = np.concatenate(make_docs(300, seed=11))
    codec = TokenCodec.train(CodecConfig(kind="residual", nbits=nbits), x, x.shape[0])
    assert codec.centroids.shape[0] == auto_n_centroids(x.shape[0])
    assert np.all(np.diff(codec.cutoffs, axis=1) >= 0)
    err = np.linalg.norm(codec.decode(codec.encode(x)) - x, axis=1).mean()
    centroid_only = np.linalg.norm(codec.centroids[codec._assign(x)] - x, axis=1).mean()  # ~0.81 here
    # each bit per dimension removes a good share of what the centroid leaves (measured 0.48 / 0.29 / 0.11)
    bound = {1: 0.65, 2: 0.4, 4: 0.15}[nbits] * centroid_only
    assert err < bound, f"mean reconstruction error {err:.3f} for {nbits} bits (centroid alone {centroid_only:.3f})"
    assert codec.bytes_per_token == 2 + DIM * nbits // 8


def test_residual_codec_training_is_seeded_and_bounded():
    x = np.concatenate(make_docs(200, seed=12))
    a = TokenCodec.train(CodecConfig(kind="residual", n_centroids=16), x, x.shape[0])
    b = TokenCodec.train(CodecConfig(kind="residual", n_centroids=16), x, x.shape[0])
    c = TokenCodec.train(CodecConfig(kind="residual", n_centroids=16, seed=2), x, x.shape[0])
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)
    assert auto_n_centroids(1_477_636) == 256 and auto_n_centroids(68_000_000) == 2048
    assert auto_n_centroids(10) == 10 and auto_n_centroids(5000) == 16 and auto_n_centroids(10**9) == 4096


@pytest.mark.parametrize(
    "kwargs, field",
    [({"kind": "bf16"}, "kind"), ({"kind": "residual", "nbits": 3}, "nbits"), ({"nbits": True}, "nbits"),
     ({"n_centroids": 0}, "n_centroids"), ({"max_train_bytes": 10}, "max_train_bytes"), ({"seed": -1}, "seed")],
)
def test_codec_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"CodecConfig.{field}"):
        CodecConfig(**kwargs)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers(-3, 100), st.none(), st.floats(allow_nan=True)))
def test_index_config_rejects_bad_codec_and_pool_factor(value):
    if not (isinstance(value, str) and value in CODECS):
        with pytest.raises((TypeError, ValueError), match="codec"):
            IndexConfig(codec=value)
    if not (isinstance(value, int) and 1 <= value <= 64):
        with pytest.raises(ValueError, match="pool_factor"):
            IndexConfig(pool_factor=value)


def test_index_config_round_trips_and_reads_old_manifests():
    cfg = _cfg("residual4", pool_factor=3)
    assert IndexConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = {"fde": CFG.fde.to_dict(), "faiss_factory": "Flat"}  # written before codecs existed
    # a float16 store without hybrid signals or a token centroid stage
    assert IndexConfig.from_dict(old) == IndexConfig(fde=CFG.fde, faiss_factory="Flat", codec="float16",
                                                     hybrid=HybridConfig(signals=()), centroids=False,
                                                     store_text=False)
    assert IndexConfig().codec.kind == "int8"  # the default for new indexes
    with pytest.raises(ValueError, match="unknown CodecConfig keys"):
        IndexConfig.from_dict({**cfg.to_dict(), "codec": {"kind": "int8", "bits": 2}})


# -- the index with every codec -------------------------------------------------------------------


def _exact_over_store(r: Retriever, queries, k):
    """Reference top-k by float64 MaxSim over the decoded store (what "exact" means for a codec)."""
    dec = r.codec.decode(np.asarray(r.tokens))
    docs = split(dec, r.doc_offsets)
    out = []
    for q in queries:
        s = np.array([(q.astype(np.float64) @ d.astype(np.float64).T).max(1).sum() for d in docs])
        out.append(s)
    s = np.array(out)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@pytest.mark.parametrize("codec", CODECS)
def test_index_with_codec_searches_saves_and_verifies(tmp_path, codec):
    r = build(DOCS, IDS, config=_cfg(codec))
    assert r.codec.config.name == codec and r.tokens.shape[1] == r.codec.row_width
    ex = r.search(QUERIES, k=5, mode="exact")
    ref_rows, ref_scores = _exact_over_store(r, QUERIES, 5)
    np.testing.assert_allclose(ex.scores, ref_scores, rtol=1e-5, atol=1e-4)
    assert (ex.rows == ref_rows).mean() > 0.95  # near-ties may swap
    fde = r.search(QUERIES, k=5, n_candidates=60)
    r.save(tmp_path / "idx")
    m = Retriever.verify(tmp_path / "idx")
    assert m["codec"]["name"] == codec and m["dtypes"]["tokens"] == r.codec.row_dtype.name
    for mmap in (True, False):
        loaded = Retriever.load(tmp_path / "idx", mmap=mmap)
        for kw in ({"mode": "exact"}, {"n_candidates": 60}):
            a, b = loaded.search(QUERIES, k=5, **kw), r.search(QUERIES, k=5, **kw)
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(fde.ids, Retriever.load(tmp_path / "idx").search(QUERIES, k=5, n_candidates=60).ids)


def test_codecs_agree_with_float16_in_order_of_bits():
    """Exact top-10 agreement with the float16 store grows with the bits spent per token."""
    docs = make_docs(300, seed=21)
    ids = list(range(len(docs)))
    queries = make_queries(30, seed=22)
    truth = build(docs, ids, config=_cfg("float16")).search(queries, k=10, mode="exact").ids
    agree = {}
    for codec in ["int8", "residual4", "residual2", "residual1"]:
        got = build(docs, ids, config=_cfg(codec)).search(queries, k=10, mode="exact").ids
        agree[codec] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    # measured on this noisy synthetic set: 0.99 / 0.80 / 0.58 / 0.41 (real text: bench/beir/codec_sweep.py)
    assert agree["int8"] >= 0.97 and agree["residual4"] >= 0.7, agree
    assert agree["int8"] > agree["residual4"] > agree["residual2"] > agree["residual1"], agree


@pytest.mark.parametrize("codec", ["int8", "residual2"])
def test_add_keeps_the_trained_codec_and_equals_encoding_with_it(tmp_path, codec):
    r = build(DOCS[:80], IDS[:80], config=_cfg(codec, pool_factor=2))
    r.save(tmp_path / "idx")
    r = Retriever.load(tmp_path / "idx")
    before = {k: v.copy() for k, v in r.codec.arrays().items()}
    r.add(DOCS[80:], IDS[80:])
    for key, arr in r.codec.arrays().items():
        np.testing.assert_array_equal(arr, before[key])
    from retriever.index.builder import pooled_tokens

    pooled = pooled_tokens(TokenEmbeddings.from_list(DOCS), 2)
    np.testing.assert_array_equal(np.asarray(r.tokens), r.codec.encode(pooled.vectors))
    np.testing.assert_array_equal(r.doc_offsets, pooled.offsets)
    r.save(tmp_path / "idx")
    Retriever.verify(tmp_path / "idx")


def test_compact_retrain_retrains_the_residual_codec(tmp_path):
    r = build(DOCS, IDS, config=_cfg("residual2"))
    old = r.codec.centroids.copy()
    r.delete(IDS[:60])
    assert r.compact(retrain=True) == 60
    assert r.codec.centroids.shape == old.shape and not np.array_equal(r.codec.centroids, old)
    ex = r.search(QUERIES, k=5, mode="exact")
    _, ref_scores = _exact_over_store(r, QUERIES, 5)
    np.testing.assert_allclose(ex.scores, ref_scores, rtol=1e-5, atol=1e-4)
    assert set(ex.ids.ravel()) <= set(IDS[60:])
    r.save(tmp_path / "c")
    Retriever.verify(tmp_path / "c")
    # without retrain the codec stays
    s = build(DOCS, IDS, config=_cfg("residual2"))
    c0 = s.codec.centroids.copy()
    s.delete(IDS[:10])
    s.compact()
    np.testing.assert_array_equal(s.codec.centroids, c0)


def test_pooling_stores_fewer_tokens_and_search_works(tmp_path):
    r1 = build(DOCS, IDS, config=_cfg("float16"))
    r2 = build(DOCS, IDS, config=_cfg("float16", pool_factor=2))
    lengths = np.diff(r1.doc_offsets)
    np.testing.assert_array_equal(np.diff(r2.doc_offsets), np.maximum(1, lengths // 2))
    res = r2.search(QUERIES, k=10, mode="exact")
    truth = r1.search(QUERIES, k=10, mode="exact")
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res.ids, truth.ids)])
    assert overlap > 0.6, overlap
    r2.save(tmp_path / "p")
    assert Retriever.verify(tmp_path / "p")["config"]["pool_factor"] == 2


def _resign(path):
    m = json.loads((path / fmt.MANIFEST).read_text())
    m["files"] = fmt.describe_files(path, list(m["files"]))
    m.pop(fmt.CHECKSUM_FIELD)
    fmt.write_manifest(path, m)


def test_verify_reports_centroid_ids_out_of_range(tmp_path):
    r = build(DOCS, IDS, config=_cfg("residual2"))
    r.save(tmp_path / "idx")
    tok = np.load(tmp_path / "idx" / fmt.TOKENS)
    tok[7, :2] = 255
    np.save(tmp_path / "idx" / fmt.TOKENS, tok)
    _resign(tmp_path / "idx")
    with pytest.raises(fmt.IndexFormatError, match="token row 7 names centroid 65535"):
        Retriever.verify(tmp_path / "idx")


def test_load_names_missing_or_bad_codec_files(tmp_path):
    r = build(DOCS, IDS, config=_cfg("residual2"))
    r.save(tmp_path / "idx")
    w = np.load(tmp_path / "idx" / "codec_cutoffs.npy")
    np.save(tmp_path / "idx" / "codec_cutoffs.npy", w[:, ::-1].copy())  # descending cut-offs
    _resign(tmp_path / "idx")
    with pytest.raises(fmt.IndexFormatError, match="codec_cutoffs.npy: cut-offs must ascend"):
        Retriever.load(tmp_path / "idx")
    (tmp_path / "idx" / "codec_cutoffs.npy").unlink()
    m = json.loads((tmp_path / "idx" / fmt.MANIFEST).read_text())
    del m["files"]["codec_cutoffs.npy"]
    m.pop(fmt.CHECKSUM_FIELD)
    fmt.write_manifest(tmp_path / "idx", m)
    with pytest.raises(fmt.IndexFormatError, match="needs 'codec_cutoffs.npy'"):
        Retriever.load(tmp_path / "idx")


def test_residual_codec_refuses_vectors_that_are_not_unit_length():
    x = np.concatenate(make_docs(50, seed=13))
    with pytest.raises(ValueError, match="token 0 has norm 2"):
        TokenCodec.train(CodecConfig(kind="residual"), 2 * x, x.shape[0])
    codec = TokenCodec.train(CodecConfig(kind="residual"), x, x.shape[0])
    y = x.copy()
    y[3] *= 0.5
    with pytest.raises(ValueError, match="token 3 has norm 0.5.*use codec int8 or float16"):
        codec.encode(y)
    codec.encode(np.zeros((2, DIM), dtype=np.float32))  # zero vectors pass (a pooled cluster can cancel out)


def test_residual_codec_needs_a_compatible_dim():
    docs = [_unit(np.random.default_rng(0).standard_normal((5, 6))) for _ in range(20)]
    with pytest.raises(ValueError, match="dim divisible by 4"):
        Retriever.build(docs, config=IndexConfig(fde=CFG.fde, codec="residual2"), show_progress=False)


def test_cli_codec_options_reach_the_config():
    import argparse

    from retriever.cli.main import add_index_config_args, index_config_from_args

    p = argparse.ArgumentParser()
    add_index_config_args(p)
    cfg = index_config_from_args(p.parse_args(["--codec", "residual4", "--n-centroids", "512", "--pool-factor", "2"]))
    assert cfg.codec == CodecConfig(kind="residual", nbits=4, n_centroids=512) and cfg.pool_factor == 2
    with pytest.raises(SystemExit):
        p.parse_args(["--codec", "residual3"])


# -- whole-word pooling ---------------------------------------------------------------------------


def test_pool_words_averages_runs_and_keeps_specials_single():
    from retriever.encoders.colbert import _pool_words

    rng = np.random.default_rng(9)
    v = _unit(rng.standard_normal((9, 8)))
    offsets = np.array([0, 6, 9], dtype=np.int64)
    words = [np.array([-1, 0, 0, 1, 2, 2]), np.array([-1, -1, 5])]
    out = _pool_words(v, offsets, words)
    np.testing.assert_array_equal(out.offsets, [0, 4, 7])
    want = [v[0], v[1] + v[2], v[3], v[4] + v[5], v[6], v[7], v[8]]
    want = np.array([w / np.linalg.norm(w) for w in want], dtype=np.float32)
    np.testing.assert_allclose(out.vectors, want, rtol=1e-6, atol=1e-6)


def test_word_pooling_is_refused_for_token_embeddings():
    with pytest.raises(ValueError, match="word_pooling needs text documents"):
        Retriever.build(DOCS[:5], config=IndexConfig(fde=CFG.fde, word_pooling=True), show_progress=False)
    with pytest.raises(ValueError, match="word_pooling must be a bool"):
        IndexConfig(word_pooling="yes")


@pytest.mark.parametrize("max_rows", [4096, 100])  # 100: the 290-token document takes the per-pair fallback
@pytest.mark.parametrize("kind", ["float16", "int8", "residual"])
def test_batch_rerank_grouped_by_document_equals_query_by_query(kind, max_rows, monkeypatch):
    """A batch's pairs are scored document by document (one decode per shared document): bit-identical to
    scoring each query alone, for documents decoded whole and one too long for the buffer."""
    import retriever_kernels.maxsim as km

    monkeypatch.setattr(km, "_GROUP_MAX_ROWS", max_rows)
    rng = np.random.default_rng(11)
    n = 900
    if kind == "float16":
        store = _unit(rng.standard_normal((n, 16))).astype(np.float16)
    else:
        store = _stores(rng, n=n)[kind][0]
    offsets = np.array([0, 3, 40, 41, 300, 320, 600, 890, 900], dtype=np.int64)  # doc 6 has 290 tokens (> 256)
    q = _unit(rng.standard_normal((80, 16)))
    q_off = np.array([0, 5, 45, 46, 80], dtype=np.int64)  # 5, 40 (two lane chunks), 1 and 34 tokens
    cand = np.array([[0, 6, 2, -1, 7], [6, 0, 5, 5, 1], [-1, -1, -1, -1, -1], [7, 6, 3, 4, 0]], dtype=np.int64)
    got = maxsim_scores_batch(q, q_off, store, offsets, cand)
    for i in range(cand.shape[0]):
        one = maxsim_scores_batch(q[q_off[i] : q_off[i + 1]], np.array([0, q_off[i + 1] - q_off[i]]), store, offsets,
                                  cand[i : i + 1])
        np.testing.assert_array_equal(got[i], one[0])
    assert np.isneginf(got[cand < 0]).all() and np.isfinite(got[cand >= 0]).all()

"""Index lifecycle: add, upsert, delete, compact, subset filters; all-or-nothing failures; durability."""

from __future__ import annotations

import numpy as np
import pytest

from lifecycle_util import CFG, DIM, build, dir_state, exact_oracle, make_docs, make_queries, results_of, state_of
from retriever.index import lifecycle
from retriever.candidates.fde import FDEConfig
from retriever.index.config import IndexConfig
from retriever.index.retriever import Retriever
from retriever.store.tokens import TokenEmbeddings

N = 160
DOCS = make_docs(N, seed=0)
IDS = [f"doc{i}" for i in range(N)]
QUERIES = make_queries(12, seed=1)
MODES = [{"mode": "exact"}, {"n_candidates": 15}, {"n_candidates": 60}]


def assert_same_answers(a: Retriever, b: Retriever, queries=QUERIES, k=6, rows=False, **kw):
    for mode in MODES if not kw else [kw]:
        ra, rb = a.search(queries, k=k, **mode), b.search(queries, k=k, **mode)
        np.testing.assert_array_equal(ra.ids, rb.ids, err_msg=str(mode))
        np.testing.assert_array_equal(ra.scores, rb.scores, err_msg=str(mode))
        if rows:
            np.testing.assert_array_equal(ra.rows, rb.rows, err_msg=str(mode))


@pytest.fixture(scope="module")
def reference():
    """The index built in one go from all documents: what incremental adds must reproduce."""
    return build(DOCS, IDS)


def _source(kind: str, tmp_path, docs, ids) -> Retriever:
    """The same index, held four ways: unsaved build, built into a path, loaded mmap / in memory."""
    if kind == "built":
        return build(docs, ids)
    if kind == "built_path":
        return build(docs, ids, path=tmp_path / "bp")
    build(docs, ids).save(tmp_path / "saved")
    return Retriever.load(tmp_path / "saved", mmap=(kind == "loaded_mmap"))


SOURCES = ["built", "built_path", "loaded_mmap", "loaded_mem"]


# -- add ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOURCES)
def test_add_equals_build_from_all(tmp_path, reference, kind):
    r = _source(kind, tmp_path, DOCS[:100], IDS[:100])
    r.add(DOCS[100:130], IDS[100:130])
    r.add(TokenEmbeddings.from_list(DOCS[130:]), IDS[130:])
    assert r.n_docs == N and r.n_tokens == reference.n_tokens
    np.testing.assert_array_equal(np.asarray(r.tokens), np.asarray(reference.tokens))
    np.testing.assert_array_equal(r.doc_offsets, reference.doc_offsets)
    np.testing.assert_array_equal(r.faiss_index.reconstruct_n(0, N), reference.faiss_index.reconstruct_n(0, N))
    assert_same_answers(r, reference, rows=True)
    assert isinstance(r.tokens, np.memmap) == (kind != "loaded_mem")
    r.save(tmp_path / "out")
    assert_same_answers(Retriever.load(tmp_path / "out", verify=True), reference, rows=True)


def test_add_to_loaded_index_leaves_saved_directory_alone(tmp_path):
    build(DOCS[:80], IDS[:80]).save(tmp_path / "idx")
    before = dir_state(tmp_path / "idx")
    r = Retriever.load(tmp_path / "idx")
    r.add(DOCS[80:90], IDS[80:90])
    r.delete(IDS[:5])
    r.compact()
    r.upsert([DOCS[0]], ["doc10"])
    assert dir_state(tmp_path / "idx") == before, "mutations are durable only when saved"
    assert Retriever.load(tmp_path / "idx").n_docs == 80
    # the first add copied the store into the object's own workdir; later adds append in place
    wd = r.workdir
    assert wd is not None and str(tmp_path) not in str(wd)
    r.add(DOCS[90:95], IDS[90:95])
    assert r.workdir == wd and r.n_docs == 90
    r.save(tmp_path / "idx")
    assert Retriever.load(tmp_path / "idx", verify=True).n_docs == 90


def test_add_appends_in_place_to_own_store():
    r = build(DOCS[:50], IDS[:50])
    wd = r.workdir
    old_tokens = r.tokens
    old_copy = np.array(old_tokens)
    r.add(DOCS[50:60], IDS[50:60])
    assert r.workdir == wd
    assert r.tokens.filename == old_tokens.filename
    np.testing.assert_array_equal(np.asarray(old_tokens), old_copy)  # an old map of the file still reads right
    np.testing.assert_array_equal(np.asarray(r.tokens[: old_copy.shape[0]]), old_copy)


def test_add_default_int_ids_and_required_str_ids():
    r = Retriever.build(DOCS[:10], doc_ids=[3, 7, 100, 4, 5, 6, 8, 9, 10, 11], config=CFG, show_progress=False)
    r.add(DOCS[10:13])
    assert r.doc_ids.tolist()[-3:] == [101, 102, 103]
    r.delete([103])
    r.add(DOCS[13:14])  # continues after the largest id held, deleted rows included: never reuses 103
    assert r.doc_ids.tolist()[-1] == 104
    s = build(DOCS[:5], IDS[:5])
    with pytest.raises(ValueError, match="doc_ids are required"):
        s.add(DOCS[5:6])
    with pytest.raises(ValueError, match="upsert needs doc_ids"):
        s.upsert(DOCS[5:6])


def test_add_nothing_is_a_no_op():
    r = build(DOCS[:5], IDS[:5])
    before = state_of(r)
    r.add([])
    r.add([], [])
    assert state_of(r) == before
    with pytest.raises(ValueError, match="1 doc_ids for 0 documents"):
        r.add([], ["x"])


BAD_ADDS = [
    # (documents, ids, error, message)
    (lambda: [np.ones((3, DIM + 1), np.float32)], ["n1"], ValueError, "dim 33, the index has dim 32"),
    (lambda: [DOCS[0], np.ones((3, DIM + 1), np.float32)], ["n1", "n2"], ValueError, "same dim"),
    (lambda: [np.where(np.arange(DIM) == 3, np.nan, 1.0).astype(np.float32)[None]], ["n1"], ValueError, "NaN or inf"),
    (lambda: [np.full((2, DIM), np.inf, np.float32)], ["n1"], ValueError, "NaN or inf"),
    (lambda: [np.full((2, DIM), 1e6, np.float32)], ["n1"], ValueError, "float16"),
    (lambda: [DOCS[1], np.zeros((0, DIM), np.float32)], ["n1", "n2"], ValueError, "'n2' has zero tokens"),
    (lambda: [np.ones((2, DIM), np.int32)], ["n1"], TypeError, "floating point"),
    (lambda: [np.ones(DIM, np.float32)], ["n1"], ValueError, "2-D"),
    (lambda: [DOCS[1]], [5], TypeError, "document ids are int, this index has str ids"),
    (lambda: [DOCS[1], DOCS[2]], ["n1", 5], TypeError, "do not mix"),
    (lambda: [DOCS[1]], ["doc3"], ValueError, "'doc3' .*already in the index; use upsert"),
    (lambda: [DOCS[1], DOCS[2]], ["n1", "n1"], ValueError, "duplicate document id 'n1'"),
    (lambda: [DOCS[1], DOCS[2]], ["n1"], ValueError, "1 ids for 2 documents"),
    (lambda: [DOCS[1]], ["a b "], ValueError, "surrounding whitespace"),
    (lambda: [DOCS[1]], [""], ValueError, "empty"),
    (lambda: [DOCS[1]], [None], TypeError, "NoneType"),
    (lambda: [DOCS[1]], ["x\ud800"], ValueError, "UTF-8"),
    (lambda: [DOCS[1]], "n", TypeError, "not a single string"),
    (lambda: "some text", None, TypeError, "single string"),
    (lambda: ["a text"], ["t1"], ValueError, "without an encoder"),
]


@pytest.mark.parametrize("kind", ["built", "loaded_mmap", "loaded_mem"])
def test_failing_add_changes_nothing(tmp_path, kind):
    r = _source(kind, tmp_path, DOCS[:40], IDS[:40])
    r.delete(["doc7"])
    if kind != "built":
        r.add(DOCS[40:42], IDS[40:42])  # the store is now the object's own: failures must cut it back
    before, answers = state_of(r), results_of(r, QUERIES)
    on_disk = dir_state(tmp_path / "saved") if kind != "built" else None
    for docs, ids, err, msg in BAD_ADDS:
        for method in (r.add, r.upsert):
            if method == r.upsert and "upsert" in msg:
                continue
            with pytest.raises(err, match=msg):
                method(docs(), ids)
            assert state_of(r) == before, (msg, method.__name__)
    assert results_of(r, QUERIES) == answers
    if on_disk is not None:
        assert dir_state(tmp_path / "saved") == on_disk
    r.add(DOCS[50:52], ["ok1", "ok2"])  # still usable after all the failures
    assert r.n_docs == before["n_docs"] + 2


def test_failure_inside_faiss_add_is_rolled_back(monkeypatch):
    r = build(DOCS[:30], IDS[:30])
    before = state_of(r)
    calls = {"n": 0}
    real_add = type(r.faiss_index).add

    def add_then_fail(self, x):
        real_add(self, x)
        calls["n"] += 1
        raise MemoryError("simulated")

    monkeypatch.setattr(type(r.faiss_index), "add", add_then_fail)
    with pytest.raises(MemoryError):
        r.add(DOCS[30:35], IDS[30:35])
    monkeypatch.undo()
    assert calls["n"] == 1 and state_of(r) == before
    r.add(DOCS[30:35], IDS[30:35])
    assert_same_answers(r, build(DOCS[:35], IDS[:35]), rows=True)


def test_add_texts_with_the_index_encoder(monkeypatch):
    from conftest import REPO
    from retriever.index import builder as builder_mod
    from retriever.encoders.colbert import ColBERTEncoder

    enc = ColBERTEncoder.from_pretrained(str(REPO / "tests" / "fixtures" / "encoder" / "bert_stanford"), dtype="float32")
    cfg = IndexConfig(fde=FDEConfig(num_repetitions=4, num_simhash_projections=3, projection_dimension=8))
    texts = {"a": "aspirin reduces fever", "b": "the heart pumps blood", "c": "coffee holds caffeine",
             "d": "sleep helps memory", "e": "exercise lowers blood pressure"}
    full = Retriever.build(list(texts.items()), encoder=enc, config=cfg, show_progress=False)
    r = Retriever.build(list(texts.items())[:2], encoder=enc, config=cfg, show_progress=False)
    monkeypatch.setattr(builder_mod, "_TEXT_BATCH", 1)  # streamed batch by batch
    r.add([{"_id": "c", "title": "", "text": texts["c"]}, ("d", texts["d"])])
    r.add([texts["e"]], doc_ids=["e"])
    np.testing.assert_array_equal(np.asarray(r.tokens), np.asarray(full.tokens))
    q = ["blood pressure", "fever"]
    np.testing.assert_array_equal(r.search(q, k=3).ids, full.search(q, k=3).ids)
    before = state_of(r)
    with pytest.raises(ValueError, match="duplicate document id 'x'"):  # fails in the 2nd streamed batch
        r.add([("x", "one"), ("x", "two")])
    with pytest.raises(ValueError, match="fewer than the documents"):
        r.add(["one", "two"], doc_ids=["y"])
    with pytest.raises(ValueError, match="more ids than"):
        r.add(["one"], doc_ids=["y", "z"])
    assert state_of(r) == before


# -- delete ---------------------------------------------------------------------------------------


def test_delete_hides_documents_in_every_mode(reference):
    r = build(DOCS, IDS)
    gone = IDS[::3]
    r.delete(gone)
    assert r.n_docs == N - len(gone) and len(r) == r.n_docs
    survivors = [i for i in range(N) if i % 3]
    ref = build([DOCS[i] for i in survivors], [IDS[i] for i in survivors])
    # identical answers to an index that never held the deleted documents, in every mode:
    # the FAISS stage filters with an ID selector, so deleted documents take no candidate slot
    assert_same_answers(r, ref)
    for mode in MODES + [{"n_candidates": 1, "k": 1}, {"n_candidates": N}]:
        kw = dict(mode)
        k = kw.pop("k", 10)
        res = r.search(QUERIES, k=k, **kw)
        assert not set(res.ids.ravel().tolist()) & set(gone)
    oracle_ids, oracle_scores = exact_oracle(QUERIES, {IDS[i]: DOCS[i] for i in survivors}, 6)
    res = r.search(QUERIES, k=6, mode="exact")
    np.testing.assert_allclose(res.scores, np.array(oracle_scores), rtol=1e-4, atol=1e-4)


def test_delete_errors_change_nothing():
    r = build(DOCS[:20], IDS[:20])
    r.delete(["doc1"])
    before = state_of(r)
    with pytest.raises(KeyError, match=r"2 document ids not in the index: 'nope', 'doc1'"):
        r.delete(["doc2", "nope", "doc1"])  # doc1 is already deleted
    with pytest.raises(KeyError, match="this index has str ids"):
        r.delete([5])
    with pytest.raises(KeyError, match=r"and 2 more"):
        r.delete([f"x{i}" for i in range(12)])
    with pytest.raises(TypeError, match="single str"):
        r.delete("doc2")
    with pytest.raises(TypeError, match=r"ids\[0\] has type float"):
        r.delete([1.5])
    with pytest.raises(TypeError, match=r"ids\[0\] has type list"):
        r.delete([["doc2"]])
    with pytest.raises(TypeError, match="collection"):
        r.delete(None)
    assert state_of(r) == before
    r.delete([])  # nothing to delete
    r.delete(["doc2", "doc2"])  # repeats are deleted once
    assert r.n_docs == 18


def test_delete_everything_then_search_pads():
    r = build(DOCS[:6], IDS[:6])
    r.delete(IDS[:6])
    assert r.n_docs == 0
    for mode in ({"mode": "exact"}, {}):
        res = r.search(QUERIES[:2], k=3, **mode)
        assert res.ids.tolist() == [[None] * 3] * 2 and np.all(np.isneginf(res.scores))
    with pytest.raises(ValueError, match="every document is deleted"):
        r.compact()
    assert r.n_tokens == sum(d.shape[0] for d in DOCS[:6])


@pytest.mark.parametrize("factory,knobs", [("HNSW16", {"ef_search": 64}), ("IVF8,Flat", {"nprobe": 8})])
def test_delete_with_other_faiss_types_keeps_recall(factory, knobs):
    docs = make_docs(300, seed=5)
    ids = list(range(300))
    fde = FDEConfig(num_repetitions=8, num_simhash_projections=3, projection_dimension=8)
    cfg = IndexConfig(fde=fde, faiss_factory=factory)
    r = Retriever.build(docs, doc_ids=ids, config=cfg, show_progress=False)
    gone = ids[::2]
    r.delete(gone)
    survivors = ids[1::2]
    flat = Retriever.build([docs[i] for i in survivors], doc_ids=survivors, config=IndexConfig(fde=fde),
                           show_progress=False)
    res = r.search(QUERIES, k=5, n_candidates=40, **knobs)
    ref = flat.search(QUERIES, k=5, n_candidates=40)
    assert not set(res.ids.ravel().tolist()) & set(gone)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(res.ids.tolist(), ref.ids.tolist())])
    assert recall >= 0.9, recall  # IVF with every list probed is exact; HNSW near it


# -- upsert / re-add --------------------------------------------------------------------------------


def test_upsert_replaces_and_adds():
    r = build(DOCS[:30], IDS[:30])
    r.upsert([DOCS[100], DOCS[101], DOCS[102]], ["doc3", "doc4", "new"])
    assert r.n_docs == 31
    expect = {IDS[i]: DOCS[i] for i in range(30)}
    expect.update({"doc3": DOCS[100], "doc4": DOCS[101], "new": DOCS[102]})
    oracle_ids, oracle_scores = exact_oracle(QUERIES, expect, 5)
    res = r.search(QUERIES, k=5, mode="exact")
    np.testing.assert_allclose(res.scores, np.array(oracle_scores), rtol=1e-4, atol=1e-4)
    assert r.search(DOCS[100], k=1, mode="exact").ids[0, 0] == "doc3"
    ref = build(list(expect.values()), list(expect))
    assert_same_answers(r, ref)
    before = state_of(r)
    with pytest.raises(ValueError, match="duplicate document id 'doc5'"):
        r.upsert([DOCS[1], DOCS[2]], ["doc5", "doc5"])
    with pytest.raises(ValueError, match="NaN"):  # one bad document: the good replacement is not applied either
        r.upsert([DOCS[1], np.full((2, DIM), np.nan, np.float32)], ["doc5", "doc6"])
    assert state_of(r) == before


def test_deleted_id_can_be_added_again(tmp_path):
    r = build(DOCS[:20], IDS[:20])
    r.delete(["doc5"])
    r.add([DOCS[150]], ["doc5"])  # the id now names new content at a new row
    assert r.n_docs == 20 and len(r.doc_ids) == 21
    assert r.search(DOCS[150], k=1, mode="exact").ids[0, 0] == "doc5"
    assert r.rows_of(["doc5"]).tolist() == [20]
    with pytest.raises(ValueError, match="already in the index"):
        r.add([DOCS[151]], ["doc5"])
    r.save(tmp_path / "i")
    r.close()  # one writer at a time: ``back`` changes the index below
    back = Retriever.load(tmp_path / "i")
    assert back.rows_of(["doc5"]).tolist() == [20]  # the live row wins over the deleted one on load
    assert_same_answers(back, r, rows=True)
    Retriever.verify(tmp_path / "i")
    back.delete(["doc5"])
    assert "doc5" not in set(back.search(QUERIES, k=20, mode="exact").ids.ravel().tolist())
    back.add([DOCS[152]], ["doc5"])
    back.compact()
    assert back.rows_of(["doc5"]).tolist() == [19] and back.n_docs == len(back.doc_ids) == 20
    expect = {IDS[i]: DOCS[i] for i in range(20) if i != 5}
    expect["doc5"] = DOCS[152]
    assert_same_answers(back, build(list(expect.values()), list(expect)), rows=True)


# -- compact ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["built", "loaded_mmap", "loaded_mem"])
def test_compact_equals_build_from_survivors(tmp_path, kind):
    r = _source(kind, tmp_path, DOCS, IDS)
    gone = [IDS[i] for i in range(N) if i % 4 == 1 or 40 <= i < 70]
    r.delete(gone)
    answers = results_of(r, QUERIES)
    assert r.compact() == len(gone)
    assert len(r.doc_ids) == r.n_docs == N - len(gone) and not r.deleted.any()
    assert results_of(r, QUERIES) == answers
    keep = [i for i in range(N) if IDS[i] not in set(gone)]
    ref = build([DOCS[i] for i in keep], [IDS[i] for i in keep])
    np.testing.assert_array_equal(np.asarray(r.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(r.faiss_index.reconstruct_n(0, len(keep)), ref.faiss_index.reconstruct_n(0, len(keep)))
    assert_same_answers(r, ref, rows=True)
    assert isinstance(r.tokens, np.memmap) == (kind != "loaded_mem")
    assert r.compact() == 0  # nothing left to reclaim
    r.save(tmp_path / "c")
    back = Retriever.load(tmp_path / "c", verify=True)
    assert_same_answers(back, ref, rows=True)
    assert (tmp_path / "c" / "deleted.npy").exists() is False


def test_compact_reencodes_when_vectors_are_not_stored_exactly():
    docs = make_docs(300, seed=7)
    fde = FDEConfig(num_repetitions=8, num_simhash_projections=3, projection_dimension=8)
    cfg = IndexConfig(fde=fde, faiss_factory="IVF4,SQ8")  # both parts trained; SQ8 reconstructs lossily
    r = Retriever.build(docs, config=cfg, show_progress=False)
    ivf = lambda idx: __import__("faiss").extract_index_ivf(idx)  # noqa: E731
    centroids = ivf(r.faiss_index).quantizer.reconstruct_n(0, 4)
    r.delete(list(range(0, 300, 3)))
    answers = results_of(r, QUERIES, n_candidates=60, nprobe=4)
    r.compact()  # keeps the training: same centroids, same codes for the same FDEs
    np.testing.assert_array_equal(ivf(r.faiss_index).quantizer.reconstruct_n(0, 4), centroids)
    assert r.faiss_index.ntotal == 200
    assert results_of(r, QUERIES, n_candidates=60, nprobe=4) == answers
    r.compact(retrain=True)  # trains afresh on the 200 remaining documents
    assert not np.array_equal(ivf(r.faiss_index).quantizer.reconstruct_n(0, 4), centroids)
    res = r.search(QUERIES, k=5, n_candidates=60, nprobe=4)
    assert set(res.ids.ravel().tolist()) <= set(range(300)) - set(range(0, 300, 3))
    with pytest.raises(TypeError, match="retrain must be a bool"):
        r.compact(retrain="yes")


def test_compact_retrain_too_few_documents_changes_nothing():
    docs = make_docs(70, seed=8)
    r = Retriever.build(docs, config=IndexConfig(fde=CFG.fde, faiss_factory="IVF64,Flat"), show_progress=False)
    r.delete(list(range(20)))
    before = state_of(r)
    with pytest.raises(ValueError, match="needs at least 64 documents"):
        r.compact(retrain=True)
    assert state_of(r) == before
    assert r.compact() == 20  # reusing the training works


def test_compact_hnsw_keeps_search_defaults():
    docs = make_docs(120, seed=9)
    r = Retriever.build(docs, config=IndexConfig(fde=CFG.fde, faiss_factory="HNSW8"), show_progress=False)
    import faiss

    faiss.downcast_index(r.faiss_index).hnsw.efSearch = 77
    r.delete(list(range(0, 120, 2)))
    r.compact()
    assert faiss.downcast_index(r.faiss_index).hnsw.efSearch == 77
    res = r.search(QUERIES, k=5, n_candidates=30)
    assert all(i % 2 == 1 for i in res.ids.ravel().tolist())


def test_ids_stable_through_a_lifecycle(tmp_path):
    """Each id keeps naming its own document through add, delete, upsert, compact, save and load."""
    content = {IDS[i]: DOCS[i] for i in range(60)}
    r = build(list(content.values()), list(content))
    rng = np.random.default_rng(3)
    extra = iter(range(60, N))
    for step in range(8):
        new = [next(extra) for _ in range(8)]
        r.add([DOCS[i] for i in new], [IDS[i] for i in new])
        content.update({IDS[i]: DOCS[i] for i in new})
        gone = list(rng.choice(sorted(content), size=6, replace=False))
        r.delete(gone)
        for g in gone:
            del content[g]
        if step % 3 == 1:
            r.compact()
        if step % 2 == 0:
            r.save(tmp_path / "s")
            r = Retriever.load(tmp_path / "s", mmap=step % 4 == 0)
        # every live document finds itself first; its id is the one it was added with
        probe = sorted(content)[:: 5]
        res = r.search([content[i] for i in probe], k=1, mode="exact")
        assert res.ids[:, 0].tolist() == probe
        assert sorted(r.doc_ids[r.deleted == 0].tolist()) == sorted(content)
    assert_same_answers(r, build(list(content.values()), list(content)))


# -- subset filters ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_deletions():
    r = build(DOCS, IDS)
    r.delete(IDS[1::4])
    return r


@pytest.mark.parametrize("size", [1, 5, 14, 15, 16, 40, 100])
def test_subset_equals_index_of_the_subset(with_deletions, size):
    rng = np.random.default_rng(size)
    live = [i for i in range(N) if i % 4 != 1]
    sub = sorted(rng.choice(live, size=size, replace=False).tolist())
    ref = build([DOCS[i] for i in sub], [IDS[i] for i in sub])
    ids = [IDS[i] for i in sub]
    for mode in ({"mode": "exact"}, {"n_candidates": 15}, {"n_candidates": 50}):
        res = with_deletions.search(QUERIES, k=6, subset=ids, **mode)
        exp = ref.search(QUERIES, k=6, **mode)
        # subsets no larger than n_candidates are scored exactly; larger ones go through the
        # FAISS ID selector, which is exactly a Flat index over the subset
        np.testing.assert_array_equal(res.ids, exp.ids, err_msg=f"{mode} size {size}")
        np.testing.assert_array_equal(res.scores, exp.scores)
        if size <= mode.get("n_candidates", 0):
            np.testing.assert_array_equal(res.ids, with_deletions.search(QUERIES, k=6, subset=ids, mode="exact").ids)
    oracle_ids, oracle_scores = exact_oracle(QUERIES, {IDS[i]: DOCS[i] for i in sub}, min(6, size))
    res = with_deletions.search(QUERIES, k=6, subset=ids, mode="exact")
    np.testing.assert_allclose(res.scores[:, : min(6, size)], np.array(oracle_scores), rtol=1e-4, atol=1e-4)
    if size < 6:
        assert np.all(res.ids[:, size:] == None) and np.all(np.isneginf(res.scores[:, size:]))  # noqa: E711


def test_subset_fallback_to_exact_scoring(with_deletions, monkeypatch):
    from retriever.index import retriever as index_mod

    calls = []
    real = index_mod.search_candidates
    monkeypatch.setattr(index_mod, "search_candidates", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    ids = [IDS[i] for i in range(0, N, 4)][:20]
    with_deletions.search(QUERIES, k=5, subset=ids, n_candidates=20, mode="fde")
    assert not calls, "a subset no larger than n_candidates is scored exactly, without FAISS"
    with_deletions.search(QUERIES, k=5, subset=ids, n_candidates=19, mode="fde")
    assert calls == [1]
    with_deletions.search(QUERIES, k=5, subset=ids, n_candidates=19)  # auto: 12 queries x 19 pairs cost more
    assert calls == [1]


def test_subset_errors(with_deletions):
    with pytest.raises(KeyError, match="'doc1'"):  # deleted
        with_deletions.search(QUERIES, k=3, subset=["doc0", "doc1"])
    with pytest.raises(KeyError, match="'zzz'"):
        with_deletions.search(QUERIES, k=3, subset=["zzz"])
    with pytest.raises(TypeError, match="single string"):
        with_deletions.search(QUERIES, k=3, subset="doc0")
    res = with_deletions.search(QUERIES, k=3, subset=[])
    assert np.all(res.rows == -1)
    dup = with_deletions.search(QUERIES, k=3, subset=["doc0", "doc0", "doc2"])
    assert set(dup.ids.ravel().tolist()) == {"doc0", "doc2", None}


def test_lookup_names_unknown_ids_of_wrong_type():
    r = Retriever.build(DOCS[:4], config=CFG, show_progress=False)
    with pytest.raises(KeyError, match="'3'.*this index has int ids"):
        lifecycle.lookup_rows(r, ["3"])
    assert r.rows_of([np.int64(3), 0]).tolist() == [3, 0]

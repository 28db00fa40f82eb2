"""Long documents split into passages (``IndexConfig.chunk_tokens``, ``retriever.index.passages``).

A chunked build truncates nothing; exhaustive document search equals a numpy MaxP oracle (MaxSim per
passage, max per document, top-k); the default pipeline returns unique documents with their exact MaxP
scores; passage hits carry spans whose text is the passage's; save / load, add / upsert / delete /
compact, where / subset filters, sharded indexes, the CLI and the HTTP service all follow documents,
not rows. The bundled default encoder reads documents at ``document_length=64`` here, so that small
generated documents are long.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from reference import check_topk_with_ties, maxsim_exhaustive_ref
from retriever.cli.main import main as cli_main
from retriever.cluster.shards import ShardedRetriever
from retriever.encoders.colbert import ColBERTEncoder
from retriever.index import format as fmt
from retriever.index import passages as passages_mod
from retriever.index.config import IndexConfig
from retriever.index.passages import PassageMap, passage_source
from retriever.index.retriever import Retriever
from retriever.store.tokens import TokenEmbeddings

DOC_LENGTH = 64
CFG = IndexConfig(chunk_tokens=24, chunk_overlap=6)
WORDS = ("heart lung blood cancer sleep memory coffee tea fever aspirin exercise pressure vitamin sunlight skin "
         "bone muscle brain gene cell protein virus insulin diet smoking tobacco statin kidney liver asthma").split()
QUERIES = ["blood pressure and the heart", "coffee and sleep", "smoking causes lung cancer", "vitamin from sunlight"]


def _corpus(n: int, seed: int = 0) -> list[dict]:
    """BEIR dicts of 3 to 160 words (up to ~6 passages), with metadata; some without a title."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, int(rng.integers(3, 160))))
        doc = {"_id": f"d{i}", "title": f"Study {i}" if i % 4 else "", "text": text,
               "year": 2000 + i % 25, "lang": "en" if i % 3 else "de"}
        docs.append(doc)
    return docs


DOCS = _corpus(48)


@pytest.fixture(scope="module")
def encoder():
    return ColBERTEncoder.from_pretrained("default", document_length=DOC_LENGTH)


@pytest.fixture(scope="module")
def index(encoder):
    return Retriever.build(DOCS, encoder=encoder, config=CFG, show_progress=False)


def _source(doc: dict) -> str:
    return passage_source(doc["title"] or None, doc["text"])


def _n_tokens(encoder, text: str) -> int:
    """Content tokens of a text, untruncated."""
    return len(encoder.tokenizer(text.strip(), add_special_tokens=False)["input_ids"])


def _doc_of(r: Retriever, rows: np.ndarray) -> np.ndarray:
    """Document ordinals (position among head rows) of rows, -1 kept."""
    out = np.full(rows.shape, -1, dtype=np.int64)
    hit = rows >= 0
    out[hit] = np.searchsorted(r.passages.heads, r.passages.row_heads[rows[hit]])
    return out


def _maxp_reference(r: Retriever, q: TokenEmbeddings, allowed_docs=None):
    """(n_q, n_docs) float64 MaxP scores (MaxSim per passage, max per document) and tolerances, from the
    decoded token store; -inf for deleted or not allowed documents."""
    decoded = r.codec.decode(np.asarray(r.tokens))
    ref, tol = maxsim_exhaustive_ref(q.vectors, q.offsets, decoded, r.doc_offsets, allowed=r.deleted == 0)
    heads = r.passages.heads
    doc = np.searchsorted(heads, r.passages.row_heads)
    out = np.full((len(q), heads.size), -np.inf)
    out_tol = np.zeros((len(q), heads.size))
    for d in range(heads.size):
        rows = np.flatnonzero(doc == d)
        out[:, d] = ref[:, rows].max(axis=1)
        out_tol[:, d] = tol[:, rows].max(axis=1)
    if allowed_docs is not None:
        out[:, ~allowed_docs] = -np.inf
    return out, out_tol


# -- config and inputs ---------------------------------------------------------------------------


def test_config_fields_are_checked_and_saved():
    with pytest.raises(ValueError, match="chunk_overlap must be smaller than chunk_tokens=16"):
        IndexConfig(chunk_tokens=16, chunk_overlap=16)
    with pytest.raises(ValueError, match="chunk_tokens must be None or a positive integer"):
        IndexConfig(chunk_tokens=0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        IndexConfig(chunk_tokens=True)
    with pytest.raises(ValueError, match="chunk_overlap must be a non-negative integer"):
        IndexConfig(chunk_tokens=16, chunk_overlap=-1)
    with pytest.raises(ValueError, match="chunk_overlap=4 needs chunk_tokens"):
        IndexConfig(chunk_overlap=4)
    assert not IndexConfig().chunked and IndexConfig(chunk_tokens=np.int64(8)).chunk_tokens == 8
    assert IndexConfig.from_dict(CFG.to_dict()) == CFG
    old = {k: v for k, v in IndexConfig().to_dict().items() if not k.startswith("chunk_")}
    assert IndexConfig.from_dict(old).chunk_tokens is None  # written before chunking: one row per document


def test_bad_inputs_name_the_field(encoder, index):
    too_long = encoder.document_budget + 1
    with pytest.raises(ValueError, match=f"chunk_tokens={too_long} exceeds the encoder's document budget"):
        Retriever.build(DOCS[:3], encoder=encoder, config=IndexConfig(chunk_tokens=too_long), show_progress=False)
    emb = encoder.encode_documents(["a b c", "d e"])
    with pytest.raises(ValueError, match="chunk_tokens=24 splits documents' texts into passages"):
        Retriever.build(emb, config=CFG, show_progress=False)
    with pytest.raises(ValueError, match="chunk_tokens"):
        Retriever.build(iter([(emb, ["a", "b"])]), config=CFG, show_progress=False)
    with pytest.raises(ValueError, match="chunk_tokens=24 .* token embeddings"):
        index.add(emb, ["x1", "x2"])
    with pytest.raises(ValueError, match="passages=True .*chunk_tokens"):
        Retriever.build(DOCS[:3], encoder=encoder, show_progress=False).search(["heart"], passages=True)


# -- build ---------------------------------------------------------------------------------------


def test_chunked_build_truncates_nothing(encoder, index, caplog):
    long_docs = DOCS[:12]
    with caplog.at_level(logging.INFO, logger="retriever.encoders.colbert"):
        Retriever.build(long_docs, encoder=encoder, show_progress=False)  # unchunked: truncated
        truncated = [rec.getMessage() for rec in caplog.records if "truncated" in rec.getMessage()]
        caplog.clear()
        r = Retriever.build(long_docs, encoder=encoder, config=CFG, show_progress=False)
        # windows as long as the encoder reads: a window cut inside a word ("as ##pi | ##rin") reads a token
        # more as a passage ("ri ##n"), and such a passage is split again rather than truncated
        full = Retriever.build(DOCS, encoder=encoder, config=IndexConfig(chunk_tokens=encoder.document_budget),
                               show_progress=False)
        assert not [rec.getMessage() for rec in caplog.records if "truncated" in rec.getMessage()]
    n_long = sum(_n_tokens(encoder, _source(d)) > encoder.document_budget for d in long_docs)
    assert n_long >= 6 and truncated == [f"{n_long} of 12 documents truncated to document_length={DOC_LENGTH} tokens"]
    # passages cover every character of every document, in order, each within chunk_tokens
    pm = index.passages
    assert index.n_docs == len(DOCS) and index.n_live_rows == pm.n_rows > len(DOCS)
    for d, head in zip(DOCS, pm.heads.tolist()):
        rows = pm.expand([head])
        spans = pm.spans[rows]
        src = _source(d)
        assert spans[0, 0] == 0 and spans[-1, 1] == len(src.rstrip())
        assert np.all(spans[1:, 0] <= spans[:-1, 1]) and np.all(spans[1:, 0] > spans[:-1, 0])  # overlapping windows
        assert list(pm.numbers[rows]) == list(range(rows.size)) and set(index.doc_ids[rows]) == {d["_id"]}
        assert all(_n_tokens(encoder, src[a:b]) <= 24 + 2 for a, b in spans)
    for d, head in zip(DOCS, full.passages.heads.tolist()):
        spans = full.passages.spans[full.passages.expand([head])]
        src = _source(d)
        assert spans[0, 0] == 0 and spans[-1, 1] == len(src)
        assert all(not src[b:a].strip() for a, b in zip(spans[1:, 0], spans[:-1, 1]))  # no gap but whitespace
        assert all(_n_tokens(encoder, src[a:b]) <= encoder.document_budget for a, b in spans)
    # the document store keeps every document once, at its first passage's row
    np.testing.assert_array_equal(index.documents.stored_rows(), pm.heads)
    assert r.n_docs == 12


# -- search --------------------------------------------------------------------------------------


def test_exhaustive_search_equals_the_maxp_reference(encoder, index):
    q = encoder.encode_queries(QUERIES)
    ref, tol = _maxp_reference(index, q)
    for k in (1, 5, 48, 60):
        res = index.search(q, k=k, mode="exact")
        got = _doc_of(index, res.rows)
        check_topk_with_ties(ref, got, res.scores, k, 2 * tol + 1e-5)
        assert res.passages.shape == (len(QUERIES), k) and not res.passage_hits
    # each document's passage is its best one: the passage's own score is the document's
    res = index.search(q, k=10, mode="exact")
    best = res.rows + res.passages
    decoded = index.codec.decode(np.asarray(index.tokens))
    for i in range(len(QUERIES)):
        qi = q.vectors[q.offsets[i]:q.offsets[i + 1]].astype(np.float64)
        for row, score in zip(best[i], res.scores[i]):
            d = decoded[index.doc_offsets[row]:index.doc_offsets[row + 1]].astype(np.float64)
            assert abs((qi @ d.T).max(1).sum() - score) < 1e-3


def test_pipeline_documents_are_unique_with_exact_maxp_scores(encoder, index, monkeypatch):
    q = encoder.encode_queries(QUERIES)
    ref, tol = _maxp_reference(index, q)
    for kw in ({}, {"mode": "fde", "n_candidates": 10}, {"mode": "fde"}):
        res = index.search(q, k=8, **kw)
        got = _doc_of(index, res.rows)
        for i in range(len(QUERIES)):
            assert np.unique(got[i]).size == 8 and list(res.ids[i]) == [DOCS[d]["_id"] for d in got[i]]
            np.testing.assert_array_less(np.abs(res.scores[i] - ref[i, got[i]]), 2 * tol[i, got[i]] + 1e-5)
            assert np.all(np.diff(res.scores[i]) <= 0)
    # a ranking that names too few documents goes deeper: k documents even from 1 passage at first
    monkeypatch.setattr(passages_mod, "first_depth", lambda k, *a: 1)
    res = index.search(q, k=20, mode="exact")
    check_topk_with_ties(ref, _doc_of(index, res.rows), res.scores, 20, 2 * tol + 1e-5)
    res = index.search(q, k=20, mode="fde", n_candidates=20)
    assert all(np.unique(r).size == 20 for r in res.rows)
    # hybrid (text queries, the default): unique documents, best first, each at its best fused passage: the
    # documents of the top passages, in order of their first passage, lead the document ranking
    text = index.search(QUERIES, k=10)
    passages = index.search(QUERIES, k=10, passages=True)
    for i in range(len(QUERIES)):
        assert len(set(text.ids[i])) == 10 and np.all(np.diff(text.scores[i]) <= 0)
        first = {}
        for doc_id, n, s in zip(passages.ids[i], passages.passages[i], passages.scores[i]):
            first.setdefault(doc_id, (n, s))
        lead = list(zip(text.ids[i], text.passages[i], text.scores[i]))[: len(first)]
        assert [(d, n) for d, n, _ in lead] == [(d, n) for d, (n, _) in first.items()]
        np.testing.assert_allclose([s for _, _, s in lead], [s for _, s in first.values()], atol=1e-5)


def test_passage_hits_carry_spans_and_their_text(encoder, index):
    q = encoder.encode_queries(QUERIES[:2])
    res = index.search(q, k=15, passages=True, mode="exact")
    assert res.passage_hits and res.rows.shape == (2, 15)
    decoded = index.codec.decode(np.asarray(index.tokens))
    ref, _ = maxsim_exhaustive_ref(q.vectors, q.offsets, decoded, index.doc_offsets)
    for i in range(2):  # the top passages of the exact passage ranking
        np.testing.assert_allclose(res.scores[i], np.sort(ref[i])[::-1][:15], atol=1e-3)
    by_id = {d["_id"]: d for d in DOCS}
    for hits in res.hits():  # a document may come back more than once
        for h in hits:
            a, b = h["span"]
            assert h["text"] == _source(by_id[h["id"]])[a:b]
            assert h["metadata"]["year"] == by_id[h["id"]]["year"] and h["title"] == (by_id[h["id"]]["title"] or None)
    docs = index.search(q, k=3, mode="exact").hits()
    for h in docs[0]:  # document hits: the whole stored text, and the best passage's span
        assert h["text"] == by_id[h["id"]]["text"] and h["span"][1] <= len(_source(by_id[h["id"]]))


def test_where_and_subset_select_documents(encoder, index):
    q = encoder.encode_queries(QUERIES)
    where = {"year": {"$gte": 2012}, "lang": "en"}
    ok = np.array([d["year"] >= 2012 and d["lang"] == "en" for d in DOCS])
    ref, tol = _maxp_reference(index, q, allowed_docs=ok)
    res = index.search(q, k=10, mode="exact", where=where)
    check_topk_with_ties(ref, _doc_of(index, res.rows), res.scores, 10, 2 * tol + 1e-5)
    neg = index.search(q, k=10, where={"lang": {"$ne": "en"}}, passages=True)  # a negation counts per document
    assert all(DOCS[d]["lang"] == "de" for d in _doc_of(index, neg.rows).ravel() if d >= 0)
    assert len({i for i in neg.ids.ravel() if i}) >= 2
    for res in (index.search(QUERIES, k=10, where=where), index.search(q, k=30, where=where, passages=True)):
        assert all(ok[d] for d in _doc_of(index, res.rows).ravel() if d >= 0)
    subset = ["d3", "d7", "d11"]
    res = index.search(q, k=5, subset=subset, mode="fde")
    assert all(set(x for x in row if x) == set(subset) for row in res.ids)
    res = index.search(q, k=50, subset=subset, passages=True)
    n_rows = sum(index.passages.counts(index.rows_of(subset)))
    assert all(sum(x is not None for x in row) == n_rows and set(x for x in row if x) == set(subset) for row in res.ids)


# -- lifecycle -----------------------------------------------------------------------------------


def test_save_load_gives_equal_results(tmp_path, encoder, index):
    path = tmp_path / "chunked"
    index.save(path)
    index.close()
    m = Retriever.verify(path)
    assert m["config"]["chunk_tokens"] == 24 and m["config"]["chunk_overlap"] == 6 and m["n_documents"] == len(DOCS)
    assert fmt.PASSAGES in m["files"] and m["n_docs"] == index.passages.n_rows
    q = encoder.encode_queries(QUERIES)
    for mmap in (True, False):
        loaded = Retriever.load(path, mmap=mmap, encoder=encoder)
        for kw in ({}, {"passages": True}, {"mode": "exact"}):
            a, b = index.search(q, k=7, **kw), loaded.search(q, k=7, **kw)
            np.testing.assert_array_equal(a.rows, b.rows)
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.spans, b.spans)
        assert loaded.search(QUERIES, k=5).hits() == index.search(QUERIES, k=5).hits()
    # a damaged map is named: passage numbers that skip, a document continued under another id
    bad = index.passages.array()
    bad[1, 0] = 5
    with pytest.raises(fmt.IndexFormatError, match="passage 5 after passage 0"):
        PassageMap.from_array(bad).check("passages.npy", index.doc_ids)
    ids = index.doc_ids.copy()
    ids[1] = "other"
    with pytest.raises(fmt.IndexFormatError, match="under another id"):
        index.passages.check("passages.npy", ids)


def test_add_upsert_delete_compact_act_on_whole_documents(tmp_path, encoder):
    r = Retriever.build(DOCS[:20], encoder=encoder, config=CFG, show_progress=False)
    long = " ".join(["insulin kidney"] * 120)
    r.add([{"_id": "new", "title": "Insulin", "text": long, "year": 2030}, ("short", "tea")])
    assert r.n_docs == 22
    new_rows = r.passages.expand(r.rows_of(["new"]))
    assert new_rows.size > 5 and set(r.doc_ids[new_rows]) == {"new"}
    hits = r.search(["insulin and the kidney"], k=3).hits()[0]
    assert hits[0]["id"] == "new" and hits[0]["text"] == long and hits[0]["metadata"] == {"year": 2030}
    # upsert: every old passage goes, the new ones come
    r.upsert([("new", "coffee " * 5)])
    assert r.deleted[new_rows].all() and r.n_docs == 22
    res = r.search(["insulin kidney"], k=30, passages=True, subset=["new"])
    assert [h["text"] for h in res.hits()[0]] == ["coffee coffee coffee coffee coffee "]
    with pytest.raises(ValueError, match="already in the index"):
        r.add([("d1", "x")])
    # delete: no passage of the document is found any more
    r.delete(["d1", "new"])
    assert r.n_docs == 20 and not r.deleted[r.passages.expand(r.rows_of(["d2"]))].any()
    for kw in ({}, {"passages": True, "k": 200}, {"mode": "exact", "k": 200}):
        res = r.search(["coffee sleep"], **{"k": 50, **kw})
        assert not {"d1", "new"} & set(res.ids[0])
    with pytest.raises(KeyError):
        r.delete(["d1"])
    before = r.search(["blood pressure"], k=10, mode="exact", hybrid=False)  # BM25 statistics change at compact
    removed = r.compact()
    assert removed > 2 and r.passages.n_rows == len(r.doc_ids) == r.n_live_rows
    after = r.search(["blood pressure"], k=10, mode="exact", hybrid=False)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_allclose(before.scores, after.scores, atol=1e-5)
    path = tmp_path / "changed"
    r.save(path)
    r.close()
    Retriever.verify(path)
    loaded = Retriever.load(path)
    np.testing.assert_array_equal(loaded.documents.stored_rows(), loaded.passages.heads)
    assert loaded.n_docs == 20
    assert loaded.search(["coffee"], k=50).ids.tolist() == r.search(["coffee"], k=50).ids.tolist()


def test_shards_equal_the_single_index(tmp_path, encoder, index):
    sr = ShardedRetriever.build(DOCS, n_shards=3, encoder=encoder, config=CFG, path=tmp_path / "s",
                                show_progress=False)
    assert sr.n_docs == len(DOCS)
    for s in sr.shards:  # every passage of a document in its document's shard
        assert s.passages is not None and set(s.doc_ids[s.passages.heads]) == set(s.doc_ids)
    q = encoder.encode_queries(QUERIES)
    for kw in ({"mode": "exact"}, {"mode": "exact", "passages": True}, {"mode": "exact", "where": {"lang": "de"}}):
        a, b = index.search(q, k=9, **kw), sr.search(q, k=9, **kw)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.passages, b.passages)
        np.testing.assert_array_equal(a.spans, b.spans)
    assert sr.search(q, k=9, mode="exact").hits() == index.search(q, k=9, mode="exact").hits()
    # hybrid across shards: documents once each, at their best passage; passages with their text
    res = sr.search(QUERIES, k=10)
    assert all(len(set(row)) == 10 for row in res.ids)
    by_id = {d["_id"]: d for d in DOCS}
    for h in sr.search(QUERIES[:1], k=10, passages=True).hits()[0]:
        assert h["text"] == _source(by_id[h["id"]])[h["span"][0]:h["span"][1]]
    sr.upsert([{"_id": "d5", "text": "statin liver " * 60}])
    sr.delete(["d6"])
    sr.save(tmp_path / "s")
    sr.close()
    ShardedRetriever.verify(tmp_path / "s")
    again = ShardedRetriever.load(tmp_path / "s")
    hits = again.search(["statin and the liver"], k=3, passages=True).hits()[0]
    assert hits[0]["id"] == "d5" and "d6" not in again.search(q, k=len(DOCS), mode="exact").ids


def test_cli_round_trip(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS[:16]), encoding="utf-8")
    out = tmp_path / "idx"
    assert cli_main(["-q", "index", "--corpus", str(corpus), "--out", str(out), "--chunk-tokens", "20",
                     "--chunk-overlap", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_docs"] == 16 and summary["n_passages"] > 16
    assert cli_main(["-q", "search", "--index", str(out), "--query", "blood pressure", "--k", "4", "--passages"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    r = Retriever.load(out)
    res = r.search(["blood pressure"], k=4, passages=True).hits()[0]
    assert len(lines) == 4
    for line, hit in zip(lines, res):
        qid, rank, doc_id, score, where, snippet = line.split("\t")
        assert doc_id == hit["id"] and where == f"passage {hit['passage']} [{hit['span'][0]}:{hit['span'][1]}]"
        assert float(score) == pytest.approx(hit["score"], abs=1e-4) and snippet[:20] == hit["text"][:20]
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES)))
    run = tmp_path / "run.trec"
    assert cli_main(["-q", "search", "--index", str(out), "--queries", str(queries), "--k", "5",
                     "--out", str(run)]) == 0
    rows = [line.split() for line in run.read_text().splitlines()]
    for qid in {x[0] for x in rows}:  # TREC runs list documents: each once per query
        docs = [x[2] for x in rows if x[0] == qid]
        assert len(docs) == len(set(docs)) == 5
    with pytest.raises(SystemExit, match="--passages prints passage hits"):
        cli_main(["-q", "search", "--index", str(out), "--queries", str(queries), "--out", str(run), "--passages"])
    assert cli_main(["verify", str(out)]) == 0
    assert "16 documents in" in capsys.readouterr().out
    assert cli_main(["-q", "index", "--corpus", str(corpus), "--out", str(tmp_path / "bad"), "--chunk-tokens", "8",
                     "--chunk-overlap", "8"]) == 2
    assert "chunk_overlap" in capsys.readouterr().err
    assert cli_main(["-q", "index", "--corpus", str(corpus), "--out", str(tmp_path / "bad"), "--chunk-tokens",
                     "100000"]) == 2
    assert "chunk_tokens=100000 exceeds" in capsys.readouterr().err


def _post(port: int, method: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_http_search_returns_passages(tmp_path, encoder):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from retriever.service.server import SearchService, create_app

    path = tmp_path / "served"
    small = Retriever.build(DOCS[:10], encoder=encoder, config=CFG, path=path, show_progress=False)
    small.close()
    service = SearchService(path, encoder=encoder)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        body = {"queries": ["coffee and sleep"], "k": 6, "passages": True, "documents": True}
        got = _post(port, "POST", "/search", body)["results"][0]
        want = small.search(["coffee and sleep"], k=6, passages=True).hits()[0]
        assert [(h["id"], h["passage"], h["span"], h["text"]) for h in got] == \
            [(h["id"], h["passage"], h["span"], h["text"]) for h in want]
        docs = _post(port, "POST", "/search", {"queries": ["coffee and sleep"], "k": 4})["results"][0]
        assert len({h["id"] for h in docs}) == 4 and all("passage" in h and "span" in h for h in docs)
        assert _post(port, "POST", "/documents", {"documents": [{"id": "z", "text": "tea " * 80}]})["n_docs"] == 11
        assert _post(port, "DELETE", "/documents", {"ids": ["d1"]})["n_docs"] == 10
    finally:
        server.should_exit = True
        thread.join(15)
        service.close()


def test_dataclass_results_merge_groups():
    """Results of query groups keep their passages and spans (``search_in_groups`` / CLI steps)."""
    from retriever.index.search import SearchResults, concat_results

    def one(v):
        return SearchResults(ids=np.array([["a"]], dtype=object), scores=np.array([[v]], np.float32),
                             rows=np.array([[0]]), passages=np.array([[1]]), spans=np.array([[[2, 9]]]),
                             passage_hits=True)

    both = concat_results([one(1.0), one(2.0)])
    assert both.passages.tolist() == [[1], [1]] and both.spans.shape == (2, 1, 2) and both.passage_hits
    assert dataclasses.replace(both, documents=None).scores.tolist() == [[1.0], [2.0]]

"""The document store and metadata filters: hits carry their document, filters match an independent
Python evaluation, bad filters are refused, and the store follows every change of the index."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lifecycle_util import CFG, make_docs, make_queries
from reference import filter_matches
from retriever.cluster.shards import ShardedRetriever
from retriever.index.documents import DOCUMENTS, DocumentRecord, DocumentStore, flatten_metadata
from retriever.index.filters import compile_filter
from retriever.index.format import IndexFormatError
from retriever.index.retriever import Retriever

REPO = Path(__file__).resolve().parents[1]
N = 160
WORDS = ["alpha", "beta", "gamma", "delta", "x'y", "a;b", ""]


def _meta(i: int, rng: random.Random) -> dict:
    m = {}
    if rng.random() < 0.8:
        m["year"] = rng.choice([rng.randint(1990, 2030), float(rng.randint(1990, 2030)) + 0.5])
    if rng.random() < 0.7:
        m["lang"] = rng.choice(["en", "de", "fr", None])
    if rng.random() < 0.6:
        m["tags"] = rng.sample(WORDS, rng.randint(0, 3))
    if rng.random() < 0.5:
        m["draft"] = rng.random() < 0.5
    if rng.random() < 0.5:
        m["src"] = {"name": rng.choice(["pubmed", "arxiv"]), "rank": rng.randint(0, 9)}
    if rng.random() < 0.2:
        m["mixed"] = rng.choice([1, "1", True, None, [1, "1"]])
    return m


METAS = [_meta(i, random.Random(i)) for i in range(N)]
IDS = [f"doc{i}" for i in range(N)]
DOCS = make_docs(N, seed=3)
TEXTS = [f"text of document {i}" for i in range(N)]


def _value(rng: random.Random):
    return rng.choice([rng.randint(1985, 2035), rng.randint(1990, 2030) + 0.5, "en", "de", "x'y", "a;b", "", True, False,
                       None, 1, "1", "pubmed", 5])


def _field_filter(rng: random.Random) -> dict:
    field = rng.choice(["year", "lang", "tags", "draft", "src.name", "src.rank", "mixed", "missing"])
    op = rng.choice(["bare", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"])
    if op == "bare":
        return {field: _value(rng)}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {field: {op: rng.choice([rng.randint(1985, 2035), rng.randint(0, 9) + 0.5, "en", "b", "pubmed"])}}
    if op in ("$in", "$nin"):
        return {field: {op: [_value(rng) for _ in range(rng.randint(1, 4))]}}
    if op == "$exists":
        return {field: {op: rng.random() < 0.5}}
    return {field: {op: _value(rng)}}


def _filter(rng: random.Random, depth: int = 0) -> dict:
    r = rng.random()
    if depth < 2 and r < 0.25:
        return {rng.choice(["$and", "$or", "$nor"]): [_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    f = _field_filter(rng)
    if rng.random() < 0.3:  # a second field: an implicit AND
        g = _field_filter(rng)
        if not set(g) & set(f):
            f.update(g)
    return f


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    w = DocumentStore.writer(d)
    w.append([DocumentRecord(i, t, None, t, m) for i, t, m in zip(IDS, TEXTS, METAS)])
    w.finish()
    return DocumentStore.open(d, N)


def test_generated_filters_match_an_independent_python_evaluation(store):
    rng = random.Random(20261205)
    n_checked, n_nonempty = 0, 0
    for _ in range(400):
        where = _filter(rng)
        want = np.array([filter_matches(m, where) for m in METAS])
        got = store.select(where)
        assert np.array_equal(got, want), (where, np.flatnonzero(got != want)[:5])
        n_checked += 1
        n_nonempty += bool(want.any()) and not want.all()
    assert n_checked >= 300 and n_nonempty >= 100  # the filters split the corpus, not all-or-nothing


@pytest.mark.parametrize("where,match", [
    ({"year": {"$regex": "x"}}, "unknown operator '\\$regex'"),
    ({"$where": "1"}, "unknown operator '\\$where'"),
    ({"year": {"$gt": True}}, "compares numbers or strings"),
    ({"year": {"$gt": None}}, "compares numbers or strings"),
    ({"year": {"$in": "2020"}}, "needs a list"),
    ({"year": {"$exists": 1}}, "true or false"),
    ({"year": [2020]}, "use \\{'\\$in'"),
    ({"year": {"$gte": float("nan")}}, "not a finite number"),
    ({"year": {"a": 1}}, "dotted path"),
    ({"$and": []}, "non-empty list"),
    ({"$or": {"a": 1}}, "non-empty list"),
    ({"": 1}, "non-empty strings"),
    ({"a..b": 1}, "empty path segment"),
    ({"year": {}}, "empty condition"),
    ({"year": object()}, "is not a string, number"),
    ([{"year": 1}], "a filter is a JSON object"),
])
def test_bad_filters_name_the_problem(store, where, match):
    with pytest.raises(ValueError, match=match):
        compile_filter(where)
    with pytest.raises(ValueError, match=match):
        store.select(where)


def test_injection_attempts_are_plain_values(tmp_path):
    w = DocumentStore.writer(tmp_path)
    w.append([DocumentRecord(i, t, None, t, m) for i, t, m in zip(IDS, TEXTS, METAS)])
    w.finish()
    before = (tmp_path / DOCUMENTS).read_bytes()
    s = DocumentStore.open(tmp_path, N)
    attacks = ["1; DROP TABLE documents; --", "' OR '1'='1", "year') OR 1=1 --", "x\" OR 1=1 --", "\x00"]
    for a in attacks:
        assert not s.select({"lang": a}).any()
        assert not s.select({a: 1}).any()
        assert s.select({"lang": {"$ne": a}}).all()
        assert not s.select({"tags": {"$in": [a, a + "'"]}}).any()
    assert s.select({"tags": "x'y"}).sum() == sum("x'y" in m.get("tags", []) for m in METAS) > 0
    s.close()
    assert (tmp_path / DOCUMENTS).read_bytes() == before
    s = DocumentStore.open(tmp_path, N)
    assert len([x for x in s.get(np.arange(N)) if x is not None]) == N


def test_metadata_values_are_checked():
    with pytest.raises(ValueError, match="not a finite number"):
        _check_meta({"score": float("inf")})
    with pytest.raises(ValueError, match="key 1 is not a non-empty string"):
        _check_meta({1: "x"})
    with pytest.raises(ValueError, match="is not JSON"):
        _check_meta({"when": object()})
    assert flatten_metadata({"a": {"b": [1, "x"]}, "c": None}) == [
        ("a", "object", None), ("a.b", "array", None), ("a.b", "num", 1), ("a.b", "text", "x"), ("c", "null", None)]


def _check_meta(m):
    from retriever.index.documents import check_metadata

    return check_metadata(m, "d0")


def _built(path=None, texts=True, **kw):
    return Retriever.build(DOCS, doc_ids=IDS, config=CFG, texts=TEXTS if texts else None, path=path,
                           show_progress=False, **kw)


def test_embeddings_with_texts_store_them_and_hits_carry_them(tmp_path):
    r = _built(tmp_path / "i")
    q = make_queries(3, seed=1)
    res = r.search(q, k=5)
    hits = res.hits()
    assert [[h["id"] for h in qh] for qh in hits] == [[i for i, _ in qh] for qh in res.to_list()]
    for qh in hits:
        for h in qh:
            assert h["text"] == TEXTS[IDS.index(h["id"])] and h["title"] is None and h["metadata"] == {}
    assert (tmp_path / "i" / DOCUMENTS).is_file()
    r.close()
    back = Retriever.load(tmp_path / "i")
    assert back.search(q, k=5).hits() == hits  # save -> load: the same hits, documents included
    Retriever.verify(tmp_path / "i")


def test_store_text_off_and_filters_need_a_store(tmp_path):
    r = _built(tmp_path / "i", texts=False)
    assert r.documents is None and not (tmp_path / "i" / DOCUMENTS).exists()
    assert set(r.search(make_queries(1, seed=1), k=2).hits()[0][0]) == {"id", "score"}
    with pytest.raises(ValueError, match="no document store"):
        r.search(make_queries(1, seed=1), k=2, where={"a": 1})


def _text_docs(n=N):
    return [{"_id": IDS[i], "title": f"title {i}", "text": TEXTS[i], **METAS[i]} for i in range(n)]


@pytest.fixture(scope="module")
def encoder():
    from retriever.encoders.colbert import ColBERTEncoder

    return ColBERTEncoder.from_pretrained(str(REPO / "tests" / "fixtures" / "encoder" / "bert_stanford"), dtype="float32")


@pytest.fixture(scope="module")
def text_index(tmp_path_factory, encoder):
    p = tmp_path_factory.mktemp("text") / "idx"
    Retriever.build(_text_docs(), encoder=encoder, config=CFG, path=p, show_progress=False).close()
    return p


def test_filtered_search_equals_the_exact_ranking_filtered(text_index, encoder):
    r = Retriever.load(text_index, encoder=encoder)
    queries = ["document 7", "text of", "title 12 text"]
    full = r.search(queries, k=N, mode="exact", hybrid=False)
    rng = random.Random(7)
    for _ in range(40):
        where = _filter(rng)
        keep = {IDS[i] for i in range(N) if filter_matches(METAS[i], where)}
        for mode in ("exact", "auto"):
            res = r.search(queries, k=10, where=where, mode=mode, hybrid=False)
            for qi in range(len(queries)):
                want = [i for i in full.ids[qi] if i in keep][:10]
                got = [i for i in res.ids[qi] if i is not None]
                assert got == want, (where, mode)


def test_the_store_follows_add_upsert_delete_compact(text_index, encoder, tmp_path):
    import shutil

    p = tmp_path / "idx"
    shutil.copytree(text_index, p)
    r = Retriever.load(p, encoder=encoder)
    r.add([{"_id": "new1", "title": "fresh", "text": "a new text", "year": 3000}])
    r.upsert([{"_id": IDS[0], "text": "replaced text", "year": 3001}])
    r.delete([IDS[1]])
    assert r.search(["new text"], k=3, where={"year": {"$gte": 3000}}).hits()[0][0]["metadata"]["year"] in (3000, 3001)
    assert set(r.search(["text"], k=5, where={"year": {"$gte": 3000}}).to_list()[0][i][0] for i in range(2)) == \
        {"new1", IDS[0]}
    r.save(p)
    r.close()
    back = Retriever.load(p, encoder=encoder)
    Retriever.verify(p)
    doc0 = back.search(["replaced text"], k=1, where={"year": 3001}).hits()[0][0]
    assert doc0["id"] == IDS[0] and doc0["text"] == "replaced text" and doc0["title"] is None
    assert IDS[1] not in back.search(["text"], k=N, where={}).ids.tolist()[0]
    before = back.search(["text of document"], k=20, where={"lang": "en"}, hybrid=False).hits()
    back.compact()
    assert back.search(["text of document"], k=20, where={"lang": "en"}, hybrid=False).hits() == before  # renumbered rows
    back.save(p)
    back.close()
    again = Retriever.load(p, encoder=encoder)
    assert again.search(["text of document"], k=20, where={"lang": "en"}, hybrid=False).hits() == before
    assert again.documents.n_rows == again.n_docs == N  # +1 new, 1 deleted, the replaced one compacted away
    Retriever.verify(p)


def test_sharded_hits_and_filters_equal_the_single_index(text_index, encoder, tmp_path):
    single = Retriever.load(text_index, encoder=encoder)
    sr = ShardedRetriever.build(_text_docs(), n_shards=3, encoder=encoder, config=CFG, path=tmp_path / "s",
                                show_progress=False)
    for where in ({"lang": "en"}, {"year": {"$lt": 2005}}, {"$or": [{"draft": True}, {"tags": "beta"}]}):
        a = single.search(["text of document 3"], k=10, where=where, mode="exact", hybrid=False)
        b = sr.search(["text of document 3"], k=10, where=where, mode="exact", hybrid=False)
        assert [h["id"] for h in a.hits()[0]] == [h["id"] for h in b.hits()[0]]
        assert [h["text"] for h in a.hits()[0]] == [h["text"] for h in b.hits()[0]]
        assert [h["metadata"] for h in a.hits()[0]] == [h["metadata"] for h in b.hits()[0]]
    sr.close()
    assert all((tmp_path / "s" / f"shard-{s:04d}" / DOCUMENTS).is_file() for s in range(3))


def test_a_damaged_store_is_found(text_index, tmp_path):
    import shutil

    p = tmp_path / "idx"
    shutil.copytree(text_index, p)
    data = bytearray((p / DOCUMENTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (p / DOCUMENTS).write_bytes(bytes(data))
    with pytest.raises(IndexFormatError):
        Retriever.verify(p)


def test_cli_store_where_add_delete(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in _text_docs(40)))
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "extra", "title": "Extra", "text": "an extra document text", "year": 2999}) + "\n")
    model = str(REPO / "tests" / "fixtures" / "encoder" / "bert_stanford")
    idx = tmp_path / "idx"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "retriever", "-q", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=600)

    assert cli("index", "--corpus", str(corpus), "--out", str(idx), "--model", model).returncode == 0
    out = cli("search", "--index", str(idx), "--query", "text of document 4", "--k", "3",
              "--where", '{"year": {"$gte": 2000}}')
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(lines) == 3 and all(len(f) == 5 and f[4].startswith("title ") for f in lines)
    assert all(METAS[IDS.index(f[2])].get("year", 0) >= 2000 for f in lines)
    bad = cli("search", "--index", str(idx), "--query", "x", "--where", '{"year": {"$near": 1}}')
    assert bad.returncode != 0 and "unknown operator '$near'" in bad.stderr
    assert cli("add", "--index", str(idx), "--corpus", str(more)).returncode == 0
    hit = cli("search", "--index", str(idx), "--query", "an extra document", "--k", "1", "--where", '{"year": 2999}')
    assert hit.stdout.split("\t")[2] == "extra" and "Extra an extra document text" in hit.stdout
    gone = cli("delete", "--index", str(idx), "--id", "extra", "--id", IDS[0])
    assert gone.returncode == 0 and json.loads(gone.stdout)["deleted"] == 2
    unknown = cli("delete", "--index", str(idx), "--id", "nope")
    assert unknown.returncode != 0 and "nope" in unknown.stderr
    r = Retriever.load(idx)
    assert "extra" not in r.doc_ids[r.deleted == 0].tolist() and r.n_docs == 39
    Retriever.verify(idx)

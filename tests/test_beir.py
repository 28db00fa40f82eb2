"""BEIR readers on tiny hand-made collections and on the real data, and the downloader against a
local HTTP server (never the internet)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import pathlib
import stat
import threading
import zipfile

import pytest

from retriever.core.beir import (
    BeirDataset,
    DownloadError,
    doc_text,
    download_beir,
    iter_corpus,
    load_beir,
    read_qrels,
    read_queries,
)

from conftest import require_beir

CORPUS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever.", "metadata": {}},
    {"_id": "d0", "title": "", "text": "No title here.", "metadata": {"x": 1}},
    {"_id": "d2", "text": "Title key missing.", "metadata": {}},
    {"_id": "d3", "title": "Ünïcode", "text": "résumé", "metadata": {}},
]
QUERIES = [
    {"_id": "q1", "text": "does aspirin reduce fever", "metadata": {}},
    {"_id": "q2", "text": "untitled document", "metadata": {}},
    {"_id": "q3", "text": "a query without judgments", "metadata": {}},
]
QRELS_TEST = "query-id\tcorpus-id\tscore\r\nq1\td1\t2\r\nq1\td3\t0\r\nq2\td0\t1\r\n"


def jsonl(objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def make_collection(root: pathlib.Path, *, gz: bool = False, corpus: str | None = None,
                    queries: str | None = None, qrels: str = QRELS_TEST) -> pathlib.Path:
    root.mkdir(parents=True)
    body = jsonl(CORPUS) if corpus is None else corpus
    if gz:
        with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(body)
    else:
        (root / "corpus.jsonl").write_text(body, encoding="utf-8")
    (root / "queries.jsonl").write_text(jsonl(QUERIES) if queries is None else queries, encoding="utf-8")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_bytes(qrels.encode())
    (root / "qrels" / "train.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq3\td2\t1\n")
    return root


# -- readers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_beir_tiny(tmp_path, gz):
    root = make_collection(tmp_path / "tiny", gz=gz)
    ds = load_beir(root)
    assert isinstance(ds, BeirDataset) and ds.name == "tiny"
    assert list(ds.corpus) == ["d1", "d0", "d2", "d3"]  # file order
    assert ds.corpus["d2"] == {"title": "", "text": "Title key missing."}
    assert ds.corpus["d3"] == {"title": "Ünïcode", "text": "résumé"}
    assert ds.queries == {"q1": "does aspirin reduce fever", "q2": "untitled document"}
    assert ds.qrels == {"q1": {"d1": 2, "d3": 0}, "q2": {"d0": 1}}  # CRLF stripped, grades kept
    assert "4 docs" in repr(ds) and "Aspirin" not in repr(ds)
    assert load_beir(root, "train").queries == {"q3": "a query without judgments"}
    everything = load_beir(str(root), split=None)
    assert list(everything.queries) == ["q1", "q2", "q3"] and everything.qrels == {}
    with pytest.raises(dataclasses_frozen_error()):
        ds.name = "other"


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_iter_corpus_streams_and_accepts_file_path(tmp_path):
    root = make_collection(tmp_path / "c", corpus=jsonl(CORPUS[:2]) + "{broken\n")
    it = iter_corpus(root / "corpus.jsonl")
    first = next(it)  # every other field of the line (here BEIR's "metadata" object) is kept: the metadata
    assert first == {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever.",
                     **{k: v for k, v in CORPUS[0].items() if k not in ("_id", "title", "text")}}
    assert next(it)["_id"] == "d0"
    with pytest.raises(ValueError, match=r"corpus\.jsonl:3: invalid JSON"):
        next(it)


def test_corpus_prefers_plain_over_gz_and_skips_blank_lines(tmp_path):
    root = make_collection(tmp_path / "c", corpus="\n" + jsonl(CORPUS[:1]) + "\r\n")
    with gzip.open(root / "corpus.jsonl.gz", "wt") as f:
        f.write(jsonl(CORPUS))
    assert [d["_id"] for d in iter_corpus(root)] == ["d1"]


def test_doc_text():
    assert doc_text({"title": "T", "text": "body"}) == "T body"
    assert doc_text({"title": "", "text": "body"}) == "body"
    assert doc_text({"text": "body "}) == "body"
    assert doc_text({"title": None, "text": "body"}) == "body"
    assert doc_text({"title": "Only title", "text": ""}) == "Only title"


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"title": "t", "text": "x"}', "missing '_id'"),
        ('{"_id": "", "text": "x"}', "'_id' must be a non-empty string"),
        ('{"_id": 1.5, "text": "x"}', "'_id' must be a non-empty string"),
        ('{"_id": "z", "text": 3}', "'text' must be a string"),
        ('{"_id": "z", "title": ["a"], "text": "x"}', "'title' must be a string"),
        ('{"_id": "z", "title": "t"}', "missing 'text'"),
        ('{"_id": "d1", "text": "again"}', r"duplicate document id 'd1' \(first on line 1\)"),
    ],
)
def test_corpus_malformed_lines(tmp_path, line, match):
    root = make_collection(tmp_path / "c", corpus=jsonl(CORPUS[:2]) + line + "\n")
    with pytest.raises(ValueError, match=match) as err:
        list(iter_corpus(root))
    assert "corpus.jsonl:3:" in str(err.value)


def test_integer_ids_become_strings(tmp_path):
    root = make_collection(tmp_path / "c", corpus='{"_id": 7, "text": "x"}\n')
    assert list(iter_corpus(root)) == [{"_id": "7", "title": "", "text": "x"}]


def test_queries_malformed(tmp_path):
    root = make_collection(tmp_path / "c", queries=jsonl(QUERIES) + '{"_id": "q9"}\n')
    with pytest.raises(ValueError, match=r"queries\.jsonl:4: missing 'text'"):
        read_queries(root)
    root2 = make_collection(tmp_path / "c2", queries=jsonl(QUERIES + QUERIES[:1]))
    with pytest.raises(ValueError, match=r"queries\.jsonl:4: duplicate query id 'q1'"):
        read_queries(root2 / "queries.jsonl")


@pytest.mark.parametrize(
    "row, match",
    [
        ("q1\td9", "expected 3 tab-separated fields"),
        ("q1\td9\t1\textra", "expected 3 tab-separated fields"),
        ("q1 d9 1", "expected 3 tab-separated fields"),
        ("q1\td9\t1.0", "score must be an integer"),
        ("q1\td9\thigh", "score must be an integer"),
        ("\td9\t1", "empty query or corpus id"),
        ("q1\td1\t1", "judged twice with different scores"),
    ],
)
def test_qrels_malformed_rows(tmp_path, row, match):
    path = tmp_path / "test.tsv"
    path.write_bytes((QRELS_TEST + row + "\r\n").encode())
    with pytest.raises(ValueError, match=match) as err:
        read_qrels(path)
    assert "test.tsv:5:" in str(err.value)


def test_qrels_without_header_lf_negative_and_repeated(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("q1\td1\t1\nq1\td2\t-1\nq1\td1\t1\n\nq2\td1\t0\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": -1}, "q2": {"d1": 0}}
    # A header anywhere but line 1 is a malformed row.
    path.write_text("q1\td1\t1\nquery-id\tcorpus-id\tscore\n")
    with pytest.raises(ValueError, match="q.tsv:2: score must be an integer"):
        read_qrels(path)


def test_missing_files_list_what_was_looked_for(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=r"corpus\.jsonl, .*corpus\.jsonl\.gz"):
        list(iter_corpus(root))
    with pytest.raises(FileNotFoundError, match=r"queries\.jsonl"):
        read_queries(root)
    with pytest.raises(FileNotFoundError, match=r"qrels.*test\.tsv"):
        load_beir(root)
    with pytest.raises(FileNotFoundError, match="directory not found"):
        load_beir(tmp_path / "nope")
    full = make_collection(tmp_path / "full")
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv"):
        load_beir(full, "dev")


def test_load_beir_drops_qrels_queries_without_text(tmp_path, caplog):
    root = make_collection(tmp_path / "c", qrels=QRELS_TEST + "q404\td1\t1\r\nq1\tghost\t1\r\n")
    with caplog.at_level("WARNING", logger="retriever.core.beir"):
        ds = load_beir(root)
    assert "q404" not in ds.qrels and set(ds.queries) == {"q1", "q2"}
    assert ds.qrels["q1"] == {"d1": 2, "d3": 0, "ghost": 1}  # kept: it is a relevant judgment
    assert "not in queries.jsonl" in caplog.text and "not in the corpus" in caplog.text


@pytest.mark.parametrize(
    "name, n_docs, split_counts",
    [
        ("scifact", 5183, {"test": (300, 339), "train": (809, 919)}),
        ("nfcorpus", 3633, {"test": (323, 12334), "dev": (324, 11385)}),
    ],
)
def test_real_collections(name, n_docs, split_counts):
    root = require_beir(name)
    for split, (n_q, n_judgments) in split_counts.items():
        ds = load_beir(root, split)
        assert len(ds.corpus) == n_docs
        assert len(ds.queries) == len(ds.qrels) == n_q
        assert sum(len(j) for j in ds.qrels.values()) == n_judgments
        ids = [d for j in ds.qrels.values() for d in j] + list(ds.qrels)
        assert not any("\r" in i or " " in i for i in ids)
        assert all(d in ds.corpus for j in ds.qrels.values() for d in j)
    if name == "scifact":
        assert next(iter(ds.corpus)) == "4983"  # file order
        assert all(t for t in ds.queries.values())
    else:
        grades = {g for j in ds.qrels.values() for g in j.values()}
        assert grades == {1, 2}  # graded relevance survives


# -- downloader -------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.hits.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.hits = {}, []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def collection_members(prefix: str = "tiny/") -> dict[str, bytes]:
    return {
        prefix + "corpus.jsonl": jsonl(CORPUS).encode(),
        prefix + "queries.jsonl": jsonl(QUERIES).encode(),
        prefix + "qrels/test.tsv": QRELS_TEST.encode(),
    }


def assert_cache_clean(cache: pathlib.Path):
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_happy_path_then_cached(server, tmp_path, capsys):
    body = make_zip(collection_members())
    server.files["/tiny.zip"] = body
    cache = tmp_path / "cache"
    path = download_beir("tiny", cache, f"{server.base}/tiny.zip", sha256=hashlib.sha256(body).hexdigest().upper())
    assert path == cache / "tiny"
    assert sorted(p.name for p in cache.iterdir()) == ["tiny"]  # no temp files, archive removed
    ds = load_beir(path)
    assert len(ds.corpus) == 4 and ds.qrels["q1"] == {"d1": 2, "d3": 0}
    assert server.hits == ["/tiny.zip"]
    assert download_beir("tiny", cache, f"{server.base}/tiny.zip", progress=False) == path
    assert server.hits == ["/tiny.zip"]  # reused, server not hit again


def test_download_env_overrides(server, tmp_path, monkeypatch):
    server.files["/mirror/tiny.zip"] = make_zip(collection_members())
    monkeypatch.setenv("RETRIEVER_BEIR_URL", server.base + "/mirror/")
    monkeypatch.setenv("RETRIEVER_CACHE", str(tmp_path / "rc"))
    path = download_beir("tiny", progress=False)
    assert path == tmp_path / "rc" / "beir" / "tiny"
    assert (path / "qrels" / "test.tsv").is_file()
    assert server.hits == ["/mirror/tiny.zip"]


def test_download_archive_with_files_at_root(server, tmp_path):
    server.files["/flat.zip"] = make_zip(collection_members(prefix=""))
    path = download_beir("flat", tmp_path / "cache", f"{server.base}/flat.zip", progress=False)
    assert path == tmp_path / "cache" / "flat"
    assert len(load_beir(path).corpus) == 4
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["flat"]


def test_download_sha256_mismatch(server, tmp_path):
    server.files["/tiny.zip"] = make_zip(collection_members())
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256 mismatch"):
        download_beir("tiny", cache, f"{server.base}/tiny.zip", sha256="0" * 64, progress=False)
    assert_cache_clean(cache)


def test_download_corrupt_zip(server, tmp_path):
    good = bytearray(make_zip({"tiny/corpus.jsonl": b"A" * 5000}))
    # Flip bytes inside the compressed data of the only member (after its 30 + 17 byte local header).
    for i in range(60, 70):
        good[i] ^= 0xFF
    server.files["/tiny.zip"] = bytes(good)
    server.files["/html.zip"] = b"<html>not a zip</html>"
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="corrupt: CRC check failed"):
        download_beir("tiny", cache, f"{server.base}/tiny.zip", progress=False)
    with pytest.raises(ValueError, match="not a valid zip"):
        download_beir("html", cache, f"{server.base}/html.zip", progress=False)
    assert_cache_clean(cache)


@pytest.mark.parametrize(
    "members, symlinks, match",
    [
        ({"tiny/corpus.jsonl": b"{}", "../evil": b"pwned"}, None, r"'\.\.' path component"),
        ({"tiny/../../evil": b"pwned"}, None, r"'\.\.' path component"),
        ({"tiny/corpus.jsonl": b"{}", "ABS": b"pwned"}, None, "absolute path"),
        ({"C:/evil": b"pwned"}, None, "absolute path"),
        ({"tiny/corpus.jsonl": b"{}"}, {"tiny/queries.jsonl": "/etc/passwd"}, "symbolic link"),
    ],
)
def test_download_rejects_unsafe_members(server, tmp_path, members, symlinks, match):
    outside = tmp_path / "evil_target"
    members = {(str(outside) if k == "ABS" else k): v for k, v in members.items()}
    body = make_zip(members, symlinks)
    assert any(n.startswith(("/", "..", "tiny/..", "C:")) or symlinks for n in zipfile.ZipFile(io.BytesIO(body)).namelist())
    server.files["/tiny.zip"] = body
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ValueError, match="unsafe zip member " + "(.|\n)*" + match):
        download_beir("tiny", cache, f"{server.base}/tiny.zip", progress=False)
    assert not outside.exists()
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert_cache_clean(cache)


def test_download_404(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download_beir("missing", cache, f"{server.base}/missing.zip", progress=False)
    assert isinstance(err.value, OSError)
    assert_cache_clean(cache)


def test_download_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens on this port now
    with pytest.raises(DownloadError, match="failed"):
        download_beir("x", tmp_path / "cache", f"http://127.0.0.1:{port}/x.zip", progress=False)
    assert_cache_clean(tmp_path / "cache")


def test_download_resumes_from_verified_archive(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.zip").write_bytes(make_zip(collection_members()))  # left by an interrupted run
    path = download_beir("tiny", cache, f"{server.base}/tiny.zip", progress=False)
    assert server.hits == [] and len(load_beir(path).corpus) == 4
    assert [p.name for p in cache.iterdir()] == ["tiny"]
    # A broken leftover is discarded and downloaded again.
    (cache / "other.zip").write_bytes(b"garbage")
    server.files["/other.zip"] = make_zip(collection_members("other/"))
    assert download_beir("other", cache, f"{server.base}/other.zip", progress=False) == cache / "other"
    assert server.hits == ["/other.zip"]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "sci fact", None])
def test_download_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        download_beir(name, tmp_path)

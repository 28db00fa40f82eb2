"""Property-based bad-input tests (hypothesis) over the public API and the loaders.

Every generated call must end in a result or in a ValueError/TypeError/KeyError naming the problem.
Each property carries an independent oracle of what is valid, so a call that succeeds on bad
input (a silent wrong answer) fails as surely as one that rejects good input or crashes. A
failing call must leave the index exactly as it was, in memory and on disk.
Example counts are small and derandomised (the test machine has two shared cores).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lifecycle_util import CFG, DIM, build, damaged_copy, dir_state, make_docs, make_queries, state_of
from retriever.core import beir
from retriever.index import format as fmt
from retriever.index.retriever import MAX_K, Retriever
from retriever.index.search import auto_n_candidates

SETTINGS = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
FEW = settings(SETTINGS, max_examples=20)
ERRORS = (ValueError, TypeError, KeyError)
BASE_DOCS = make_docs(12, seed=41)
BASE_IDS = [f"b{i}" for i in range(12)]
QUERIES = make_queries(3, seed=42)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("prop") / "idx"
    r = build(BASE_DOCS, BASE_IDS)
    r.delete(["b3"])
    r.save(d)
    return d


# -- strategies -------------------------------------------------------------------------------------

_FLOATS = st.one_of(st.floats(-2.0, 2.0, width=32), st.sampled_from([0.0, -0.0, 65504.0, 65520.0, 1e6, -1e30,
                                                                     np.nan, np.inf, -np.inf, 1e-45]))


@st.composite
def token_array(draw):
    """Mostly plausible (n, DIM) arrays, with every kind of damage mixed in."""
    dtype = draw(st.sampled_from(["float32"] * 6 + ["float16", "float64", "int32", "bool", "complex64"]))
    kind = draw(st.sampled_from(["ok"] * 10 + ["empty", "wrong_dim", "1d", "3d", "zero_dim"]))
    n = draw(st.integers(1, 5))
    shape = {"ok": (n, DIM), "empty": (0, DIM), "wrong_dim": (n, draw(st.sampled_from([1, DIM - 1, DIM + 1]))),
             "1d": (DIM,), "3d": (1, n, DIM), "zero_dim": (n, 0)}[kind]
    if dtype in ("int32", "bool"):
        return draw(hnp.arrays(dtype, shape))
    base = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    arr = base.astype(dtype)
    if draw(st.integers(0, 2)) == 0 and arr.size:  # poke a few special values in
        flat = arr.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(_FLOATS)
    return arr


def array_is_valid(a, store: bool = True, dim: int | None = DIM) -> bool:
    """What build/add accept: a 2-D floating array of dim ``dim`` (any >= 1 when None), >= 1 token, finite in
    float32 and (for the float16 token store, ``store``) in float16. Queries only need float32."""
    a = np.asarray(a)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating) or a.shape[0] == 0 or a.shape[1] == 0:
        return False
    if dim is not None and a.shape[1] != dim:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = a.astype(np.float32)
        return bool(np.isfinite(f32).all() and (not store or np.isfinite(f32.astype(np.float16)).all()))


_ID = st.one_of(
    st.text(min_size=0, max_size=6),
    st.sampled_from(["b0", "b3", "b5", "new", "new", " x", "x ", "a\nb", "a\rb", "\ud800", "é", "\t", "0"]),
    st.integers(-3, 2**64),
    st.sampled_from([None, 1.5, b"b0", True, ("t",), np.int64(4), np.str_("npstr")]),
)


def str_ids_valid(ids: list, n_docs: int, live: set, replace: bool) -> bool:
    if len(ids) != n_docs:
        return False
    seen = set()
    for i in ids:
        if not isinstance(i, str) or not i or i != i.strip() or "\n" in i or "\r" in i:
            return False
        try:
            i.encode("utf-8")
        except UnicodeEncodeError:
            return False
        if i in seen or (i in live and not replace):
            return False
        seen.add(i)
    return True


# -- add / upsert -------------------------------------------------------------------------------------


@st.composite
def doc_ids_for(draw, n: int, existing: list):
    """Ids for n documents: mostly well-formed (new, or reusing existing ones), else anything."""
    how = draw(st.sampled_from(["new", "new", "reuse", "random", "none"]))
    if how == "none":
        return None
    if how == "random":
        return draw(st.lists(_ID, max_size=4))
    ids = [f"n{j}" for j in range(n)]
    if how == "reuse":
        ids[draw(st.integers(0, n - 1))] = draw(st.sampled_from(existing))
    return ids


@SETTINGS
@given(arrays=st.lists(token_array(), min_size=1, max_size=3), data=st.data(), replace=st.booleans())
def test_add_random_documents_and_ids(saved_dir, arrays, data, replace):
    r = Retriever.load(saved_dir)
    before, disk = state_of(r), dir_state(saved_dir)
    live = set(r.doc_ids[r.deleted == 0].tolist())
    call_ids = data.draw(doc_ids_for(len(arrays), BASE_IDS))
    shapes_ok = all(array_is_valid(a) for a in arrays)
    valid = shapes_ok and call_ids is not None and str_ids_valid(call_ids, len(arrays), live, replace)
    method = r.upsert if replace else r.add
    event("valid" if valid else "invalid")
    try:
        method(arrays, call_ids)
    except ERRORS as e:
        assert not valid, f"valid input rejected: {e!r}"
        assert str(e), "errors must say what is wrong"
        assert state_of(r) == before, "a failing call changed the index"
    else:
        assert valid, "bad input accepted"
        n_new = len(arrays)
        assert r.n_docs == before["n_docs"] + n_new - (len(set(call_ids) & live) if replace else 0)
        for a, i in zip(arrays, call_ids):  # each new document is stored as given (float16) and found
            q = np.asarray(a, dtype=np.float32)
            res = r.search(q, k=1, mode="exact", subset=[i])
            d16 = q.astype(np.float16).astype(np.float64)
            ref = (q.astype(np.float64) @ d16.T).max(axis=1).sum()
            assert res.ids[0, 0] == i and np.isclose(res.scores[0, 0], ref, rtol=1e-3, atol=1e-3)
    assert dir_state(saved_dir) == disk, "add/upsert touched the saved directory"


@FEW
@given(arrays=st.lists(token_array(), min_size=1, max_size=3), data=st.data())
def test_build_random_documents_and_ids(arrays, data):
    n = len(arrays)
    dims = {np.asarray(a).shape[-1] for a in arrays}
    valid_docs = len(dims) == 1 and all(array_is_valid(a, dim=None) for a in arrays)
    how = data.draw(st.sampled_from(["none", "str", "int", "random", "padded"]))
    ids = {"none": None, "str": [f"s{j}" for j in range(n)], "int": [7 * j for j in range(n)]}.get(how)
    if how in ("random", "padded"):
        ids = data.draw(st.lists(_ID, min_size=1, max_size=3))
        if how == "padded":  # as many ids as documents, repeating the drawn ones (duplicates likely)
            ids = (ids * n)[:n]
    kinds = {"int" if isinstance(i, (int, np.integer)) and not isinstance(i, bool) else
             "str" if isinstance(i, str) else "bad" for i in (ids if ids is not None else range(n))}
    if ids is None:
        valid_ids = True
    elif kinds == {"int"}:
        valid_ids = all(0 <= i < 2**63 for i in ids) and len({int(i) for i in ids}) == n
    else:
        valid_ids = kinds == {"str"} and str_ids_valid(ids, n, set(), False)
    event("valid" if valid_docs and valid_ids else "invalid")
    try:
        r = Retriever.build(arrays, doc_ids=ids, config=CFG, show_progress=False)
    except ERRORS as e:
        assert not (valid_docs and valid_ids), f"valid input rejected: {e!r}"
    else:
        assert valid_docs and valid_ids, "bad input accepted"
        assert r.n_docs == n


# -- delete -----------------------------------------------------------------------------------------


@SETTINGS
@given(ids=st.one_of(st.lists(st.sampled_from(BASE_IDS), max_size=4), st.lists(_ID, max_size=5), _ID))
def test_delete_random_ids(saved_dir, ids):
    r = Retriever.load(saved_dir)
    before = state_of(r)
    live = set(r.doc_ids[r.deleted == 0].tolist())
    is_list = isinstance(ids, list)
    valid = is_list and all(isinstance(i, str) and i in live for i in ids)
    event("valid" if valid else "invalid")
    try:
        r.delete(ids)
    except ERRORS as e:
        assert not valid, f"valid delete rejected: {e!r}"
        assert state_of(r) == before
        if is_list and all(isinstance(i, (str, int, np.integer)) and not isinstance(i, bool) for i in ids):
            assert isinstance(e, KeyError)
            for i in ids:
                if i not in live:
                    assert repr(i.item() if isinstance(i, np.generic) else i) in e.args[0]
                    break
    else:
        assert valid
        assert r.n_docs == before["n_docs"] - len(set(ids))
        res = r.search(QUERIES, k=20, mode="exact")
        assert not set(res.ids.ravel().tolist()) & set(ids)


# -- search knobs -----------------------------------------------------------------------------------

_KNOB = st.one_of(st.none(), st.integers(-3, 40),
                  st.sampled_from([10**6, MAX_K, 2.0, 1.5, True, False, "5", "auto", np.int64(3)]))


@SETTINGS
@given(k=_KNOB, n_candidates=_KNOB, mode=st.sampled_from(["auto", "fde", "exact", "approx", None]),
       subset=st.one_of(st.none(), st.lists(st.sampled_from(BASE_IDS + ["zz", 4]), max_size=6)))
def test_search_knobs(saved_dir, k, n_candidates, mode, subset):
    r = Retriever.load(saved_dir)
    is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa: E731
    live = set(r.doc_ids[r.deleted == 0].tolist())
    valid = (is_int(k) and 1 <= k <= MAX_K and mode in (None, "auto", "fde", "exact")
             and (n_candidates in (None, "auto") or (is_int(n_candidates) and n_candidates >= k))
             and (subset is None or all(isinstance(i, str) and i in live for i in subset)))
    kw = {"k": k, "n_candidates": n_candidates, "subset": subset}
    if mode is not None:
        kw["mode"] = mode
    event("valid" if valid else "invalid")
    try:
        res = r.search(QUERIES, **kw)
    except ERRORS as e:
        assert not valid, f"valid search rejected: {e!r}"
        assert str(e)
        return
    assert valid, "bad knobs accepted"
    allowed = live if subset is None else set(subset)
    n_hits = min(int(k), len(allowed))
    assert res.ids.shape == (len(QUERIES), int(k))
    assert np.all(np.diff(res.scores[:, :n_hits], axis=1) <= 0)
    assert np.all(res.rows[:, n_hits:] == -1) and np.all(np.isneginf(res.scores[:, n_hits:]))
    assert all(set(row[:n_hits]) <= allowed for row in res.ids.tolist())
    exact = r.search(QUERIES, k=int(k), mode="exact", subset=subset)
    n_eff = auto_n_candidates(len(allowed), int(k)) if n_candidates in (None, "auto") else n_candidates
    if mode == "exact" or n_eff >= len(allowed):  # scored exactly
        np.testing.assert_array_equal(res.scores, exact.scores)
    else:  # FDE candidates: never better than exact, and the best FDE hit is a real score
        assert np.all(res.scores[:, :1] <= exact.scores[:, :1])


@SETTINGS
@given(queries=st.one_of(token_array(), st.lists(token_array(), min_size=1, max_size=3),
                         st.sampled_from([[], "", [np.ones((2, DIM), np.float32), "text"], None, 5])))
def test_search_random_query_arrays(saved_dir, queries):
    r = Retriever.load(saved_dir)
    if isinstance(queries, np.ndarray):
        valid = queries.ndim == 2 and array_is_valid(queries, store=False) or (
            queries.ndim == 3 and queries.shape[1] > 0
            and array_is_valid(queries.reshape(-1, queries.shape[-1]), store=False))
        n_q = 1 if queries.ndim == 2 else queries.shape[0]
    elif isinstance(queries, list) and queries and all(isinstance(q, np.ndarray) for q in queries):
        valid = all(q.ndim == 2 and array_is_valid(q, store=False) for q in queries)
        n_q = len(queries)
    else:
        valid, n_q = False, 0
    event("valid" if valid else "invalid")
    try:
        res = r.search(queries, k=3)
    except ERRORS as e:
        assert not valid, f"valid queries rejected: {e!r}"
    else:
        assert valid, "bad queries accepted"
        assert res.ids.shape == (n_q, 3) and np.isfinite(res.scores).all()


# -- loaders ------------------------------------------------------------------------------------------


@FEW
@given(name=st.sampled_from([fmt.TOKENS, fmt.DOC_OFFSETS, fmt.DOC_IDS, fmt.FAISS, fmt.DELETED, fmt.MANIFEST]),
       pos=st.floats(0, 1), byte=st.integers(0, 255), cut=st.booleans())
def test_load_damaged_files(saved_dir, name, pos, byte, cut):
    """Any single-byte change or truncation: load(verify=True) refuses it naming the file, or (a change
    that leaves the bytes equal) loads and answers as before. Never another exception, never a crash."""
    expected = Retriever.load(saved_dir).search(QUERIES, k=4, mode="exact")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "idx"
        changed = damaged_copy(saved_dir, d, name, pos, byte, cut)
        try:
            r = Retriever.load(d, verify=True)
        except fmt.IndexFormatError as e:
            assert changed and (name in str(e) or fmt.MANIFEST in str(e) or "manifest" in str(e)), str(e)
        else:
            assert not changed or name == fmt.MANIFEST and _json_equal(d, saved_dir), "damage went unnoticed"
            res = r.search(QUERIES, k=4, mode="exact")
            np.testing.assert_array_equal(res.ids, expected.ids)


def _json_equal(a: Path, b: Path) -> bool:
    """A manifest byte change that JSON ignores (e.g. whitespace) is no damage."""
    try:
        return json.loads((a / fmt.MANIFEST).read_bytes()) == json.loads((b / fmt.MANIFEST).read_bytes())
    except ValueError:
        return False


# -- BEIR readers -------------------------------------------------------------------------------------

_JSON_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5), st.floats(allow_nan=False),
                        st.lists(st.integers(), max_size=2))
_CORPUS_LINE = st.one_of(
    st.fixed_dictionaries({"_id": st.one_of(st.text(min_size=1, max_size=4), st.integers(0, 9)),
                           "text": st.text(max_size=8)},
                          optional={"title": st.one_of(st.text(max_size=5), st.none())}).map(json.dumps),
    st.dictionaries(st.sampled_from(["_id", "text", "title", "x"]), _JSON_VALUE, max_size=4).map(json.dumps),
    st.sampled_from(["", "   ", "{", "[1]", "null", "\"s\"", "{\"_id\": \"a\", \"text\": \"t\"}", "NaN",
                     "{\"_id\": \"a\", \"text\": \"t\", \"_id\": \"b\"}", "[" * 50 + "]" * 50,
                     "{\"_id\": " + "1" * 400 + ", \"text\": \"t\"}", "\ufeff{\"_id\": \"z\", \"text\": \"\"}"]),
    st.binary(max_size=6).map(lambda b: b.decode("latin1")),
)


def _corpus_oracle(lines: list[str]):
    """(documents, first bad line number or None) by the BEIR corpus rules, independently coded."""
    docs, seen = [], set()
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.encode("latin1").decode("utf-8")
        except UnicodeDecodeError:
            return docs, n
        if n == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return docs, n
        if not isinstance(obj, dict) or "_id" not in obj:
            return docs, n
        i = obj["_id"]
        if type(i) is int:
            i = str(i)
        if not isinstance(i, str) or not i or i in seen:
            return docs, n
        title, text = obj.get("title"), obj.get("text")
        if (title is not None and not isinstance(title, str)) or not isinstance(text, str):
            return docs, n
        seen.add(i)
        docs.append({"_id": i, "title": title or "", "text": text})
    return docs, None


@SETTINGS
@given(lines=st.lists(_CORPUS_LINE, max_size=5), crlf=st.booleans())
def test_corpus_reader_random_lines(lines, crlf):
    # a line is written as latin1 bytes when it can be (so random bytes stay raw), else as UTF-8
    lines = [x.replace("\n", " ").replace("\r", " ") for x in lines]
    encoded = [x.encode("latin1") if all(ord(c) < 256 for c in x) else x.encode("utf-8") for x in lines]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "corpus.jsonl"
        p.write_bytes((b"\r\n" if crlf else b"\n").join(encoded))
        expected, bad = _corpus_oracle([b.decode("latin1") for b in encoded])
        try:
            got = list(beir.iter_corpus(p))
        except ValueError as e:
            assert bad is not None, f"good corpus rejected: {e}"
            assert str(e).startswith(f"{p}:{bad}:"), f"error names the wrong place: {e} (expected line {bad})"
        else:
            assert bad is None, f"bad line {bad} accepted: {lines[bad - 1]!r}"
            assert got == expected


@SETTINGS
@given(rows=st.lists(st.one_of(
    st.tuples(st.text(max_size=3), st.text(max_size=3), st.integers(-2, 3)).map(lambda t: f"{t[0]}\t{t[1]}\t{t[2]}"),
    st.text(alphabet="ab1\t -x", max_size=9),
    st.sampled_from(["query-id\tcorpus-id\tscore", "q\td\t1\t", "q\td", "q\td\t1.5", "q\td\t١", "\t\t1", ""])),
    max_size=5))
def test_qrels_reader_random_rows(rows):
    rows = [r.replace("\n", " ").replace("\r", " ") for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "test.tsv"
        p.write_text("\n".join(rows), encoding="utf-8")
        bad = None
        judged: dict = {}
        for n, line in enumerate(rows, 1):
            if n == 1 and [c.strip() for c in line.split("\t")] == ["query-id", "corpus-id", "score"]:
                continue
            if not line.strip():
                continue
            f = line.split("\t")
            if len(f) != 3 or not f[0].strip() or not f[1].strip():
                bad = n
                break
            try:
                s = int(f[2].strip())
            except ValueError:
                bad = n
                break
            q, d = f[0].strip(), f[1].strip()
            if judged.get(q, {}).get(d, s) != s:
                bad = n
                break
            judged.setdefault(q, {})[d] = s
        try:
            got = beir.read_qrels(p)
        except ValueError as e:
            assert bad is not None, f"good qrels rejected: {e}"
            assert str(e).startswith(f"{p}:{bad}:"), str(e)
        else:
            assert bad is None and got == judged


@pytest.mark.parametrize("line", ["[" * 100_000 + "]" * 100_000, '{"_id": ' + "1" * 5000 + ', "text": "t"}'])
def test_corpus_reader_pathological_json(tmp_path, line):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"_id": "a", "text": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{re.escape(str(p))}:2: "):
        list(beir.iter_corpus(p))

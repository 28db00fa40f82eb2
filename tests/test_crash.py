"""Crash safety (SIGKILL during add/delete/upsert/compact + save) and on-disk corruption detection.

Crash tests run ``tests/crash_worker.py`` in a subprocess that loads an index, mutates it and
saves over it generation after generation, writing progress markers. The worker is killed with
SIGKILL either by its own hook at a chosen point of the save (``CRASH_AT=phase:n``: every file
write, checksum, fsync, the atomic exchange, the rename fallback, the removal of the old copy)
or by this process after a random delay. Afterwards the directory must load with
``verify=True`` and answer *exactly* as the generation the markers call for: the last ``SAVED``
one, or the one being saved once its commit point (``EXCHANGED`` / the ``RENAMED`` onto the
index) was reached. Only a kill landing between a commit syscall and the marker that follows
it (microseconds) leaves both acceptable; those are counted and reported.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from conftest import REPO
from crash_worker import apply_op, gen0_index
from lifecycle_util import CFG, build, make_docs, make_queries
from retriever.index import format as fmt
from retriever.cli.main import main as cli_main
from retriever.index.retriever import Retriever
from retriever.index.lifecycle import check_consistency

WORKER = Path(__file__).with_name("crash_worker.py")
QUERIES = make_queries(6, seed=11)
GENS_PER_RUN = 4  # generations a worker runs when its kill comes from a hook
GENS_PER_RANDOM_RUN = 8  # ... and when it is killed after a random delay


class Replay:
    """Identity and answers of every generation, from the same operations applied in-process."""

    def __init__(self) -> None:
        self.r = gen0_index()
        self.gens = [self.snapshot(self.r)]
        self.lock = threading.Lock()

    def __getitem__(self, g: int) -> dict:
        with self.lock:
            while len(self.gens) <= g:
                apply_op(self.r, len(self.gens))
                self.gens.append(self.snapshot(self.r))
            return self.gens[g]

    @staticmethod
    def snapshot(r: Retriever) -> dict:
        answers = []
        for kw in ({"mode": "exact"}, {"n_candidates": 10}):
            res = r.search(QUERIES, k=5, **kw)
            answers.append((res.ids.tolist(), res.scores.tolist(), res.rows.tolist()))
        docs = r.documents.get(np.arange(len(r.doc_ids)))  # the document store: the texts of the rows it holds
        stored = [(row, d["text"]) for row, d in enumerate(docs) if d is not None and not r.deleted[row]]
        return {"identity": (r.doc_ids.tolist(), r.deleted.tolist(), r.n_tokens), "answers": answers, "documents": stored}


@pytest.fixture(scope="module")
def replay():
    return Replay()


def _env(extra: dict) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.pop("CRASH_AT", None)
    env.pop("CRASH_NO_EXCHANGE", None)
    env.update(extra)
    return env


def run_worker(index_dir: Path, first: int, env_extra: dict, kill_after: float | None = None, n_gens: int = GENS_PER_RUN):
    """Run the worker for generations first..first+n_gens-1; returns (returncode, marker lines, seconds
    from READY to DONE or None)."""
    progress = index_dir.parent / "progress.txt"
    progress.unlink(missing_ok=True)
    cmd = [sys.executable, str(WORKER), str(index_dir), str(progress), str(first), str(first + n_gens - 1)]
    # a killed worker cannot remove its in-memory index's scratch folder: keep those under pytest's tmp_path
    scratch = index_dir.parent / "worker-tmp"
    scratch.mkdir(exist_ok=True)
    p = subprocess.Popen(cmd, cwd=REPO, env=_env({"TMPDIR": str(scratch), **env_extra}), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (progress.exists() and "READY" in progress.read_text()):
            if p.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        if kill_after is not None:
            if p.poll() is not None:
                raise AssertionError(f"worker exited before getting ready: {p.stderr.read().decode()[-2000:]}")
            time.sleep(kill_after)
            p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = progress.read_text().splitlines() if progress.exists() else []
    if p.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed with {p.returncode}: {err.decode()[-3000:]}")
    t = {x.split()[0]: float(x.split()[1]) for x in lines if x.startswith(("READY ", "DONE "))}
    return p.returncode, lines, (t["DONE"] - t["READY"]) if "DONE" in t else None


def acceptable_generations(lines: list[str], first: int, target: str) -> tuple[set[int], bool]:
    """Generations the index may hold after the run, from its markers; and whether it was ambiguous."""
    saved = [int(x.split()[1]) for x in lines if x.startswith("SAVED ")]
    done = max(saved) if saved else first - 1
    saving = [i for i, x in enumerate(lines) if x.startswith("SAVING ")]
    if not saving or int(lines[saving[-1]].split()[1]) == done:
        return {done}, False
    new = int(lines[saving[-1]].split()[1])
    assert new == done + 1, lines
    tail = [x for x in lines[saving[-1] + 1 :] if not x.startswith("KILL ")]
    commit_done = any(x == "EXCHANGED" or (x.startswith("RENAMED ") and x.endswith(f"-> {target}")) for x in tail)
    if commit_done:
        return {new}, False
    in_commit = bool(tail) and (tail[-1] == "EXCHANGING" or (tail[-1].startswith("RENAMING ") and tail[-1].endswith(f"-> {target}")))
    if in_commit:  # killed between the commit syscall and its marker: either is right
        return {done, new}, True
    return {done}, False


def check_index(index_dir: Path, accept: set[int], replay: Replay) -> int:
    """Load with full verification; the index must be one acceptable generation, answering exactly as it."""
    r = Retriever.load(index_dir, verify=True)
    ident = (r.doc_ids.tolist(), r.deleted.tolist(), r.n_tokens)
    match = [g for g in sorted(accept) if replay[g]["identity"] == ident]
    assert match, f"index holds none of generations {sorted(accept)} (n_docs={len(ident[0])})"
    g = match[-1]
    snap = Replay.snapshot(r)
    assert snap["answers"] == replay[g]["answers"], f"generation {g} loaded but answers differ"
    assert snap["documents"] == replay[g]["documents"], f"generation {g} loaded but its document store differs"
    check_consistency(r, index_dir)  # the rest of Retriever.verify
    return g


# phases of a save (and of the staging writes of add/compact) at which the worker kills itself;
# "<" = just before the call, ">" = just after it returns
HOOK_PHASES = ["save." + h for h in ("append<", "append>", "npyclose<", "npyclose>", "npsave<", "npsave>", "sha<",
                                      "sha>", "faisswrite<", "faisswrite>", "manifest<", "manifest>", "fsyncdir<",
                                      "fsyncdir>", "exchange<", "exchange>", "rmtree<", "rmtree>")]
# staging writes of add/upsert/compact (the saved index is not touched until save)
HOOK_PHASES += ["op.append<", "op.append>", "op.npyclose>", "op.rmtree<"]
# the document store's new file in the save's temporary directory
HOOK_PHASES += ["save.storewrite<", "save.storewrite>"]
# the rename-aside fallback: rename 1 moves the old index aside, rename 2 moves the new one in
FALLBACK_PHASES = ["save.rename<", "save.rename>"]


def crash_plan(n_random: int, seed: int) -> list[tuple[dict, float | None, str]]:
    """(environment, random delay as a fraction of a clean run, label) per trial."""
    plan = []
    for i, phase in enumerate(HOOK_PHASES):
        n = 1 + i % 3
        plan.append(({"CRASH_AT": f"{phase}:{n}"}, None, f"hook {phase}:{n}"))
    for phase in FALLBACK_PHASES:
        for n in (1, 2, 3, 4):
            plan.append(({"CRASH_AT": f"{phase}:{n}", "CRASH_NO_EXCHANGE": "1"}, None, f"fallback {phase}:{n}"))
    rng = random.Random(seed)
    for i in range(n_random):
        env = {"CRASH_NO_EXCHANGE": "1"} if i % 4 == 3 else {}
        plan.append((env, rng.uniform(0.0, 0.95), "random" + (" fallback" if env else "")))
    return plan


def run_plan(tmp_path: Path, replay: Replay, plan, chains: int = 1, min_kills: int = 0) -> dict:
    """Run the trials in ``chains`` independent index directories at once; merged statistics. Each
    chain adds random-delay trials (at most 30) until it has ``min_kills / chains`` kills."""
    per_chain = -(-min_kills // chains)
    with ThreadPoolExecutor(chains) as pool:
        parts = list(pool.map(lambda c: run_chain(tmp_path / f"chain{c}", replay, plan[c::chains], per_chain, seed=c),
                              range(chains)))
    stats = parts[0]
    for part in parts[1:]:
        for key in ("kills", "clean", "ambiguous", "new_gen_after_kill", "leftover_dirs"):
            stats[key] += part[key]
        for key, v in part["by_label"].items():
            stats["by_label"][key] = stats["by_label"].get(key, 0) + v
        stats["trials"] += part["trials"]
        stats["final_generation"] = min(stats["final_generation"], part["final_generation"])
    return stats


def run_chain(tmp_path: Path, replay: Replay, plan, min_kills: int = 0, seed: int = 0) -> dict:
    index_dir = tmp_path / "idx"
    plan = list(plan)
    topup = random.Random(seed)
    gen0_index().save(index_dir)
    gen = 0
    stats = {"kills": 0, "clean": 0, "ambiguous": 0, "new_gen_after_kill": 0, "by_label": {}, "trials": []}
    clean_run_s = None  # READY-to-DONE time of a clean run, measured before the first random trial
    i = 0
    while i < len(plan) or (stats["kills"] < min_kills and i < len(plan) + 30):
        if i < len(plan):
            env, delay, label = plan[i]
        else:  # top-up: a kill that came too late (the machine was slower than the calibration run)
            env, delay, label = {}, topup.uniform(0.0, 0.5), "random"
        i += 1
        if delay is not None and clean_run_s is None:
            rc, lines, clean_run_s = run_worker(index_dir, gen + 1, {}, n_gens=GENS_PER_RANDOM_RUN)
            gen = check_index(index_dir, acceptable_generations(lines, gen + 1, index_dir.name)[0], replay)
            stats["clean"] += 1
        kill_after = None if delay is None else delay * clean_run_s
        n_gens = GENS_PER_RUN if delay is None else GENS_PER_RANDOM_RUN
        rc, lines, _ = run_worker(index_dir, gen + 1, env, kill_after=kill_after, n_gens=n_gens)
        accept, ambiguous = acceptable_generations(lines, gen + 1, index_dir.name)
        if rc == 0 or lines[-1].startswith("DONE"):  # finished before the kill: not a kill point
            assert lines[-1].startswith("DONE")
            stats["clean"] += 1
        else:
            stats["kills"] += 1
            stats["ambiguous"] += ambiguous
            stats["by_label"][label.split()[0]] = stats["by_label"].get(label.split()[0], 0) + 1
            if "CRASH_AT" in env:
                assert any(x.startswith("KILL ") for x in lines), (label, lines[-5:])
        new_gen = check_index(index_dir, accept, replay)
        if rc != 0 and new_gen > gen and not any(x.startswith("SAVED " + str(new_gen)) for x in lines):
            stats["new_gen_after_kill"] += 1
        stats["trials"].append((label, env.get("CRASH_AT", f"{kill_after:.3f}s" if delay is not None else ""), rc,
                                sorted(accept), new_gen, [x for x in lines if not x.startswith("OP")][-3:]))
        gen = new_gen
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.") and p.name != ".idx.lock"]  # removed by load (the lock file stays)
    stats["clean_run_s"] = clean_run_s
    stats["leftover_dirs"] = len(leftovers)
    stats["final_generation"] = gen
    return stats


def test_crash_at_key_points(tmp_path, replay):
    """A few kill points on every test run: before the manifest, right after the exchange, during
    the removal of the old copy, and between the two renames of the fallback."""
    plan = [({"CRASH_AT": "save.manifest<:1"}, None, "hook"), ({"CRASH_AT": "save.exchange>:2"}, None, "hook"),
            ({"CRASH_AT": "save.rmtree<:1"}, None, "hook"),
            ({"CRASH_AT": "save.rename>:1", "CRASH_NO_EXCHANGE": "1"}, None, "fallback"),
            ({"CRASH_AT": "save.rename<:4", "CRASH_NO_EXCHANGE": "1"}, None, "fallback")]
    stats = run_plan(tmp_path, replay, plan)
    assert stats["kills"] == 5, stats
    assert stats["new_gen_after_kill"] >= 2, stats  # exchange>:2 and rmtree< keep the new generation
    assert stats["leftover_dirs"] == 0, stats


@pytest.mark.slow
def test_crash_at_many_points(tmp_path, replay):
    """At least 50 SIGKILLs: every hooked phase of a save (both sides of each call), the rename
    fallback, and random delays; each followed by a verified load that must answer exactly."""
    plan = crash_plan(n_random=30, seed=2024)
    stats = run_plan(tmp_path, replay, plan, chains=2, min_kills=54)
    print("crash stats:", json.dumps(stats))
    assert stats["kills"] >= 50, stats
    assert stats["by_label"].get("hook", 0) == len(HOOK_PHASES)
    assert stats["by_label"].get("fallback", 0) == 4 * len(FALLBACK_PHASES)
    assert stats["new_gen_after_kill"] > 0 and stats["final_generation"] > 10
    assert stats["leftover_dirs"] == 0, "load removes what killed saves left behind"


# -- corruption ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory):
    """A saved index with deletions (so deleted.npy exists), as {file name: bytes}."""
    d = tmp_path_factory.mktemp("c") / "idx"
    r = build(make_docs(60, seed=4), [f"d{i}" for i in range(60)])
    r.delete(["d3", "d17"])
    r.save(d)
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.fixture
def idx(tmp_path, saved_bytes):
    d = tmp_path / "idx"
    d.mkdir()
    for name, data in saved_bytes.items():
        (d / name).write_bytes(data)
    return d


def _manifest(d: Path) -> dict:
    return json.loads((d / fmt.MANIFEST).read_text())


def _rewrite_manifest(d: Path, change=None, refresh_files: bool = True) -> None:
    """Apply ``change`` to the manifest, refresh the file sizes/checksums, re-sign it: only the
    deeper checks can then catch the damage."""
    m = _manifest(d)
    if change:
        change(m)
    if refresh_files:
        m["files"] = fmt.describe_files(d, list(m["files"]))
    m.pop(fmt.CHECKSUM_FIELD, None)
    fmt.write_manifest(d, m)


def _expect_error(d: Path, match: str, *, load: bool = True):
    """Both load (when ``load``) and verify fail naming the problem; the CLI exits 1 saying so."""
    if load:
        with pytest.raises(fmt.IndexFormatError, match=match):
            Retriever.load(d)
    with pytest.raises(fmt.IndexFormatError, match=match):
        Retriever.verify(d)


def test_cli_verify(idx, capsys):
    assert cli_main(["verify", str(idx)]) == 0
    assert "OK" in capsys.readouterr().out
    data = bytearray((idx / fmt.TOKENS).read_bytes())
    data[-1] ^= 0x01
    (idx / fmt.TOKENS).write_bytes(bytes(data))
    Retriever.load(idx)  # a flipped bit in the big token store is left to the full check...
    assert cli_main(["verify", str(idx)]) == 1  # ...which finds it
    out = capsys.readouterr().out
    assert out.startswith("FAILED") and fmt.TOKENS in out and "checksum" in out
    assert cli_main(["verify", str(idx.parent / "nothing")]) == 1
    assert "not a directory" in capsys.readouterr().out


@pytest.mark.parametrize("name", [fmt.TOKENS, fmt.DOC_OFFSETS, fmt.DOC_IDS, fmt.FAISS, fmt.DELETED, fmt.MANIFEST])
def test_missing_file(idx, name):
    (idx / name).unlink()
    _expect_error(idx, f"{name} is missing")


@pytest.mark.parametrize("name", [fmt.TOKENS, fmt.DOC_OFFSETS, fmt.DOC_IDS, fmt.FAISS, fmt.DELETED])
def test_truncated_or_extended_file(idx, name):
    data = (idx / name).read_bytes()
    (idx / name).write_bytes(data[:-1])
    _expect_error(idx, f"{name} has {len(data) - 1} bytes")
    (idx / name).write_bytes(data + b"\0")
    _expect_error(idx, f"{name} has {len(data) + 1} bytes")


@pytest.mark.parametrize("name", [fmt.DOC_OFFSETS, fmt.DOC_IDS, fmt.DELETED])
def test_altered_small_file_caught_at_load(idx, name):
    data = bytearray((idx / name).read_bytes())
    data[-2] ^= 0x04
    (idx / name).write_bytes(bytes(data))
    _expect_error(idx, f"{name} does not match its checksum")


@pytest.mark.parametrize("name", [fmt.TOKENS, fmt.FAISS])
def test_altered_large_file_caught_by_verify(idx, name):
    data = bytearray((idx / name).read_bytes())
    data[len(data) // 2] ^= 0x10
    (idx / name).write_bytes(bytes(data))
    with pytest.raises(fmt.IndexFormatError, match=f"{name} does not match its checksum"):
        Retriever.load(idx, verify=True)
    _expect_error(idx, f"{name} does not match its checksum", load=False)


MANIFEST_EDITS = [
    # (edit, message): each edit keeps the JSON valid; the manifest's own checksum catches it
    (lambda m: m.update(n_docs=m["n_docs"] - 1), "does not match its manifest_sha256"),
    (lambda m: m["config"]["fde"].update(seed=2), "does not match its manifest_sha256"),
    (lambda m: m.update(id_type="int"), "does not match its manifest_sha256"),
    (lambda m: m.pop("encoder"), "does not match its manifest_sha256"),
]


@pytest.mark.parametrize("edit,match", MANIFEST_EDITS)
def test_altered_manifest(idx, edit, match):
    m = _manifest(idx)
    edit(m)
    (idx / fmt.MANIFEST).write_text(json.dumps(m))
    _expect_error(idx, match)


@pytest.mark.parametrize("field", ["n_docs", "n_tokens", "dim", "fde_dim", "files", "config", "id_type",
                                   fmt.CHECKSUM_FIELD, "format", "format_version"])
def test_manifest_missing_a_field(idx, field):
    """Even re-signed after the removal, a manifest without a required field is refused by name."""
    if field == fmt.CHECKSUM_FIELD:
        m = _manifest(idx)
        del m[field]
        (idx / fmt.MANIFEST).write_text(json.dumps(m))
    else:
        _rewrite_manifest(idx, lambda m: m.pop(field), refresh_files=False)
    _expect_error(idx, f"'{field}' is missing" if field not in ("format", "format_version") else
                  ("not a retriever-index manifest" if field == "format" else "format_version None"))


RESIGNED_BAD_VALUES = [
    (lambda m: m.update(n_docs=-1), "'n_docs' must be a non-negative integer"),
    (lambda m: m.update(dim="32"), "'dim' must be a positive integer"),
    (lambda m: m.update(n_docs=True), "'n_docs' must be"),
    (lambda m: m.update(id_type="float"), "'id_type' must be 'int' or 'str'"),
    (lambda m: m.update(files=[]), "'files' must be an object"),
    (lambda m: m["files"].update({"../../etc/passwd": {"bytes": 1, "sha256": "x"}}), "not a file of this format"),
    (lambda m: m["files"].pop(fmt.TOKENS), "does not list 'tokens.npy'"),
    (lambda m: m["files"][fmt.FAISS].update(bytes="12"), "integer 'bytes'"),
    (lambda m: m.update(n_deleted=0), "n_deleted is 0 but 'deleted.npy' is listed"),
    (lambda m: m.update(n_docs=m["n_docs"] + 1), "doc_offsets.npy holds int64 \\(61,\\), the manifest says int64 \\(62,\\)"),
    (lambda m: m.update(n_tokens=m["n_tokens"] - 1), "tokens.npy holds float16"),
    (lambda m: m.update(dim=16), "tokens.npy holds float16"),
    (lambda m: m.update(fde_dim=m["fde_dim"] * 2), "fde.faiss holds 60 vectors of dim 256, the manifest says 60 of dim 512"),
    (lambda m: m.update(n_deleted=1), "deleted.npy must hold 0/1 flags, 1 of them set"),
    (lambda m: m["config"].update(faiss_factory=7), "bad config"),
    (lambda m: m["config"]["fde"].update(num_repetitions=0), "bad config"),
    (lambda m: m["config"].update(extra=1), "bad config.*unknown IndexConfig keys"),
    (lambda m: m.update(id_type="int"), "doc_ids.txt:1: 'd0' is not a non-negative int64 id"),
    (lambda m: m.update(format_version=0), "format_version 0 is not supported"),
]


@pytest.mark.parametrize("edit,match", RESIGNED_BAD_VALUES)
def test_resigned_manifest_with_bad_values(idx, edit, match):
    _rewrite_manifest(idx, edit, refresh_files=False)
    _expect_error(idx, match)


def test_resigned_manifest_with_another_fde_config_caught_by_verify(idx):
    """A consistent-looking manifest whose FDE config is not the one the FAISS vectors were made
    with: load cannot tell (only the FDE stage would silently degrade); verify recomputes a sample."""
    _rewrite_manifest(idx, lambda m: m["config"]["fde"].update(seed=99), refresh_files=False)
    Retriever.load(idx)
    with pytest.raises(fmt.IndexFormatError, match="stored FDEs of .* differ"):
        Retriever.verify(idx)


def test_header_tampered_tokens(idx):
    p = idx / fmt.TOKENS
    data = p.read_bytes()
    header, body = data[:128], data[128:]
    shape = header[header.index(b"(") : header.index(b")") + 1]
    n, d = (int(x) for x in shape.strip(b"()").split(b","))
    for new_header, match in [
        (header.replace(b"'<f2'", b"'<i2'"), "holds int16"),
        (header.replace(shape, f"({n // 2}, {d * 2})".encode().ljust(len(shape))), "holds float16 \\("),
        (header.replace(b"'fortran_order': False", b"'fortran_order': True "), "fortran_order"),
        (header.replace(b"'<f2'", b"'|O' "), "not a readable .npy file|holds object"),
        (b"\x93NUMPY\x09" + header[7:], "not a readable .npy file"),
    ]:
        assert len(new_header) == len(header)
        p.write_bytes(new_header + body)
        _rewrite_manifest(idx)  # sizes and checksums refreshed: only the header check can catch it
        _expect_error(idx, match)


def test_doc_ids_with_wrong_count_or_bad_lines(idx):
    p = idx / fmt.DOC_IDS
    good = p.read_text()
    for text, match in [
        (good + "extra\n", "has 61 ids, the manifest says 60"),
        ("\n".join(good.splitlines()[:-1]) + "\n", "has 59 ids, the manifest says 60"),
        (good.replace("d5\n", "\n", 1), "doc_ids.txt:6: '' is not a valid document id"),
        (good.replace("d5\n", " d5\n", 1), "doc_ids.txt:6: ' d5' is not a valid"),
        (good.replace("d5\n", "d6\n", 1), "'d6' names two live documents"),
    ]:
        p.write_text(text)
        _rewrite_manifest(idx)
        _expect_error(idx, match, load="two live" not in match)
    p.write_bytes(good.encode().replace(b"d5", b"\xff\xfe", 1))
    _rewrite_manifest(idx)
    _expect_error(idx, "not valid UTF-8")


def test_int_doc_ids_bad_lines(tmp_path):
    d = tmp_path / "i"
    Retriever.build(make_docs(5, seed=1), doc_ids=[1, 2, 3, 4, 5], config=CFG, show_progress=False).save(d)
    for bad, match in [("-3", "'-3' is not a non-negative int64 id"), ("x", "'x' is not"),
                       ("99999999999999999999", "is not a non-negative int64"), ("٣", "'٣' is not")]:
        (d / fmt.DOC_IDS).write_text("1\n2\n" + bad + "\n4\n5\n")
        _rewrite_manifest(d)
        _expect_error(d, f"doc_ids.txt:3: .*{match}")


def _save_and_expect_error(d: Path, name: str, array: np.ndarray, match: str, **save_kw) -> None:
    """Replace ``name`` by ``array`` under a re-signed manifest; loading must fail with ``match``."""
    np.save(d / name, array, **save_kw)
    _rewrite_manifest(d)
    _expect_error(d, match)


def test_offsets_and_deleted_with_bad_values(idx):
    off = np.load(idx / fmt.DOC_OFFSETS)
    for bad in (off[::-1].copy(), np.where(np.arange(off.size) == 5, off[4], off), off + 1):
        _save_and_expect_error(idx, fmt.DOC_OFFSETS, bad, "not a valid CSR offset array")
    _save_and_expect_error(idx, fmt.DOC_OFFSETS, off.astype(np.float64), "doc_offsets.npy holds float64")
    np.save(idx / fmt.DOC_OFFSETS, off)
    dele = np.load(idx / fmt.DELETED)
    bad = dele.copy()
    bad[0] = 7
    _save_and_expect_error(idx, fmt.DELETED, bad, "must hold 0/1 flags")
    _save_and_expect_error(idx, fmt.DELETED, dele.astype(np.int64), "deleted.npy holds int64")
    _save_and_expect_error(idx, fmt.DELETED, np.array([object()], dtype=object), "deleted.npy is not a readable .npy file",
                           allow_pickle=True)


def test_faiss_file_of_another_dim_count_or_content(idx):
    m = _manifest(idx)
    for index, match in [
        (faiss.IndexFlatIP(m["fde_dim"] + 8), f"holds 60 vectors of dim {m['fde_dim'] + 8}"),
        (faiss.IndexFlatIP(m["fde_dim"]), "holds 59 vectors"),
    ]:
        index.add(np.random.default_rng(0).standard_normal((60 if "60" in match else 59, index.d)).astype(np.float32))
        faiss.write_index(index, str(idx / fmt.FAISS))
        _rewrite_manifest(idx)
        _expect_error(idx, match)
    # right dim and count, other vectors: only the FDE recomputation of verify can see it
    index = faiss.IndexFlatIP(m["fde_dim"])
    index.add(np.random.default_rng(1).standard_normal((60, m["fde_dim"])).astype(np.float32))
    faiss.write_index(index, str(idx / fmt.FAISS))
    _rewrite_manifest(idx)
    Retriever.load(idx)
    _expect_error(idx, "stored FDEs of 58 of 58 sampled documents", load=False)
    # not a FAISS file at all
    (idx / fmt.FAISS).write_bytes(b"garbage" * 100)
    _rewrite_manifest(idx)
    _expect_error(idx, "not a readable FAISS index")
    # a truncated FAISS file, re-signed
    good = faiss.serialize_index(index).tobytes()
    (idx / fmt.FAISS).write_bytes(good[: len(good) // 2])
    _rewrite_manifest(idx)
    _expect_error(idx, "not a readable FAISS index")


def test_bad_manifest_json(idx):
    for text, match in [("{", "not valid JSON"), ("[]", "not a retriever-index manifest"),
                        ('{"format": "retriever-index", "format_version": 1, "x": NaN}', "is missing"),
                        ("\xff", "not valid JSON")]:
        (idx / fmt.MANIFEST).write_bytes(text.encode("latin1"))
        _expect_error(idx, match)
    (idx / fmt.MANIFEST).unlink()
    (idx / fmt.MANIFEST).mkdir()
    _expect_error(idx, "manifest.json is missing")


def test_index_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    _expect_error(tmp_path / "f", "not a directory")

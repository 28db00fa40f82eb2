"""The README works as written: its Python examples run and print what it shows, it stays short, and
every document under docs/ is reachable from it with no broken relative links."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _blocks(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a Markdown text, in order: (language, body)."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def _python_examples() -> list[tuple[str, str | None]]:
    """Every ```python block with the output block that follows it directly (a block with no language), if any."""
    blocks = _blocks(README.read_text(encoding="utf-8"))
    out = []
    for i, (lang, body) in enumerate(blocks):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "":
            expected = blocks[i + 1][1]
        out.append((body, expected))
    return out


def _tokens(text: str) -> list[str]:
    return re.sub(r"[\[\]',()]", " ", text).split()


def _assert_output_matches(got: str, expected: str) -> None:
    """Same lines and words; numbers equal within 0.05 (scores move in the last digit across CPUs)."""
    got_lines = [line for line in got.strip().splitlines() if line.strip()]
    exp_lines = [line for line in expected.strip().splitlines() if line.strip()]
    assert len(got_lines) == len(exp_lines), f"printed:\n{got}\nREADME shows:\n{expected}"
    for g, e in zip(got_lines, exp_lines):
        gt, et = _tokens(g), _tokens(e)
        assert len(gt) == len(et), f"printed {g!r}, README shows {e!r}"
        for a, b in zip(gt, et):
            if _NUMBER.match(a) and _NUMBER.match(b):
                assert abs(float(a) - float(b)) <= 0.05, f"printed {g!r}, README shows {e!r}"
            else:
                assert a == b, f"printed {g!r}, README shows {e!r}"


EXAMPLES = _python_examples()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for all examples, run in README order: a later example may open an earlier one's index."""
    return tmp_path_factory.mktemp("readme")


def test_readme_has_python_examples():
    assert EXAMPLES, "README.md has no ```python block"


@pytest.mark.parametrize("n", range(len(EXAMPLES)))
def test_python_example_runs(n, workdir):
    code, expected = EXAMPLES[n]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"README example {n + 1} failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"
    if expected is not None:
        _assert_output_matches(proc.stdout, expected)
    if "index_data/" in code and "Retriever.build(" in code:  # relative index paths land in the temporary folder
        assert (workdir / "index_data").is_dir()


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 250, f"README.md has {n} lines (at most 250)"


def test_every_doc_is_linked_from_readme():
    linked = set()
    for target in _LINK.findall(README.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if path and "://" not in path:
            linked.add((REPO / path).resolve())
    docs = sorted(p for p in DOCS.rglob("*") if p.is_file())
    assert docs, "docs/ is empty"
    missing = [str(p.relative_to(REPO)) for p in docs if p.resolve() not in linked]
    assert not missing, f"not linked from README.md: {missing}"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    text = _FENCE.sub("", text)  # links inside code blocks are code, not links
    broken = []
    for target in _LINK.findall(text):
        path = target.split("#", 1)[0]
        if not path or "://" in path or path.startswith("mailto:"):
            continue
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: broken relative links {broken}"


def _cli_commands(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, --options) of every ``retriever SUBCOMMAND ...`` command in the README's bash blocks
    (continuation lines, indented, belong to the command above)."""
    out: list[tuple[str, list[str]]] = []
    for lang, body in _blocks(text):
        if lang not in ("bash", "sh"):
            continue
        for line in body.splitlines():
            code = line.split("#", 1)[0]
            m = re.match(r"\s*(?:\S*/)?retriever\s+([a-z]+)\b(.*)", code)
            if m:
                out.append((m.group(1), re.findall(r"(--[a-z][a-z0-9-]*)", m.group(2))))
            elif out and line.startswith(" ") and "--" in code and not code.strip().startswith(("curl", ".venv", "-d")):
                out[-1][1].extend(re.findall(r"(--[a-z][a-z0-9-]*)", code))
    return out


def test_every_cli_command_in_the_readme_exists_with_its_options():
    """A renamed command or option fails here instead of in a user's terminal."""
    from retriever.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")  # argparse's own registry
    commands = _cli_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10
    for name, options in commands:
        assert name in sub.choices, f"README shows `retriever {name}`, which does not exist"
        known = sub.choices[name]._option_string_actions
        missing = [o for o in options if o not in known]
        assert not missing, f"README shows `retriever {name}` with {missing}, which it does not take"

"""Every shell block marked runnable in docs/*.md is run, and the output it shows is checked.

A runnable block is an HTML comment `<!-- runnable -->` followed by a ```console block. Lines
starting with `$ ` are commands (a trailing backslash continues one on the next line); every other
line is output the command must print, in that order, each matching one whole line of the real output
(stdout and stderr together); `...` inside a line stands for any text. The blocks run in the order a
reader meets them (mkdocs.yml's nav, then top to bottom) in one scratch directory (with `configs/` and
`experiments/` linked in), so a page may use what an earlier page made (the Train page's `runs/tiny`
is evaluated and exported later); they use the session's TUNELAB_HOME (tests/conftest.py) and must
exit 0: a command shown failing ends in `; echo "exit status $?"`. Keep each block to tiny-qwen3,
tiny data and a few seconds.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BLOCK = re.compile(r"<!-- runnable -->\s*\n```console\n(.*?)\n```", re.S)


def nav_pages() -> list[str]:
    """The pages in mkdocs.yml's nav order, then any other page of docs/."""
    import yaml

    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        items = node.values() if isinstance(node, dict) else node
        return [page for item in items for page in walk(item)]

    pages = walk(yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    return pages + sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)


def runnable_blocks() -> list[tuple[str, str]]:
    found = []
    for page in nav_pages():
        md = DOCS / page
        text = md.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            found.append((f"{md.name}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return found


def parse(body: str) -> tuple[list[str], list[str]]:
    """(commands, expected output lines) of a block."""
    commands, expected, continued = [], [], False
    for line in body.splitlines():
        if continued:
            commands[-1] += "\n" + line
        elif line.startswith("$ "):
            commands.append(line[2:])
        elif line.strip():
            expected.append(line.rstrip())
        continued = (continued or line.startswith("$ ")) and line.endswith("\\")
    return commands, expected


def unmatched(expected: list[str], output: str) -> list[str]:
    """The expected lines not found, in order, among the output's lines."""
    lines = [line.rstrip() for line in re.split(r"\r|\n", output)]
    i, missing = 0, []
    for want in expected:
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        j = next((j for j in range(i, len(lines)) if pattern.fullmatch(lines[j])), None)
        if j is None:
            missing.append(want)
        else:
            i = j + 1
    return missing


def test_the_docs_have_runnable_blocks():
    assert len(runnable_blocks()) >= 5
    assert unmatched(["a ... b", "c"], "x\na 1 b\ny\nc\n") == []
    assert unmatched(["c", "a ... b"], "a 1 b\nc\n") == ["a ... b"]  # order counts
    assert parse("$ echo 1 \\\n  2\n1 2\n") == (["echo 1 \\\n  2"], ["1 2"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("docs_runnable")
    for name in ("configs", "experiments"):
        (d / name).symlink_to(REPO / name, target_is_directory=True)
    return d


@pytest.mark.parametrize("where, body", runnable_blocks(), ids=[w for w, _ in runnable_blocks()])
def test_runnable_block(where, body, workdir, tunelab_home):
    commands, expected = parse(body)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TUNELAB_HOME": str(tunelab_home), "COLUMNS": "100", "NO_COLOR": "1", "TQDM_DISABLE": "1",
           "PYTHONUNBUFFERED": "1"}  # stdout and stderr interleaved as printed
    r = subprocess.run(["bash", "-c", "\n".join(commands)], cwd=workdir, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    output = r.stdout
    assert r.returncode == 0, f"{where}: exit status {r.returncode}\n{output[-3000:]}"
    missing = unmatched(expected, output)
    assert not missing, f"{where}: lines the docs show that the command did not print: {missing}\n{output[-3000:]}"

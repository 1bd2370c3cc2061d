"""The documentation site: `mkdocs build --strict` passes (a broken link, a missing page or a missing
included file fails it), the config reference is generated and complete, the README stays short and
keeps its two commands first. Needs the `docs` extra (`make setup-test` installs it)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    return out


def test_every_config_key_has_a_description():
    from tunelab import config as C

    missing = [key for key, _, _, doc in C.describe() if not doc.strip()]
    assert not missing, f"config keys without a description (a docstring under the field in config.py): {missing}"


def test_the_config_page_is_generated_with_every_key(site):
    from tunelab import config as C

    source = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert "<!-- config-table -->" in source and "| `model.name` |" not in source, "config.md must not hold a copy"
    page = (site / "config" / "index.html").read_text(encoding="utf-8")
    absent = [key for key, *_ in C.describe() if f"<code>{key}</code>" not in page]
    assert not absent, f"keys missing from the built config page: {absent}"


def test_benchmarks_page_includes_benchmarks_md(site):
    page = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    first = next(line for line in (REPO / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines()[2:] if line)
    assert first.split("`")[0].strip() in page  # the text itself, included at build time


def test_images_of_the_pages_are_in_the_site(site):
    missing = []
    for md in (REPO / "docs").glob("*.md"):
        for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text(encoding="utf-8")):
            if not (site / src).is_file():
                missing.append(f"{md.name}: {src}")
    assert not missing, missing


def test_the_site_loads_nothing_from_another_host(site):
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.html")
                 if re.search(r"fonts\.googleapis|fonts\.gstatic|<script[^>]+src=\"https?://", p.read_text("utf-8"))]
    assert not offenders, offenders


def test_the_readme_is_short_and_starts_with_the_two_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 260, f"README.md has {len(readme)} lines; move detail into docs/"
    head = "\n".join(readme[:12])
    assert "make demo" in head and "make test" in head

"""MkDocs hook (mkdocs.yml `hooks:`): the config reference page is generated at build time.

docs/config.md holds the marker `<!-- config-table -->`; this hook replaces it with
`tunelab.config.markdown_table()`, the table `tunelab config --markdown` prints, so the reference
is never a hand-written copy. tests/docs/test_site.py checks every key reaches the built page.
"""
from __future__ import annotations

MARKER = "<!-- config-table -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "config.md":
        return markdown
    from tunelab.config import markdown_table  # light: the config module imports only yaml

    assert MARKER in markdown, f"docs/config.md lost its {MARKER} marker"
    return markdown.replace(MARKER, markdown_table())

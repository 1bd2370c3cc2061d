"""Print where a report is and its tables, for a person at the terminal."""
from __future__ import annotations

from pathlib import Path


def print_summary(out: Path, status: dict[str, str] | None, report: Path) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console()
    if status:
        for name, st in status.items():
            console.print(f"variant [bold]{name}[/bold]: {st}")
    text = report.read_text(encoding="utf-8")
    body = "\n".join(l for l in text.splitlines() if not l.startswith("!["))  # images are in the HTML
    console.print(Markdown(body))
    console.print(f"report: {report} and {report.with_suffix('.html')} (charts: {out}/*.png)")

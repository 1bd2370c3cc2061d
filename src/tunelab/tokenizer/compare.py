"""Compare tokenizers: characters and bytes per token, per language, on the same texts.

    rows = compare(["runs/tok-8k", "tiny-qwen3", "smollm2-135m-instruct"], ["gsm8k_test", "belle_seed"],
                   output="runs/tokenizer_compare")   # + table on the terminal, compare.{json,md,png}

The numbers are defined in DEFINITIONS (also written into compare.json). Higher is better compression:
more text fits into a context window and into a training step.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..data.prompts import is_chinese
from ..errors import UserError
from ..paths import atomic_dir, check_writable
from .corpus import iter_texts

LANGUAGES = ("zh", "en", "mixed", "all")
ZH_SHARE = 0.5
DEFINITIONS = {
    "text": "one piece from tunelab.tokenizer.corpus.iter_texts (a message content, a record field, a paragraph "
            "of a .txt file), encoded alone with add_special_tokens=False",
    "language": "by the share of CJK ideographs (U+4E00-U+9FFF, as tunelab.data.prompts.is_chinese) among the "
                "non-space characters: en under 10% (English here; also code, numbers, other scripts), zh at 50% "
                "or more, mixed in between (Chinese math with formulas, Chinese with English words); all: every text",
    "chars_per_token": "total characters / total tokens over the texts of a language (a ratio of sums: long texts "
                       "weigh more), every character counted, spaces and newlines included",
    "bytes_per_token": "total UTF-8 bytes / total tokens, likewise (a Han character is 3 bytes)",
}
BATCH = 256  # texts per tokenizer call: the fast tokenizers encode a batch in parallel


def cjk_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum("\u4e00" <= c <= "\u9fff" for c in chars) / len(chars) if chars else 0.0


def language(text: str) -> str:
    if not is_chinese(text):  # the same 10% line the math prompts use to pick the Chinese instruction
        return "en"
    return "zh" if cjk_share(text) >= ZH_SHARE else "mixed"


def measure(tokenizers: dict[str, Any], texts: Iterable[str]) -> list[dict[str, Any]]:
    """Rows (tokenizer, language) with texts, characters, bytes, tokens and the two ratios.

    `tokenizers` maps a label to a loaded Hugging Face tokenizer; `texts` is read once."""
    totals = {(name, lang): [0, 0, 0, 0] for name in tokenizers for lang in LANGUAGES}

    def add(batch: list[str]) -> None:
        langs = [language(t) for t in batch]
        for name, tok in tokenizers.items():
            # verbose=False: a long text is fine here, it is counted, never fed to a model
            ids = tok(batch, add_special_tokens=False, verbose=False)["input_ids"]
            for text, lang, seq in zip(batch, langs, ids):
                for key in ((name, lang), (name, "all")):
                    t = totals[key]
                    t[0] += 1
                    t[1] += len(text)
                    t[2] += len(text.encode("utf-8"))
                    t[3] += len(seq)

    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH:
            add(batch)
            batch = []
    if batch:
        add(batch)
    rows = []
    for lang in LANGUAGES:
        for name, tok in tokenizers.items():
            n, chars, nbytes, tokens = totals[(name, lang)]
            if n:
                rows.append({"tokenizer": name, "vocab": len(tok), "language": lang, "texts": n,
                             "characters": chars, "bytes": nbytes, "tokens": tokens,
                             "chars_per_token": round(chars / tokens, 4), "bytes_per_token": round(nbytes / tokens, 4)})
    return rows


def compare(tokenizer_refs: Sequence[str], data_sources: Sequence[str], *, output: str | Path | None = None,
            overwrite: bool = False, text_field: str | None = None, show: bool = True) -> list[dict[str, Any]]:
    """Measure every tokenizer on the texts of `data_sources`; print the table (`show`) and, with
    `output`, write compare.json, compare.md and compare.png there. Tokenizers are model references
    as `tunelab.models.load.load_tokenizer` takes them: a directory, a built-in name, a hub id."""
    from ..models.load import load_tokenizer

    if not tokenizer_refs or not data_sources:
        raise UserError("compare needs at least one tokenizer and one data source")
    if output is not None:
        check_writable(Path(output), overwrite, kind="compare")  # before the work
    tokenizers = {ref: load_tokenizer(ref) for ref in tokenizer_refs}
    rows = measure(tokenizers, (text for _, text in iter_texts(data_sources, text_field=text_field)))
    if show:
        print_table(rows)
    if output is not None:
        with atomic_dir(Path(output), kind="compare", overwrite=overwrite) as tmp:
            report = {"tokenizers": list(tokenizer_refs), "data": list(data_sources), "text_field": text_field,
                      "definitions": DEFINITIONS, "rows": rows}
            (tmp / "compare.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            (tmp / "compare.md").write_text(markdown(rows))
            chart(rows, tmp / "compare.png")
    return rows


COLUMNS = (("language", "language"), ("tokenizer", "tokenizer"), ("vocab", "vocab"), ("texts", "texts"),
           ("characters", "characters"), ("tokens", "tokens"), ("chars_per_token", "chars/token"),
           ("bytes_per_token", "bytes/token"))


def _cells(row: dict[str, Any]) -> list[str]:
    return [f"{row[k]:,}" if isinstance(row[k], int) else
            f"{row[k]:.2f}" if isinstance(row[k], float) else str(row[k]) for k, _ in COLUMNS]


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="characters and bytes per token (higher = fewer tokens for the same text)")
    for _, title in COLUMNS:
        table.add_column(title, justify="left" if title in ("language", "tokenizer") else "right")
    for i, row in enumerate(rows):
        table.add_row(*_cells(row), end_section=i + 1 < len(rows) and rows[i + 1]["language"] != row["language"])
    Console().print(table)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(t for _, t in COLUMNS) + " |",
             "|" + "|".join("---" if k in ("language", "tokenizer") else "---:" for k, _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: one group per language, one bar per tokenizer; chars/token and bytes/token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = [lang for lang in LANGUAGES if any(r["language"] == lang for r in rows)]
    names = list(dict.fromkeys(r["tokenizer"] for r in rows))
    value = {(r["tokenizer"], r["language"]): r for r in rows}
    width = 0.8 / len(names)
    fig, axes = plt.subplots(1, 2, figsize=(min(15.0, 3 + 0.6 * len(langs) * len(names)), 4.6),
                             constrained_layout=True)
    panels = (("chars_per_token", "characters per token"), ("bytes_per_token", "bytes per token"))
    for ax, (key, title) in zip(axes, panels):
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(langs))]
            ys = [value[(name, lang)][key] for lang in langs]  # every tokenizer saw the same texts
            bars = ax.bar(xs, ys, width, label=f"{name} ({value[(name, langs[0])]['vocab']:,})")
            ax.bar_label(bars, fmt="%.2f", fontsize=6.5, padding=1)
        counts = {lang: next(r["texts"] for r in rows if r["language"] == lang) for lang in langs}
        ax.set_xticks(range(len(langs)), [f"{lang}\n({counts[lang]:,} texts)" for lang in langs])
        ax.set_title(title)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="tokenizer (vocabulary size)", loc="outside lower center",
               ncol=min(len(names), 3), fontsize=8, title_fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)

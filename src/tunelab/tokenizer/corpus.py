"""Texts to train and measure tokenizers on, streamed from text files, folders and tunelab data sources.

    for where, text in iter_texts(["notes/", "book.txt", "gsm8k", "chat.jsonl"]):
        ...

What each corpus path gives:
- a `.txt` or `.md` file: its paragraphs (lines up to and including the blank lines after them), so
  the pieces joined are the file exactly (newlines and whitespace runs included); a byte that is not
  UTF-8 is a DataError naming the file, byte offset and line;
- a folder: every `.txt`/`.md` file below it, in sorted order (a `datasets.save_to_disk` folder is a
  data source instead);
- anything else: a tunelab data source (`tunelab.data.sources`: a JSON/JSONL/CSV/TSV/Parquet file, a
  built-in name such as `gsm8k`, a hub id online). Each record gives the contents of all its messages
  after the format's conversion, i.e. the text `tunelab prepare` trains on; with `text_field`, the raw
  record's field instead.

Everything is a generator: one paragraph or record at a time, so a corpus is never held in memory
(the JSON readers of `tunelab.data.sources` do parse a `.json` array whole, as they must).
A path that yields no text is a DataError naming it: a user who names a file expects it to count.
"""
from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

from ..data.conversation import is_text
from ..data.sources import TEXT_SUFFIXES, iter_conversations, iter_records, iter_text_lines, resolve, text_files
from ..errors import DataError

# A paragraph longer than this is cut at a line end: a file with no blank lines must not become one
# giant string (only whole lines are kept together; a single line is never cut).
MAX_PIECE_CHARS = 1 << 16


def iter_texts(paths: Iterable[str | Path], *, text_field: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield (where, text) for every piece of text in `paths`, in order; `where` names file and line/record."""
    for path in paths:
        seen = False
        for where, text in _iter_one(str(path), text_field):
            if text.strip():
                seen = True
                yield where, text
        if not seen:
            text_file = Path(path).is_dir() or Path(path).suffix.lower() in TEXT_SUFFIXES
            what = f"field {text_field!r} of its records is" if text_field and not text_file else "its contents are"
            raise DataError(f"corpus {str(path)!r} has no text: {what} empty")


def _iter_one(path: str, text_field: str | None) -> Iterator[tuple[str, str]]:
    kind, target, _, _ = resolve(path)
    if kind == "textdir":
        return chain.from_iterable(_paragraphs(iter_text_lines(f), str(f)) for f in text_files(target))
    if kind == "file" and Path(target).suffix.lower() in TEXT_SUFFIXES:
        return _paragraphs(iter_text_lines(target), target)
    return _records(path, text_field)


def _paragraphs(lines: Iterable[str], name: str) -> Iterator[tuple[str, str]]:
    buf: list[str] = []
    size, start, lineno, blank_seen = 0, 1, 0, False
    for lineno, line in enumerate(lines, 1):
        blank = not line.strip()
        if buf and ((blank_seen and not blank) or size >= MAX_PIECE_CHARS):
            yield f"{name}:{start}", "".join(buf)
            buf, size, start, blank_seen = [], 0, lineno, False
        buf.append(line)
        size += len(line)
        blank_seen = blank_seen or blank
    if buf:
        yield f"{name}:{start}", "".join(buf)


def _records(source: str, text_field: str | None) -> Iterator[tuple[str, str]]:
    """Texts of a data source's records: the raw `text_field`, or every message content after the
    format's conversion (the one conversion loop, `sources.iter_conversations`; not validated as
    training conversations: a corpus of questions alone is still text)."""
    if text_field is not None:
        for where, record in iter_records(source):
            yield where, _field(record, text_field, where)
        return
    for where, example in iter_conversations(source, check=False):
        if is_text(example):
            yield where, example["text"]
        else:
            for i, m in enumerate(example["messages"]):
                yield f"{where} message {i}", m["content"]


def _field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: no field {field!r} (--text-field); the record has {keys}")
    value = record[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value

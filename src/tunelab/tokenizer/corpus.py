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
from ..data.formats import detect, get_reader
from ..data.sources import iter_records, resolve
from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
# A paragraph longer than this is cut at a line end: a file with no blank lines must not become one
# giant string (only whole lines are kept together; a single line is never cut).
MAX_PIECE_CHARS = 1 << 16
_SAVED_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


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
    p = Path(path).expanduser()
    if p.is_dir() and not any((p / m).exists() for m in _SAVED_DATASET_MARKERS):
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"folder {path!r} has no {' or '.join(TEXT_SUFFIXES)} files (searched recursively); "
                            "pass data files (.jsonl, .csv, ...) by name")
        return chain.from_iterable(_text_file(f) for f in files)
    if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES:
        return _text_file(p)
    return _records(path, text_field)


def _text_file(path: Path) -> Iterator[tuple[str, str]]:
    try:
        # newline="" keeps "\r\n" as written: the tokenizer must see the text exactly.
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from _paragraphs(f, str(path))
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


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


def _not_utf8(path: Path) -> DataError:
    """Find the first byte that is not UTF-8 (a second, binary pass, taken only on the error path).
    Lines split at b"\n", which never occurs inside a UTF-8 character, so each line decodes alone."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return DataError(
                    f"{path}: not UTF-8 text: byte 0x{line[e.start]:02x} at byte offset {offset + e.start} "
                    f"(line {lineno}); convert the file first, e.g. `iconv -f GB18030 -t UTF-8` for GBK Chinese")
            offset += len(line)
    return DataError(f"{path}: not UTF-8 text")


def _records(source: str, text_field: str | None) -> Iterator[tuple[str, str]]:
    """Texts of a data source's records. Like `sources.load_conversations`, but a generator (that one
    returns a list), with the same format detection: the built-in set's format, else the first record's."""
    kind, target, fmt, columns = resolve(source)
    if kind == "file" and Path(target).suffix.lower() not in (".json", ".jsonl", ".csv", ".tsv", ".parquet"):
        raise DataError(f"{target}: unsupported corpus file type {Path(target).suffix or '(none)'!r}; "
                        f"text: {', '.join(TEXT_SUFFIXES)}; data: .json, .jsonl, .csv, .tsv, .parquet")
    reader = None if fmt == "auto" else get_reader(fmt)
    try:
        for where, record in iter_records(source):
            if text_field is not None:
                yield where, _field(record, text_field, where)
                continue
            if reader is None:  # detect once: a stray record then fails loudly instead of switching format
                try:
                    fmt, detected = detect(record)
                except DataError as e:
                    raise DataError(f"{where}: {e}") from None
                reader, columns = get_reader(fmt), detected
            try:
                example = reader(record, columns=columns, where=where, source=source)
            except DataError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
                raise DataError(f"{where}: bad {fmt} record: {type(e).__name__}: {e}") from e
            if is_text(example):
                yield where, example["text"]
            else:
                for i, m in enumerate(example["messages"]):
                    yield f"{where} message {i}", m["content"]
    except UnicodeDecodeError:
        raise _not_utf8(Path(target)) from None


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

"""Documents for the retrieval index: files and records turned into text with a source and a location.

    files = expand_sources(["notes/", "gsm8k_train.jsonl"])
    for doc in read_documents(files[0], field="{question}\\n{answer}"):
        print(doc.doc_id, doc.citation, doc.text[:40])

Record files (JSON, JSON lines, CSV/TSV, Parquet) are read with the same reader as `tunelab prepare`
(`tunelab.data.sources.iter_records`); each record is one *item* (a Q&A pair, a solved problem) and
becomes one chunk. Plain `.txt`/`.md` files are one document each, cut into chunks later
(`tunelab.rag.chunking`). A record's text is one column (`field="solution"`), a template over its
columns (`field="{question}\\n{answer}"`), or, when no field is given, the first known pair of columns
(question/answer, problem/solution, instruction/input/output, input/golden, text).
A built-in data set name (`gsm8k`, see `tunelab data`) stands for its file.
"""
from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Iterator

from tunelab.errors import DataError

TEXT_EXTENSIONS = (".txt", ".md", ".markdown")
RECORD_EXTENSIONS = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
# Columns tried in order when no field is given; the first set whose columns are all present wins
# (empty parts such as alpaca's blank `input` are left out of the text).
AUTO_FIELDS = (("question", "answer"), ("problem", "solution"), ("instruction", "input", "output"),
               ("input", "golden"), ("text",), ("content",))
_META_MAX_CHARS = 200  # short scalar columns travel with a chunk as metadata; long ones are the text


@dataclass
class Document:
    path: str  # absolute path of the file (the store's key for incremental updates)
    doc_id: str  # the record's id column, else "<file name><loc>"; what evaluation calls a document
    loc: str  # ":LINE" (JSON lines, text) or "[INDEX]" (JSON arrays, CSV, Parquet)
    text: str
    item: bool  # True: one record, kept as one chunk; False: a text file, cut into chunks
    meta: dict[str, Any] = dc_field(default_factory=dict)

    @property
    def citation(self) -> str:
        return f"{Path(self.path).name}{self.loc}"


def expand_sources(sources: list[str]) -> list[Path]:
    """Files named, files under folders named (recursively, sorted, hidden ones skipped), built-in sets."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists():
            path = _builtin_file(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _supported(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"{path}: no files to index in this folder (looked for "
                                f"{', '.join(TEXT_EXTENSIONS + RECORD_EXTENSIONS)})")
            files += found
        elif _supported(path):
            files.append(path)
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
                            f"supported: {', '.join(TEXT_EXTENSIONS + RECORD_EXTENSIONS)}")
    unique = list(dict.fromkeys(p.resolve() for p in files))  # a file named twice is indexed once
    return unique


def _supported(path: Path) -> bool:
    return path.suffix.lower() in TEXT_EXTENSIONS + RECORD_EXTENSIONS


def _builtin_file(source: str) -> Path:
    from tunelab.data.sources import BUILTIN_DATA, resolve

    if source not in BUILTIN_DATA:
        raise DataError(f"{source}: no such file or folder (and not a built-in data set: {', '.join(BUILTIN_DATA)})")
    kind, target, _, _ = resolve(source)  # raises a DataError naming the data directories searched
    if kind != "file":
        raise DataError(f"{source}: a generated data set cannot be indexed; write it to a file first")
    return Path(target)


def file_bytes(path: Path) -> bytes:
    """The file's bytes, checked to be UTF-8 unless it is Parquet (binary by design)."""
    data = path.read_bytes()
    if path.suffix.lower() != ".parquet":
        check_utf8(data, path)
    return data


def check_utf8(data: bytes, path: Path | str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} (line {line}); "
                        f"convert the file to UTF-8 first, e.g. `iconv -f GB18030 -t UTF-8 {path} > out{Path(path).suffix}`"
                        ) from None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_documents(path: Path, *, field: str | None = None, id_field: str | None = None,
                   data: bytes | None = None) -> Iterator[Document]:
    """Documents of one file; `data` are its bytes when the caller already read them (to hash)."""
    path = Path(path).resolve()
    data = file_bytes(path) if data is None else data  # also refuses a non-UTF-8 file, naming the byte
    if path.suffix.lower() in TEXT_EXTENSIONS:
        text = data.decode("utf-8-sig").replace("\r\n", "\n")
        if text.strip():
            yield Document(str(path), path.name, ":1", text, item=False)
        return
    yield from _read_records(path, field, id_field)


def _read_records(path: Path, field: str | None, id_field: str | None) -> Iterator[Document]:
    from tunelab.data.sources import iter_records

    for where, record in iter_records(str(path)):
        loc = where[len(str(path)):]  # iter_records names records "path:LINE" or "path[i]"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a record (a JSON object or a table row), got {type(record).__name__}")
        text, used = render(record, field, where)
        if not text.strip():
            continue  # an empty item has nothing to retrieve; skipping it is not an error
        doc_id = _doc_id(record, id_field, where) or f"{path.name}{loc}"
        id_column = id_field or "id"
        meta = {k: v for k, v in record.items() if k not in used and k != id_column and _short_scalar(v)}
        yield Document(str(path), doc_id, loc, text, item=True, meta=meta)


def _doc_id(record: dict, id_field: str | None, where: str) -> str | None:
    if id_field is None:
        value = record.get("id")  # an `id` column is used when present, without being asked
    elif id_field not in record or record[id_field] in (None, ""):
        raise DataError(f"{where}: id column {id_field!r} is missing or empty; columns: {', '.join(record)}")
    else:
        value = record[id_field]
    return None if value in (None, "") else str(value)


def _short_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= _META_MAX_CHARS)


def render(record: dict, field: str | None, where: str) -> tuple[str, set[str]]:
    """(text, columns used): one column, a `{col}` template, or the first known column set."""
    columns = ", ".join(map(repr, record)) or "(none)"
    if field is None:
        for names in AUTO_FIELDS:
            if all(n in record for n in names):
                parts = [_as_text(record[n], n, where) for n in names]
                return "\n".join(p for p in parts if p.strip()), set(names)
        raise DataError(f"{where}: no known text columns; choose them with --field COLUMN or a template such as "
                        f"--field '{{question}}\\n{{answer}}'; columns: {columns}")
    if "{" not in field:
        if field not in record:
            raise DataError(f"{where}: column {field!r} (from --field) is missing; columns: {columns}")
        return _as_text(record[field], field, where), {field}
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(field) if name}
    except ValueError as e:
        raise DataError(f"--field template {field!r} is not a valid format string: {e}") from None
    missing = sorted(n for n in names if n not in record)
    if missing:
        raise DataError(f"{where}: column(s) {missing} used in the --field template {field!r} are missing; "
                        f"columns: {columns}")
    return field.format_map({n: _as_text(record[n], n, where) for n in names}), names


def _as_text(value: Any, name: str, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: column {name!r} must be text or a number, got {type(value).__name__}: {value!r:.80}")


def display_path(path: str) -> str:
    """A path as short as it can be said: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel

"""Build or update an index from files: new files are added, changed files re-indexed, the rest kept.

    summary = index_sources("kb", ["notes/", "gsm8k"], encoder="minilm", field="{question}\\n{answer}")

A file is re-indexed when its content hash or the settings that cut it (field, id column, chunk size,
overlap, tokenizer) changed since the last run; settings not given are the index's previous ones; `prune=True` also removes files indexed before that
are not among `sources` now; `remove_files` removes the ones named. Each file is replaced in one
transaction, so an interrupted run leaves every file either as it was or fully updated.

The encoder is fixed when the index gets one: a later run with another is refused, a run without
`encoder` re-uses the index's own, and giving an encoder to a BM25-only index re-indexes every file
(the chunks are then cut by the encoder's tokens and embedded).
Chunking counts the encoder's tokens (or the fallback's without an encoder); records are one chunk
each (`chunk_items=True` cuts long records too).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tunelab.errors import DataError, UserError
from tunelab.rag.chunking import check_sizes, chunk_spans, line_of
from tunelab.rag.documents import content_hash, display_path, expand_sources, file_bytes, read_documents
from tunelab.rag.lexical import tokenize
from tunelab.rag.store import STORE_FILE, Chunk, Store

DEFAULTS = {"field": None, "id_field": None, "chunk_tokens": 256, "overlap": 32, "chunk_items": False}
EMBED_BATCH = 512  # chunks embedded and written per step of a file's transaction


def index_sources(index_dir: str | Path, sources: list[str], *, field: str | None = None, id_field: str | None = None,
                  encoder: str | None = None, chunk_tokens: int | None = None, overlap: int | None = None,
                  chunk_items: bool | None = None, prune: bool = False, batch_size: int = 32,
                  flat_max: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Settings left None take the index's previous ones (so a plain re-run only picks up changed files),
    else the defaults: auto field, 256 tokens, overlap chunk_tokens / 8, one chunk per record."""
    files = expand_sources(sources)
    index_dir = Path(index_dir)
    fresh = not (index_dir / STORE_FILE).exists()
    created_dir = not index_dir.exists()
    store = Store.create(index_dir)
    try:
        given = {"field": field, "id_field": id_field, "chunk_tokens": chunk_tokens, "overlap": overlap,
                 "chunk_items": chunk_items}
        settings = {**DEFAULTS, **json.loads(store.get_meta("settings") or "{}"),
                    **{k: v for k, v in given.items() if v is not None}}
        if chunk_tokens is not None and overlap is None:  # a new size without an overlap: the size's default
            settings["overlap"] = chunk_tokens // 8
        field, id_field, chunk_tokens, overlap, chunk_items = (settings[k] for k in given)
        check_sizes(chunk_tokens, overlap)
        enc = _encoder_for(store, encoder)
        settings["tokenizer"] = enc.name if enc else "fallback"
        summary: dict[str, Any] = {"added": [], "updated": [], "unchanged": [], "removed": [], "empty": []}
        known = store.files()
        t0 = time.perf_counter()
        for path in files:
            data = file_bytes(path)
            key = hashlib.sha256((content_hash(data) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
            name = str(path)
            if known.get(name, ("",))[0] == key:
                summary["unchanged"].append(name)
                continue
            t = time.perf_counter()
            batches = _batches(path, data, field, id_field, enc, chunk_tokens, overlap, chunk_items, batch_size)
            n = store.replace_file(name, key, batches)
            summary["updated" if name in known else "added"].append(name)
            if n == 0:
                summary["empty"].append(name)
            log(f"indexed {display_path(name)}: {n:,} chunks ({time.perf_counter() - t:.1f} s)")
        if prune:
            keep = {str(p) for p in files}
            for name in known:
                if name not in keep:
                    store.delete_file(name)
                    summary["removed"].append(name)
                    log(f"removed {display_path(name)} (not among the sources)")
        if store.count() == 0:
            raise DataError(f"nothing to index: {len(files)} file(s) read ({', '.join(display_path(str(f)) for f in files[:5])}"
                            f"{', ...' if len(files) > 5 else ''}) gave no text (empty files, or empty fields"
                            f"{f' {field!r}' if field else ''})")
        store.set_meta("settings", json.dumps({k: settings[k] for k in given}))
        if enc is not None:
            _sync_dense(store, flat_max, log)
        summary.update(chunks=store.count(), files=len(store.files()), encoder=store.encoder,
                       seconds=round(time.perf_counter() - t0, 2), index=str(index_dir))
        return summary
    except BaseException:
        store.close()
        if fresh:  # never leave a half-made or empty index behind for the next command to trip on
            shutil.rmtree(index_dir, ignore_errors=True) if created_dir else _remove_index_files(index_dir)
        raise
    finally:
        store.close()


def remove_files(index_dir: str | Path, paths: list[str], log: Callable[[str], None] = print) -> list[str]:
    """Remove the named files' chunks from an index (by the path they were indexed from)."""
    store = Store.open(index_dir)
    try:
        known = store.files()
        removed = []
        for p in paths:
            name = str(Path(p).expanduser().resolve())
            if name not in known:
                listed = ", ".join(display_path(k) for k in list(known)[:5]) or "(none)"
                raise UserError(f"{p}: not a file of the index {index_dir}; its files: {listed}")
            store.delete_file(name)
            removed.append(name)
            log(f"removed {display_path(name)}")
        if store.encoder is not None:
            _sync_dense(store, None, log)
        return removed
    finally:
        store.close()


def _encoder_for(store: Store, ref: str | None) -> Any:
    from tunelab.rag.encoder import load_encoder, resolve_encoder

    have = store.encoder
    if ref is None:
        return load_encoder(have[0]) if have else None
    name = resolve_encoder(ref)[0]
    if have and have[0] != name:
        raise UserError(f"{store.dir} was built with encoder {have[0]!r} ({have[1]}-dim vectors); it cannot take "
                        f"vectors from {name!r}. Omit --encoder to use the index's own, or choose a new --output")
    enc = load_encoder(ref)
    if have and have[1] != enc.dim:
        raise UserError(f"{store.dir}: built with {have[1]}-dim vectors from {name!r}, which now gives {enc.dim}; "
                        f"rebuild the index into a new --output")
    if not have:
        store.set_encoder(enc.name, enc.dim)
    return enc


def _batches(path: Path, data: bytes, field: str | None, id_field: str | None, enc: Any, chunk_tokens: int,
             overlap: int, chunk_items: bool, batch_size: int) -> Iterator[tuple[list[Chunk], np.ndarray | None]]:
    pending: list[Chunk] = []
    tokenizer = enc.tokenizer if enc else None
    for doc in read_documents(path, field=field, id_field=id_field, data=data):
        if doc.item and not chunk_items:
            pending.append(Chunk(doc.doc_id, doc.loc, doc.text, tokenize(doc.text), doc.meta))
        else:
            base = int(doc.loc[1:]) if doc.loc.startswith(":") else None
            for start, end in chunk_spans(doc.text, chunk_tokens, overlap, tokenizer):
                text = doc.text[start:end]
                # a text file's chunk cites the line it starts on; a cut record keeps the record's place
                loc = f":{base + line_of(doc.text, start) - 1}" if base is not None and not doc.item else doc.loc
                pending.append(Chunk(doc.doc_id, loc, text, tokenize(text), doc.meta))
        if len(pending) >= EMBED_BATCH:
            yield pending, _embed(enc, pending, batch_size)
            pending = []
    if pending:
        yield pending, _embed(enc, pending, batch_size)


def _embed(enc: Any, chunks: list[Chunk], batch_size: int) -> np.ndarray | None:
    return None if enc is None else enc.encode([c.text for c in chunks], batch_size=batch_size)


def _sync_dense(store: Store, flat_max: int | None, log: Callable[[str], None]) -> None:
    from tunelab.rag.dense import FLAT_MAX, DenseIndex

    dense = DenseIndex.sync(store, flat_max=flat_max or FLAT_MAX, log=log)
    log(f"dense index: {dense.kind}, {dense.live:,} vectors of dimension {dense.dim}")


def _remove_index_files(index_dir: Path) -> None:
    for name in (STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", "dense.faiss", "dense_ids.npy",
                 "dense_deleted.npy", "dense.json"):
        (index_dir / name).unlink(missing_ok=True)

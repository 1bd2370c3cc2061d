"""The on-disk store of a retrieval index: one SQLite file with the chunks, their embeddings and BM25.

    store = Store.create("kb")            # kb/store.sqlite, made if absent
    store = Store.open("kb")              # an existing index, or one UserError saying there is none

Layout of `INDEX/store.sqlite` (SQLite from the standard library: one file, transactions, survives
restarts, readable with any SQLite tool):

    meta(key, value)        schema, encoder name, embedding dimension, generation (bumped by every change)
    files(path, key, ...)   one row per indexed file; `key` hashes its bytes and the settings that cut it
    chunks(id, path, doc_id, loc, ord, text, meta, embedding)   float32 bytes, or NULL without an encoder
    fts(tokens)             FTS5 table, rowid = chunk id: the words of `tunelab.rag.lexical.tokenize`

Why BM25 lives in SQLite's FTS5 and not in bm25s or a hand-written index: FTS5 keeps its postings in
the same file and the same transaction as the chunks, so add/delete/re-index of a file is incremental
and atomic (bm25s builds one sparse matrix for the whole corpus and must rebuild it on every change),
and its `bm25()` is standard Okapi BM25 with k1 = 1.2, b = 0.75 and idf = ln((N - n + 0.5) / (n + 0.5))
(floored at 1e-6 for words in more than half of the chunks). We give FTS5 our own words, space-
separated, so Chinese is segmented by jieba and not by FTS5.

The dense FAISS index is a cache beside this file (`tunelab.rag.dense`), rebuilt from the embeddings
here whenever `generation` says it is stale; the store is the source of truth.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote

import numpy as np

from tunelab.errors import UserError
from tunelab.rag.lexical import match_query

SCHEMA_VERSION = "1"
STORE_FILE = "store.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, key TEXT NOT NULL, chunks INTEGER NOT NULL,
                                  indexed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale FAISS entry can never name a new chunk
    path TEXT NOT NULL, doc_id TEXT NOT NULL, loc TEXT NOT NULL, ord INTEGER NOT NULL,
    text TEXT NOT NULL, meta TEXT NOT NULL, embedding BLOB);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    tokens, tokenize="unicode61 remove_diacritics 0 categories 'L* N* Co M*'");
"""


@dataclass
class Chunk:
    doc_id: str
    loc: str
    text: str
    tokens: list[str]  # BM25 words
    meta: dict[str, Any]


class Store:
    def __init__(self, index_dir: Path, conn: sqlite3.Connection):
        self.dir, self.conn = index_dir, conn

    @classmethod
    def create(cls, index_dir: str | Path) -> "Store":
        index_dir = Path(index_dir)
        if index_dir.exists() and not index_dir.is_dir():
            raise UserError(f"{index_dir}: exists and is not a folder; --output names the index folder")
        if index_dir.is_dir() and any(index_dir.iterdir()) and not (index_dir / STORE_FILE).is_file():
            raise UserError(f"{index_dir}: a non-empty folder that is not a tunelab rag index; choose another --output")
        index_dir.mkdir(parents=True, exist_ok=True)
        conn = _connect(index_dir / STORE_FILE, create=True)
        with conn:
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        store = cls(index_dir, conn)
        store._check_schema()
        return store

    @classmethod
    def open(cls, index_dir: str | Path) -> "Store":
        index_dir = Path(index_dir)
        path = index_dir / STORE_FILE
        if not path.is_file():
            what = "does not exist" if not index_dir.exists() else f"has no {STORE_FILE}"
            raise UserError(f"{index_dir}: not a tunelab rag index ({what}); build one with "
                            f"`tunelab rag index SOURCES... --output {index_dir}`")
        store = cls(index_dir, _connect(path, create=False))
        store._check_schema()
        return store

    def _check_schema(self) -> None:
        try:
            found = self.get_meta("schema")
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.dir / STORE_FILE}: not a readable tunelab rag store ({e})") from None
        if found != SCHEMA_VERSION:
            raise UserError(f"{self.dir / STORE_FILE}: store schema {found!r}, this tunelab reads {SCHEMA_VERSION!r}; "
                            f"rebuild the index with `tunelab rag index`")

    def close(self) -> None:
        self.conn.close()

    # -- metadata -----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    @property
    def encoder(self) -> tuple[str, int] | None:
        """(encoder name, embedding dimension), or None for a BM25-only index."""
        name, dim = self.get_meta("encoder"), self.get_meta("dim")
        return (name, int(dim)) if name else None

    def set_encoder(self, name: str, dim: int) -> None:
        with self._write():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('encoder', ?)", (name,))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(dim),))

    # -- files and chunks ---------------------------------------------------------------------------
    def files(self) -> dict[str, tuple[str, int]]:
        """path -> (key, number of chunks)."""
        return {p: (k, n) for p, k, n in self.conn.execute("SELECT path, key, chunks FROM files ORDER BY path")}

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def replace_file(self, path: str, key: str, batches: Iterable[tuple[list[Chunk], np.ndarray | None]]) -> int:
        """Replace every chunk of `path` by the chunks in `batches`, in one transaction; returns the count.

        `batches` is consumed inside the transaction, so a file whose embedding fails half-way leaves
        the store as it was, and a big file is never held in memory whole.
        """
        n = 0
        with self._write():
            self._delete_chunks(path)
            for chunks, vectors in batches:
                for i, c in enumerate(chunks):
                    blob = None if vectors is None else np.ascontiguousarray(vectors[i], dtype=np.float32).tobytes()
                    cur = self.conn.execute(
                        "INSERT INTO chunks (path, doc_id, loc, ord, text, meta, embedding) VALUES (?,?,?,?,?,?,?)",
                        (path, c.doc_id, c.loc, n, c.text, json.dumps(c.meta, ensure_ascii=False), blob))
                    self.conn.execute("INSERT INTO fts (rowid, tokens) VALUES (?, ?)", (cur.lastrowid, " ".join(c.tokens)))
                    n += 1
            self.conn.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                              (path, key, n, time.strftime("%Y-%m-%dT%H:%M:%S")))
        return n

    def delete_file(self, path: str) -> int:
        with self._write():
            n = self._delete_chunks(path)
            self.conn.execute("DELETE FROM files WHERE path = ?", (path,))
        return n

    def _delete_chunks(self, path: str) -> int:
        self.conn.execute("DELETE FROM fts WHERE rowid IN (SELECT id FROM chunks WHERE path = ?)", (path,))
        return self.conn.execute("DELETE FROM chunks WHERE path = ?", (path,)).rowcount

    def _write(self) -> "_Transaction":
        return _Transaction(self.conn)

    def embedding_ids(self) -> np.ndarray:
        rows = self.conn.execute("SELECT id FROM chunks WHERE embedding IS NOT NULL ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def embeddings(self, ids: np.ndarray | None = None, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 matrix) in batches: all embedded chunks, or those whose ids are given (sorted)."""
        dim = self.encoder[1] if self.encoder else 0
        if ids is None:
            query, last = "SELECT id, embedding FROM chunks WHERE embedding IS NOT NULL AND id > ? ORDER BY id LIMIT ?", 0
            while rows := self.conn.execute(query, (last, batch)).fetchall():
                last = rows[-1][0]
                yield _unpack(rows, dim)
            return
        for start in range(0, len(ids), 900):  # SQLite limits bound parameters per statement
            part = [int(i) for i in ids[start:start + 900]]
            rows = self.conn.execute(f"SELECT id, embedding FROM chunks WHERE id IN ({','.join('?' * len(part))}) "
                                     "AND embedding IS NOT NULL ORDER BY id", part).fetchall()
            if rows:
                yield _unpack(rows, dim)

    def chunks(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """id -> row (path, doc_id, loc, text, meta) for the ids that still exist."""
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), 900):
            part = ids[start:start + 900]
            for row in self.conn.execute(f"SELECT id, path, doc_id, loc, text, meta FROM chunks WHERE id IN "
                                         f"({','.join('?' * len(part))})", part):
                out[row[0]] = {"path": row[1], "doc_id": row[2], "loc": row[3], "text": row[4], "meta": json.loads(row[5])}
        return out

    def bm25(self, tokens: list[str], limit: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) best first; higher is better (FTS5's bm25() is negated)."""
        expr = match_query(tokens)
        if expr is None:
            return []
        rows = self.conn.execute("SELECT rowid, -bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY bm25(fts), rowid LIMIT ?",
                                 (expr, limit)).fetchall()
        return [(int(i), float(s)) for i, s in rows]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT that also bumps `generation`, so caches beside the store see the change."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.conn.execute("ROLLBACK")
            return
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        self.conn.execute("COMMIT")


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE takes the write lock up front).
    uri = f"file:{quote(str(Path(path).resolve()))}?mode={'rwc' if create else 'rw'}"  # rw: never create on open
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")  # readers (a server) never wait for an indexing writer
    return conn


def _unpack(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return ids, vectors

"""Retrieval from an index: BM25, dense (FAISS) or hybrid (reciprocal rank fusion of the two).

    r = Retriever("kb")                                  # the index's own encoder, loaded on first dense use
    hits = r.search("how many clips?", k=5, mode="hybrid", exclude=Exclude(ids={"q17"}, texts=[question]))
    for h in hits: print(h.citation, h.score, h.text)

Each method first takes `depth` candidates (default max(50, 2k)); excluded chunks (the leakage check,
`tunelab.rag.leakage`) are dropped before ranking, so they take no rank from the others. Hybrid scores
a chunk by reciprocal rank fusion, sum over methods of 1 / (rrf_k + rank), rank starting at 1 and
rrf_k = 60 (Cormack, Clarke and Buettcher, SIGIR 2009): it needs no score calibration between BM25
and cosine, and a chunk found by one method only still counts.

A query with another encoder than the index's is refused: vectors of two models are not comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import UserError
from tunelab.rag.dense import FLAT_MAX, DenseIndex
from tunelab.rag.leakage import Exclude
from tunelab.rag.lexical import tokenize
from tunelab.rag.store import Store

MODES = ("bm25", "dense", "hybrid")
RRF_K = 60


@dataclass
class Hit:
    chunk_id: int
    doc_id: str
    path: str
    loc: str
    text: str
    score: float  # the method's score: BM25, cosine, or the RRF sum for hybrid
    meta: dict[str, Any] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)  # rank in each method that found it (1 = best)

    @property
    def citation(self) -> str:
        return f"{Path(self.path).name}{self.loc}"


@dataclass
class Results:
    hits: list[Hit]
    excluded: list[tuple[str, str]]  # (doc id, reason) of candidates dropped by the leakage check


def rrf(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: [(id, sum of 1/(k + rank))] best first; ties keep first-seen order."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


class Retriever:
    def __init__(self, index_dir: str | Path, *, encoder: str | None = None, flat_max: int = FLAT_MAX):
        self.dir = Path(index_dir)
        self.store = Store.open(self.dir)
        self.flat_max = flat_max
        self._encoder: Any = None
        self._dense: DenseIndex | None = None
        info = self.store.encoder
        if encoder is not None:
            from tunelab.rag.encoder import resolve_encoder

            name = resolve_encoder(encoder)[0]
            if info is None:
                raise UserError(f"{self.dir} was built without an encoder (BM25 only), so it cannot be queried with "
                                f"encoder {name!r}; omit --encoder, or add embeddings with "
                                f"`tunelab rag index SOURCES... --output {self.dir} --encoder {encoder}`")
            if name != info[0]:
                raise UserError(f"{self.dir} was built with encoder {info[0]!r} ({info[1]}-dim vectors); a query "
                                f"embedded by {name!r} cannot be compared with them. Omit --encoder (--rag-encoder) to "
                                f"use the index's own, or build a new index with --encoder {encoder}")

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.store.encoder else ("bm25",)

    @property
    def default_mode(self) -> str:
        return "hybrid" if self.store.encoder else "bm25"

    def check_mode(self, mode: str | None) -> str:
        """The mode to search with (None: the index's default), or a UserError if this index cannot."""
        mode = mode or self.default_mode
        if mode not in MODES:
            raise UserError(f"retrieval mode {mode!r} is not one of {', '.join(MODES)}")
        if mode not in self.modes:
            raise UserError(f"{self.dir} has no dense vectors (built without --encoder), so mode {mode!r} cannot run; "
                            f"use --mode bm25, or add an encoder with `tunelab rag index ... --output {self.dir} "
                            f"--encoder minilm`")
        return mode

    def encoder(self) -> Any:
        if self._encoder is None:
            from tunelab.rag.encoder import load_encoder

            name, dim = self.store.encoder  # type: ignore[misc]
            enc = load_encoder(name)
            if enc.dim != dim:
                raise UserError(f"{self.dir}: built with {dim}-dim vectors from {name!r}, which now gives {enc.dim}-dim "
                                f"vectors (the model at that path changed); rebuild the index")
            self._encoder = enc
        return self._encoder

    def dense_index(self) -> DenseIndex:
        if self._dense is None or self._dense.generation != self.store.generation:
            self._dense = DenseIndex.sync(self.store, flat_max=self.flat_max)
        return self._dense

    def search(self, query: str, k: int = 5, *, mode: str | None = None, exclude: Exclude | None = None,
               rrf_k: int = RRF_K, depth: int | None = None) -> list[Hit]:
        return self.search_many([query], k, mode=mode, excludes=[exclude], rrf_k=rrf_k, depth=depth)[0].hits

    def search_many(self, queries: list[str], k: int = 5, *, mode: str | None = None,
                    excludes: list[Exclude | None] | None = None, rrf_k: int = RRF_K,
                    depth: int | None = None) -> list[Results]:
        """One `Results` per query; dense queries are embedded in one batch."""
        mode = self.check_mode(mode)
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        depth = depth or max(50, 2 * k)
        methods = ["bm25", "dense"] if mode == "hybrid" else [mode]
        candidates: dict[str, list[list[tuple[int, float]]]] = {}
        if "bm25" in methods:
            candidates["bm25"] = [self.store.bm25(tokenize(q), depth) for q in queries]
        if "dense" in methods:
            vectors = self.encoder().encode(queries)
            candidates["dense"] = self.dense_index().search(vectors, depth)
        excludes = excludes or [None] * len(queries)
        return [self._rank({m: candidates[m][i] for m in methods}, k, excludes[i], rrf_k) for i in range(len(queries))]

    def _rank(self, found: dict[str, list[tuple[int, float]]], k: int, exclude: Exclude | None,
              rrf_k: int) -> Results:
        rows = self.store.chunks(list({i for pairs in found.values() for i, _ in pairs}))
        excluded: dict[int, str] = {}
        for i, row in rows.items():
            reason = exclude.reason(row["doc_id"], row["text"]) if exclude else None
            if reason:
                excluded[i] = reason
        kept = {m: [(i, s) for i, s in pairs if i in rows and i not in excluded] for m, pairs in found.items()}
        ranks = {m: {i: r for r, (i, _) in enumerate(pairs, 1)} for m, pairs in kept.items()}
        if len(kept) == 1:
            ordered = next(iter(kept.values()))
        else:
            ordered = rrf([[i for i, _ in pairs] for pairs in kept.values()], rrf_k)
        hits = []
        for i, score in ordered[:k]:
            row = rows[i]
            hits.append(Hit(i, row["doc_id"], row["path"], row["loc"], row["text"], score, row["meta"],
                            {m: r[i] for m, r in ranks.items() if i in r}))
        return Results(hits, [(rows[i]["doc_id"], why) for i, why in excluded.items()])

    def close(self) -> None:
        self.store.close()

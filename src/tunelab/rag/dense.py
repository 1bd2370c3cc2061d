"""The dense vector index: FAISS beside the store, exact for small collections, HNSW for large ones.

    index = DenseIndex.sync(store)          # load INDEX/dense.faiss, bring it up to date, save it
    [(chunk_id, cosine), ...] = index.search(query_vector, k=10)

Up to `FLAT_MAX` vectors the index is `IndexFlatIP`: exact inner product (= cosine on unit vectors),
a few milliseconds at that size, and rebuilt from the store's embeddings on any change (cheap there).
Above it, `IndexHNSWFlat` (M=32, efConstruction=64, efSearch=128, inner product): a graph search
that `bench/rag.py` measures at 1M vectors against exact search and numpy. HNSW cannot remove a
vector, so a deleted chunk's position becomes a tombstone skipped at search time (an `IDSelector`),
new chunks are appended, and the graph is rebuilt once tombstones pass `REBUILD_DELETED` of it.

Files: `dense.faiss` (the FAISS index), `dense_ids.npy` (position -> chunk id), `dense_deleted.npy`
(tombstoned positions) and `dense.json` (kind, dimension, the store generation it matches). It is a
cache: delete them and the next query rebuilds them from `store.sqlite`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.rag.store import Store

FLAT_MAX = 50_000
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 64, 128
REBUILD_DELETED = 0.2
FEW_QUERIES = 20  # below this many queries per call, search on one thread (see search_index)


def new_index(kind: str, dim: int, *, m: int = HNSW_M, ef_construction: int = EF_CONSTRUCTION) -> Any:
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def search_index(index: Any, queries: np.ndarray, k: int, *, ef_search: int = EF_SEARCH,
                 skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the k best rows per query; positions in `skip` are never returned."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    hnsw = isinstance(index, faiss.IndexHNSW)
    params, keep = None, None
    if hnsw or (skip is not None and len(skip)):
        params = faiss.SearchParametersHNSW() if hnsw else faiss.SearchParameters()
        if hnsw:
            params.efSearch = max(ef_search, k)  # below k, HNSW would return fewer than k results
        if skip is not None and len(skip):
            batch = faiss.IDSelectorBatch(np.asarray(skip, dtype=np.int64))
            selector = faiss.IDSelectorNot(batch)
            params.sel = selector
            keep = (batch, selector)  # SWIG does not own them: keep both alive through the search
    # A few queries run on one OpenMP thread: on a busy 2-core machine, FAISS's threads waiting for
    # each other made one exact query at 50k vectors take 16 ms instead of 2.3 ms (measured here).
    threads = faiss.omp_get_max_threads()
    if len(queries) < FEW_QUERIES:
        faiss.omp_set_num_threads(1)
    try:
        scores, positions = index.search(queries, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)
    del keep
    return scores, positions


@dataclass
class DenseIndex:
    dir: Path
    kind: str
    dim: int
    generation: int
    index: Any
    ids: np.ndarray  # position -> chunk id
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # tombstoned positions

    @property
    def live(self) -> int:
        return len(self.ids) - len(self.deleted)

    @classmethod
    def sync(cls, store: Store, *, flat_max: int = FLAT_MAX, log: Any = None) -> "DenseIndex":
        """The index matching the store now: loaded if current, updated or rebuilt if not, then saved."""
        if store.encoder is None:
            raise ValueError("a BM25-only store has no dense index")
        dim, generation = store.encoder[1], store.generation
        current = cls._load(store.dir, dim)
        if current is not None and current.generation == generation:
            return current
        want_ids = store.embedding_ids()
        kind = "flat" if len(want_ids) <= flat_max else "hnsw"
        if current is not None and current.kind == "hnsw" == kind:
            updated = current._update(store, want_ids)
            if updated:
                updated.generation = generation
                updated.save()
                return updated
        if log and kind == "hnsw":
            log(f"building the HNSW index over {len(want_ids):,} vectors (minutes per million on a few cores) ...")
        index = new_index(kind, dim)
        for ids, vectors in store.embeddings():
            index.add(vectors)
        built = cls(store.dir, kind, dim, generation, index, want_ids)
        built.save()
        return built

    def _update(self, store: Store, want_ids: np.ndarray) -> "DenseIndex | None":
        """Append new chunks and tombstone removed ones; None when a rebuild is due instead."""
        live_mask = np.ones(len(self.ids), dtype=bool)
        live_mask[self.deleted] = False
        removed = np.flatnonzero(live_mask & ~np.isin(self.ids, want_ids))
        added = np.setdiff1d(want_ids, self.ids[live_mask])
        deleted = np.union1d(self.deleted, removed)
        if len(deleted) > REBUILD_DELETED * max(1, len(self.ids) + len(added)):
            return None
        new_ids = [self.ids]
        for ids, vectors in store.embeddings(added):
            self.index.add(vectors)
            new_ids.append(ids)
        self.ids, self.deleted = np.concatenate(new_ids), deleted.astype(np.int64)
        return self

    def search(self, queries: np.ndarray, k: int, *, ef_search: int = EF_SEARCH) -> list[list[tuple[int, float]]]:
        """Per query: [(chunk id, cosine), ...] best first, at most k."""
        if self.live == 0:
            return [[] for _ in range(len(queries))]
        scores, positions = search_index(self.index, np.atleast_2d(queries), min(k, self.live),
                                         ef_search=ef_search, skip=self.deleted)
        return [[(int(self.ids[p]), float(s)) for s, p in zip(srow, prow) if p >= 0]
                for srow, prow in zip(scores, positions)]

    # -- persistence --------------------------------------------------------------------------------
    def save(self) -> None:
        import faiss

        # Each file is written aside and renamed; dense.json (with the generation) goes last, and a
        # mismatch found on load (say, a crash between renames) just triggers a rebuild.
        tmp = self.dir / "dense.faiss.tmp"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, self.dir / "dense.faiss")
        for name, array in (("dense_ids.npy", self.ids), ("dense_deleted.npy", self.deleted)):
            with open(self.dir / (name + ".tmp"), "wb") as f:
                np.save(f, array)
            os.replace(self.dir / (name + ".tmp"), self.dir / name)
        meta = {"kind": self.kind, "dim": self.dim, "generation": self.generation, "vectors": int(self.index.ntotal),
                "live": int(self.live)}
        (self.dir / "dense.json.tmp").write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(self.dir / "dense.json.tmp", self.dir / "dense.json")

    @classmethod
    def _load(cls, index_dir: Path, dim: int) -> "DenseIndex | None":
        import faiss

        try:
            meta = json.loads((index_dir / "dense.json").read_text())
            index = faiss.read_index(str(index_dir / "dense.faiss"))
            ids = np.load(index_dir / "dense_ids.npy")
            deleted = np.load(index_dir / "dense_deleted.npy")
        except (OSError, ValueError, RuntimeError):  # absent or damaged: it is a cache, rebuild it
            return None
        if meta.get("dim") != dim or index.d != dim or index.ntotal != len(ids) or meta.get("vectors") != len(ids):
            return None
        return cls(index_dir, meta["kind"], dim, int(meta["generation"]), index, ids, deleted)

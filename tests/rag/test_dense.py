"""The FAISS index beside the store: exact below the threshold, HNSW above, kept in step with the store."""
from __future__ import annotations

import numpy as np

from tunelab.rag.dense import DenseIndex
from tunelab.rag.store import Chunk, Store

DIM = 16


def vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_file(store: Store, name: str, vecs: np.ndarray) -> None:
    chunks = [Chunk(f"{name}:{i}", f":{i}", f"text {i}", ["text"], {}) for i in range(len(vecs))]
    store.replace_file(name, name, [(chunks, vecs)])


def exact(store: Store, query: np.ndarray, k: int) -> list[int]:
    ids, mat = next(store.embeddings(batch=10**6))
    return [int(ids[i]) for i in np.argsort(-(mat @ query))[:k]]


def test_flat_is_exact_and_follows_the_store(tmp_path):
    store = Store.create(tmp_path / "kb")
    store.set_encoder("test", DIM)
    add_file(store, "/a", vectors(200, 0))
    index = DenseIndex.sync(store)
    q = vectors(5, 1)
    assert index.kind == "flat" and index.live == 200
    for row, query in zip(index.search(q, 10), q):
        assert [i for i, _ in row] == exact(store, query, 10)
        assert row[0][1] == np.float32(max(vectors(200, 0) @ query))  # the score is the cosine
    add_file(store, "/b", vectors(50, 2))
    store.delete_file("/a")
    index = DenseIndex.sync(store)
    assert index.live == 50 and all(i > 200 for i, _ in index.search(q[:1], 50)[0])


def test_hnsw_above_threshold_tombstones_appends_and_reloads(tmp_path):
    store = Store.create(tmp_path / "kb")
    store.set_encoder("test", DIM)
    add_file(store, "/a", vectors(300, 0))
    add_file(store, "/b", vectors(40, 3))
    index = DenseIndex.sync(store, flat_max=100)
    q = vectors(20, 1)
    assert index.kind == "hnsw" and index.live == 340
    found = index.search(q, 10)
    recall = np.mean([len({i for i, _ in row} & set(exact(store, query, 10))) / 10 for row, query in zip(found, q)])
    assert recall >= 0.98  # 340 vectors, efSearch 128: HNSW finds (almost) exactly the true neighbours

    store.delete_file("/b")  # 40 of 340 deleted: under 20%, so tombstones, not a rebuild
    add_file(store, "/c", vectors(10, 4))
    index = DenseIndex.sync(store, flat_max=100)
    assert index.index.ntotal == 350 and len(index.deleted) == 40 and index.live == 310
    b_ids = set(range(301, 341))
    results = index.search(q, 50)
    assert not b_ids & {i for row in results for i, _ in row}  # a deleted chunk is never returned
    assert {i for row in index.search(vectors(10, 4), 1) for i, _ in row} == set(range(341, 351))  # new ones found

    reloaded = DenseIndex.sync(store, flat_max=100)  # current generation: loaded from disk, not rebuilt
    assert reloaded is not index and reloaded.index.ntotal == 350
    assert reloaded.search(q, 50) == results

    store.delete_file("/a")  # now most of the graph is dead: rebuilt from the store's 10 vectors, exact again
    index = DenseIndex.sync(store, flat_max=100)
    assert index.kind == "flat" and index.index.ntotal == 10 and len(index.deleted) == 0


def test_the_files_are_a_cache(tmp_path):
    store = Store.create(tmp_path / "kb")
    store.set_encoder("test", DIM)
    add_file(store, "/a", vectors(30, 0))
    first = DenseIndex.sync(store).search(vectors(3, 1), 5)
    (tmp_path / "kb" / "dense.faiss").write_bytes(b"garbage")  # damaged: rebuilt, same answers
    assert DenseIndex.sync(store).search(vectors(3, 1), 5) == first
    (tmp_path / "kb" / "dense_ids.npy").unlink()
    assert DenseIndex.sync(store).search(vectors(3, 1), 5) == first

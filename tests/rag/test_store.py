"""The SQLite store: BM25 scores equal the Okapi formula, incremental updates, persistence, lexical words."""
from __future__ import annotations

import math

import pytest

from tunelab.errors import UserError
from tunelab.rag.lexical import match_query, tokenize
from tunelab.rag.store import Chunk, Store

DOCS = ["the cat sat on the mat", "the dog chased the cat", "a bird sang", "dogs and cats play",
        "the mat was red", "fish swim in the sea", "the sea is deep and blue", "birds fly over the sea"]


def chunk(text: str) -> Chunk:
    return Chunk(text[:8], ":1", text, tokenize(text), {})


def okapi(query: list[str], docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """BM25 written out, with FTS5's idf (ln((N - n + 0.5) / (n + 0.5)), floored at 1e-6)."""
    n_docs, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    scores = []
    for d in docs:
        s = 0.0
        for t in set(query):
            n = sum(t in x for x in docs)
            if n == 0 or t not in d:
                continue
            idf = max(math.log((n_docs - n + 0.5) / (n + 0.5)), 1e-6)
            f = d.count(t)
            s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(s)
    return scores


def test_tokenize_english_chinese_mixed():
    assert tokenize("Natalia sold 48 clips, don't_stop!") == ["natalia", "sold", "48", "clips", "don", "t", "stop"]
    assert tokenize("小明有５个苹果") == ["小明", "有", "5", "个", "苹果"]  # full-width digit normalised
    assert tokenize("Area of 长方形 is length×width") == ["area", "of", "长方形", "is", "length", "width"]
    assert match_query(["cat", "cat", "or"]) == '"cat" OR "or"'  # deduplicated; "or" stays a literal word
    assert match_query([]) is None


def test_bm25_scores_equal_the_formula(tmp_path):
    store = Store.create(tmp_path / "kb")
    store.replace_file("/docs.txt", "k1", [([chunk(t) for t in DOCS], None)])
    query = tokenize("the cat on the mat")
    got = store.bm25(query, 10)
    expected = okapi(query, [tokenize(t) for t in DOCS])
    ranked = sorted(((s, i + 1) for i, s in enumerate(expected) if s > 0), key=lambda x: -x[0])
    assert [i for i, _ in got] == [i for _, i in ranked]
    # cat+mat, mat, cat; then the docs with only "the" (in 6 of 8 docs: idf floored at 1e-6), shortest first
    assert [i for i, _ in got] == [1, 5, 2, 6, 8, 7]
    assert [s for _, s in got] == pytest.approx([s for s, _ in ranked], rel=1e-6)
    assert store.bm25(tokenize("zebra"), 10) == [] and store.bm25([], 10) == []


def test_incremental_replace_delete_and_reopen(tmp_path):
    store = Store.create(tmp_path / "kb")
    g0 = store.generation
    store.replace_file("/a.txt", "ka", [([chunk("alpha beta"), chunk("gamma")], None)])
    store.replace_file("/b.txt", "kb", [([chunk("beta delta")], None)])
    assert store.count() == 3 and store.generation == g0 + 2
    assert sorted(i for i, _ in store.bm25(["beta"], 10)) == [1, 3]
    # re-index a.txt with new content: its old chunks (and their BM25 postings) are gone, ids never reused
    store.replace_file("/a.txt", "ka2", [([chunk("epsilon")], None)])
    assert store.files() == {"/a.txt": ("ka2", 1), "/b.txt": ("kb", 1)}
    assert [i for i, _ in store.bm25(["beta"], 10)] == [3]
    assert [i for i, _ in store.bm25(["epsilon"], 10)] == [4]
    store.delete_file("/b.txt")
    assert store.bm25(["beta"], 10) == [] and store.count() == 1
    gen = store.generation
    store.close()
    again = Store.open(tmp_path / "kb")  # a restart: everything is still there
    assert again.files() == {"/a.txt": ("ka2", 1)} and again.generation == gen
    assert again.chunks([4])[4]["text"] == "epsilon"


def test_a_failed_file_leaves_the_store_as_it_was(tmp_path):
    store = Store.create(tmp_path / "kb")
    store.replace_file("/a.txt", "ka", [([chunk("alpha")], None)])

    def broken():
        yield [chunk("new text")], None
        raise RuntimeError("encoder crashed half-way")

    with pytest.raises(RuntimeError):
        store.replace_file("/a.txt", "ka2", broken())
    assert store.files() == {"/a.txt": ("ka", 1)} and [r["text"] for r in store.chunks([1]).values()] == ["alpha"]


def test_open_missing_or_foreign_index(tmp_path):
    with pytest.raises(UserError, match=r"nope: not a tunelab rag index \(does not exist\); build one with"):
        Store.open(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()  # opening never creates
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(UserError, match="a non-empty folder that is not a tunelab rag index"):
        Store.create(tmp_path / "other")

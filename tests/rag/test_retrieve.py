"""Indexing and retrieval end to end on the small corpus: known rankings for BM25, dense and hybrid,
incremental updates, persisted results, encoder checks and the leakage check."""
from __future__ import annotations

import json

import pytest

from tests.rag.conftest import CORPUS
from tunelab.errors import UserError
from tunelab.rag.indexing import index_sources
from tunelab.rag.leakage import Exclude, overlap, shingles
from tunelab.rag.retrieve import Retriever, rrf


def quiet(*_):
    pass


def build(corpus, out, **kw):
    return index_sources(out, [str(corpus)], log=quiet, **kw)


def test_bm25_index_known_rankings_and_metadata(corpus, tmp_path):
    s = build(corpus, tmp_path / "kb", chunk_tokens=12, overlap=2)
    assert (s["files"], s["encoder"], len(s["added"])) == (2, None, 2)
    r = Retriever(tmp_path / "kb")
    assert r.modes == ("bm25",) and r.default_mode == "bm25"
    top = r.search("三角形的内角和是多少", k=3)
    assert top[0].doc_id == "zh-triangle" and top[0].citation == "qa.jsonl:12" and top[0].ranks == {"bm25": 1}
    assert top[0].meta == {"level": 1} and top[0].text == "三角形的内角和是多少度？\n三角形的三个内角之和是180度。"
    assert [h.doc_id for h in r.search("prime number divisors", k=1)] == ["en-prime"]
    # notes.md is cut into 12-token chunks that cite the line they start on
    neg = r.search("negative numbers number line", k=1)[0]
    assert (neg.doc_id, neg.citation) == ("notes.md", "notes.md:6") and neg.text.startswith("Negative numbers")
    assert [h.doc_id for h in r.search("分数的加法", k=1)] == ["notes.md"]
    with pytest.raises(UserError, match="has no dense vectors .* so mode 'dense' cannot run"):
        r.search("x", mode="dense")


def test_dense_and_hybrid_with_a_tiny_encoder(corpus, tmp_path, tiny_encoder):
    s = build(corpus, tmp_path / "kb", encoder=tiny_encoder)
    assert s["encoder"] == (str(__import__("pathlib").Path(tiny_encoder).resolve()), 32)
    r = Retriever(tmp_path / "kb")
    assert r.default_mode == "hybrid"
    # a record's own text is its own nearest neighbour, at cosine 1
    _, q, a = CORPUS[4]
    (hit,) = r.search(f"{q}\n{a}", k=1, mode="dense")
    assert hit.doc_id == "en-speed" and hit.score == pytest.approx(1.0, abs=1e-5)
    # hybrid = reciprocal rank fusion of the two lists, k = 60
    hits = r.search("How are distance, speed and time related?", k=5, mode="hybrid")
    assert hits[0].doc_id == "en-speed"
    for h in hits:
        assert h.score == pytest.approx(sum(1 / (60 + rank) for rank in h.ranks.values()))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    alone = r.search("How are distance, speed and time related?", k=5, mode="hybrid", rrf_k=1)
    assert alone[0].score == pytest.approx(sum(1 / (1 + rank) for rank in alone[0].ranks.values()))


def test_rrf_function():
    assert rrf([[1, 2, 3], [3, 1]], k=60) == [(1, 1 / 61 + 1 / 62), (3, 1 / 63 + 1 / 61), (2, 1 / 62)]
    assert rrf([[7, 8], [8, 7]], k=60) == [(7, 1 / 61 + 1 / 62), (8, 1 / 62 + 1 / 61)]  # tie: first seen first


def test_results_survive_a_restart_and_updates_are_incremental(corpus, tmp_path, tiny_encoder):
    build(corpus, tmp_path / "kb", encoder=tiny_encoder)
    queries = ["area of a circle", "长方形的面积", "average of values"]
    before = [[(h.chunk_id, h.score) for h in Retriever(tmp_path / "kb").search(q, k=5)] for q in queries]
    reopened = Retriever(tmp_path / "kb")
    assert [[(h.chunk_id, h.score) for h in reopened.search(q, k=5)] for q in queries] == before
    reopened.close()

    # nothing changed: nothing re-indexed, no encoder given (the index's own is used)
    again = build(corpus, tmp_path / "kb")
    assert (len(again["unchanged"]), again["added"], again["updated"]) == (2, [], [])
    # one record edited: only qa.jsonl is re-indexed, and the new text is found by both methods
    lines = (corpus / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[1])
    rec["answer"] = "The area of a circle is pi times the radius times the radius (zebra mnemonic)."
    lines[1] = json.dumps(rec)
    (corpus / "qa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    upd = build(corpus, tmp_path / "kb")
    assert [p.endswith("qa.jsonl") for p in upd["updated"]] == [True] and len(upd["unchanged"]) == 1
    r = Retriever(tmp_path / "kb")
    assert r.search("zebra mnemonic", k=1, mode="bm25")[0].doc_id == "en-circle"
    (hit,) = r.search(f"{rec['question']}\n{rec['answer']}", k=1, mode="dense")
    assert hit.doc_id == "en-circle" and hit.score == pytest.approx(1.0, abs=1e-5)  # dense index follows the store
    assert r.store.count() == upd["chunks"]
    # --prune: a source dropped from the command is removed from the index
    pruned = index_sources(tmp_path / "kb", [str(corpus / "qa.jsonl")], prune=True, log=quiet)
    assert [p.endswith("notes.md") for p in pruned["removed"]] == [True]
    assert {h.doc_id for h in Retriever(tmp_path / "kb").search("negative numbers", k=20, mode="bm25")} <= {c[0] for c in CORPUS}


def test_another_encoder_is_refused(corpus, tmp_path, tiny_encoder, other_tiny_encoder):
    build(corpus, tmp_path / "kb", encoder=tiny_encoder)
    with pytest.raises(UserError, match=r"was built with encoder '.*tiny-bert' \(32-dim vectors\); a query embedded "
                                        r"by '.*other-bert' cannot be compared"):
        Retriever(tmp_path / "kb", encoder=other_tiny_encoder)
    Retriever(tmp_path / "kb", encoder=tiny_encoder)  # its own encoder, by path: accepted
    with pytest.raises(UserError, match="was built with encoder .* it cannot take vectors from"):
        build(corpus, tmp_path / "kb", encoder=other_tiny_encoder)


def test_adding_an_encoder_to_a_bm25_index_reindexes_every_file(corpus, tmp_path, tiny_encoder):
    build(corpus, tmp_path / "kb")
    with pytest.raises(UserError, match="built without an encoder"):
        Retriever(tmp_path / "kb", encoder=tiny_encoder)
    s = build(corpus, tmp_path / "kb", encoder=tiny_encoder)
    assert s["encoder"][1] == 32 and len(s["updated"]) == 2  # cut again by the encoder's tokens, and embedded
    r = Retriever(tmp_path / "kb")
    assert len(r.store.embedding_ids()) == r.store.count() and r.dense_index().live == r.store.count()


def test_leakage_check_by_id_and_near_duplicate(corpus, tmp_path):
    build(corpus, tmp_path / "kb")
    r = Retriever(tmp_path / "kb")
    question = "小明有5个苹果，吃了2个，还剩几个？"
    assert r.search(question, k=1)[0].doc_id == "zh-apples"  # without the check, the item retrieves itself
    res = r.search_many([question], k=3, excludes=[Exclude(texts=[question])])[0]
    assert "zh-apples" not in [h.doc_id for h in res.hits] and res.excluded == [("zh-apples", "near-duplicate 1.00")]
    res = r.search_many(["prime number"], k=3, excludes=[Exclude(ids={"en-prime"})])[0]
    assert res.hits[0].doc_id != "en-prime" and res.excluded == [("en-prime", "id")]
    # the overlap coefficient: containment either way counts, unrelated text does not
    a, b = shingles("What is a prime number?"), shingles("What is a prime number?\nA prime number is a whole number ...")
    assert overlap(a, b) == 1.0 and overlap(a, shingles("The sea is deep and blue")) < 0.1
    assert Exclude(texts=["What  is a PRIME number?"]).reason("x", "what is a prime number? It has two divisors.")

"""Retrieval evaluation: the metrics by hand, and recall/MRR of bm25, dense and hybrid on the small corpus."""
from __future__ import annotations

import json

import pytest

from tests.rag.conftest import QUESTIONS, needs_minilm
from tunelab.errors import DataError
from tunelab.rag.evaluate import evaluate, load_questions, recall_at_k, reciprocal_rank
from tunelab.rag.indexing import index_sources
from tunelab.rag.retrieve import Retriever


def test_metrics():
    ranked = ["d3", "d1", "d7", "d2"]
    assert recall_at_k(ranked, {"d1", "d2"}, 2) == 0.5 and recall_at_k(ranked, {"d1", "d2"}, 4) == 1.0
    assert reciprocal_rank(ranked, {"d1", "d2"}, 10) == 0.5 and reciprocal_rank(ranked, {"d9"}, 10) == 0.0
    assert reciprocal_rank(ranked, {"d2"}, 3) == 0.0  # beyond the cut-off


def test_questions_file_checks(tmp_path, corpus):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "x", "relevant": []}\n')
    with pytest.raises(DataError, match=r"q.jsonl:1: 'relevant' must be a document id or a non-empty list"):
        load_questions(bad)
    bad.write_text('{"question": "x", "relevant": "en-nope"}\n')
    index_sources(tmp_path / "kb", [str(corpus)], log=lambda *_: None)
    with pytest.raises(DataError, match=r"q.jsonl:1: relevant document id\(s\) \['en-nope'\] are not in the index"):
        evaluate(Retriever(tmp_path / "kb"), load_questions(bad))


def test_bm25_only_index_reports_bm25(corpus, questions_file, tmp_path):
    index_sources(tmp_path / "kb", [str(corpus)], log=lambda *_: None)
    report = evaluate(Retriever(tmp_path / "kb"), load_questions(questions_file), k=5)
    assert list(report) == ["bm25"]
    row = report["bm25"]
    assert row["questions"] == len(QUESTIONS) and row["excluded"] == 0
    assert 0 < row["recall@1"] <= row["recall@5"] <= 1 and row["recall@1"] <= row["mrr@5"] <= row["recall@5"]


@needs_minilm
def test_recall_and_mrr_with_minilm(corpus, questions_file, tmp_path):
    index_sources(tmp_path / "kb", [str(corpus)], encoder="minilm", log=lambda *_: None)
    report = evaluate(Retriever(tmp_path / "kb"), load_questions(questions_file), k=5)
    got = {m: (round(r["recall@1"], 2), round(r["recall@5"], 2), round(r["mrr@5"], 3)) for m, r in report.items()}
    # measured values (recall@1, recall@5, MRR@5), pinned: paraphrases sharing few words with their record
    # are where the dense encoder helps; hybrid recovers dense's recall@5 but its top 1 is pulled by BM25
    assert got == {"bm25": (0.6, 0.7, 0.633), "dense": (0.9, 1.0, 0.95), "hybrid": (0.7, 1.0, 0.792)}, got
    assert report["dense"]["recall@5"] > report["bm25"]["recall@5"]


def test_leakage_check_in_evaluation(corpus, tmp_path):
    """A question copied from the corpus must not find its own record: it is excluded and counted."""
    index_sources(tmp_path / "kb", [str(corpus)], log=lambda *_: None)
    qf = tmp_path / "self.jsonl"
    qf.write_text(json.dumps({"question": "长方形的面积怎么计算？", "relevant": ["zh-rectangle"]}, ensure_ascii=False) + "\n")
    r = Retriever(tmp_path / "kb")
    leaky = evaluate(r, load_questions(qf), k=3, leakage_check=False)["bm25"]
    checked = evaluate(r, load_questions(qf), k=3)["bm25"]
    assert (leaky["recall@1"], leaky["excluded"]) == (1.0, 0)
    assert (checked["recall@3"], checked["excluded"]) == (0.0, 1)

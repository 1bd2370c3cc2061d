"""Retrieval quality: recall@k and MRR@k of BM25, dense and hybrid over questions with known answers.

    questions = load_questions("questions.jsonl")
    report = evaluate(Retriever("kb"), questions, k=10)   # {"bm25": {"recall@10": 0.8, "mrr@10": 0.61, ...}, ...}

Questions file: JSON lines, one question each:

    {"question": "How many clips did Natalia sell?", "relevant": ["gsm8k_train.jsonl:1"],
     "id": "q1", "exclude": ["..."]}

`relevant` (a document id or a list of them) names the documents that answer it: a record's `id`
column, else `<file name>:LINE` / `<file name>[i]` for records and `<file name>` for text files, as
`tunelab rag query` shows. Scoring is per document: a document's rank is that of its best chunk.
recall@k = |relevant among the top k| / |relevant|; MRR@k = 1 / rank of the first relevant document
(0 if none in the top k); both averaged over questions. The leakage check (on unless turned off)
excludes the question's own `id` and `exclude` ids and any chunk that near-duplicates its text.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.errors import DataError
from tunelab.rag.leakage import Exclude
from tunelab.rag.retrieve import RRF_K, Hit, Retriever


def recall_at_k(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant)


def reciprocal_rank(ranked: list[str], relevant: set[str], k: int) -> float:
    return next((1.0 / r for r, d in enumerate(ranked[:k], 1) if d in relevant), 0.0)


def doc_ranking(hits: list[Hit]) -> list[str]:
    """Document ids in the order of their best chunk."""
    return list(dict.fromkeys(h.doc_id for h in hits))


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    from tunelab.rag.documents import file_bytes

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: questions file not found (JSON lines with 'question' and 'relevant')")
    out = []
    for lineno, line in enumerate(file_bytes(path).decode("utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not q["question"].strip():
            raise DataError(f"{path}:{lineno}: expected an object with a non-empty 'question' string")
        relevant = q.get("relevant")
        relevant = [relevant] if isinstance(relevant, (str, int)) else relevant
        if not relevant or not isinstance(relevant, list):
            raise DataError(f"{path}:{lineno}: 'relevant' must be a document id or a non-empty list of them")
        exclude = q.get("exclude") or []
        out.append({"question": q["question"], "relevant": [str(r) for r in relevant], "where": f"{path}:{lineno}",
                    "exclude": [str(e) for e in ([exclude] if isinstance(exclude, str) else exclude)],
                    "id": None if q.get("id") is None else str(q["id"])})
    if not out:
        raise DataError(f"{path}: no questions in this file")
    return out


def _check_relevant(retriever: Retriever, questions: list[dict[str, Any]]) -> None:
    """A relevant id that is not in the index would silently count as a miss: refuse it instead."""
    wanted = sorted({r for q in questions for r in q["relevant"]})
    known: set[str] = set()
    for start in range(0, len(wanted), 900):
        part = wanted[start:start + 900]
        known |= {row[0] for row in retriever.store.conn.execute(
            f"SELECT DISTINCT doc_id FROM chunks WHERE doc_id IN ({','.join('?' * len(part))})", part)}
    for q in questions:
        missing = [r for r in q["relevant"] if r not in known]
        if missing:
            raise DataError(f"{q['where']}: relevant document id(s) {missing[:3]} are not in the index {retriever.dir} "
                            f"(ids look like 'file.jsonl:LINE'; see `tunelab rag query`)")


def evaluate(retriever: Retriever, questions: list[dict[str, Any]], k: int = 10, *, modes: list[str] | None = None,
             rrf_k: int = RRF_K, leakage_check: bool = True) -> dict[str, dict[str, Any]]:
    """mode -> {recall@1, recall@5 (if k >= 5), recall@k, mrr@k, questions, excluded}."""
    _check_relevant(retriever, questions)
    texts = [q["question"] for q in questions]
    excludes = [Exclude(ids={*q["exclude"], *([q["id"]] if q["id"] else [])}, texts=[q["question"]])
                if leakage_check else None for q in questions]
    cutoffs = sorted({1, 5, k} & set(range(1, k + 1)))
    report: dict[str, dict[str, Any]] = {}
    for mode in modes or list(retriever.modes):
        # 3k chunks, so that k distinct documents remain when several chunks share one
        results = retriever.search_many(texts, 3 * k, mode=mode, excludes=excludes, rrf_k=rrf_k)
        row: dict[str, Any] = {}
        rankings = [doc_ranking(r.hits) for r in results]
        for c in cutoffs:
            row[f"recall@{c}"] = sum(recall_at_k(rk, set(q["relevant"]), c)
                                     for rk, q in zip(rankings, questions)) / len(questions)
        row[f"mrr@{k}"] = sum(reciprocal_rank(rk, set(q["relevant"]), k)
                              for rk, q in zip(rankings, questions)) / len(questions)
        row["questions"] = len(questions)
        row["excluded"] = sum(len(r.excluded) for r in results)
        report[mode] = row
    return report

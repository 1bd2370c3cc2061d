"""`rouge_zh`: generated text against the reference reply, ROUGE-1/2/L (jieba words) and BLEU-4
(characters), x100, computed as LLaMA-Factory does (see evaluate/scores.py)."""
from __future__ import annotations

from typing import Any

from ..scores import rouge_bleu_zh
from .base import Scorer


class RougeZhScorer(Scorer):
    name = "rouge_zh"
    gold = "reference"

    def score(self, prediction: str, gold: str) -> dict[str, Any]:
        return {}  # scored as a corpus in aggregate (the per-pair scores are averaged there)

    def aggregate(self, rows: list[dict[str, Any]], n_samples: int = 1,
                  breakdown: tuple[str, ...] = ()) -> dict[str, Any]:
        first = [r for r in rows if r["sample"] == 0]
        return {"n": len(first), **rouge_bleu_zh([r["prediction"] for r in first], [r["gold"] for r in first])}

    def table(self, results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
        return (["model", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU-4"],
                [[ref, r["n"], r["rouge-1"], r["rouge-2"], r["rouge-l"], r["bleu-4"]] for ref, r in results.items()])

    def report_columns(self, task: str) -> list[str]:
        return [f"{task} ROUGE-L / BLEU-4"]

    def report_cells(self, result: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
        return ["-"] if result is None else [f"{result['rouge-l']:.2f} / {result['bleu-4']:.2f}"]

    def headline(self, result: dict[str, Any]) -> float | None:
        return None if result.get("rouge-l") is None else result["rouge-l"] / 100


SCORER = RougeZhScorer()

"""`math`: the first answer found (`\\boxed{}`, "The answer is", `#### N`, "答：", the last number),
compared with the gold answer by mathematical equality (math-verify); strict match beside it."""
from __future__ import annotations

from typing import Any

from ...data.grading import grade
from .base import AccuracyScorer


class MathScorer(AccuracyScorer):
    name = "math"

    def score(self, prediction: str, gold: str) -> dict[str, Any]:
        v = grade(prediction, gold)
        return {"extracted": v.extracted, "correct": v.correct, "strict_correct": v.strict, "extractor": v.method}


SCORER = MathScorer()

"""`gsm8k`: lm-evaluation-harness's two GSM8K numbers side by side; "correct" is the flexible one
(also "the answer is" and the last number), "strict_correct" reads only `\\boxed{}` or `#### N`."""
from __future__ import annotations

from typing import Any

from ...data.grading import gsm8k_verdicts
from .base import AccuracyScorer


class Gsm8kScorer(AccuracyScorer):
    name = "gsm8k"
    strict_name = "strict (#### / boxed)"

    def score(self, prediction: str, gold: str) -> dict[str, Any]:
        v = gsm8k_verdicts(prediction, gold)
        return {"extracted": v["flexible"].extracted, "correct": v["flexible"].correct,
                "strict_extracted": v["strict"].extracted, "strict_correct": v["strict"].correct}


SCORER = Gsm8kScorer()

"""`choice`: a multiple-choice letter found in the generated text ("答案是C", "(B)", `\\boxed{C}`),
compared with the gold letter."""
from __future__ import annotations

from typing import Any

from ...data.grading import grade
from .base import AccuracyScorer


class ChoiceScorer(AccuracyScorer):
    name = "choice"

    def score(self, prediction: str, gold: str) -> dict[str, Any]:
        v = grade(prediction, gold, extractors=("choice",), compare="choice")
        return {"extracted": v.extracted, "correct": v.correct}


SCORER = ChoiceScorer()

"""Scorers: how a task's predictions are graded, aggregated, printed and reported.

    scorer = get_scorer("gsm8k")
    row = scorer.score(prediction, gold)              # per prediction: extracted, correct, ...
    results = scorer.aggregate(rows, n_samples=1, breakdown=())
    scorer.table({"model-a": results})                # the terminal table of `tunelab eval`
    scorer.report_cells(results, base_results)        # the report's score table

Each scorer is one module; adding one is that module plus one line in `SCORERS`. `tunelab eval`,
`tunelab grade`, experiments, sweeps and the report all go through this registry.
"""
from __future__ import annotations

from ...errors import ConfigError
from .base import AccuracyScorer, Scorer
from .choice import SCORER as _choice
from .choice_ll import SCORER as _choice_ll
from .gsm8k import SCORER as _gsm8k
from .math_answer import SCORER as _math
from .rouge_zh import SCORER as _rouge_zh

SCORERS: dict[str, Scorer] = {s.name: s for s in (_math, _gsm8k, _choice, _choice_ll, _rouge_zh)}


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise ConfigError(f"unknown scorer '{name}'; known: {', '.join(SCORERS)}") from None


__all__ = ["AccuracyScorer", "SCORERS", "Scorer", "get_scorer"]

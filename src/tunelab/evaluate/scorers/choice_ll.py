"""`choice_ll`: multiple choice scored by log-likelihood, as lm-evaluation-harness scores it.

Per item, the log-likelihood LL_i of each choice's continuation (" A" ... " D") given the prompt:
- `acc`: argmax_i LL_i is the gold choice;
- `acc_norm`: argmax_i LL_i / len(choice_i), the choice's length in characters (lm-eval's
  `acc_norm`: `len(doc_to_choice(doc)[i])`, without the delimiter); `acc_bytes` divides by the
  UTF-8 byte length instead (lm-eval's `acc_bytes`). With letter choices all three agree; they
  differ when the choices are answer texts.
Ties go to the first choice (numpy's argmax). Each with its 95% Wilson interval; `by_subject` and
`by_category` break `acc` and `acc_norm` down; the overall numbers are micro averages (every item
counts once, lm-eval's group aggregation with `weight_by_size`).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..scores import accuracy_summary
from .base import Scorer, accuracy_cells


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first of equal maxima


def predictions(lls: list[float], choices: list[str]) -> dict[str, int]:
    """The three predictions of one item from its choices' log-likelihoods."""
    return {"pred": argmax(lls),
            "pred_norm": argmax([ll / len(c) for ll, c in zip(lls, choices)]),
            "pred_bytes": argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)])}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    acc = accuracy_summary([r["pred"] == r["gold"] for r in rows])
    norm = accuracy_summary([r["pred_norm"] == r["gold"] for r in rows])
    return {"n": acc["n"], "acc": acc["accuracy"], "ci95": acc["ci95"], "acc_norm": norm["accuracy"],
            "acc_norm_ci95": norm["ci95"]}


class ChoiceLLScorer(Scorer):
    name = "choice_ll"

    def score(self, prediction: str, gold: str) -> dict[str, Any]:
        raise TypeError("choice_ll scores log-likelihoods, not generated text (see evaluate/multiple_choice.py)")

    def aggregate(self, rows: list[dict[str, Any]], n_samples: int = 1,
                  breakdown: tuple[str, ...] = ("subject", "category")) -> dict[str, Any]:
        out = _summary(rows)
        out["accuracy"] = out["acc"]  # the name every other scorer's headline uses
        out["acc_bytes"] = round(sum(r["pred_bytes"] == r["gold"] for r in rows) / max(1, len(rows)), 4)
        for key in breakdown:
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                groups[str(r.get(key))].append(r)
            if len(groups) > 0:
                out[f"by_{key}"] = {g: _summary(v) for g, v in sorted(groups.items())}
        return out

    def table(self, results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
        rows = []
        for ref, r in results.items():
            lo, hi = r["ci95"]
            nlo, nhi = r["acc_norm_ci95"]
            rows.append([ref, r["n"], r.get("n_shot", 0), f"{r['acc']:.1%} [{lo:.1%}, {hi:.1%}]",
                         f"{r['acc_norm']:.1%} [{nlo:.1%}, {nhi:.1%}]",
                         (r.get("timing") or {}).get("items_per_s") or "-"])
        return ["model", "n", "shots", "acc [95% CI]", "acc_norm [95% CI]", "items/s"], rows

    def report_columns(self, task: str) -> list[str]:
        return [f"{task} acc [95% CI]", f"{task} vs base (points)", f"{task} acc_norm"]

    def report_cells(self, result: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
        if result is None:
            return ["-", "-", "-"]
        return [*accuracy_cells(result, base, "acc"), f"{100 * result['acc_norm']:.1f}"]

    def headline(self, result: dict[str, Any]) -> float | None:
        return result.get("acc")


SCORER = ChoiceLLScorer()

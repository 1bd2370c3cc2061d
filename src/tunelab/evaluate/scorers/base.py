"""What every scorer provides, and the accuracy-style scorer that answer-graded tasks share.

A scorer turns one prediction into row fields (`score`), many rows into results (`aggregate`), and
results into the cells people read: the terminal table of `tunelab eval` (`table`) and the score
table of the report (`report_columns`, `report_cells`). `headline` is the one number a chart plots.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..scores import accuracy_summary, pass_at_k


class Scorer:
    name: str = ""
    gold: str = "answer"  # "answer": the exact final answer of the data; "reference": the reference reply text

    def score(self, prediction: str, gold: str) -> dict[str, Any]:
        raise NotImplementedError

    def aggregate(self, rows: list[dict[str, Any]], n_samples: int = 1,
                  breakdown: tuple[str, ...] = ()) -> dict[str, Any]:
        raise NotImplementedError

    def table(self, results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
        """(columns, rows) comparing models side by side in the terminal."""
        raise NotImplementedError

    def report_columns(self, task: str) -> list[str]:
        raise NotImplementedError

    def report_cells(self, result: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
        raise NotImplementedError

    def headline(self, result: dict[str, Any]) -> float | None:
        raise NotImplementedError


def _has_final_answer(row: dict[str, Any]) -> bool:
    """A final answer stated as such (boxed, "The answer is", "#### N", "答：", a choice letter); the
    last-number fallback used for flexible scoring does not count, so the rate measures format."""
    if "strict_extracted" in row:
        return row["strict_extracted"] is not None
    return row.get("extracted") is not None and row.get("extractor") != "last_number"


def accuracy_cells(result: dict[str, Any], base: dict[str, Any] | None, key: str) -> list[str]:
    """The report's first two cells for an accuracy `key`: "12.5 [5.5, 26.1] (n=40)" and the difference
    to the base model in points ("-" for the base itself)."""
    lo, hi = result["ci95"]
    diff = "-" if base is None or base is result else f"{100 * (result[key] - base[key]):+.1f}"
    return [f"{100 * result[key]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n={result['n']})", diff]


def _pct_ci(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['accuracy']:.1%} [{lo:.1%}, {hi:.1%}]"


class AccuracyScorer(Scorer):
    """Graded by a final answer: accuracy with its Wilson interval, strict accuracy when the scorer
    has one, the parseable rate, pass@k with several samples, and accuracy by meta keys."""

    strict_name = "strict match"

    def aggregate(self, rows: list[dict[str, Any]], n_samples: int = 1,
                  breakdown: tuple[str, ...] = ()) -> dict[str, Any]:
        first = [r for r in rows if r["sample"] == 0]
        out: dict[str, Any] = {"n": len(first)}
        out.update(accuracy_summary([bool(r["correct"]) for r in first]))
        out["parseable_rate"] = round(sum(_has_final_answer(r) for r in first) / max(1, len(first)), 4)
        if any("strict_correct" in r for r in first):
            strict = accuracy_summary([bool(r.get("strict_correct")) for r in first])
            out["strict_accuracy"], out["strict_ci95"] = strict["accuracy"], strict["ci95"]
        if n_samples > 1:
            per_item: dict[str, list[bool]] = defaultdict(list)
            for r in rows:
                per_item[r["id"]].append(bool(r["correct"]))
            for k in sorted({1, n_samples} | ({5} if n_samples >= 5 else set())):
                vals = [pass_at_k(len(c), sum(c), k) for c in per_item.values()]
                out[f"pass@{k}"] = round(sum(vals) / max(1, len(vals)), 4)
        for key in breakdown:
            groups: dict[str, list[bool]] = defaultdict(list)
            for r in first:
                groups[str(r.get("meta", {}).get(key))].append(bool(r["correct"]))
            out[f"by_{key}"] = {g: accuracy_summary(v) for g, v in sorted(groups.items())}
        return out

    def table(self, results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
        rows = []
        for ref, r in results.items():
            strict = f"{r['strict_accuracy']:.1%}" if "strict_accuracy" in r else "-"
            rows.append([ref, r["n"], _pct_ci(r), strict, f"{r['parseable_rate']:.0%}",
                         (r.get("timing") or {}).get("tokens_per_s") or "-"])
        return ["model", "n", "accuracy [95% CI]", self.strict_name, "parseable", "gen tok/s"], rows

    def report_columns(self, task: str) -> list[str]:
        return [f"{task} accuracy [95% CI]", f"{task} vs base (points)", f"{task} final answer stated"]

    def report_cells(self, result: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
        if result is None:
            return ["-", "-", "-"]
        stated = f"{100 * result['parseable_rate']:.0f}%" if "parseable_rate" in result else "-"
        return [*accuracy_cells(result, base, "accuracy"), stated]

    def headline(self, result: dict[str, Any]) -> float | None:
        return result.get("accuracy")

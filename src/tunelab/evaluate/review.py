"""Human review, both ways: a CSV for people to score, and the scores read back.

    write_review(Path("review.csv"), rows)          # tunelab eval ... --export-review review.csv
    summary = read_review(Path("review.csv"))       # tunelab grade --review review.csv [--eval DIR]

The CSV (UTF-8 with a BOM, so Excel shows Chinese text) has the columns id, prompt, answer, gold,
knowledge_accuracy, logical_coherence, clarity, notes. A reviewer fills the three dimensions with
scores from 1 to 5 (decimals allowed); an empty cell means "not scored" and is left out of that
dimension's mean. Read back, each dimension gets its mean and the number of scored rows; `--eval DIR`
also stores them in DIR/results.json under "human_review", where the report shows them.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..errors import DataError

DIMENSIONS = ("knowledge_accuracy", "logical_coherence", "clarity")
COLUMNS = ["id", "prompt", "answer", "gold", *DIMENSIONS, "notes"]
SCALE = (1.0, 5.0)


def write_review(path: Path, rows: list[dict[str, Any]]) -> None:
    """The first sample of every item, with the score columns left empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            if r["sample"] == 0:
                w.writerow([r["id"], r["prompt"], r["prediction"], r["gold"], "", "", "", ""])


def read_review(path: Path) -> dict[str, Any]:
    """{"file", "rows", "dimensions": {dim: {"mean", "n"}}}; a score outside 1-5 or not a number is a
    DataError naming its line and column."""
    if not path.is_file():
        raise DataError(f"{path}: no such review file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in DIMENSIONS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; a review file has {', '.join(COLUMNS)} "
                                "(as --export-review writes it)")
            rows = list(reader)
    except UnicodeDecodeError:
        from ..data.sources import not_utf8

        raise not_utf8(path) from None
    scores: dict[str, list[float]] = {d: [] for d in DIMENSIONS}
    for line, row in enumerate(rows, 2):
        for d in DIMENSIONS:
            cell = (row.get(d) or "").strip()
            if not cell:
                continue
            try:
                v = float(cell)
            except ValueError:
                v = float("nan")
            if not SCALE[0] <= v <= SCALE[1]:
                raise DataError(f"{path}:{line}: {d} = {cell!r}; scores are numbers from 1 to 5 (empty: not scored)")
            scores[d].append(v)
    dims = {d: {"mean": round(sum(v) / len(v), 4) if v else None, "n": len(v)} for d, v in scores.items()}
    return {"file": str(path), "rows": len(rows), "dimensions": dims}


def attach(summary: dict[str, Any], eval_dir: Path) -> Path:
    """Store the review summary in an evaluation's results.json (the report reads it from there)."""
    path = eval_dir / "results.json"
    if not path.is_file():
        raise DataError(f"{eval_dir}: no results.json (give the --output directory of the tunelab eval that "
                        "exported the review)")
    res = json.loads(path.read_text(encoding="utf-8"))
    res["human_review"] = summary
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path

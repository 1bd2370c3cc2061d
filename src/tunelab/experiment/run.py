"""`tunelab run EXPERIMENT.yaml`: train every variant, evaluate the base model and every variant on
the same tasks with the same settings, then write the report.

The experiment directory (`output:`) holds `runs/<variant>/` (each a normal run directory),
`eval/<base|variant>/<task>/` (results.json + predictions.jsonl) and the report. Re-running the
command skips finished variants (`summary.json` present), resumes an interrupted one from its
latest checkpoint, and continues interrupted evaluations. A variant that fails is recorded in
`runs/<variant>/error.txt` and reported as failed; the others still run.

The task name `heldout` means: roll out on the validation split of the experiment's own training
data (the same split `prepare` makes), e.g. the 100 held-out MATH-500 problems.
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

from .spec import Experiment

BASE = "base"


def _task_items(exp: Experiment, task_name: str, loaded: Any) -> tuple[Any, list | None]:
    """(task, items): a registered task asks its own items; `heldout` is the validation split of the
    experiment's training data, exactly as `prepare` splits it."""
    from ..evaluate.tasks import Task, get_task, to_item

    if task_name != "heldout":
        return get_task(task_name), None
    from ..data.prepare import heldout_conversations

    cfg = next(iter(exp.variants.values()))
    limit = exp.evaluation.settings.limit
    convs = heldout_conversations(cfg)[:limit] if limit else heldout_conversations(cfg)
    has_answers = all(c.get("answer") is not None for c in convs)
    task = Task("heldout", cfg.data.name, f"held-out split of {cfg.data.name}",
                scorer="math" if has_answers else "rouge_zh")
    return task, [to_item(c, i, task.scorer, where=f"held-out item {i}") for i, c in enumerate(convs)]


def evaluate(exp: Experiment, label: str, model_ref: str) -> None:
    from ..evaluate.run import evaluate as evaluate_one
    from ..evaluate.run import load

    settings = exp.evaluation.settings
    todo = [t for t in exp.evaluation.tasks if not (exp.output / "eval" / label / t / "results.json").is_file()]
    if not todo:
        return  # finished earlier (an interrupted eval has no results.json yet and continues below)
    loaded = load(model_ref, settings)
    for task_name in todo:
        task, items = _task_items(exp, task_name, loaded)
        print(f"[tunelab] eval {label} on {task_name}", flush=True)
        evaluate_one(loaded, task, out=exp.output / "eval" / label / task_name, settings=settings, items=items)


def run(exp: Experiment, *, only: list[str] | None = None) -> dict[str, str]:
    from ..train import checkpoint as ckpt
    from ..train.recipe import train

    status: dict[str, str] = {}
    exp.output.mkdir(parents=True, exist_ok=True)
    names = [n for n in exp.variants if not only or n in only]
    for name in names:
        cfg = exp.variants[name]
        run_dir = Path(cfg.output.dir)
        if (run_dir / "summary.json").is_file():
            status[name] = "done earlier"
            continue
        resume = ckpt.latest(run_dir / "checkpoints") is not None
        print(f"[tunelab] variant {name}: {'resuming' if resume else 'training'} -> {run_dir}", flush=True)
        try:
            train(cfg, resume=resume, overwrite=not resume)  # the directory belongs to the experiment
            (run_dir / "error.txt").unlink(missing_ok=True)
            status[name] = "trained"
        except Exception as e:  # a failed variant is reported, the others still run
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
            status[name] = f"failed: {type(e).__name__}: {e}"
            print(f"[tunelab] variant {name} FAILED: {e}", flush=True)
    if exp.evaluation.tasks and exp.evaluation.base_model:
        evaluate(exp, BASE, exp.base_model)
    for name in names:
        if not status[name].startswith("failed"):
            evaluate(exp, name, exp.variants[name].output.dir)
    (exp.output / "status.json").write_text(json.dumps(status, indent=2))
    return status

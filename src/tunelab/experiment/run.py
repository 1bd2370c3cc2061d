"""`tunelab run EXPERIMENT.yaml`: train every variant, evaluate the base model and every variant on
the same tasks with the same settings, then write the report.

The experiment directory (`output:`) holds `runs/<variant>/` (each a normal run directory),
`eval/<base|variant>/<task>/` (results.json + predictions.jsonl) and the report.

Each variant trains and evaluates in a process of its own (`tunelab run EXP --worker NAME`), and so
does the base model's evaluation: peak memory is a process-lifetime number (CPU resident memory) or
a per-process counter (GPU), so only a process of its own gives each variant its own peak, time and
failure. With `--devices 0,1` variants run concurrently, one per GPU.

Re-running the command is safe:
- a variant whose run directory was produced by the same config is "done earlier" and skipped; an
  interrupted one resumes from its latest checkpoint; an evaluation continues where it stopped;
- a variant or evaluation whose config or settings changed since it ran is refused, before anything
  runs, with the list of what changed, unless `--rerun NAME` (or `--rerun all`) asks to run it again;
- nothing outside what tunelab wrote is ever deleted: a run directory holding other files is refused.
A variant that fails is recorded in `runs/<variant>/error.txt` and reported as failed; the others run.

The task name `heldout` means: roll out on the validation split of the experiment's own training
data (the same split `prepare` makes), e.g. the 100 held-out MATH-500 problems.

With `evaluation.retrieval` every model is evaluated twice, without and with the index's passages
(`eval/<label>/` and `eval/<label>+rag/`), in the same process, on the same items.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .. import config as C
from .. import rundir
from ..errors import ConfigError
from .spec import Experiment

BASE = "base"


def _task_items(exp: Experiment, task_name: str) -> tuple[Any, list | None]:
    """(task, items): a registered task asks its own items; `heldout` is the validation split of the
    experiment's training data, exactly as `prepare` splits it."""
    from ..evaluate.tasks import Task, get_task, to_item

    if task_name != "heldout":
        return get_task(task_name), None
    from ..data.prepare import heldout_conversations

    cfg = next(iter(exp.variants.values()))
    limit = exp.evaluation.settings.limit
    convs = heldout_conversations(cfg)[:limit] if limit else heldout_conversations(cfg)
    graded = [c for c in convs if c.get("answer") is not None]  # BELLE: solutions without a 答案： line
    has_answers = len(graded) >= len(convs) / 2  # graded by exact match when most items have an answer
    convs = graded if has_answers else convs
    task = Task("heldout", cfg.data.name, f"held-out split of {cfg.data.name}",
                scorer="math" if has_answers else "rouge_zh")
    return task, [to_item(c, i, task.scorer, where=f"held-out item {i}") for i, c in enumerate(convs)]


def _reruns(rerun: list[str], label: str) -> bool:
    return label in rerun or "all" in rerun


def variant_action(exp: Experiment, name: str) -> tuple[str, str]:
    """What a variant needs: ("done" | "train" | "resume" | "stale", why)."""
    from ..paths import marker_kind

    cfg = exp.variants[name]
    run_dir = Path(cfg.output.dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "train", ""
    kind = marker_kind(run_dir)
    saved = rundir.read_config(run_dir) if kind in ("run", None) else None
    if saved is None:
        if kind == "run":
            return "train", ""  # failed or interrupted before it saved its config: ours, start again
        raise ConfigError(f"{run_dir} holds files tunelab did not write (no run there); `tunelab run` never deletes "
                          "them: move them away, or change the experiment's output")
    changes = rundir.config_changes(C.to_dict(saved), C.to_dict(cfg))
    if (run_dir / rundir.SUMMARY).is_file():
        if changes:
            return "stale", rundir.describe_changes(changes)
        parent = exp.parents.get(name)
        if parent and (run_dir / rundir.FINGERPRINT).is_file():  # the same config, but a retrained start
            from ..errors import ModelNotFoundError
            from ..models.load import identity

            try:
                now = identity(cfg.model.name)
            except ModelNotFoundError:
                now = None  # the start is being (re)trained in this run
            if (rundir.read_fingerprint(run_dir) or {}).get("model") != now:
                return "stale", f"variant {parent}, which it starts from, was trained again since"
        return "done", ""
    if (run_dir / rundir.CHECKPOINTS).is_dir() and any((run_dir / rundir.CHECKPOINTS).iterdir()):
        unsafe = rundir.unsafe_on_resume(changes)
        return ("stale", rundir.describe_changes(unsafe)) if unsafe else ("resume", "")
    return "train", ""  # interrupted before its first checkpoint: starts again


def stale_evals(exp: Experiment, label: str) -> list[str]:
    """Evaluations of `label` (and `label+rag`) whose task or settings changed since they ran (cheap:
    no model loaded)."""
    from ..evaluate.run import differences, fingerprint_settings

    out = []
    for name, settings, tasks in exp.evaluation.evaluations(label):
        now = json.loads(json.dumps(fingerprint_settings(settings), default=str))
        for task in tasks:
            fp = rundir.read_fingerprint(exp.output / "eval" / name / task)
            if fp is not None and fp.get("settings") != now:
                out.append(f"eval of {name} on {task}: {differences(fp.get('settings') or {}, now)}")
    return out


def _unfinished(exp: Experiment, label: str, overwrite: bool = False) -> list[tuple[str, Any, str]]:
    """(output label, settings, task) of the evaluations of `label` without results yet (all with overwrite)."""
    return [(name, settings, t) for name, settings, tasks in exp.evaluation.evaluations(label) for t in tasks
            if overwrite or not (exp.output / "eval" / name / t / "results.json").is_file()]


def plan(exp: Experiment, names: list[str], rerun: list[str]) -> dict[str, str]:
    """{label: action} for the base model and each variant; refuses, before anything runs, what changed
    since it ran unless it is to be rerun."""
    actions, refused = {}, []
    if exp.evaluation.tasks and exp.evaluation.base_model:
        stale = [] if _reruns(rerun, BASE) else stale_evals(exp, BASE)
        refused += stale
        actions[BASE] = "evaluate"
    for name in names:
        action, why = variant_action(exp, name)
        if _reruns(rerun, name):
            action = "retrain"
        elif action == "stale":
            refused.append(f"variant {name}: {why}")
        elif action == "done":
            refused += stale_evals(exp, name)
        actions[name] = action
    if refused:
        raise ConfigError("the experiment changed since these ran, and re-using their results would report the old "
                          "runs under the new settings:\n  " + "\n  ".join(refused) + "\npass --rerun NAME for each "
                          "variant (--rerun base for the base model, --rerun all for everything) to run them again; "
                          "nothing was run")
    return actions


def _evaluate_label(exp: Experiment, label: str, model_ref: str, overwrite: bool) -> None:
    from ..evaluate.run import evaluate, load

    # common settings + this model's own (n-shot, ...); then the same with retrieval, as label+rag
    todo = _unfinished(exp, label, overwrite)
    if not todo:
        return  # finished earlier (an interrupted eval has no results.json yet and continues below)
    loaded = load(model_ref, todo[0][1])  # the model loads alike for all (template, thinking, backend)
    for name, settings, task_name in todo:
        task, items = _task_items(exp, task_name)
        print(f"[tunelab] eval {name} on {task_name}", flush=True)
        evaluate(loaded, task, out=exp.output / "eval" / name / task_name, settings=settings, items=items,
                 overwrite=overwrite)


def run_worker(exp: Experiment, label: str, *, rerun: list[str]) -> int:
    """One variant (train, then evaluate) or the base model (evaluate), in this process."""
    if label == BASE:
        _evaluate_label(exp, BASE, exp.base_model, overwrite=_reruns(rerun, BASE))
        return 0
    from ..train.recipe import train

    cfg = exp.variants[label]
    run_dir = Path(cfg.output.dir)
    action, _ = variant_action(exp, label)
    retrain = _reruns(rerun, label)
    try:
        if retrain or action in ("train", "resume"):
            print(f"[tunelab] variant {label}: {'resuming' if action == 'resume' and not retrain else 'training'} "
                  f"-> {run_dir}", flush=True)
            has_files = run_dir.is_dir() and any(run_dir.iterdir())
            train(cfg, resume=action == "resume" and not retrain, overwrite=has_files and action != "resume" or retrain)
        (run_dir / rundir.ERROR).unlink(missing_ok=True)
        _evaluate_label(exp, label, str(run_dir), overwrite=retrain)
    except Exception as e:  # a failed variant is reported, the others still run
        from ..paths import mark, marker_kind

        run_dir.mkdir(parents=True, exist_ok=True)
        if marker_kind(run_dir) is None:
            mark(run_dir, "run")  # the directory is this variant's run, even if it failed before writing one
        (run_dir / rundir.ERROR).write_text(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}")
        print(f"[tunelab] variant {label} FAILED: {e}", flush=True)
        return 1
    return 0


def _spawn(exp: Experiment, label: str, rerun: list[str], device: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tunelab", "run", str(exp.path), "--worker", label]
    cmd += [x for r in rerun for x in ("--rerun", r)]
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return subprocess.Popen(cmd, env=env)


def _outcome(exp: Experiment, label: str, action: str, code: int) -> str:
    if code == 0:
        return {"done": "done earlier", "resume": "resumed", "evaluate": "evaluated"}.get(action, "trained")
    if label != BASE and (err := rundir.read_error(exp.variants[label].output.dir)):
        return f"failed: {err}"
    return f"failed: exit status {code}" if code > 0 else f"failed: killed by signal {-code} (out of memory?)"


def run(exp: Experiment, *, only: list[str] | None = None, rerun: list[str] = (),
        devices: str | None = None) -> dict[str, str]:
    """Every variant (and the base model) in a process of its own; returns {label: status}."""
    if exp.path is None:
        raise ConfigError("an experiment run needs its YAML file (each variant runs in a process of its own)")
    rerun = list(rerun)
    names = [n for n in exp.variants if not only or n in only]
    unknown = [r for r in rerun if r not in exp.variants and r not in ("all", BASE)]
    if unknown:
        raise ConfigError(f"--rerun {unknown}: no such variant; variants: {', '.join(exp.variants)} (or base, all)")
    actions = plan(exp, names, rerun)
    exp.output.mkdir(parents=True, exist_ok=True)
    from ..paths import mark, marker_kind

    if marker_kind(exp.output) is None:
        mark(exp.output, "experiment")
    todo = [label for label, action in actions.items() if action != "done" or _unfinished(exp, label)]
    status = {label: "done earlier" for label, action in actions.items() if label not in todo and label != BASE}
    slots = [d.strip() for d in devices.split(",")] if devices else [None]
    running: dict[Any, tuple[str, subprocess.Popen]] = {}
    queue = list(todo)
    while queue or running:
        for slot in slots:  # start a job on every free device; a variant `from` another waits for it
            if slot in running:
                continue
            busy = {lab for lab, _ in running.values()}
            ready = [lab for lab in queue if exp.parents.get(lab) not in busy | set(queue)]
            for label in ready:
                parent = exp.parents.get(label)
                if parent and status.get(parent, "").startswith("failed"):
                    queue.remove(label)
                    status[label] = f"failed: variant {parent}, which it starts from, failed"
                    continue
                queue.remove(label)
                running[slot] = (label, _spawn(exp, label, rerun, slot))
                break
        time.sleep(0.2)
        for slot, (label, proc) in list(running.items()):
            if proc.poll() is not None:
                del running[slot]
                if label != BASE or proc.returncode != 0:
                    status[label] = _outcome(exp, label, actions[label], proc.returncode)
    (exp.output / "status.json").write_text(json.dumps(status, indent=2))
    return status

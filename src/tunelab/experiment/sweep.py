"""`tunelab sweep SWEEP.yaml`: hyperparameter search over any config keys with Optuna.

    base: ../configs/quickstart.yaml       # config file (relative to this file) or inline mapping
    overrides: {training.max_steps: 20}    # applied to every trial
    space:
      method.lora_r: {choices: [8, 16, 32]}
      optimizer.lr: {low: 1.0e-4, high: 3.0e-3, log: true}
      training.epochs: {low: 1, high: 3, step: 1}
    sampler: tpe            # grid | random | tpe
    trials: 12
    objective: val_loss     # or eval:TASK:METRIC, e.g. eval:arith_en:accuracy
    direction: minimize     # minimize | maximize
    pruning: true           # stop unpromising trials on their validation loss
    grace_period: 30        # seconds without a heartbeat before a worker's trial counts as dead
    storage: null           # default sqlite:///<output>/optuna.db; or postgresql://..., mysql://...
    output: runs/sweep_lora

The study lives in the storage, so a killed sweep continues where it stopped: finished trials are
never run again, and a trial whose worker died (no heartbeat for `grace_period` s) is marked failed
and retried, resuming its run directory from its last checkpoint. Several `tunelab sweep` workers
on different machines that point at one storage URL share the study and split its trials.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from .. import config as C

SAMPLERS = ("grid", "random", "tpe")
HEARTBEAT_S, GRACE_S = 10, 30


def load_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise C.ConfigError(f"sweep file not found: {path}")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {"name", "base", "overrides", "space", "sampler", "trials", "objective", "direction", "pruning",
             "storage", "output", "seed", "evaluation", "heartbeat_interval", "grace_period"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise C.ConfigError(f"{path}: unknown sweep key(s) {unknown}; known: {', '.join(sorted(known))}")
    base = spec.get("base") or {}
    if isinstance(base, str):
        base = yaml.safe_load((path.parent / base).read_text(encoding="utf-8")) or {}
    spec["base"] = base
    spec.setdefault("name", path.stem)
    spec.setdefault("output", f"runs/{path.stem}")
    spec.setdefault("sampler", "tpe")
    spec.setdefault("trials", 10)
    spec.setdefault("objective", "val_loss")
    spec.setdefault("direction", "minimize")
    spec.setdefault("pruning", False)
    spec.setdefault("seed", 0)
    if spec["sampler"] not in SAMPLERS:
        raise C.ConfigError(f"{path}: sampler '{spec['sampler']}'; known: {', '.join(SAMPLERS)}")
    if spec["direction"] not in ("minimize", "maximize"):
        raise C.ConfigError(f"{path}: direction must be minimize or maximize")
    if not spec.get("space"):
        raise C.ConfigError(f"{path}: a sweep needs a search 'space'")
    obj = spec["objective"]
    if obj not in ("val_loss", "train_loss"):
        parts = str(obj).split(":")
        if len(parts) != 3 or parts[0] != "eval" or not all(parts[1:]):
            raise C.ConfigError(f"{path}: objective '{obj}': use val_loss, train_loss or eval:TASK:METRIC")
        from ..evaluate.tasks import get_task

        get_task(parts[1])  # an unknown task is an error now, not after the first trial trained
    from ..evaluate.run import EvalSettings

    spec["eval_settings"] = EvalSettings.from_dict(spec.get("evaluation") or {}, where=f"{path}: evaluation")
    for key, dom in spec["space"].items():  # every key must be a config key of the right type
        sample = dom["choices"][0] if "choices" in dom else dom.get("low")
        if sample is None:
            raise C.ConfigError(f"{path}: space.{key} needs 'choices' or 'low'/'high'")
        trial_cfg(spec, {key: sample})
    return spec


def trial_cfg(spec: dict[str, Any], params: dict[str, Any], run_dir: str | None = None) -> C.Config:
    tree = yaml.safe_load(yaml.safe_dump(spec["base"]))
    for key, value in {**(spec.get("overrides") or {}), **params}.items():
        C.set_path(tree, key, value)
    cfg = C.from_dict(tree)
    if run_dir:
        cfg.output.dir = run_dir
    return cfg


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for key, dom in space.items():
        if "choices" in dom:
            params[key] = trial.suggest_categorical(key, list(dom["choices"]))
        elif isinstance(dom["low"], int) and isinstance(dom["high"], int) and not dom.get("log"):
            params[key] = trial.suggest_int(key, dom["low"], dom["high"], step=dom.get("step", 1))
        else:
            params[key] = trial.suggest_float(key, float(dom["low"]), float(dom["high"]), log=bool(dom.get("log")))
    return params


def grid_space(space: dict[str, Any]) -> dict[str, list]:
    grid = {}
    for key, dom in space.items():
        if "choices" in dom:
            grid[key] = list(dom["choices"])
        elif isinstance(dom["low"], int) and isinstance(dom["high"], int):
            grid[key] = list(range(dom["low"], dom["high"] + 1, dom.get("step", 1)))
        else:
            raise C.ConfigError(f"grid sampler needs choices or integer ranges; space.{key} is a float range")
    return grid


def _study(spec: dict[str, Any]) -> Any:
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry
    out = Path(spec["output"])
    out.mkdir(parents=True, exist_ok=True)
    url = spec.get("storage") or f"sqlite:///{(out / 'optuna.db').resolve()}"
    for attempt in range(10):  # workers starting together race to create the schema: retry, don't crash
        try:
            storage = RDBStorage(url, heartbeat_interval=spec.get("heartbeat_interval", HEARTBEAT_S),
                                 grace_period=spec.get("grace_period", GRACE_S),
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
            break
        except Exception:  # sqlalchemy/alembic errors while another worker creates the tables
            if attempt == 9:
                raise
            time.sleep(0.5 + attempt * 0.5)
    if spec["sampler"] == "grid":
        sampler = optuna.samplers.GridSampler(grid_space(spec["space"]), seed=spec["seed"])
    elif spec["sampler"] == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec["seed"])
    else:
        sampler = optuna.samplers.TPESampler(seed=spec["seed"])
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=1) if spec["pruning"] else optuna.pruners.NopPruner()
    for attempt in range(10):
        try:
            return optuna.create_study(study_name=spec["name"], storage=storage, sampler=sampler, pruner=pruner,
                                       direction=spec["direction"], load_if_exists=True)
        except Exception:  # the other worker created the same study between our check and insert
            if attempt == 9:
                raise
            time.sleep(0.5 + attempt * 0.5)


def _objective_value(spec: dict[str, Any], run_dir: Path, summary: dict[str, Any]) -> float:
    obj = spec["objective"]
    if obj == "val_loss":
        v = summary.get("best_val_loss") or summary.get("final_val_loss")
        if v is None:
            raise C.ConfigError("objective val_loss needs validation data (data.val_size > 0)")
        return float(v)
    if obj == "train_loss":
        return float(summary["final_train_loss"])
    if obj.startswith("eval:"):
        _, task_name, metric = obj.split(":")
        from ..evaluate.run import evaluate

        res = evaluate(str(run_dir), task_name, out=run_dir / "eval" / task_name, settings=spec["eval_settings"])
        if not isinstance(res.get(metric), (int, float)):
            raise C.ConfigError(f"objective '{obj}': task {task_name} reports no number '{metric}'; its results "
                                f"have {', '.join(k for k, v in res.items() if isinstance(v, (int, float)))}")
        return float(res[metric])
    raise C.ConfigError(f"objective '{obj}': use val_loss, train_loss or eval:TASK:METRIC")


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from ..train.recipe import train

    study = _study(spec)
    out = Path(spec["output"])

    def objective(trial: Any) -> float:
        params = suggest(trial, spec["space"])
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        number = retried if retried is not None else trial.number  # a retry resumes its run directory
        run_dir = out / "trials" / f"trial-{number:04d}"
        cfg = trial_cfg(spec, params, str(run_dir))
        trial.set_user_attr("run_dir", str(run_dir))

        def report(step: int, state: Any) -> None:
            if spec["pruning"] and state.last_eval_step == step and state.last_val_loss is not None:
                trial.report(state.last_val_loss, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")

        resume = (run_dir / "checkpoints").is_dir()
        summary = train(cfg, resume=resume, overwrite=not resume and run_dir.exists(), callbacks=(report,))
        value = _objective_value(spec, run_dir, summary)
        if not math.isfinite(value):
            raise optuna.TrialPruned("objective is not finite")
        return value

    def active() -> int:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return len(study.get_trials(deepcopy=False, states=states))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry
    # one trial at a time, checking the shared study first, so several workers stop at `trials` in all
    while active() < int(spec["trials"]):
        if spec["sampler"] == "grid" and _grid_done(study, spec):
            break
        study.optimize(objective, n_trials=1, catch=(ValueError, RuntimeError))
    return write_outputs(study, spec)


def _grid_done(study: Any, spec: dict[str, Any]) -> bool:
    from optuna.trial import TrialState

    total = math.prod(len(v) for v in grid_space(spec["space"]).values())
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.RUNNING))) >= total


def write_outputs(study: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """trials.csv, best_config.yaml, sweep.md/html with objective per trial and against each parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    out = Path(spec["output"])
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    lines = ["number,state,value," + ",".join(spec["space"])]
    for t in trials:
        lines.append(f"{t.number},{t.state.name},{'' if t.value is None else t.value},"
                     + ",".join(str(t.params.get(k, "")) for k in spec["space"]))
    (out / "trials.csv").write_text("\n".join(lines) + "\n")
    result: dict[str, Any] = {"trials": len(trials), "complete": len(done)}
    if not done:
        return result
    best = study.best_trial
    C.save(trial_cfg(spec, best.params, best.user_attrs.get("run_dir")), out / "best_config.yaml")
    result.update(best_value=best.value, best_params=best.params, best_trial=best.number)
    (out / "best.json").write_text(json.dumps(result, indent=2))
    keys = list(spec["space"])
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.5), dpi=110)
    axes[0].plot([t.number for t in done], [t.value for t in done], "o-")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(spec["objective"])
    axes[0].set_title("objective per trial")
    for ax, key in zip(axes[1:], keys):
        ax.scatter([t.params[key] for t in done], [t.value for t in done])
        dom = spec["space"][key]
        if dom.get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_title(f"{spec['objective']} vs {key}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "sweep.png")
    plt.close(fig)
    md = [f"# sweep {spec['name']}", "", f"objective: {spec['objective']} ({spec['direction']}), "
          f"sampler {spec['sampler']}, {len(done)} complete of {len(trials)} trials", "",
          f"best: trial {best.number}, value {best.value:.4f}, params `{best.params}` (config: best_config.yaml)", "",
          "| trial | state | value | " + " | ".join(keys) + " |", "|" + "---|" * (3 + len(keys))]
    md += [f"| {t.number} | {t.state.name} | {'' if t.value is None else f'{t.value:.4f}'} | "
           + " | ".join(str(t.params.get(k, "")) for k in keys) + " |" for t in trials]
    md += ["", "![sweep](sweep.png)", ""]
    (out / "sweep.md").write_text("\n".join(md))
    return result

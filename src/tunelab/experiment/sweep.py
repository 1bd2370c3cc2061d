"""`tunelab sweep SWEEP.yaml`: hyperparameter search over any config keys with Optuna.

    base: ../configs/quickstart.yaml       # config file (relative to this file) or inline mapping
    overrides: {training.max_steps: 20}    # applied to every trial
    space:
      method.lora_r: {choices: [8, 16, 32]}
      optimizer.lr: {low: 1.0e-4, high: 3.0e-3, log: true}
      training.epochs: {low: 1, high: 3, step: 1}
    sampler: tpe            # grid | random | tpe
    trials: 12              # trials to finish (COMPLETE or PRUNED); failed ones are replaced
    objective: val_loss     # or eval:TASK:METRIC, e.g. eval:arith_en:accuracy
    direction: minimize     # minimize | maximize
    pruning: true           # median pruner on validation losses: {startup_trials: 5, warmup_steps: 1}
                            # (prunes once 5 trials finished, from training step 1); or such a mapping
    heartbeat_interval: 10  # seconds between a worker's heartbeats
    grace_period: 30        # seconds without a heartbeat before a trial on another machine counts as dead
    storage: null           # default sqlite:///<output>/optuna.db; or postgresql://..., mysql://...
    output: runs/sweep_lora

This module is the worker (`tunelab sweep`): it asks the study for a trial and runs it in a process
of its own (`trial.py`), so each trial's peak memory, time and failure are its own. The study in the
storage is the only shared state, so any number of workers on any machines can share it, and a
killed worker loses nothing:

- every running trial records who runs it (user attribute `worker`: machine, pid, the trial
  process's pid, a claim id) and the worker sends a heartbeat while it runs. A worker looking for
  work takes over a trial whose worker is gone: on the same machine as soon as its processes are
  (pids checked), elsewhere after `grace_period` s without a heartbeat. The trial keeps its number
  and run directory and resumes from its last checkpoint. Taking over is a compare-and-set on the
  `worker` attribute, so two workers never both take one trial, and a worker that finds its trial
  taken over (it was paused past the grace period) stops its own trial process;
- no parameter set runs twice: the sampler is seeded per trial number (a restarted seeded sampler
  would otherwise replay its first proposals), grid points are queued one at a time (the first
  point no trial holds yet), and a trial whose parameters another trial already holds is refused
  before it starts (state FAIL, user attribute `refused`), as is one beyond `trials`. A trial that
  failed is replaced by a new one; its parameter set is not proposed again.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from .trial import OWNER, machine, owner_gone, process_start, set_owner, supervise

SAMPLERS = ("grid", "random", "tpe")
HEARTBEAT_S, GRACE_S = 10, 30
MAX_REFUSED = 20  # proposals in a row that were already tried: the space is used up


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
    spec.setdefault("heartbeat_interval", HEARTBEAT_S)
    spec.setdefault("grace_period", GRACE_S)
    if spec["sampler"] not in SAMPLERS:
        raise C.ConfigError(f"{path}: sampler '{spec['sampler']}'; known: {', '.join(SAMPLERS)}")
    if spec["direction"] not in ("minimize", "maximize"):
        raise C.ConfigError(f"{path}: direction must be minimize or maximize")
    for key in ("trials", "heartbeat_interval", "grace_period"):
        if not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 1:
            raise C.ConfigError(f"{path}: '{key}' must be a whole number of at least 1, got {spec[key]!r}")
    if spec["grace_period"] <= spec["heartbeat_interval"]:
        raise C.ConfigError(f"{path}: 'grace_period' ({spec['grace_period']}) must be longer than "
                            f"'heartbeat_interval' ({spec['heartbeat_interval']}), or live trials count as dead")
    pruner_settings(spec, where=str(path))
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
    if spec["sampler"] == "grid":
        grid_space(spec["space"])
    return spec


def pruner_settings(spec: dict[str, Any], where: str = "sweep") -> dict[str, int] | None:
    """`pruning`: false, true (median pruner after 5 finished trials, from step 1), or a mapping."""
    p = spec.get("pruning")
    if p is False or p is None:
        return None
    settings = {"startup_trials": 5, "warmup_steps": 1}
    if p is not True:
        if not isinstance(p, dict) or set(p) - set(settings):
            raise C.ConfigError(f"{where}: 'pruning' must be true, false or a mapping with "
                                f"{' and/or '.join(settings)}; got {p!r}")
        settings.update(p)
    for key, value in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise C.ConfigError(f"{where}: 'pruning.{key}' must be a whole number >= 0, got {value!r}")
    return settings


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
        elif isinstance(dom["low"], int) and isinstance(dom["high"], int) and not dom.get("log"):
            grid[key] = list(range(dom["low"], dom["high"] + 1, dom.get("step", 1)))
        else:
            raise C.ConfigError(f"grid sampler needs choices or integer ranges; space.{key} is a float range")
    return grid


def points(space: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every parameter set of a space without float ranges, in grid order; None when it has one."""
    try:
        grid = grid_space(space)
    except C.ConfigError:
        return None
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


# --- the study and its storage -----------------------------------------------------------------

def storage_url(spec: dict[str, Any]) -> str:
    return spec.get("storage") or f"sqlite:///{(Path(spec['output']) / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None) -> Any:
    from optuna.storages import RDBStorage

    # SQLite: several workers and their trial processes write one file; wait for its lock, don't fail
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(10):  # workers starting together race to create the schema: retry, don't crash
        try:
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period)
        except Exception:  # sqlalchemy/alembic errors while another worker creates the tables
            if attempt == 9:
                raise
            time.sleep(0.5 + attempt * 0.5)


def make_sampler(spec: dict[str, Any], seed: int) -> Any:
    import optuna

    if spec["sampler"] == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid points are queued; see `_next_point`


def make_pruner(spec: dict[str, Any]) -> Any:
    import optuna

    s = pruner_settings(spec)
    if s is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=s["startup_trials"], n_warmup_steps=s["warmup_steps"])


def quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # the heartbeat is ours (the worker beats while its trial process runs), not Study.optimize's
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def _search(spec: dict[str, Any]) -> dict[str, Any]:
    """What a study's results depend on: trials of two different searches must not be mixed."""
    resolved = C.to_dict(trial_cfg(spec, {}))
    return json.loads(json.dumps({"config": resolved, "space": spec["space"], "objective": spec["objective"],
                                  "direction": spec["direction"], "evaluation": spec.get("evaluation") or {}},
                                 default=str))


def open_study(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(study, storage) for `spec`, created or loaded; refused when the study was made by another search."""
    import optuna

    from .. import rundir
    from ..evaluate.run import differences
    from ..paths import mark, marker_kind

    quiet_optuna()
    out = Path(spec["output"])
    # listed before the marker is read: a worker starting the same sweep writes its marker before any
    # other file, so whatever the listing saw, the marker read after it is there too (read the other
    # way round, a second worker saw no marker, then the first one's marker as a foreign file)
    entries = any(out.iterdir()) if out.is_dir() else False
    kind = marker_kind(out) if out.is_dir() else None
    if kind not in (None, "sweep"):
        raise C.ConfigError(f"sweep output {out} is a tunelab {kind} directory; choose another 'output'")
    earlier = (out / "optuna.db").is_file() or (out / "trials").is_dir()  # a sweep from before the marker
    if kind is None and entries and not earlier:
        raise C.ConfigError(f"sweep output {out} holds files tunelab did not write; choose an empty or new 'output'")
    out.mkdir(parents=True, exist_ok=True)
    if kind is None:
        mark(out, "sweep")
    storage = open_storage(storage_url(spec), spec["heartbeat_interval"], spec["grace_period"])
    for attempt in range(10):
        try:
            study = optuna.create_study(study_name=spec["name"], storage=storage, pruner=make_pruner(spec),
                                        sampler=make_sampler(spec, spec["seed"]), direction=spec["direction"],
                                        load_if_exists=True)
            break
        except Exception:  # the other worker created the same study between our check and insert
            if attempt == 9:
                raise
            time.sleep(0.5 + attempt * 0.5)
    now, saved = _search(spec), study.user_attrs.get("tunelab_search")
    if saved is None:
        study.set_user_attr("tunelab_search", now)
    elif saved != now:
        config = rundir.config_changes(saved["config"], now["config"])
        config = {k: v for k, v in config.items() if k not in spec["space"]}  # trials set those anyway
        rest = differences({k: v for k, v in saved.items() if k != "config"}, {k: v for k, v in now.items()
                                                                                if k != "config"})
        what = "; ".join(x for x in (rundir.describe_changes(config), rest) if x)
        if what:
            raise C.ConfigError(f"study '{spec['name']}' in {storage_url(spec)} was made by another search ({what}); "
                                "its trials would be mixed with these. Give the sweep another 'name' or 'output', "
                                "or restore the sweep file (only trials, sampler, seed, pruning, "
                                "heartbeat_interval and grace_period may change)")
    return study, storage


def params_of(t: Any) -> dict[str, Any]:
    """A trial's parameters, or for a queued trial the ones it will take."""
    return dict(t.params) or dict(t.system_attrs.get("fixed_params") or {})


def holds_params(t: Any) -> bool:
    """Does trial `t` hold its parameter set (done, running, queued, or failed while running)?
    Refused and abandoned trials never ran, so their parameters are free."""
    from optuna.trial import TrialState

    return t.state != TrialState.FAIL or "fail_reason" in t.user_attrs


class Worker:
    """One `tunelab sweep` process: takes over dead trials, starts new ones, runs each in a child."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.study, self.storage = open_study(spec)
        self.study_id = self.storage.get_study_id_from_name(spec["name"])
        self.url = storage_url(spec)
        self.out = Path(spec["output"])
        self.points = points(spec["space"])
        self.failures = self.refused = 0
        self.offer_free_point = False  # after a duplicate proposal in a finite space
        self.said_enough = False
        self.ownerless: dict[int, float] = {}  # trial number -> when this worker first saw it without owner

    def me(self) -> dict[str, Any]:
        return {"machine": machine(), "host": socket.gethostname(), "pid": os.getpid(),
                "pid_start": process_start(os.getpid()), "claim": uuid.uuid4().hex[:12]}

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    # the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        from optuna.trial import TrialState

        waiting = False
        while True:
            job = self.take_over() or self.start_new()
            if job == "retry":
                continue
            if job is not None:
                self.run_trial(*job)
                waiting = False
                continue
            busy = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            if not busy:
                return
            if not waiting:  # stay, to take over any whose worker dies, so the study always ends complete
                print(f"[tunelab] waiting for {len(busy)} trial(s) of other workers: "
                      f"{', '.join(str(t.number) for t in busy)}", flush=True)
                waiting = True
            time.sleep(min(self.spec["heartbeat_interval"], 2))

    def take_over(self) -> tuple[int, int, dict[str, Any]] | None:
        """Claim one RUNNING trial whose worker is gone; it resumes its run directory."""
        from optuna.trial import TrialState

        grace = self.spec["grace_period"]
        running = [self.storage.get_trial(self.trial_id(t.number)) for t in
                   self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        # owners first, heartbeats second: a worker records its heartbeat before it claims a trial,
        # so an owner read here is never judged by a heartbeat older than its claim
        stale = set(self.storage._get_stale_trial_ids(self.study_id)) if running else set()
        for t in running:
            tid, owner = self.trial_id(t.number), t.user_attrs.get(OWNER)
            if owner is None:
                # claimed a moment ago, its worker died right after asking for it, or a trial of a tunelab
                # from before owners were recorded: judged after grace_period on this worker's clock
                first = self.ownerless.setdefault(t.number, time.monotonic())
                if time.monotonic() - first <= grace:
                    continue
                if "run_dir" not in t.user_attrs:
                    self._abandon(tid, t.number, f"its worker died before starting it (no owner for {grace} s)")
                    continue
                why = f"it had no worker for {grace} s"
            else:
                why = owner_gone(owner, tid in stale, grace)
            if why is None:
                continue
            if "run_dir" not in t.user_attrs:  # it died while starting the trial: nothing ran, nothing to resume
                self._abandon(tid, t.number, f"{why} before the trial started")
                continue
            self.storage.record_heartbeat(tid)  # before the claim (see above)
            mine = self.me()
            if set_owner(self.storage, tid, owner, mine):
                attempts = int(t.user_attrs.get("attempts", 1)) + 1
                self.storage.set_trial_user_attr(tid, "attempts", attempts)
                self.storage.set_trial_user_attr(tid, "recovered", [*t.user_attrs.get("recovered", []), why])
                print(f"[tunelab] trial {t.number}: {why}; taking it over (attempt {attempts}), resuming "
                      f"{t.user_attrs.get('run_dir')}", flush=True)
                return t.number, tid, mine
        return None

    def _abandon(self, tid: int, number: int, why: str) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_user_attr(tid, "abandoned", why)
            self.storage.set_trial_state_values(tid, TrialState.FAIL)
            print(f"[tunelab] trial {number}: {why}; marked failed, its parameters are free again", flush=True)
        except UpdateFinishedTrialError:
            pass  # finished meanwhile, or another worker did the same

    def wants_more(self, trials: list[Any]) -> bool:
        from optuna.trial import TrialState

        active = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        if sum(t.state in active for t in trials) >= self.spec["trials"]:
            return False
        why = (f"{self.failures} trials failed in this worker; starting no more (see trials.csv)"
               if self.failures >= self.spec["trials"] else
               f"the sampler proposed {MAX_REFUSED} parameter sets in a row that were already tried; the search "
               "space looks used up" if self.refused >= MAX_REFUSED else None)
        if why:
            if not self.said_enough:
                print(f"[tunelab] {why}", flush=True)
            self.said_enough = True
            return False
        return self.points is None or self.free_points(trials) != []

    def free_points(self, trials: list[Any]) -> list[dict[str, Any]]:
        held = {tuple(params_of(t).get(k) for k in self.spec["space"]) for t in trials if holds_params(t)}
        return [p for p in self.points if tuple(p.values()) not in held]

    def start_new(self) -> tuple[int, int, dict[str, Any]] | str | None:
        """Ask the study for a trial (a queued one first), claim it and fix its parameters; refuse it
        when another trial holds them or the study has its trials. None when there is nothing to start."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.WAITING for t in trials):
            if not self.wants_more(trials):
                return None
            if self.spec["sampler"] == "grid" or (self.points is not None and self.offer_free_point):
                free = self.free_points(trials)
                pick = free[0] if self.spec["sampler"] == "grid" else random.Random(len(trials)).choice(free)
                self.study.enqueue_trial(pick)
        trial = self.study.ask()  # a queued trial (WAITING -> RUNNING is atomic) or a new one
        # seeded per trial number: a restarted worker continues the sequence instead of replaying it,
        # and two workers never draw from the same state
        self.study.sampler = make_sampler(self.spec, self.spec["seed"] + trial.number)
        tid = self.trial_id(trial.number)
        queued = "fixed_params" in self.storage.get_trial(tid).system_attrs
        self.storage.record_heartbeat(tid)
        mine = self.me()
        if not set_owner(self.storage, tid, None, mine):
            return "retry"  # judged abandoned meanwhile (only after grace_period without an owner)
        params = suggest(trial, self.spec["space"])
        why = self.refusal(trial.number, params, queued)
        if why:
            self.storage.set_trial_user_attr(tid, "refused", why)
            self.study.tell(trial, state=TrialState.FAIL)
            print(f"[tunelab] trial {trial.number} {params}: not run, {why}", flush=True)
            self.refused += why.startswith("duplicate")
            self.offer_free_point = why.startswith("duplicate")
            return "retry"
        self.refused, self.offer_free_point = 0, False
        run_dir = self.out / "trials" / f"trial-{trial.number:04d}"
        self.storage.set_trial_user_attr(tid, "run_dir", str(run_dir))
        self.storage.set_trial_user_attr(tid, "attempts", 1)
        return trial.number, tid, mine

    def refusal(self, number: int, params: dict[str, Any], queued: bool) -> str | None:
        """Why trial `number` must not run. Every trial fixes its parameters before it checks, so of
        two trials proposing one parameter set at once, at least one sees the other. A queued trial
        had its parameters when it was created: the lowest number wins. A new one defers to any."""
        from optuna.trial import TrialState

        others = [t for t in self.study.get_trials(deepcopy=False) if t.number != number and holds_params(t)]
        same = [t.number for t in others if params_of(t) == params and (not queued or t.number < number)]
        if same:
            return f"duplicate of trial {same[0]} (same parameters)"
        before = sum(t.state != TrialState.FAIL and t.number < number for t in others)
        if before >= self.spec["trials"]:
            return f"the study already has its {self.spec['trials']} trials"
        return None

    def run_trial(self, number: int, tid: int, owner: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        run_dir = self.storage.get_trial(tid).user_attrs["run_dir"]
        job = {"spec": {k: v for k, v in self.spec.items() if k != "eval_settings"}, "storage": self.url,
               "number": number, "claim": owner["claim"], "run_dir": run_dir}
        t = supervise(self.study, self.storage, tid, owner, job, self.spec["heartbeat_interval"])
        if t is None:
            return  # another worker took it over
        if t.state == TrialState.FAIL:
            self.failures += 1
        value = "" if t.value is None else f" {t.value:.4f}"
        why = f": {t.user_attrs['fail_reason']}" if "fail_reason" in t.user_attrs else ""
        print(f"[tunelab] trial {number}: {t.state.name}{value}{why} (peak {t.user_attrs.get('peak_mem_mb', '?')} MB, "
              f"{t.user_attrs.get('time_s', '?')} s)", flush=True)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    worker = Worker(spec)
    worker.run()
    return write_outputs(worker.study, spec)


# --- outputs ---------------------------------------------------------------------------------------

def _note(t: Any) -> str:
    a = t.user_attrs
    parts = [a.get("fail_reason"), a.get("refused") and f"not run: {a['refused']}", a.get("abandoned"),
             a.get("note"), a.get("recovered") and f"resumed after: {'; '.join(a['recovered'])}"]
    return "; ".join(p for p in parts if p)


def _replace(path: Path, text: str) -> None:
    """Write whole or not at all: two workers may finish together and write the same outputs."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(study: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """trials.csv, best_config.yaml, best.json, sweep.md/png: objective, peak memory and time per trial,
    objective against each parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    out = Path(spec["output"])
    keys = list(spec["space"])
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", "peak_mem_mb", "time_s", *keys, "note"])
    for t in trials:
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value, t.user_attrs.get("peak_mem_mb", ""),
                    t.user_attrs.get("time_s", ""), *(params_of(t).get(k, "") for k in keys), _note(t)])
    _replace(out / "trials.csv", buf.getvalue())
    result: dict[str, Any] = {"trials": len(trials), "complete": len(done),
                              "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                              "failed": sum(t.state == TrialState.FAIL and holds_params(t) for t in trials)}
    if not done:
        return result
    best = study.best_trial
    C.save(trial_cfg(spec, best.params, best.user_attrs.get("run_dir")), out / "best_config.yaml")
    result.update(best_value=best.value, best_params=best.params, best_trial=best.number)
    _replace(out / "best.json", json.dumps(result, indent=2))
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4 * (len(keys) + 1), 3.5), dpi=110)
    axes[0].plot([t.number for t in done], [t.value for t in done], "o-")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(spec["objective"])
    axes[0].set_title("objective per trial")
    for ax, key in zip(axes[1:], keys):
        ax.scatter([t.params[key] for t in done], [t.value for t in done])
        if spec["space"][key].get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_title(f"{spec['objective']} vs {key}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "sweep.png")
    plt.close(fig)
    cell = lambda v: "" if v in (None, "") else str(v)  # noqa: E731
    md = [f"# sweep {spec['name']}", "", f"objective: {spec['objective']} ({spec['direction']}), "
          f"sampler {spec['sampler']}, {len(done)} complete of {len(trials)} trials", "",
          f"best: trial {best.number}, value {best.value:.4f}, params `{best.params}` (config: best_config.yaml)", "",
          "Peak memory and time are each trial's own (a process per trial): "
          f"{best.user_attrs.get('peak_mem_kind', 'cpu_peak_rss')}, wall seconds of the trial's process.", "",
          "| trial | state | value | peak MB | time s | " + " | ".join(keys) + " | note |",
          "|" + "---|" * (6 + len(keys))]
    md += [f"| {t.number} | {t.state.name} | {'' if t.value is None else f'{t.value:.4f}'} | "
           f"{cell(t.user_attrs.get('peak_mem_mb'))} | {cell(t.user_attrs.get('time_s'))} | "
           + " | ".join(cell(params_of(t).get(k)) for k in keys) + f" | {_note(t).replace('|', '/')} |"
           for t in trials]
    md += ["", "![sweep](sweep.png)", ""]
    _replace(out / "sweep.md", "\n".join(md))
    return result

"""Find every run, experiment, sweep and evaluation under the roots, and say what state each is in.

What is what (read from the files, as `tunelab.rundir` and `experiment/` define them):
- a run: a `.tunelab` marker of kind `run`, or `config.yaml` with `metrics.jsonl`, `summary.json`,
  `error.txt` or `checkpoints/`;
- an experiment: a marker of kind `experiment`, or `runs/` beside `eval/`, `status.json` or `report.md`;
- a sweep: `trials/` beside `best.json`, `trials.csv` or `optuna.db`;
- an evaluation: `results.json` (or `predictions.jsonl` still being written).

A run's status, in this order:
- failed: `error.txt` (a variant of `tunelab run`), or the board's job for it ended with an error;
- finished: `summary.json` (written last by `tunelab train`);
- running: a live process works on it (`liveness`: the board's own job, or a tunelab process on this
  machine whose command line trains into it);
- starting: the board's job is alive but nothing is logged yet;
- interrupted: no process, a complete checkpoint: `tunelab train --resume` continues it;
- dead: no process and no checkpoint: it has to start again.
Files are parsed once per change (keyed by mtime and size), so polling every two seconds stays cheap.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import rundir
from ..paths import MARKER
from .jobs import Jobs
from .liveness import Processes
from .roots import Roots

SKIP = {rundir.MODEL, rundir.CHECKPOINTS, rundir.TENSORBOARD, "train", "validation", "__pycache__", "node_modules"}
MAX_DEPTH = 8


class FileCache:
    """parse(path) remembered until the file's mtime or size changes."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, str], tuple[tuple[int, int], Any]] = {}

    def get(self, path: Path | None, parse: Callable[[Path], Any], tag: str = "") -> Any:
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get((path, tag))
        if hit and hit[0] == key:
            return hit[1]
        try:
            value = parse(path)
        except (OSError, ValueError, yaml.YAMLError):
            value = None
        self._cache[(path, tag)] = (key, value)
        return value


def _marker(d: Path) -> str | None:
    try:
        return json.loads((d / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def metrics_digest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    train = [r for r in rows if r.get("split") == "train"]
    val = [r["loss"] for r in rows if r.get("split") == "val" and r.get("loss") is not None]
    last = rows[-1] if rows else {}
    return {"rows": len(rows), "step": last.get("step"), "epoch": last.get("epoch"),
            "last_train_loss": train[-1].get("loss") if train else None, "best_val_loss": min(val) if val else None,
            "peak_mem_mb": max((r.get("peak_mem_mb") or 0 for r in rows), default=None) or None,
            "elapsed_s": last.get("elapsed_s")}


def checkpoints(run: Path) -> list[int]:
    d = run / rundir.CHECKPOINTS
    if not d.is_dir():
        return []
    steps = []
    for p in d.iterdir():  # step-NNNNNN, complete ones only (a save in progress is .step-*.tmp-*)
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
            steps.append(int(p.name[5:]))
    return sorted(steps)


class Scanner:
    def __init__(self, roots: Roots, jobs: Jobs):
        self.roots, self.jobs = roots, jobs
        self.cache = FileCache()
        self.procs = Processes()

    # -- files -------------------------------------------------------------------------------
    def json(self, d: Path, name: str) -> Any:
        return self.cache.get(self.roots.file(d, name), lambda p: json.loads(p.read_text(encoding="utf-8")))

    def config(self, d: Path) -> dict[str, Any]:
        return self.cache.get(self.roots.file(d, rundir.CONFIG),
                              lambda p: yaml.safe_load(p.read_text(encoding="utf-8"))) or {}

    def metrics(self, d: Path) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (`rundir.read_metrics`), only when the file lies inside the roots."""
        f = self.roots.file(d, rundir.METRICS)
        return self.cache.get(f, lambda p: rundir.read_metrics(d), "rows") or []

    def metric_keys(self, d: Path) -> set[str]:
        """Every key some row of metrics.jsonl carries (which curves a run has)."""
        f = self.roots.file(d, rundir.METRICS)
        return self.cache.get(f, lambda p: {k for row in self.metrics(d) for k in row}, "keys") or set()

    def samples(self, d: Path) -> list[dict[str, Any]]:
        """The rows of samples.jsonl (stage grpo: completions of one prompt every objective.sample_every
        steps), read by `rundir.read_rows`, only when the file lies inside the roots."""
        return self.cache.get(self.roots.file(d, rundir.SAMPLES), rundir.read_rows, "rows") or []

    def stage(self, d: Path) -> str:
        """sft, pt, dpo or grpo: the config's `stage` (a config written before stages existed is sft)."""
        return self.config(d).get("stage") or (self.json(d, rundir.SUMMARY) or {}).get("stage") or "sft"

    def error(self, d: Path) -> str | None:
        return rundir.read_error(d) if self.roots.file(d, rundir.ERROR) else None

    # -- discovery ---------------------------------------------------------------------------
    def walk(self) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {"run": [], "experiment": [], "sweep": [], "eval": [], "export": [], "model": []}

        def visit(d: Path, depth: int) -> None:
            try:
                entries = list(os.scandir(d))
            except OSError:
                return
            names = {e.name for e in entries}
            subdirs = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
            kind = _marker(d)
            if kind == "experiment" or (kind is None and "runs" in subdirs and
                                        ({"eval"} & set(subdirs) or {"status.json", "report.md"} & names)):
                found["experiment"].append(d)
                if not (d / "runs").is_symlink():
                    visit(d / "runs", depth + 1)  # its runs; its eval/ is read with the experiment
                return
            if "trials" in subdirs and {"best.json", "trials.csv", "optuna.db"} & names:
                found["sweep"].append(d)
                visit(d / "trials", depth + 1)
                return
            if kind == "run" or (kind is None and rundir.CONFIG in names and
                                 {rundir.METRICS, rundir.SUMMARY, rundir.ERROR, rundir.CHECKPOINTS} & names):
                found["run"].append(d)
                return  # a run's own eval/ is read with the run
            if kind in (None, "eval") and ("results.json" in names or "predictions.jsonl" in names):
                found["eval"].append(d)
                return
            if kind == "export":
                found["export"].append(d)
                return
            if "config.json" in names and (rundir.ADAPTER_CONFIG in names or
                                           any(n.endswith(".safetensors") for n in names)):
                found["model"].append(d)  # a plain model directory: something to chat with
                return
            if kind == "data" or depth >= MAX_DEPTH:
                return
            for name in subdirs:
                if name not in SKIP:
                    visit(d / name, depth + 1)

        for root in self.roots.dirs:
            visit(root, 0)
        return found

    # -- status ------------------------------------------------------------------------------
    def run_status(self, d: Path, job: dict[str, Any] | None, parent_live: str | None,
                   newest_open: bool = False) -> dict[str, Any]:
        summary = self.json(d, rundir.SUMMARY)
        error = self.error(d)
        ckpts = checkpoints(d)
        out: dict[str, Any] = {"resumable": bool(ckpts) and summary is None, "checkpoint": ckpts[-1] if ckpts else None}
        job_state = job["state"] if job else None
        holder = self.procs.pid_for("run", d)
        if job_state == "running":
            live = f"pid {job.get('pid')}, started from this board"
        elif holder:
            live = f"pid {holder} trains it (its command line)"
        elif parent_live == "sweep" and newest_open:
            live = "the sweep's worker is alive and this is its newest unfinished trial"
        else:
            live = None
        if error and not live:
            return {**out, "status": "failed", "detail": error}
        if summary is not None:
            return {**out, "status": "finished", "detail": f"{summary.get('steps')} steps"}
        if live:
            logged = self.metrics(d)
            return {**out, "status": "running" if logged else "starting", "detail": live}
        if job_state == "failed":
            return {**out, "status": "failed", "detail": job.get("error") or f"exit status {job.get('exit_code')}"}
        metrics = d / rundir.METRICS
        if job and job.get("ended") and metrics.is_file() and metrics.stat().st_mtime > job["ended"] + 5:
            job_state = None  # trained again since (from a terminal): the board's job is not the last word
        how = ("stopped from this board" if job_state == "stopped" else
               f"its process ended (exit status {job.get('exit_code')})" if job_state in ("finished",) else
               "no process is working on it")
        if ckpts:
            return {**out, "status": "interrupted",
                    "detail": f"{how}; resumable from checkpoint step {ckpts[-1]}"}
        return {**out, "status": "dead", "detail": f"{how}, and it left no checkpoint: start it again"}

    def run_record(self, d: Path, parent: dict[str, Any] | None, job: dict[str, Any] | None,
                   parent_live: str | None = None, newest_open: bool = False) -> dict[str, Any]:
        cfg = self.config(d)
        summary = self.json(d, rundir.SUMMARY) or {}
        digest = metrics_digest(self.metrics(d))
        data = cfg.get("data") or {}
        mix = [m.get("name") for m in data.get("mix") or [] if isinstance(m, dict)]
        model_dir = d / rundir.MODEL
        rec = {"id": self.roots.id_of(d), "label": self.roots.label(d), "name": d.name, "parent": parent,
               "stage": self.stage(d), "method": summary.get("method") or (cfg.get("method") or {}).get("name"),
               "model": summary.get("model") or (cfg.get("model") or {}).get("name"),
               "data": " + ".join(mix) if mix else data.get("name"),
               "step": summary.get("steps", digest["step"]),
               "max_steps": (cfg.get("training") or {}).get("max_steps"),
               "epochs": (cfg.get("training") or {}).get("epochs"),
               "epoch": digest["epoch"],
               "best_val_loss": summary.get("best_val_loss", digest["best_val_loss"]),
               "last_train_loss": summary.get("final_train_loss", digest["last_train_loss"]),
               "peak_mem_mb": summary.get("peak_mem_mb", digest["peak_mem_mb"]),
               "time_s": summary.get("train_time_s", digest["elapsed_s"]),
               "has_model": (model_dir / "tunelab.json").is_file() and (d / rundir.SUMMARY).is_file(),
               "job": job["id"] if job else None, "rows": digest["rows"]}
        rec.update(self.run_status(d, job, parent_live, newest_open))
        return rec

    def scan(self) -> dict[str, Any]:
        found = self.walk()
        jobs = self.jobs.all()
        by_target: dict[str, dict[str, Any]] = {}
        for job in reversed(jobs):  # oldest first, so the newest job for a target wins
            by_target[job["target"]] = job
        live_targets = {j["target"] for j in jobs if j["state"] == "running"}

        experiments, sweeps, runs, evals = [], [], [], []
        parents: dict[Path, dict[str, Any]] = {}
        for kind, items in (("experiment", found["experiment"]), ("sweep", found["sweep"])):
            for d in items:
                parents[d] = {"id": self.roots.id_of(d), "kind": kind, "name": d.name, "label": self.roots.label(d)}
        live_parents = {d: p["kind"] for d, p in parents.items()
                        if str(d) in live_targets or self.procs.pid_for(p["kind"], d)}
        newest = {}  # per live sweep, its most recently written unfinished trial (the one training)
        for d in found["run"]:
            if live_parents.get(d.parent.parent) == "sweep" and not (d / rundir.SUMMARY).exists():
                t = max((f.stat().st_mtime for f in d.iterdir()), default=0)
                if t >= newest.get(d.parent.parent, (None, -1))[1]:
                    newest[d.parent.parent] = (d, t)
        seen = set()
        for d in found["run"]:
            parent_dir = d.parent.parent if d.parent.parent in parents else None
            parent = parents.get(parent_dir) if parent_dir else None
            runs.append(self.run_record(d, parent, by_target.get(str(d)), live_parents.get(parent_dir),
                                        newest.get(parent_dir, (None,))[0] == d))
            seen.add(str(d))
        for job in jobs:  # launched here, not yet (or never) written: show them too, with their error
            t = Path(job["target"])
            if job["kind"] == "train" and job["target"] not in seen and self.roots.contains(t):
                rec = self.run_record(t, None, job)
                runs.append(rec)
                seen.add(job["target"])
        for d, p in parents.items():
            members = [r for r in runs if r["parent"] and r["parent"]["id"] == p["id"]]
            live = d in live_parents or any(r["status"] in ("running", "starting") for r in members)
            status_json = self.json(d, "status.json")
            failed = [k for k, v in (status_json or {}).items() if str(v).startswith("failed")]
            rec = {**p, "label": self.roots.label(d), "runs": [r["id"] for r in members],
                   "status": "running" if live else ("finished" if status_json or self.json(d, "best.json")
                                                     else "incomplete"),
                   "detail": f"{len(failed)} failed: {', '.join(failed)}" if failed else "",
                   "job": by_target[str(d)]["id"] if str(d) in by_target else None}
            if p["kind"] == "sweep":
                rec["best"] = self.json(d, "best.json")
                sweeps.append(rec)
            else:
                rec["evals"] = [self.eval_record(e) for e in self.experiment_evals(d)]
                experiments.append(rec)
        for d in found["eval"]:
            evals.append(self.eval_record(d, by_target.get(str(d))))
        return {"roots": self.roots.given, "runs": runs, "experiments": experiments, "sweeps": sweeps,
                "evals": evals, "jobs": [{k: j.get(k) for k in ("id", "kind", "command", "state", "error", "created")}
                                         | {"target": self.roots.id_of(j["target"])
                                            if self.roots.contains(j["target"]) else None} for j in jobs[:50]]}

    # -- evaluations -------------------------------------------------------------------------
    def experiment_evals(self, exp: Path, label: str | None = None) -> list[Path]:
        base = exp / "eval"
        if not base.is_dir():
            return []
        labels = [base / label] if label else sorted(p for p in base.iterdir() if p.is_dir())
        return [t for lab in labels if lab.is_dir() for t in sorted(lab.iterdir())
                if t.is_dir() and self.roots.contains(t) and ((t / "results.json").is_file() or
                                                              (t / "predictions.jsonl").is_file())]

    def run_evals(self, run: Path) -> list[Path]:
        """The evaluations of a run: its experiment's `eval/<run>/<task>/`, its own `eval/<task>/`
        (sweeps), and evaluations elsewhere under the roots whose results name this run as the model."""
        out = []
        if (run.parent.name == "runs") and run.parent.parent.is_dir():
            out += self.experiment_evals(run.parent.parent, run.name)
        if (run / "eval").is_dir():
            out += [t for t in sorted((run / "eval").iterdir()) if t.is_dir() and self.roots.contains(t) and
                    (t / "results.json").is_file()]
        for d in self.walk()["eval"]:
            res = self.json(d, "results.json") or {}
            ref = res.get("model")
            if ref and self.roots.contains(Path(ref)) and Path(ref).resolve() == run.resolve():
                out.append(d)
        return out

    def eval_record(self, d: Path, job: dict[str, Any] | None = None) -> dict[str, Any]:
        res = self.json(d, "results.json")
        rec = {"id": self.roots.id_of(d), "label": self.roots.label(d), "task": (res or {}).get("task") or d.name,
               "model": (res or {}).get("model"), "n": (res or {}).get("n"),
               "status": "finished" if res else ("running" if job and job["state"] == "running" else "partial"),
               "has_predictions": (d / "predictions.jsonl").is_file()}
        if res:
            try:
                from ..evaluate.scorers import get_scorer  # the report's cells, the report's code

                scorer = get_scorer(res.get("scorer") or ("rouge_zh" if "rouge-l" in res else "math"))
                rec["columns"] = scorer.report_columns(rec["task"])
                rec["cells"] = scorer.report_cells(res, None)
            except Exception:  # an evaluation kind without report cells (perplexity, efficiency)
                rec["columns"], rec["cells"] = [], []
            rec["metrics"] = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return rec

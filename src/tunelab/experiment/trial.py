"""One sweep trial across a process boundary: who runs it, the worker side that starts and watches
its process, and that process.

    python -m tunelab.experiment.trial < job.json     # started by the sweep worker (sweep.py)

Who runs a trial: a RUNNING trial's user attribute `worker` names its worker (machine, pid, the
trial process's pid, a claim id). It is written by compare-and-set only, so of two workers taking
over one dead trial exactly one succeeds; a worker is dead when its processes are gone (same
machine) or its heartbeat is older than the grace period (another machine).

The worker side (`supervise`) starts the trial's process, records the heartbeat while it runs,
stops it if another worker took the trial over, and tells FAIL with the reason when the process
died without an outcome (killed by the out-of-memory killer, a crash).

The trial's process reads its job on stdin (not the command line, so a storage URL with a password
never shows in `ps`), re-attaches to its Optuna trial through the shared storage, trains (resuming
its run directory from the last checkpoint when an earlier attempt was killed, or using the
finished training when only the objective was left), reports each validation loss and asks the
pruner after each evaluation, computes the objective (val_loss, train_loss or eval:TASK:METRIC) and
tells the study the outcome itself: COMPLETE with the value, PRUNED, or FAIL with the reason in
`fail_reason`. `peak_mem_mb` and `time_s` are this process's own. It dies with its worker (the
kernel's parent-death signal on Linux, a poll of the parent elsewhere), so a trial taken over by
another worker never runs twice at once, and it checks that its worker still owns the trial before
it writes the outcome.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .. import config as C
from .. import rundir

STARTED = time.perf_counter()
OWNER = "worker"  # the user attribute naming the worker that runs a RUNNING trial
EXIT_LOST = 3  # the trial belongs to another worker now: nothing was written


# --- who runs a trial -----------------------------------------------------------------------------

def machine() -> str:
    """This machine: host name and boot id (a pid is only meaningful on the machine and boot it ran on)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}:{boot}"


def process_start(pid: int) -> str | None:
    """When process `pid` started (Linux clock ticks), so a recycled pid is not taken for a live one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    if Path("/proc/self/stat").exists():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        # a zombie has exited (its parent died and nobody reaped it)
        return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(owner: dict[str, Any], heartbeat_stale: bool, grace: int) -> str | None:
    """Why the worker that runs a trial is dead, or None while it may be alive."""
    if owner.get("machine") == machine():  # here we know: its processes exist or not
        if alive(owner.get("pid"), owner.get("pid_start")) or alive(owner.get("child_pid"), owner.get("child_start")):
            return None
        return f"its worker (pid {owner.get('pid')} on {owner.get('host')}) is gone"
    if heartbeat_stale:
        return f"its worker on {owner.get('host')} sent no heartbeat for {grace} s"
    return None


def set_owner(storage: Any, trial_id: int, old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Compare-and-set the `worker` attribute of a RUNNING trial: True when it was `old` (absent for
    None) and is now `new`. Optuna has no compare-and-set, so this is one SQL statement on its user
    attribute table; one statement is atomic on every database, so of two workers taking over one
    dead trial exactly one succeeds."""
    import sqlalchemy
    from optuna.storages._rdb import models  # Optuna's schema (stable since v1; see its migrations)
    from optuna.trial import TrialState

    A, T = models.TrialUserAttributeModel, models.TrialModel
    running = sqlalchemy.select(T.trial_id).where(T.trial_id == trial_id, T.state == TrialState.RUNNING)
    try:
        with storage.engine.begin() as conn:
            if old is None:  # (trial_id, key) is unique: of two inserts, one fails
                if conn.execute(running).first() is None:
                    return False
                conn.execute(sqlalchemy.insert(A).values(trial_id=trial_id, key=OWNER, value_json=json.dumps(new)))
                return True
            done = conn.execute(sqlalchemy.update(A).where(A.trial_id == trial_id, A.key == OWNER,
                                                           A.value_json == json.dumps(old), A.trial_id.in_(running))
                                .values(value_json=json.dumps(new)))
            return done.rowcount == 1
    except sqlalchemy.exc.IntegrityError:
        return False


def supervise(study: Any, storage: Any, tid: int, owner: dict[str, Any], job: dict[str, Any],
              heartbeat_interval: int) -> Any:
    """Run `job` in a process of its own while beating the trial's heartbeat. Returns the finished
    trial (FrozenTrial), or None when another worker took it over (its process is stopped then)."""
    from optuna.trial import TrialState

    number = job["number"]
    print(f"[tunelab] trial {number} {storage.get_trial(tid).params} -> {job['run_dir']}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.experiment.trial"], stdin=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps({**job, "parent": os.getpid()}, default=str))
    proc.stdin.close()
    with_child = {**owner, "child_pid": proc.pid, "child_start": process_start(proc.pid)}
    owned = set_owner(storage, tid, owner, with_child)
    beat = 0.0
    while proc.poll() is None:
        if time.monotonic() - beat >= heartbeat_interval:
            beat = time.monotonic()
            try:
                storage.record_heartbeat(tid)
                owned = owned and (storage.get_trial_user_attrs(tid).get(OWNER) or {}).get("claim") == owner["claim"]
            except Exception as e:  # a busy or unreachable database: keep training, try again
                print(f"[tunelab] heartbeat of trial {number} not recorded: {e}", flush=True)
            if not owned:  # this worker was paused past the grace period and another one took the trial
                proc.kill()
                proc.wait()
                print(f"[tunelab] trial {number} was taken over by another worker; stopped here", flush=True)
                return None
        time.sleep(0.2)
    t = storage.get_trial(tid)
    if t.state == TrialState.RUNNING and (t.user_attrs.get(OWNER) or {}).get("claim") == owner["claim"]:
        code = proc.returncode
        why = (f"the trial process was killed by signal {-code} (out of memory?)" if code < 0 else
               f"the trial process exited with status {code} without an outcome (its log is above)")
        storage.set_trial_user_attr(tid, "fail_reason", why)
        storage.set_trial_user_attr(tid, "time_s", round(time.perf_counter() - t0, 1))
        study.tell(number, state=TrialState.FAIL)
        t = storage.get_trial(tid)
    return t


# --- the trial's process ---------------------------------------------------------------------------

def exit_with_parent(parent: int) -> None:
    """Die with the worker: a trial process left running would train beside the one that replaces it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # not Linux: the poll below does it within a second

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(EXIT_LOST)

    if os.getppid() != parent:  # the worker died before the signal was armed
        os._exit(EXIT_LOST)
    threading.Thread(target=watch, daemon=True).start()


def objective_value(spec: dict[str, Any], run_dir: Path, summary: dict[str, Any]) -> float:
    from ..errors import ConfigError

    obj = spec["objective"]
    if obj == "val_loss":
        v = summary.get("best_val_loss") or summary.get("final_val_loss")
        if v is None:
            raise ConfigError("objective val_loss needs validation data (data.val_size > 0)")
        return float(v)
    if obj == "train_loss":
        return float(summary["final_train_loss"])
    _, task_name, metric = obj.split(":")
    from ..evaluate.run import EvalSettings, evaluate

    settings = EvalSettings.from_dict(spec.get("evaluation") or {}, where="sweep evaluation")
    res = evaluate(str(run_dir), task_name, out=run_dir / rundir.EVAL / task_name, settings=settings)
    if not isinstance(res.get(metric), (int, float)):
        raise ConfigError(f"objective '{obj}': task {task_name} reports no number '{metric}'; its results "
                          f"have {', '.join(k for k, v in res.items() if isinstance(v, (int, float)))}")
    return float(res[metric])


def train_or_resume(cfg: C.Config, callbacks: tuple) -> tuple[dict[str, Any], int | None]:
    """(summary, step resumed from): train the trial's run directory, continuing whatever an earlier
    attempt left (a finished training is used as it is; a checkpoint is resumed)."""
    from ..train import checkpoint as ckpt
    from ..train.recipe import train

    run_dir = Path(cfg.output.dir)
    if (run_dir / rundir.SUMMARY).is_file():  # trained; its worker died before the objective was told
        return json.loads((run_dir / rundir.SUMMARY).read_text()), None
    last = ckpt.latest(run_dir / rundir.CHECKPOINTS)
    if last is not None:
        step = ckpt.list_steps(run_dir / rundir.CHECKPOINTS)[-1]
        print(f"[tunelab] resuming {run_dir} from its checkpoint at step {step}", flush=True)
        return train(cfg, resume=True, callbacks=callbacks), step
    has_files = run_dir.is_dir() and any(run_dir.iterdir())  # killed before its first checkpoint
    return train(cfg, overwrite=has_files, callbacks=callbacks), None


def run_trial(job: dict[str, Any]) -> int:
    import optuna
    from optuna.trial import TrialState

    from ..memory import peak_memory_mb
    from .sweep import make_pruner, open_storage, quiet_optuna, trial_cfg

    quiet_optuna()
    spec, number = job["spec"], job["number"]
    storage = open_storage(job["storage"])
    study = optuna.load_study(study_name=spec["name"], storage=storage, pruner=make_pruner(spec),
                              sampler=optuna.samplers.RandomSampler())  # never samples: the worker fixed the params
    tid = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(spec["name"]), number)

    def ours() -> bool:
        t = storage.get_trial(tid)
        return t.state == TrialState.RUNNING and (t.user_attrs.get(OWNER) or {}).get("claim") == job["claim"]

    if not ours():
        return EXIT_LOST
    trial = optuna.Trial(study, tid)
    run_dir = Path(job["run_dir"])
    cfg = trial_cfg(spec, trial.params, str(run_dir))

    def report(step: int, state: Any) -> None:
        if state.last_eval_step == step and state.last_val_loss is not None and math.isfinite(state.last_val_loss):
            trial.report(state.last_val_loss, step)  # kept in the storage: the pruner of every worker reads it
            if trial.should_prune():  # the study's pruner (never, without `pruning`)
                raise optuna.TrialPruned(f"pruned at step {step}: validation loss {state.last_val_loss:.4f}")

    attrs: dict[str, Any] = {}
    state, value = TrialState.FAIL, None
    try:
        (run_dir / rundir.ERROR).unlink(missing_ok=True)
        summary, resumed = train_or_resume(cfg, (report,))
        if resumed is not None:
            attrs["resumed_from_step"] = resumed
        value = objective_value(spec, run_dir, summary)
        state = TrialState.COMPLETE
        if not math.isfinite(value):
            state, value, attrs["note"] = TrialState.PRUNED, None, f"objective is {value}"
    except optuna.TrialPruned as e:
        state, attrs["note"] = TrialState.PRUNED, str(e)
    except Exception as e:  # a failed trial is recorded with its reason; the sweep goes on
        attrs["fail_reason"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        if run_dir.is_dir():
            (run_dir / rundir.ERROR).write_text(f"{attrs['fail_reason']}\n\n{traceback.format_exc()}")
    from ..train.recipe import device_type

    peak, kind = peak_memory_mb(device_type())
    attrs.update(peak_mem_mb=round(peak, 1), peak_mem_kind=kind, time_s=round(time.perf_counter() - STARTED, 1))
    if not ours():  # taken over while we ran (this worker was paused past the grace period)
        return EXIT_LOST
    for key, v in attrs.items():
        storage.set_trial_user_attr(tid, key, v)
    study.tell(number, value, state=state)
    return 1 if state == TrialState.FAIL else 0


def main() -> int:
    job = json.loads(sys.stdin.read())
    exit_with_parent(int(job["parent"]))
    return run_trial(job)


if __name__ == "__main__":
    sys.exit(main())

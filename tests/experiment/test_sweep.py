"""Sweeps: each trial in a process of its own (its own peak memory, its failure its own, pruning
through the shared storage); a killed worker loses nothing (its trial is taken over and resumes its
checkpoint, by pid on the same machine, by heartbeat elsewhere); no parameter set runs twice
(restarted seeded samplers, grid points queued by two workers, small discrete spaces).

The fast tests drive the worker's own proposal and take-over code against a real SQLite study
without training; the slow ones run `tunelab sweep` on tiny-qwen3 and read the study back."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BASE = {"model.name": "tiny-qwen3", "data.name": "arith_en", "data.n": 16, "data.val_size": 4,
        "data.max_length": 256, "data.dedup": "exact", "training.max_steps": 2, "training.batch_size": 2,
        "training.eval_every": 1, "training.save_every": 1, "method.name": "full", "optimizer.name": "sgd"}


def write_sweep(tmp_path: Path, lrs: list[float] | None = None, trials: int = 3, *, overrides: dict | None = None,
                space: dict | None = None, **extra) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/quickstart.yaml"), "overrides": {**BASE, **(overrides or {})},
        "space": space or {"optimizer.lr": {"choices": lrs}}, "sampler": "grid", "trials": trials,
        "objective": "val_loss", "direction": "minimize", "output": str(tmp_path / "sw"),
        "heartbeat_interval": 1, "grace_period": 3, **extra}))
    return path


def study(tmp_path: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'sw' / 'optuna.db'}"
    try:
        return optuna.load_study(study_name="sweep", storage=url)
    except KeyError:  # the worker has not created the study yet
        return None
    except Exception:  # sqlalchemy: the worker is creating the tables right now
        return None


def trials_of(tmp_path: Path) -> list:
    if not (tmp_path / "sw" / "optuna.db").exists():
        return []
    s = study(tmp_path)
    return [] if s is None else s.get_trials(deepcopy=False)


def states(tmp_path: Path) -> list[tuple[int, str, float | None]]:
    """(trial number, state, learning rate) read from the study's SQLite storage."""
    return [(t.number, t.state.name, t.params.get("optimizer.lr")) for t in trials_of(tmp_path)]


def launch(path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tunelab", "sweep", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(what, timeout: float = 300, every: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def gone(pid: int) -> bool:
    from tunelab.experiment.trial import alive

    return not alive(pid, None)


def ran(trials: list) -> list:
    """Trials that hold their parameters (refused ones never ran)."""
    return [t for t in trials if "refused" not in t.user_attrs and "abandoned" not in t.user_attrs]


# --- fast: proposals, take-over and the spec, on a real SQLite study without training ---------

def spec_for(tmp_path: Path, **kw):
    from tunelab.experiment import sweep

    return sweep.load_spec(write_sweep(tmp_path, **kw))


def finish(worker, job, value: float = 1.0) -> None:
    worker.study.tell(job[0], value)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_restarted_seeded_sampler_proposes_nothing_tried(tmp_path, sampler):
    """A seeded sampler restarted on the same study replays its first proposals (shown with plain
    Optuna below); the worker seeds per trial number, so a restart continues the sequence."""
    import optuna

    from tunelab.experiment import sweep

    space = {"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "method.lora_r": {"choices": [4, 8, 16, 32]}}
    spec = spec_for(tmp_path, space=space, trials=3, sampler=sampler, seed=7)
    first = sweep.Worker(spec)
    for _ in range(3):
        finish(first, first.start_new())
    assert first.start_new() is None  # 3 trials asked for, 3 done
    # what this guards against: the same seed restarted as before (one sampler per worker) proposes
    # trial 0's parameters again; shown on a copy of the study
    shutil.copy(tmp_path / "sw" / "optuna.db", tmp_path / "copy.db")
    sampler_cls = optuna.samplers.RandomSampler if sampler == "random" else optuna.samplers.TPESampler
    old = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'copy.db'}",
                            sampler=sampler_cls(seed=7))
    assert sweep.suggest(old.ask(), spec["space"]) == first.study.trials[0].params

    spec["trials"] = 6  # restarted with more trials
    second = sweep.Worker(spec)
    for _ in range(3):
        job = second.start_new()
        assert isinstance(job, tuple), job
        finish(second, job)
    trials = sweep.Worker(spec).study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 6, params
    # reproducible: the same seed and trial number give the same proposal in a new study
    again = sweep.Worker({**spec, "output": str(tmp_path / "again"), "storage": None})
    job = again.start_new()
    assert again.study.trials[0].params == trials[0].params, job


def test_small_discrete_space_runs_each_point_once(tmp_path):
    from tunelab.experiment import sweep

    spec = spec_for(tmp_path, space={"training.batch_size": {"choices": [1, 2, 3, 4]}}, trials=10, sampler="random")
    w = sweep.Worker(spec)
    for _ in range(40):
        job = w.start_new()
        if job is None:
            break
        if isinstance(job, tuple):
            finish(w, job)
    assert job is None  # the space is used up before `trials`
    trials = w.study.get_trials(deepcopy=False)
    done = sorted(t.params["training.batch_size"] for t in trials if t.state.name == "COMPLETE")
    assert done == [1, 2, 3, 4]
    refused = [t for t in trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["refused"].startswith("duplicate of trial") for t in refused)
    assert len(refused) <= 4  # after a duplicate, a free point is queued next


def test_grid_point_queued_twice_runs_once(tmp_path):
    """Two workers queue the same grid point at the same moment: the lower trial number runs it, the
    other is refused before it starts, and every point still runs exactly once."""
    from tunelab.experiment import sweep

    spec = spec_for(tmp_path, lrs=[0.01, 0.02, 0.03], trials=3)
    a, b = sweep.Worker(spec), sweep.Worker(spec)
    a.study.enqueue_trial({"optimizer.lr": 0.01})
    b.study.enqueue_trial({"optimizer.lr": 0.01})
    jobs = [a.start_new(), b.start_new()]
    assert isinstance(jobs[0], tuple) and jobs[1] == "retry"
    finish(a, jobs[0])
    while (job := b.start_new()) is not None:
        if isinstance(job, tuple):
            finish(b, job)
    trials = a.study.get_trials(deepcopy=False)
    assert sorted(t.params["optimizer.lr"] for t in trials if t.state.name == "COMPLETE") == [0.01, 0.02, 0.03]
    assert [t.user_attrs.get("refused") for t in trials if t.state.name == "FAIL"] == \
        ["duplicate of trial 0 (same parameters)"]


def test_trial_of_a_dead_worker_is_taken_over(tmp_path):
    """Same machine: taken over as soon as the worker's processes are gone (pid), never while they
    live; another machine: after grace_period without a heartbeat. Exactly one taker wins. A trial
    without an owner (a sweep of an older tunelab) is taken over after grace_period; one that never
    started (its worker died right after asking for it) is marked failed and its parameters freed."""
    from tunelab.experiment import sweep, trial

    spec = spec_for(tmp_path, space={"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}, trials=3,
                    sampler="random", heartbeat_interval=1, grace_period=2)
    w = sweep.Worker(spec)
    n_dead, tid_dead, mine = w.start_new()
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)
    dead = {**mine, "pid": dead_pid, "pid_start": None, "claim": "dead"}
    assert trial.set_owner(w.storage, tid_dead, mine, dead)
    n_live, tid_live, mine2 = w.start_new()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = {**mine2, "pid": sleeper.pid, "pid_start": trial.process_start(sleeper.pid), "claim": "live"}
        assert trial.set_owner(w.storage, tid_live, mine2, live)

        legacy = w.study.ask()  # as an older tunelab left it: parameters and run directory, no owner
        sweep.suggest(legacy, spec["space"])
        w.storage.set_trial_user_attr(w.trial_id(legacy.number), "run_dir", str(tmp_path / "sw" / "trials" / "x"))
        never = w.study.ask()  # asked for, then its worker died

        restarted = sweep.Worker(spec)
        job = restarted.take_over()
        assert job is not None and job[0] == n_dead  # at once, not after grace_period
        t = w.storage.get_trial(tid_dead)
        assert t.state.name == "RUNNING" and t.user_attrs["attempts"] == 2
        assert t.user_attrs["worker"]["claim"] == job[2]["claim"] and t.user_attrs["worker"]["pid"] == os.getpid()
        assert f"pid {dead_pid}" in t.user_attrs["recovered"][0] and "is gone" in t.user_attrs["recovered"][0]
        assert not trial.set_owner(w.storage, tid_dead, dead, {**dead, "claim": "late"})  # a second taker loses
        assert restarted.take_over() is None  # the live worker's trial stays its own

        far = {"machine": "elsewhere:00000000", "host": "elsewhere", "pid": 1, "claim": "far"}
        assert trial.set_owner(w.storage, tid_live, live, far)
        w.storage.record_heartbeat(tid_live)
        assert restarted.take_over() is None  # another machine, heartbeat fresh
        time.sleep(3.5)  # grace_period 2 s without a heartbeat
        job = restarted.take_over()
        assert job is not None and job[0] == n_live
        assert "no heartbeat" in w.storage.get_trial(tid_live).user_attrs["recovered"][0]
        job = restarted.take_over()
        assert job is not None and job[0] == legacy.number
        assert w.storage.get_trial(job[1]).user_attrs["recovered"] == ["it had no worker for 2 s"]
        assert restarted.take_over() is None
        t = w.storage.get_trial(w.trial_id(never.number))
        assert t.state.name == "FAIL" and "died before starting it" in t.user_attrs["abandoned"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_changed_search_is_refused_but_more_trials_are_fine(tmp_path):
    from tunelab.errors import ConfigError
    from tunelab.experiment import sweep

    spec = spec_for(tmp_path, lrs=[0.01, 0.02], trials=2)
    sweep.open_study(spec)
    sweep.open_study({**spec, "trials": 5, "seed": 3, "pruning": True})
    changed = {**spec, "overrides": {**spec["overrides"], "training.max_steps": 7}}
    with pytest.raises(ConfigError, match=r"training.max_steps: 2 -> 7"):
        sweep.open_study(changed)
    assert json.loads((tmp_path / "sw" / ".tunelab").read_text())["kind"] == "sweep"


def test_spec_errors_name_the_key(tmp_path):
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'pruning.startup_trials' must be a whole number"):
        spec_for(tmp_path, lrs=[0.01], pruning={"startup_trials": -1})
    with pytest.raises(ConfigError, match=r"'pruning' must be true, false or a mapping"):
        spec_for(tmp_path, lrs=[0.01], pruning={"patience": 2})
    with pytest.raises(ConfigError, match=r"'grace_period' \(1\) must be longer than 'heartbeat_interval'"):
        spec_for(tmp_path, lrs=[0.01], grace_period=1)
    with pytest.raises(ConfigError, match=r"space.optimizer.lr is a float range"):
        spec_for(tmp_path, space={"optimizer.lr": {"low": 0.01, "high": 0.1}})


def test_shipped_sweep_parses():
    from tunelab.experiment import sweep

    spec = sweep.load_spec(REPO / "experiments" / "sweep_lora.yaml")
    assert spec["sampler"] == "tpe" and set(spec["space"]) == {"method.lora_r", "method.lora_alpha", "optimizer.lr"}


# --- slow: `tunelab sweep` on tiny-qwen3 --------------------------------------------------------

@pytest.mark.slow
def test_killed_sweep_continues_without_repeating(tmp_path):
    path = write_sweep(tmp_path, [0.01, 0.02, 0.03], 3)
    proc = launch(path)
    wait_for(lambda: any(s == "COMPLETE" for _, s, _ in states(tmp_path)), 240, 0.5)
    proc.kill()  # mid-way: the worker dies (its trial process with it)
    proc.wait()
    first = [(n, v) for n, s, v in states(tmp_path) if s == "COMPLETE"]
    assert len(first) >= 1
    first_dir = tmp_path / "sw" / "trials" / f"trial-{first[0][0]:04d}"
    stamp = (first_dir / "summary.json").stat().st_mtime_ns
    out = launch(path).communicate(timeout=600)[0]
    done = [(n, v) for n, s, v in states(tmp_path) if s == "COMPLETE"]
    assert sorted(v for _, v in done) == [0.01, 0.02, 0.03], out[-3000:]  # every grid point once
    assert not [s for _, s, _ in states(tmp_path) if s in ("RUNNING", "WAITING")]
    assert (first_dir / "summary.json").stat().st_mtime_ns == stamp  # the finished trial was not run again
    assert (tmp_path / "sw" / "best_config.yaml").is_file() and (tmp_path / "sw" / "sweep.png").is_file()
    best = yaml.safe_load((tmp_path / "sw" / "best_config.yaml").read_text())
    assert best["optimizer"]["lr"] in (0.01, 0.02, 0.03)


@pytest.mark.slow
def test_kill_9_mid_trial_resumes_from_its_checkpoint(tmp_path):
    """kill -9 of the worker once a trial has its first checkpoint, restart at once (well within the
    grace period): the trial is taken over by pid, resumes from its checkpoint (its metrics show each
    step once and the resume is recorded), and the study ends with exactly `trials` COMPLETE trials."""
    path = write_sweep(tmp_path, [0.01, 0.02], 2, grace_period=300,
                       overrides={"training.max_steps": 6, "training.eval_every": 2, "training.save_every": 2,
                                  "training.log_every": 1})

    def running_with_checkpoint():
        for t in trials_of(tmp_path):
            if t.state.name == "RUNNING" and "run_dir" in t.user_attrs and \
                    (Path(t.user_attrs["run_dir"]) / "checkpoints" / "step-000002").is_dir():
                return t
        return None

    proc = launch(path)
    t = wait_for(running_with_checkpoint)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    child = t.user_attrs["worker"]["child_pid"]
    wait_for(lambda: gone(child), 30)  # the trial process dies with its worker
    killed = t.number
    assert [x.state.name for x in trials_of(tmp_path) if x.number == killed] == ["RUNNING"]

    started = time.time()
    out = launch(path).communicate(timeout=600)[0]
    assert time.time() - started < 300, "the dead worker was found by its pid, not after grace_period"
    trials = trials_of(tmp_path)
    assert sorted(x.state.name for x in trials) == ["COMPLETE", "COMPLETE"], out[-3000:]
    assert len({x.params["optimizer.lr"] for x in trials}) == 2
    k = next(x for x in trials if x.number == killed)
    assert k.user_attrs["attempts"] == 2 and "is gone" in k.user_attrs["recovered"][0]
    resumed = k.user_attrs["resumed_from_step"]
    assert resumed in (2, 4), out[-3000:]
    run_dir = Path(k.user_attrs["run_dir"])
    assert run_dir == tmp_path / "sw" / "trials" / f"trial-{killed:04d}"  # its own directory, not a new one
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]  # each step once
    assert [r["step"] for r in rows if r["split"] == "val"] == [2, 3, 4, 6]  # every 2 steps and at epoch end (3)
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())
    assert [r["step"] for r in fingerprint["resumes"]] == [resumed]  # resumed, not started over
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 6
    assert set(k.intermediate_values) == {2, 4, 6}


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    path = write_sweep(tmp_path, [0.01, 0.02, 0.03, 0.04], 4)
    a, b = launch(path), launch(path)
    outs = [p.communicate(timeout=900)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs[0][-2000:] + outs[1][-2000:]
    trials = trials_of(tmp_path)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["optimizer.lr"] for t in done) == [0.01, 0.02, 0.03, 0.04]  # all points, none twice
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)  # nothing left running
    assert all("refused" in t.user_attrs for t in trials if t.state.name == "FAIL")  # refused, never run
    assert all(t.user_attrs["peak_mem_mb"] > 0 and t.user_attrs["time_s"] > 0 for t in done)
    trial_dirs = sorted(p.name for p in (tmp_path / "sw" / "trials").iterdir())
    assert trial_dirs == sorted(f"trial-{t.number:04d}" for t in done)


@pytest.mark.slow
def test_pruning_and_failures_across_the_process_boundary(tmp_path):
    """Trial 0 completes; trial 1's process is killed (as the OOM killer would): FAIL with the reason,
    and the sweep goes on; trial 2 (a learning rate that barely moves) reports its first validation
    loss from its own process, the pruner compares it with trial 0's, and it is PRUNED."""
    path = write_sweep(tmp_path, [0.05, 0.04, 1e-6], 3, pruning={"startup_trials": 1, "warmup_steps": 0},
                       overrides={"training.max_steps": 3, "schedule.warmup_ratio": 0})
    proc = launch(path)

    def second_child():
        t = [x for x in trials_of(tmp_path) if x.number == 1 and x.state.name == "RUNNING"]
        return t and t[0].user_attrs.get("worker", {}).get("child_pid")

    os.kill(wait_for(second_child), signal.SIGKILL)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    t0, t1, t2 = sorted(trials_of(tmp_path), key=lambda t: t.number)
    assert (t0.state.name, t1.state.name, t2.state.name) == ("COMPLETE", "FAIL", "PRUNED"), out[-3000:]
    assert t1.user_attrs["fail_reason"] == "the trial process was killed by signal 9 (out of memory?)"
    assert set(t0.intermediate_values) == {1, 2, 3}
    assert list(t2.intermediate_values) == [1] and t2.intermediate_values[1] > t0.intermediate_values[1]
    assert t2.params["optimizer.lr"] == 1e-6 and t2.user_attrs["note"].startswith("pruned at step 1")
    assert not (Path(t2.user_attrs["run_dir"]) / "summary.json").exists()  # it stopped there
    rows = (tmp_path / "sw" / "trials.csv").read_text().splitlines()
    assert rows[0] == "number,state,value,peak_mem_mb,time_s,optimizer.lr,note"
    assert rows[2].startswith("1,FAIL,,") and "killed by signal 9" in rows[2] and rows[3].startswith("2,PRUNED,")


@pytest.mark.slow
def test_each_trial_has_its_own_peak_memory(tmp_path):
    """A big trial (batch 16: logits of 16 x 256 x 151,936) then a small one (batch 1): run in one
    process the small one would report the big one's peak; in its own it reports its own."""
    path = write_sweep(tmp_path, trials=2, space={"training.batch_size": {"choices": [16, 1]}},
                       objective="train_loss",
                       overrides={"data.n": 40, "data.val_size": 0, "training.max_steps": 1, "training.eval_every": 0,
                                  "training.save_every": 0})
    out = launch(path).communicate(timeout=600)[0]
    big, small = sorted(trials_of(tmp_path), key=lambda t: t.number)
    assert (big.state.name, small.state.name) == ("COMPLETE", "COMPLETE"), out[-3000:]
    assert big.params["training.batch_size"] == 16
    peak = {t.number: json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())["peak_mem_mb"]
            for t in (big, small)}
    assert peak[small.number] < peak[big.number] - 200, peak
    assert small.user_attrs["peak_mem_mb"] < big.user_attrs["peak_mem_mb"] - 200
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert f"| {small.user_attrs['peak_mem_mb']} |" in md


def test_eval_objective_equals_tunelab_eval(tmp_path):
    """A trial's `eval:TASK:METRIC` is what `tunelab eval` reports for the same run and task: one entry
    point, so the same prompt (the trained instruction and system prompt), max_new_tokens and scorer."""
    from tunelab.cli import main
    from tunelab.experiment import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/quickstart.yaml"),
        "overrides": {**BASE, "data.instruction": "Answer with a number.", "data.system_prompt": "Be brief."},
        "space": {"optimizer.lr": {"choices": [0.01]}}, "sampler": "grid", "trials": 1,
        "objective": "eval:arith_en:accuracy", "direction": "maximize", "output": str(tmp_path / "sw"),
        "evaluation": {"limit": 4, "max_new_tokens": 6}}))
    result = sweep.run(sweep.load_spec(path))
    run_dir = tmp_path / "sw" / "trials" / "trial-0000"
    trial = json.loads((run_dir / "eval" / "arith_en" / "results.json").read_text())
    assert main(["eval", "--model", str(run_dir), "--task", "arith_en", "--limit", "4", "--max-new-tokens", "6",
                 "--output", str(tmp_path / "ev")]) == 0
    direct = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["best_value"] == direct["accuracy"] == trial["accuracy"]
    assert trial["generation"] == direct["generation"] and trial["system_prompt"] == "Be brief."
    rows = lambda d: [json.loads(l) for l in (d / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    prompts = [r["prompt"] for r in rows(run_dir / "eval" / "arith_en")]
    assert prompts == [r["prompt"] for r in rows(tmp_path / "ev")]
    assert all("Answer with a number." in p and "Be brief." in p for p in prompts)


def test_a_marker_being_written_by_another_worker_is_waited_for(tmp_path):
    """CI failure: two workers started one sweep at once; one saw the other's `.tunelab` marker between its
    open and its write (empty), took the output for a user's directory and exited 2."""
    import threading

    from tunelab.paths import MARKER, mark, marker_kind

    out = tmp_path / "sw"
    out.mkdir()
    (out / MARKER).write_text("")  # the other worker has opened the file, not yet written it
    threading.Timer(0.2, mark, args=(out, "sweep")).start()
    assert marker_kind(out) == "sweep"
    (out / MARKER).write_text("")
    assert marker_kind(out) is None  # an empty marker that stays empty is not tunelab's (after ~1 s)

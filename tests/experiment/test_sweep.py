"""Sweeps: a killed sweep continues without repeating finished trials, and two workers on one
SQLite study split the trials without running one twice."""
from __future__ import annotations

import os
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


def write_sweep(tmp_path: Path, lrs: list[float], trials: int) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs/quickstart.yaml"), "overrides": BASE,
        "space": {"optimizer.lr": {"choices": lrs}}, "sampler": "grid", "trials": trials,
        "objective": "val_loss", "direction": "minimize", "output": str(tmp_path / "sw"),
        "heartbeat_interval": 1, "grace_period": 3}))
    return path


def states(tmp_path: Path) -> list[tuple[int, str, float | None]]:
    """(trial number, state, learning rate) read from the study's SQLite storage."""
    import optuna

    url = f"sqlite:///{tmp_path / 'sw' / 'optuna.db'}"
    try:
        study = optuna.load_study(study_name="sweep", storage=url)
    except KeyError:  # the worker has not created the study yet
        return []
    return [(t.number, t.state.name, t.params.get("optimizer.lr")) for t in study.get_trials(deepcopy=False)]


def launch(path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tunelab", "sweep", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_sweep_continues_without_repeating(tmp_path):
    path = write_sweep(tmp_path, [0.01, 0.02, 0.03], 3)
    proc = launch(path)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for the first finished trial, then kill the worker mid-way
        time.sleep(0.5)
        if (tmp_path / "sw" / "optuna.db").exists() and any(s == "COMPLETE" for _, s, _ in states(tmp_path)):
            break
    proc.kill()
    proc.wait()
    first = [(n, v) for n, s, v in states(tmp_path) if s == "COMPLETE"]
    assert len(first) >= 1
    first_dir = tmp_path / "sw" / "trials" / f"trial-{first[0][0]:04d}"
    stamp = (first_dir / "summary.json").stat().st_mtime_ns
    time.sleep(4)  # past the grace period: the killed trial's worker is dead
    out = launch(path).communicate(timeout=600)[0]
    done = [(n, v) for n, s, v in states(tmp_path) if s == "COMPLETE"]
    assert sorted(v for _, v in done) == [0.01, 0.02, 0.03], out[-3000:]  # every grid point once
    assert (first_dir / "summary.json").stat().st_mtime_ns == stamp  # the finished trial was not run again
    assert (tmp_path / "sw" / "best_config.yaml").is_file() and (tmp_path / "sw" / "sweep.png").is_file()
    best = yaml.safe_load((tmp_path / "sw" / "best_config.yaml").read_text())
    assert best["optimizer"]["lr"] in (0.01, 0.02, 0.03)


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    path = write_sweep(tmp_path, [0.01, 0.02, 0.03, 0.04], 4)
    a, b = launch(path), launch(path)
    outs = [p.communicate(timeout=900)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs[0][-2000:] + outs[1][-2000:]
    done = [v for _, s, v in states(tmp_path) if s == "COMPLETE"]
    assert sorted(done) == [0.01, 0.02, 0.03, 0.04]  # all points, none twice
    trial_dirs = sorted(p.name for p in (tmp_path / "sw" / "trials").iterdir())
    assert len(trial_dirs) == 4


def test_eval_objective_equals_tunelab_eval(tmp_path):
    """A trial's `eval:TASK:METRIC` is what `tunelab eval` reports for the same run and task: one entry
    point, so the same prompt (the trained instruction and system prompt), max_new_tokens and scorer."""
    import json

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

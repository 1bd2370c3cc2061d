"""A run's status is read from its files and from the processes on this machine: finished, failed with its
error, running (a process trains it), interrupted and resumable, dead; a run whose process is gone is
never shown as running.

    .venv/bin/python -m pytest tests/ui/test_status.py -q
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.ui.conftest import fake_run


def scanner(root: Path, tmp_path: Path):
    from tunelab.ui.jobs import Jobs
    from tunelab.ui.roots import Roots
    from tunelab.ui.scan import Scanner

    return Scanner(Roots([root]), Jobs(tmp_path / "jobs", cwd=tmp_path))


def statuses(s) -> dict[str, tuple[str, str]]:
    return {r["name"]: (r["status"], r["detail"]) for r in s.scan()["runs"]}


def fake_process(cwd: Path, *args: str) -> subprocess.Popen:
    """A process whose command line reads `python -c ... -m tunelab ARGS` (it only sleeps)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "tunelab", *args], cwd=cwd)


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()


def test_statuses_from_files(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "done")
    fake_run(root / "broke", finished=False, error="MethodError: target module 'nope' not found")
    fake_run(root / "cut", finished=False, checkpoint=3)
    fake_run(root / "gone", finished=False)
    got = statuses(scanner(root, tmp_path))
    assert got["done"] == ("finished", "6 steps")
    assert got["broke"] == ("failed", "MethodError: target module 'nope' not found")
    assert got["cut"][0] == "interrupted" and "checkpoint step 3" in got["cut"][1]
    assert got["gone"][0] == "dead" and "no checkpoint" in got["gone"][1]
    rec = {r["name"]: r for r in scanner(root, tmp_path).scan()["runs"]}
    assert rec["cut"]["resumable"] and not rec["done"]["resumable"]
    assert rec["done"]["best_val_loss"] == 2.5 and rec["gone"]["best_val_loss"] == pytest.approx(2.5)
    assert rec["gone"]["step"] == 6 and rec["gone"]["peak_mem_mb"] == 106.0


def test_a_training_process_makes_it_running_and_its_death_does_not(tmp_path):
    root = tmp_path / "runs"
    run = fake_run(root / "live", finished=False, checkpoint=3)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "tiny-qwen3"}}))
    s = scanner(root, tmp_path)
    # `tunelab train cfg.yaml output.dir=runs/live`, relative to the process's working directory
    p = fake_process(tmp_path, "train", "cfg.yaml", "training.max_steps=9", "output.dir=runs/live", "--nproc", "1")
    try:
        time.sleep(0.3)
        s.procs.ttl = 0
        status, detail = statuses(s)["live"]
        assert status == "running" and f"pid {p.pid}" in detail
    finally:
        stop(p)
    assert statuses(s)["live"][0] == "interrupted"
    # another output.dir in the command line is another run
    p = fake_process(tmp_path, "train", "cfg.yaml", "output.dir=runs/other")
    try:
        time.sleep(0.3)
        assert statuses(s)["live"][0] == "interrupted"
    finally:
        stop(p)
    assert run.is_dir()


def test_experiment_workers_and_experiments(tmp_path):
    root = tmp_path / "runs"
    exp = root / "study"
    fake_run(exp / "runs" / "lora", finished=False)
    fake_run(exp / "runs" / "full")
    (exp / "eval").mkdir()
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"output": "runs/study"}))
    s = scanner(root, tmp_path)
    s.procs.ttl = 0
    before = s.scan()
    assert before["experiments"][0]["status"] == "incomplete"
    p = fake_process(tmp_path, "run", "exp.yaml", "--worker", "lora")
    try:
        time.sleep(0.3)
        after = s.scan()
        got = {r["name"]: r["status"] for r in after["runs"]}
        assert got == {"lora": "running", "full": "finished"}
        assert after["experiments"][0]["status"] == "running"
        assert {r["parent"]["name"] for r in after["runs"]} == {"study"}
    finally:
        stop(p)
    assert {r["name"]: r["status"] for r in s.scan()["runs"]}["lora"] == "dead"


def test_a_job_that_fails_shows_its_error(tmp_path):
    from tunelab.ui.jobs import Jobs

    root = tmp_path / "runs"
    root.mkdir()
    jobs = Jobs(tmp_path / "jobs", cwd=tmp_path)
    job = jobs.start("train", ["train", "missing.yaml", f"output.dir={root / 'never'}"], root / "never")
    deadline = time.time() + 120
    while jobs.get(job["id"])["state"] == "running" and time.time() < deadline:
        time.sleep(0.3)
    got = jobs.get(job["id"])
    assert got["state"] == "failed" and got["exit_code"] == 2
    assert got["error"] == "tunelab train: error: config file not found: missing.yaml"
    s = scanner(root, tmp_path)
    s.jobs = jobs
    runs = s.scan()["runs"]
    assert [(r["name"], r["status"], r["detail"]) for r in runs] == [
        ("never", "failed", "tunelab train: error: config file not found: missing.yaml")]


def test_the_keeper_records_a_stop(tmp_path):
    """Stop: SIGINT to the job's process group; the keeper survives it and records how it ended."""
    from tunelab.ui import jobs as J

    jobdir = tmp_path / "job"
    jobdir.mkdir()
    (jobdir / "job.json").write_text(json.dumps({"argv": [sys.executable, "-c", "import time; time.sleep(60)"],
                                                "command": "sleep", "cwd": str(tmp_path), "host": J.HOST}))
    keeper = subprocess.Popen([sys.executable, "-m", "tunelab.ui.jobs", str(jobdir)], start_new_session=True)
    deadline = time.time() + 60
    while "pid" not in (J.read(jobdir) or {}) and time.time() < deadline:
        time.sleep(0.1)
    assert J.state(J.read(jobdir)) == "running"
    os.killpg(keeper.pid, signal.SIGINT)
    keeper.wait(timeout=60)
    job = J.read(jobdir)
    assert job["exit_code"] != 0 and job["stopped"] and J.state(job) == "stopped"
    assert (jobdir / "output.log").read_text().startswith("$ sleep")


def test_sweeps_and_their_trials(tmp_path):
    root = tmp_path / "runs"
    sweep = root / "sw"
    fake_run(sweep / "trials" / "trial-0000")
    fake_run(sweep / "trials" / "trial-0001", finished=False)
    (sweep / "trials.csv").write_text("number,value\n0,2.5\n")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"output": "runs/sw"}))
    s = scanner(root, tmp_path)
    s.procs.ttl = 0
    board = s.scan()
    assert [x["name"] for x in board["sweeps"]] == ["sw"] and board["sweeps"][0]["status"] == "incomplete"
    assert {r["name"]: r["status"] for r in board["runs"]} == {"trial-0000": "finished", "trial-0001": "dead"}
    p = fake_process(tmp_path, "sweep", "sweep.yaml")
    try:
        time.sleep(0.3)
        board = s.scan()
        assert board["sweeps"][0]["status"] == "running"
        assert {r["name"]: r["status"] for r in board["runs"]} == {"trial-0000": "finished", "trial-0001": "running"}
    finally:
        stop(p)

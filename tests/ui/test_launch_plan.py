"""The launch form's max-memory field (training.max_memory): the check returns the memory plan before
launch, the command passes the budget as `--max-memory`, and that command resolves to the checked config.

    .venv/bin/python -m pytest tests/ui/test_launch_plan.py -q
"""
from __future__ import annotations

import pytest
import yaml

from tests.ui.conftest import wait_for_board

VALUES = {"model.name": "tiny-qwen3", "method.name": "full", "data.max_length": "256", "training.batch_size": "4",
          "training.grad_accum": "2", "output.dir": "runs/new"}


@pytest.fixture
def roots(tmp_path):
    from tunelab.ui.roots import Roots

    (tmp_path / "runs").mkdir()
    return Roots([tmp_path / "runs"])


@pytest.fixture
def every_candidate(tunelab_home):
    """The estimates of every candidate for VALUES, with no baseline (the check adds this process's)."""
    from tunelab import config as C
    from tunelab.estimate.command import default_device
    from tunelab.estimate.devices import resolve_device
    from tunelab.estimate.plan import plan_for_budget

    cfg = C.load(None, [f"{k}={v}" for k, v in VALUES.items()])
    return plan_for_budget(cfg, 1e9, device=resolve_device(default_device())).candidates


def test_the_check_shows_the_plan_and_the_command_passes_the_budget(roots, tmp_path, every_candidate, monkeypatch):
    from tunelab import config as C
    from tunelab.cli import build_parser
    from tunelab.estimate import command
    from tunelab.ui.launch import check_train

    monkeypatch.setattr(command, "process_baseline_mb", lambda device: 100.0)
    budget = f"{every_candidate[0].needs_mb + 100 - 1:.0f}MB"  # the fastest candidate just misses it
    c = check_train(roots, tmp_path, None, {**VALUES, "training.max_memory": budget})
    plan = c["plan"]
    assert plan["tried"] > 1 and plan["batch_size"] * plan["grad_accum"] == 8 and plan["baseline_mb"] == 100.0
    assert plan["needs_mb"] <= plan["budget_mb"] == C.memory_mb(budget) and plan["rows"] == 256
    assert plan["line"].startswith(f"--max-memory {budget}: micro-batch {plan['batch_size']} x {plan['grad_accum']}")
    # the command: the changed keys in launch.yaml, the budget as the flag; it resolves to the checked config
    assert c["argv"] == ["train", "launch.yaml", "--max-memory", budget]
    assert "max_memory" not in c["launch_yaml"] and c["command"].endswith(f"tunelab train launch.yaml --max-memory {budget}")
    (tmp_path / "launch.yaml").write_text(c["launch_yaml"])
    args = build_parser().parse_args(c["argv"])
    resolved = C.load(tmp_path / args.config, [*args.overrides, f"training.max_memory={args.max_memory}"])
    assert C.to_dict(resolved) == yaml.safe_load(c["resolved"])
    assert c["flat"]["training.max_memory"] == budget and c["flat"]["training.batch_size"] == "4"  # as given


def test_an_impossible_budget_is_shown_not_refused_and_no_budget_no_plan(roots, tmp_path, monkeypatch):
    from tunelab.errors import ConfigError
    from tunelab.estimate import command
    from tunelab.ui.launch import check_train

    monkeypatch.setattr(command, "process_baseline_mb", lambda device: 0.0)
    c = check_train(roots, tmp_path, None, {**VALUES, "training.max_memory": "10MB"})
    assert c["ok"] and "plan" not in c and "cannot hold this training: the smallest plan" in c["plan_error"]
    c = check_train(roots, tmp_path, None, VALUES)
    assert "plan" not in c and "plan_error" not in c and "--max-memory" not in c["argv"]
    with pytest.raises(ConfigError, match=r"training\.max_memory.*e\.g\. 6GB"):
        check_train(roots, tmp_path, None, {**VALUES, "training.max_memory": "lots"})


def test_the_page_draws_the_plan():
    from pathlib import Path

    import tunelab.ui

    js = (Path(tunelab.ui.__file__).with_name("static") / "app.js").read_text(encoding="utf-8")
    assert "function planBox(c)" in js and "planBox(c))" in js and 'id: "plan"' in js


@pytest.mark.slow
def test_the_launch_page_shows_the_plan_before_launch(tmp_path, chromium, tunelab_home):
    """The board in a browser: typing a budget shows the plan and the command with --max-memory."""
    import os
    import socket
    import subprocess
    import sys

    (tmp_path / "board").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tunelab", "ui", "board", "--port", str(port)], cwd=tmp_path,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_board(url, server)
        page = chromium.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "#/launch/train")
        page.wait_for_selector("input[name='training.max_memory']")
        page.select_option("select[name='method.name']", "full")
        for key, value in {**VALUES, "output.dir": "board/planned", "training.max_memory": "2GB"}.items():
            if key != "method.name":
                page.fill(f"input[name='{key}']", value)
        page.wait_for_selector("#plan", timeout=60_000)
        text = page.inner_text("#plan")
        assert "Memory plan" in text and "--max-memory 2GB: micro-batch" in text and "← plan" in text, text
        assert page.inner_text("#command").endswith("tunelab train launch.yaml --max-memory 2GB")
        page.screenshot(path=str(tmp_path / "plan.png"), full_page=True)
        print(tmp_path / "plan.png")
        assert not errors, errors
    finally:
        server.terminate()
        server.wait(timeout=30)

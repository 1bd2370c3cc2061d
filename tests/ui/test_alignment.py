"""The board for the alignment stages: a DPO run's page draws its reward margin and preference accuracy
(train and validation) next to the loss, a GRPO run's page its rewards (mean, accuracy, per reward
function) and completion lengths and a samples panel from samples.jsonl (newest first, live while it
trains); the run list and the comparison say each run's stage.

    .venv/bin/python -m pytest tests/ui/test_alignment.py -q        # ~15 s; the real training (slow) ~30 s more
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.ui.conftest import dpo_row, fake_alignment_run, fake_run, grpo_row, grpo_sample, wait_for_board


def client_for(root: Path, tmp_path: Path):
    from starlette.testclient import TestClient

    from tunelab.ui.app import build_app
    from tunelab.ui.jobs import Jobs
    from tunelab.ui.roots import Roots

    app = build_app(Roots([root]), jobs=Jobs(tmp_path / "jobs", cwd=tmp_path), cwd=tmp_path)
    return TestClient(app, base_url="http://127.0.0.1:7860")


@pytest.fixture
def board(tmp_path):
    root = tmp_path / "runs"
    fake_run(root / "sft")
    fake_alignment_run(root / "dpo", "dpo")
    fake_alignment_run(root / "grpo", "grpo")
    return client_for(root, tmp_path), root


def series(page: dict, chart: str) -> dict[str, list[tuple[int, float]]]:
    """{label: [(step, value)]} of one chart, built from the rows as the page builds it (app.js seriesOf)."""
    spec = next(c for c in page["charts"] if c["name"] == chart)
    return {s["label"]: [(r["step"], r[s["key"]]) for r in page["rows"]
                         if r.get("split") == s["split"] and isinstance(r.get(s["key"]), (int, float))]
            for s in spec["series"]}


def test_grpo_run_rewards_and_samples(board):
    client, root = board
    m = client.get("/api/metrics?id=0/grpo").json()
    assert m["stage"] == "grpo" and m["samples"] == 3
    names = [c["name"] for c in m["charts"]]
    assert names[:3] == ["loss", "reward", "completion_length"] and names[-1] == "memory"
    reward = series(m, "reward")
    steps = range(1, 7)
    assert list(reward) == ["mean reward", "accuracy", "boxed", "correct", "std in group"]  # one per reward function
    assert reward["mean reward"] == [(s, grpo_row(s)["reward"]) for s in steps]
    assert reward["correct"] == [(s, grpo_row(s)["rewards/correct"]) for s in steps]
    assert reward["boxed"] == [(s, grpo_row(s)["rewards/boxed"]) for s in steps]
    assert reward["accuracy"] == [(s, grpo_row(s)["accuracy"]) for s in steps]
    assert series(m, "completion_length") == {"length": [(s, 40.0 - s) for s in steps]}
    assert series(m, "loss")["val"] == []  # GRPO logs no validation rows

    s = client.get("/api/samples?id=0/grpo").json()
    assert s["total"] == 3 and [r["step"] for r in s["rows"]] == [6, 4, 2]  # newest first
    assert s["rows"][0] == grpo_sample(6)  # prompt, answer, every completion with its rewards, as written
    assert s["rows"][0]["completions"][0] == {"text": "step 6: 2+6 is \\boxed{8}", "reward": 1.2, "correct": 1.0,
                                              "boxed": 1.0}
    assert [r["step"] for r in client.get("/api/samples?id=0/grpo&limit=1").json()["rows"]] == [6]

    # training goes on: the next poll gets the new row only, and the new sample; a half-written last line
    # (the trainer mid-write) is not an error and not a sample
    with (root / "grpo" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 7, "split": "train", "loss": 0.1, **grpo_row(7)}) + "\n")
    with (root / "grpo" / "samples.jsonl").open("a") as f:
        f.write(json.dumps(grpo_sample(8)) + "\n" + '{"step": 10, "prompt": "What is')
    m = client.get(f"/api/metrics?id=0/grpo&after={len(m['rows'])}").json()
    assert [r["step"] for r in m["rows"]] == [7] and m["rows"][0]["reward"] == grpo_row(7)["reward"]
    assert m["total"] == 7 and m["samples"] == 4
    s = client.get("/api/samples?id=0/grpo").json()
    assert s["total"] == 4 and s["rows"][0] == grpo_sample(8)


def test_dpo_run_preference_curves(board):
    client, _ = board
    m = client.get("/api/metrics?id=0/dpo").json()
    assert m["stage"] == "dpo" and m["samples"] == 0
    assert [c["name"] for c in m["charts"]][:3] == ["loss", "margins", "preference_accuracy"]
    margins, accuracy = series(m, "margins"), series(m, "preference_accuracy")
    assert margins["train"] == [(s, dpo_row(s, "train")["rewards/margins"]) for s in range(1, 7)]
    assert margins["val"] == [(s, dpo_row(s, "val")["rewards/margins"]) for s in (3, 6)]
    assert accuracy["train"] == [(s, dpo_row(s, "train")["rewards/accuracy"]) for s in range(1, 7)]
    assert accuracy["val"] == [(3, 0.75), (6, 1.0)]
    assert series(m, "logps")["rejected"] == [(s, -95.0 - s) for s in range(1, 7)]
    assert client.get("/api/samples?id=0/dpo").json() == {"total": 0, "rows": []}


def test_sft_run_keeps_its_charts(board):
    client, _ = board
    m = client.get("/api/metrics?id=0/sft").json()
    assert m["stage"] == "sft" and m["samples"] == 0
    assert [c["name"] for c in m["charts"]] == ["loss", "lr", "grad_norm", "tokens_per_s", "memory"]
    assert series(m, "loss")["val"] == [(3, pytest.approx(2.8)), (6, pytest.approx(2.5))]


def test_a_charts_metrics_missing_from_the_rows_drop_it():
    from tunelab.ui.views import charts

    before = [c["name"] for c in charts("dpo", set())]  # nothing logged yet: every chart, empty
    assert "logps" in before
    logged = {"step", "split", "loss", "rewards/margins", "rewards/accuracy", "rewards/chosen", "rewards/rejected"}
    assert "logps" not in [c["name"] for c in charts("dpo", logged)]  # a loss that logs no log-probs


def test_run_list_and_compare_show_the_stage(board):
    client, root = board
    b = client.get("/api/board").json()
    assert {r["name"]: r["stage"] for r in b["runs"]} == {"sft": "sft", "dpo": "dpo", "grpo": "grpo"}
    assert client.get("/api/run?id=0/grpo").json()["stage"] == "grpo"

    from tunelab.experiment import report

    c = client.get("/api/compare?ids=0/sft,0/dpo,0/grpo").json()
    assert c["stages"] == {"sft": "sft", "dpo": "dpo", "grpo": "grpo"}
    by_stage = {a["stage"]: a for a in c["alignment"]}
    assert [p["key"] for p in by_stage["dpo"]["panels"]] == ["rewards/margins", "rewards/accuracy"]
    assert [p["key"] for p in by_stage["grpo"]["panels"]] == ["reward", "accuracy"]
    runs, _, _ = report.collect([root / "dpo", root / "grpo"])  # the report's own table, the same cells
    assert by_stage["dpo"]["rows"] == report.alignment_rows(runs, "dpo")[1]
    assert by_stage["grpo"]["rows"] == report.alignment_rows(runs, "grpo")[1]
    assert by_stage["dpo"]["rows"][0][2] == "0.050 -> 0.300"  # rewards/margins: 6 steps logged, one each
    grpo = [(r["step"], r["reward"]) for r in c["curves"]["grpo"] if r["split"] == "train"]
    assert grpo == [(s, grpo_row(s)["reward"]) for s in range(1, 7)]


# -- in the browser ---------------------------------------------------------------------------

def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def served(tmp_path):
    """`tunelab ui runs` over a GRPO run that a process trains (its command line says so; it only sleeps),
    a finished DPO run and an SFT run."""
    root = tmp_path / "runs"
    fake_run(root / "sft")
    fake_alignment_run(root / "dpo", "dpo")
    fake_alignment_run(root / "grpo", "grpo", finished=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"model": {"name": "tiny-qwen3"}, "stage": "grpo"}))
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-m", "tunelab", "train",
                                "cfg.yaml", "output.dir=runs/grpo"], cwd=tmp_path)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tunelab", "ui", "runs", "--port", str(port)], cwd=tmp_path,
                              env=env(), stdout=(tmp_path / "ui.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_board(url, server, tmp_path / "ui.log", timeout=60)
        yield url, root
    finally:
        for p in (server, trainer):
            p.kill()
            p.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def points(page, chart: str, series: str) -> int:
    el = page.query_selector(f'[data-chart="{chart}"] g[data-series="{series}"]')
    return int(el.get_attribute("data-points")) if el else 0


def test_grpo_page_in_the_browser(served, chromium, shots):
    url, root = served
    context = chromium.new_context(viewport={"width": 1400, "height": 950})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url + "#/")
        page.wait_for_selector('tr[data-run-id="0/grpo"] .badge[data-status="running"]', timeout=30_000)
        assert page.inner_text('tr[data-run-id="0/grpo"] td.stage') == "grpo"
        assert page.inner_text('tr[data-run-id="0/dpo"] td.stage') == "dpo"

        page.goto(url + "#/run/0%2Fgrpo")
        page.wait_for_selector('[data-chart="reward"] g[data-series="mean reward"][data-points="6"]', timeout=30_000)
        for s in ("accuracy", "correct", "boxed"):
            assert points(page, "reward", s) == 6
        assert points(page, "completion_length", "length") == 6
        page.wait_for_selector("#samples .sample")
        assert [el.get_attribute("data-step") for el in page.query_selector_all("#samples .sample")] == ["6", "4", "2"]
        newest = page.query_selector("#samples .sample")
        text = newest.inner_text()
        assert "step 6: 2+6 is \\boxed{8}" in text and "answer 8" in text
        assert "<b>step 6</b> is not HTML" in text and not newest.query_selector("b b")  # text, never markup
        assert [h.inner_text() for h in newest.query_selector_all("th")] == ["#", "completion", "reward", "correct", "boxed"]
        fold = newest.query_selector(".fold.completion.folded")  # the long completion, folded
        assert fold is not None and fold.evaluate("e => e.scrollHeight > e.clientHeight")
        newest.query_selector("button.link").click()
        assert not fold.evaluate("e => e.classList.contains('folded')")
        page.screenshot(path=str(shots / "grpo_run.png"), full_page=True)

        # it trains on: a new step and a new sample show without a reload, newest first
        with (root / "grpo" / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": 7, "split": "train", "loss": 0.1, **grpo_row(7)}) + "\n")
        with (root / "grpo" / "samples.jsonl").open("a") as f:
            f.write(json.dumps(grpo_sample(8)) + "\n")
        page.wait_for_selector('#samples .sample[data-step="8"]', timeout=15_000)
        assert page.query_selector("#samples .sample").get_attribute("data-step") == "8"
        assert points(page, "reward", "mean reward") == 7

        page.goto(url + "#/run/0%2Fdpo")
        page.wait_for_selector('[data-chart="margins"] g[data-series="val"][data-points="2"]', timeout=30_000)
        assert points(page, "margins", "train") == 6 and points(page, "preference_accuracy", "val") == 2
        assert not page.query_selector("#samples .sample")

        page.goto(url + "#/compare/0%2Fdpo,0%2Fgrpo")
        page.wait_for_selector("#alignment-grpo")
        assert "dpo: dpo" in page.inner_text("#compare-stages")
        assert points(page, "compare-grpo-reward", "grpo") == 7  # with the step logged above
    finally:
        context.close()
    assert not errors, errors


@pytest.mark.slow
def test_a_real_grpo_run(tmp_path, tunelab_home):
    """What `tunelab train stage=grpo` writes is what the board serves (~30 s: a tiny model, 2 steps)."""
    from tunelab import rundir

    (tmp_path / "b.yaml").write_text("model:\n  name: tiny-qwen3\n")
    run = tmp_path / "runs" / "grpo"
    subprocess.run([sys.executable, "-m", "tunelab", "train", "b.yaml", "stage=grpo", "data.name=arith_en",
                    "data.n=8", "method.name=lora", "objective.rewards=[correct,boxed]",
                    "objective.num_generations=2", "objective.max_new_tokens=8", "objective.sample_every=1",
                    "training.batch_size=2", "training.max_steps=2", "training.log_every=1", f"output.dir={run}"],
                   cwd=tmp_path, env=env(), check=True, capture_output=True)
    client = client_for(tmp_path / "runs", tmp_path)
    m = client.get("/api/metrics?id=0/grpo").json()
    rows = rundir.read_rows(run / rundir.METRICS)
    assert m["stage"] == "grpo" and m["rows"] == rows and m["samples"] == 2
    reward = series(m, "reward")
    assert {"mean reward", "accuracy", "correct", "boxed"} <= set(reward)
    assert reward["mean reward"] == [(r["step"], r["reward"]) for r in rows] and len(rows) == 2
    assert reward["boxed"] == [(r["step"], r["rewards/boxed"]) for r in rows]
    s = client.get("/api/samples?id=0/grpo").json()
    assert s == {"total": 2, "rows": rundir.read_rows(run / rundir.SAMPLES)[::-1]}
    assert [r["step"] for r in s["rows"]] == [2, 1] and len(s["rows"][0]["completions"]) == 2
    assert {"text", "reward", "correct", "boxed"} <= set(s["rows"][0]["completions"][0])


def test_report_rows_average_the_first_and_last_quarter_of_the_steps():
    """20 GRPO steps: the cells are the means of steps 1-5 and 16-20 (a single step's reward is noise)."""
    from tunelab.experiment.report import alignment_rows

    rows = [{"split": "train", "step": s, "reward": float(s), "accuracy": 0.1} for s in range(1, 21)]
    runs = {"g": {"config": {"stage": "grpo"}, "metrics": [*rows, {"split": "val", "step": 20, "reward": 99.0}]}}
    cols, (row,) = alignment_rows(runs, "grpo")
    assert cols[1] == "reward (first -> last steps)"
    assert row[:3] == ["g", "3.000 -> 18.000", "0.100 -> 0.100"] and row[4] == "-"  # kl never logged

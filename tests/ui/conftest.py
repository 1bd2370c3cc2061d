"""Fixtures for the board's tests: run directories written as `tunelab train` writes them (for the fast
tests of status and security), and the browser for the end-to-end tests (Debian's Chromium driven by
Playwright; never a downloaded browser)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# as the machine notes say: no sandbox as root, no GPU, and no background connections on a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def fake_run(run: Path, *, steps: int = 6, finished: bool = True, checkpoint: int | None = None,
             error: str | None = None, stage: str = "sft") -> Path:
    """A run directory with the files `tunelab train` writes (config, metrics, summary, marker)."""
    from tunelab import config as C
    from tunelab.paths import mark

    run.mkdir(parents=True)
    mark(run, "run")
    C.save(C.load(None, ["model.name=tiny-qwen3", f"output.dir={run}", f"training.max_steps={steps}",
                         f"stage={stage}"]), run / "config.yaml")
    rows = []
    for s in range(1, steps + 1):
        rows.append({"step": s, "epoch": s / steps, "split": "train", "loss": 3.0 - 0.1 * s, "lr": 1e-3,
                     "grad_norm": 1.0, "tokens": 100, "supervised_tokens": 50, "tokens_per_s": 10.0,
                     "supervised_tokens_per_s": 5.0, "peak_mem_mb": 100.0 + s, "elapsed_s": float(s)})
        if s % 3 == 0:
            rows.append({"step": s, "epoch": s / steps, "split": "val", "loss": 3.1 - 0.1 * s,
                         "peak_mem_mb": 100.0 + s, "elapsed_s": float(s)})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (run / "summary.json").write_text(json.dumps({"method": "lora", "optimizer": "adamw", "stage": stage,
                                                      "steps": steps, "best_val_loss": 2.5, "peak_mem_mb": 106.0,
                                                      "peak_mem_kind": "cpu_peak_rss", "trainable_params": 1000,
                                                      "train_time_s": 6.0}))
    if checkpoint is not None:
        (run / "checkpoints" / f"step-{checkpoint:06d}").mkdir(parents=True)
    if error:
        (run / "error.txt").write_text(error + "\n\nTraceback ...\n")
    return run


def dpo_row(step: int, split: str) -> dict:
    """The preference metrics a DPO run logs beside the loss (train and validation rows), made up per step."""
    margin = 0.05 * step - (0.01 if split == "val" else 0.0)
    return {"rewards/chosen": round(margin / 2, 6), "rewards/rejected": round(-margin / 2, 6),
            "rewards/margins": round(margin, 6), "rewards/accuracy": min(1.0, 0.25 * step),
            "logps/chosen": -90.0 + step, "logps/rejected": -95.0 - step}


def grpo_row(step: int) -> dict:
    """The rollout metrics a GRPO run logs each training step, made up per step."""
    correct, boxed = round(0.125 * step, 6), min(1.0, 0.25 * step)
    return {"reward": round(correct + 0.2 * boxed, 6), "reward_std": 0.3, "rewards/correct": correct,
            "rewards/boxed": boxed, "accuracy": correct, "completion_length": 40.0 - step, "truncated": 0.5 / step,
            "rollout_s": 2.0, "kl": 0.0, "entropy": 2.0 - 0.1 * step, "clip_ratio/low": 0.0,
            "clip_ratio/high": 0.01 * step, "clip_ratio/region": 0.01 * step}


def grpo_sample(step: int) -> dict:
    """One line of samples.jsonl: a prompt, its answer, its completions with their rewards."""
    texts = [f"step {step}: 2+{step} is \\boxed{{{2 + step}}}", f"step {step}: I think it is {step}",
             "long " * 200 + f"(step {step})", f"<b>step {step}</b> is not HTML"]
    rewards = [(1.0, 1.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]
    return {"step": step, "prompt": f"What is 2+{step}? Put the answer in \\boxed{{}}.", "answer": str(2 + step),
            "completions": [{"text": t, "reward": c + 0.2 * b, "correct": c, "boxed": b}
                            for t, (c, b) in zip(texts, rewards)]}


def fake_alignment_run(run: Path, stage: str, *, steps: int = 6, finished: bool = True) -> Path:
    """A run of stage dpo (validation every third step) or grpo (samples.jsonl every second step), its
    metrics.jsonl rows carrying what train/dpo.py and train/grpo.py log."""
    fake_run(run, steps=steps, finished=finished, stage=stage)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if stage == "grpo":
        rows = [{**r, **grpo_row(r["step"])} for r in rows if r["split"] == "train"]  # GRPO has no validation
        (run / "samples.jsonl").write_text("".join(json.dumps(grpo_sample(s)) + "\n" for s in range(2, steps + 1, 2)))
    else:
        rows = [{**r, **dpo_row(r["step"], r["split"])} for r in rows]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def wait_for_board(url: str, server, log=None, timeout: float = 120) -> None:
    """Until the board at `url` answers /health; fails (with its log) when the server exits or time is up."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.time() < deadline, log.read_text() if log else "the board did not start"
        time.sleep(0.3)


@pytest.fixture(scope="session")
def chromium():
    """A headless Debian Chromium under Playwright, or a skip that says why."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: `apt-get install -y chromium` (CI's .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(request, tmp_path_factory) -> Path:
    """Where a test saves its screenshots: the test's own output directory, or $TUNELAB_UI_SCREENSHOTS."""
    import os

    out = Path(os.environ["TUNELAB_UI_SCREENSHOTS"]) if os.environ.get("TUNELAB_UI_SCREENSHOTS") else \
        tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    yield out
    print(f"\nscreenshots of {request.node.name}: {out}")


"""bench/gpu_check.sh, the one-command GPU check of issue 19: its dry run goes through every stage on CPU
with tiny presets and writes real numbers (losses that fall, estimate and measured peaks, rollout
tokens/s, the training benchmark's rows); without a GPU the real run stops at its first stage with a
clear reason and still writes its files; a stage past its timeout is killed with its children."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, shared_data



def _load_gpu_check():
    """bench/gpu_check.py as a module (it imports bench/harness.py, so bench/ is on the path while it loads)."""
    import importlib.util

    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_gpu_check", REPO / "bench" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


gpu_check = _load_gpu_check()


def run_check(out, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}  # the interpreter running the tests
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--out", str(out), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)


@pytest.mark.slow
def test_dry_run_writes_real_numbers_for_every_stage(tmp_path):
    shared_data("gsm8k_train.jsonl")
    shared_data("gsm8k_test.jsonl")
    proc = run_check(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["mode"] == "dry-run" and doc["ok"] and doc["failed"] is None
    st = doc["stages"]
    assert list(st) == list(gpu_check.STAGES)
    assert {k: v["status"] for k, v in st.items() if k not in ("vllm",)} == {
        "env": "ok", "model": "ok", "train_full": "ok", "train_lora": "ok", "train_qlora": "skipped",
        "rollout": "ok", "bench_train": "ok"}
    assert "dry run" in st["train_qlora"]["reason"]
    assert st["vllm"]["status"] == "skipped"  # no CUDA here, whether or not vllm is installed

    assert st["model"]["result"]["params"] > 9_000_000  # tiny-qwen3's sizes with the 151,936-row vocabulary
    for method in ("full", "lora"):
        r = st[f"train_{method}"]["result"]
        assert r["method"] == method and r["steps"] == 5 and r["precision"] == "fp32"
        assert len(r["losses"]) == 5 and all(math.isfinite(x) for x in r["losses"])
        assert r["last_mean"] < r["first_mean"] and r["losses"][-1] < r["losses"][0]
        assert r["losses"][0] == pytest.approx(math.log(151936), abs=0.1)  # random weights: uniform guess
        assert r["estimate_mb"] > 100 and r["measured_mb"] > 100 and r["peak_mem_kind"] == "cpu_peak_rss"
        assert r["error"] == pytest.approx((r["estimate_mb"] - r["measured_mb"]) / r["measured_mb"], abs=1e-3)
        assert r["tokens_per_s"] > 0
    assert st["train_lora"]["result"]["trainable_params"] < st["train_full"]["result"]["trainable_params"]

    roll = st["rollout"]["result"]
    assert roll["backend"] == "hf" and roll["questions"] == 4 and roll["batch"] == 4
    assert 0 < roll["tokens"] <= 4 * roll["max_new_tokens"] and roll["tokens_per_s"] > 0

    bt = st["bench_train"]["result"]
    assert bt["loss_check_passed"] and (tmp_path / "train_cpu.json").is_file()
    row = next(x for x in bt["results"] if x["runner"] == "tunelab")
    assert row["method"] == "lora" and row["sup tok/s"] > 0 and row["peak MB"] > 100

    md = (tmp_path / "gpu_check.md").read_text()
    assert "all stages passed" in md and "dry run on CPU" in md
    for r in (st["train_full"]["result"], st["train_lora"]["result"]):
        assert f"| {r['method']} |" in md and f"{r['estimate_mb']:,.1f}" in md and f"{r['measured_mb']:,.1f}" in md
    assert f"| hf | 4 | 4 | {roll['max_new_tokens']} | {roll['tokens']} |" in md
    assert "| tunelab | lora |" in md
    assert "===== train_full:" in (tmp_path / "gpu_check.log").read_text()


def test_without_a_gpu_the_real_check_stops_at_env_and_still_writes(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the real check would run")
    proc = run_check(tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "env: FAILED" in proc.stdout and "no CUDA GPU" in proc.stdout
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["mode"] == "gpu" and not doc["ok"] and doc["failed"] == "env"
    assert list(doc["stages"]) == ["env"] and "no CUDA GPU" in doc["stages"]["env"]["reason"]
    assert "FAILED at env" in (tmp_path / "gpu_check.md").read_text()


def test_a_stage_past_its_timeout_is_killed_with_its_children(tmp_path):
    log = tmp_path / "log"
    t0 = time.perf_counter()
    # the child's own child would keep the pipe open if only the direct child were killed
    rc, tail = gpu_check.run_process(["bash", "-c", "echo started; sleep 60 & sleep 60"], timeout=1, log=log,
                                     title="sleepy")
    assert rc == 124 and time.perf_counter() - t0 < 10
    assert tail.strip() == "started" and "===== sleepy: exit 124" in log.read_text()


def test_loss_verdict():
    assert gpu_check.loss_verdict([12.0, 11.9, 11.5, 11.0, 10.8, 10.0])["decreasing"]
    flat = gpu_check.loss_verdict([12.0, 12.1, 12.0, 12.0, 12.1, 12.2])
    assert flat["finite"] and not flat["decreasing"]
    nan = gpu_check.loss_verdict([12.0, float("nan"), 10.0])
    assert not nan["finite"] and not nan["decreasing"]

"""The training benchmark runs end to end on tiny-qwen3 (LoRA) and checks what makes its ratios fair:
every runner's loss on the same first micro-batch equals tunelab's, every runner sees exactly the
planned supervised tokens, and, given the same examples per step and the same optimizer, every runner's
per-step training losses equal tunelab's. No timing is asserted (ratios are printed, not tested)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, shared_data


@pytest.mark.slow
def test_train_bench_tiny(tmp_path):
    shared_data("gsm8k_train.jsonl")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train.py"), "--tiny", "--methods", "lora",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "train_cpu.json").read_text())
    assert "bench/train.py --tiny" in res["command"] and res["machine"]["versions"]["trl"] == "1.16.0"
    runners = ["tunelab", "tunelab_prev", "tunelab_gc", "trl_default", "trl_best", "hf_padded512"]

    # 1. the fairness check: same first micro-batch, same loss, same supervised tokens
    assert res["loss_check_passed"]
    first_sup = res["settings"]["micro_batch_supervised_tokens"][0]
    assert [r["runner"] for r in res["loss_check"]] == runners
    for row in res["loss_check"]:
        assert row["sup tokens"] == first_sup and float(row["abs diff"]) <= 1e-3 * float(row["tunelab loss"])
        n = row["data = tunelab"].split("/")
        assert n[0] == n[1]  # every peer row equals tunelab's ids and supervised labels
    # the padded recipe really pads to 512 and TRL's padding-free really flattens the micro-batch
    layouts = {r["runner"]: r["batch layout"] for r in res["loss_check"]}
    assert layouts["hf_padded512"].endswith(", 512) padded") and layouts["trl_best"].startswith("(1, ")
    assert layouts["tunelab"].startswith("(1, ") and layouts["tunelab"].endswith("packed")

    # 2. the timed runs: same supervised tokens as planned, same training trajectory as tunelab
    rows = {r["runner"]: r for r in res["results"]}
    assert list(rows) == runners and all(r["sup tokens ok"] for r in rows.values())
    assert res["settings"]["timed_supervised_tokens"] == sum(
        res["settings"]["micro_batch_supervised_tokens"][2:])  # step 1 (2 micro-batches) is the warm-up
    ref = res["runs"]["tunelab/lora"][0]["step_losses"]
    assert len(ref) == 2  # 1 warm-up + 1 timed step
    for runner in runners[1:]:
        losses = res["runs"][f"{runner}/lora"][0]["step_losses"]
        assert losses == pytest.approx(ref, rel=1e-3), runner
    # 3. ratios are tunelab / peer of the medians, and every rate and peak is a real measurement
    assert rows["tunelab"]["speed tunelab/x"] == 1.0
    for r in rows.values():
        assert r["sup tok/s"] > 0 and r["peak MB"] > 100
        assert r["speed tunelab/x"] == pytest.approx(rows["tunelab"]["sup tok/s"] / r["sup tok/s"], rel=2e-3)
    assert any("vs trl_default speed >= 1.3x" in t for t in res["targets"])
    assert any(t.startswith("lora: tunelab_gc vs trl_default (both checkpointing) memory") for t in res["targets"])
    assert any(t.startswith("lora: tunelab vs tunelab_prev (the defaults before issue 24): memory")
               for t in res["targets"])
    assert res["runs"]["tunelab_prev/lora"][0]["step_losses"] == ref  # allocator and recompute change no number

"""The alignment benchmark (bench/align.py) runs end to end on tiny-qwen3 and checks what makes its ratios
fair: DPO: every runner's loss on the same first micro-batch is log 2 (policy = reference) and equals
tunelab's, TRL tokenized exactly tunelab's pairs, every runner trained on the planned pairs per step,
and after one identical update the losses and reward margins still agree; GRPO: every runner sampled
the same prompt ids in the same order and as many completions per step. The reported ratios are the
ratios of the reported rates. No timing is asserted."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO, shared_data

RUNNERS = ["tunelab", "trl_default", "trl_best"]
# GRPO: the fp32 base, the bf16 rollout copy with bf16 autocast training (every bf16 path of tunelab's), TRL
GRPO_RUNNERS = ["tunelab", "tunelab_amp", "trl_best"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    shared_data("gsm8k_train.jsonl")
    out = tmp_path_factory.mktemp("align")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "align.py"), "--tiny", "--out", str(out),
                           "--dpo-runners", ",".join(RUNNERS), "--grpo-runners", ",".join(GRPO_RUNNERS)], capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return json.loads((out / "align_cpu.json").read_text())


@pytest.mark.slow
def test_align_bench_dpo_tiny(result):
    res = result
    assert "bench/align.py --tiny" in res["command"] and res["machine"]["versions"]["trl"] == "1.16.0"
    assert len(res["load_avg_before"]) == 3 and len(res["load_avg_after"]) == 3
    dpo = res["dpo"]
    s = dpo["settings"]
    methods = s.get("methods") or ["lora", "full"]
    # 1. step 0: every runner's loss on the same first micro-batch is log 2 and tunelab's, on the same pairs
    assert dpo["loss_check_passed"]
    assert [(r["runner"], r["method"]) for r in dpo["loss_check"]] == [(r, m) for m in methods for r in RUNNERS]
    for row in dpo["loss_check"]:
        assert row["loss"] == pytest.approx(math.log(2), abs=1e-5) == pytest.approx(row["tunelab loss"], abs=1e-5)
        assert row["pairs"] == s["dpo_batch"] and float(row["margin"]) == pytest.approx(0, abs=1e-5)
        good, total = row["data = tunelab"].split("/")
        assert good == total == str(s["pairs"])  # TRL's tokens and reply mask equal tunelab's, every pair
    # 2. the same pairs per micro-batch, and the same trajectory after one identical AdamW update
    assert dpo["step2_check_passed"]
    for key, runs in dpo["runs"].items():
        run = runs[0]
        assert run["micro_seen"][: len(s["micro"])] == s["micro"], key
        assert len(run["step_losses"]) == s["steps"] + 1 and run["step_losses"][0] == pytest.approx(math.log(2), abs=1e-5)
        tl = dpo["runs"]["tunelab/" + key.split("/")[1]][0]
        assert run["step_losses"][1] == pytest.approx(tl["step_losses"][1], rel=2e-2)
        assert run["step_margins"][1] == pytest.approx(tl["step_margins"][1], rel=2e-2, abs=1e-3)
    assert any(abs(r[0]["step_margins"][1]) > 1e-4 for r in dpo["runs"].values())  # the update moved something
    # 3. every runner reported, and each ratio is the ratio of the reported rates and peaks
    rows = dpo["results"]
    assert [(r["runner"], r["method"]) for r in rows] == [(r, m) for m in methods for r in RUNNERS]
    for r in rows:
        base = next(x for x in rows if x["runner"] == "tunelab" and x["method"] == r["method"])
        assert r["pairs/s"] > 0 and r["peak MB"] > 100 and r["same pairs"]
        assert r["speed tunelab/x"] == pytest.approx(base["pairs/s"] / r["pairs/s"], rel=2e-3)
        assert r["memory tunelab/x"] == pytest.approx(base["peak MB"] / r["peak MB"], rel=2e-3)
    assert s["timed_pairs"] == s["steps"] * s["dpo_batch"] * s["dpo_accum"]
    # tunelab vs each TRL runner, and the fastest of each side
    assert sum(1 for t in dpo["targets"] if "pairs/s >= 1.5x and peak memory <= 0.8x" in t) == 3 * len(methods)
    assert sum(1 for t in dpo["targets"] if "fastest tunelab (tunelab) vs fastest TRL" in t) == len(methods)


@pytest.mark.slow
def test_align_bench_grpo_tiny(result):
    grpo = result["grpo"]
    s = grpo["settings"]
    per_step = s["grpo_batch"] * s["grpo_accum"] * s["generations"]
    rows = grpo["results"]
    assert [r["runner"] for r in rows] == GRPO_RUNNERS
    for r in rows:
        assert r["same prompts"]  # the same prompt ids, in the same order, G times each
        assert r["completions/step"] == per_step
        assert 0 < r["mean length"] <= s["max_new_tokens"]
        assert r["gen tok/s"] == pytest.approx(r["completions/s"] * r["mean length"], rel=2e-2)
        assert r["tok/s tunelab/x"] == pytest.approx(rows[0]["gen tok/s"] / r["gen tok/s"], rel=2e-3)
        for k, base in ((0, "tunelab"), (1, "tunelab_amp")):  # every tunelab runner is a base of ratios
            assert r[f"speed {base}/x"] == pytest.approx(rows[k]["completions/s"] / r["completions/s"], rel=2e-3)
            assert r[f"memory {base}/x"] == pytest.approx(rows[k]["peak MB"] / r["peak MB"], rel=2e-3)
    for key, runs in grpo["runs"].items():
        run = runs[0]
        assert run["prompts_match"] and run["completions"] == s["steps"] * per_step, key
        timed = [c for c in run["rollout_calls"] if 1 <= c["step"] <= s["steps"]]
        assert sum(c["completions"] for c in timed) == run["completions"]
        assert len(run["step_losses"]) == s["steps"] + 1
    assert len(s["prompt_texts"]) == (s["steps"] + 1) * s["grpo_batch"] * s["grpo_accum"]
    assert sum(1 for t in grpo["targets"] if "completions/s >= 2x" in t) == 3  # each tunelab runner vs TRL, fastest
    fastest = max(rows[:2], key=lambda r: r["completions/s"])["runner"]
    assert f"fastest tunelab ({fastest}) vs fastest TRL (trl_best)" in grpo["targets"][-1]

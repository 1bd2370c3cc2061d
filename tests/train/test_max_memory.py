"""`tunelab train --max-memory`: five configs (full and LoRA on tiny-qwen3 at 128 to 512 tokens, LoRA on
SmolLM2-135M) each trained under a budget that the config's own batch would not fit, in a process of its
own (a CPU peak is per process: VmHWM). The measured peak stays under the budget, the plan changed the
config, and the planned run's losses equal the same plan given by hand (its saved config.yaml, budget
off). Also: an impossible budget stops before any weight loads; a planned run resumes with its plan.

    .venv/bin/python -m pytest tests/train/test_max_memory.py -q -m slow     (about 4 minutes on 2 cores)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab import config as C
from tunelab.errors import ConfigError
from tunelab.estimate.devices import DeviceProfile
from tunelab.estimate.plan import MARGIN, plan_for_budget

pytestmark = pytest.mark.slow

CPU = DeviceProfile("test-cpu", "cpu", 16e9, 2e11, 1e11, 0.5)  # memory estimates do not depend on throughput
BASE = ["data.name=arith_en", "data.n=40", "data.val_size=0", "data.dedup=exact", "optimizer.name=sgd", "optimizer.lr=0.05",
        "optimizer.momentum=0.0", "schedule.name=constant", "training.max_steps=2", "training.log_every=1",
        "training.eval_every=0", "training.save_every=0", "training.max_grad_norm=0"]
TINY = ["model.name=tiny-qwen3"]
# (overrides, the plan the budget is set for). The budget lies halfway between that plan's estimate and
# the smallest estimate of the candidates tried before it, so the plan must change the config
CONFIGS = {
    "tiny-full-256": ([*TINY, "method.name=full", "data.max_length=256", "training.batch_size=4"], (2, 2, False)),
    "tiny-full-512": ([*TINY, "method.name=full", "data.max_length=512", "training.batch_size=2"], (1, 2, False)),
    "tiny-lora-128": ([*TINY, "method.name=lora", "data.max_length=128", "data.packing=false", "training.batch_size=8"],
                      (4, 2, False)),
    "tiny-lora-512": ([*TINY, "method.name=lora", "data.max_length=512", "training.batch_size=2"], (1, 2, False)),
    "smollm2-lora-256": (["model.name=smollm2-135m-instruct", "method.name=lora", "data.max_length=256",
                          "training.batch_size=1"], (1, 1, True)),  # one micro-batch: checkpointing turned on
}
# The budget's slack around the plan is asserted > 50 MB; the plan's own estimate then has that plus a tenth
# of itself below the budget, ~90 MB on tiny-qwen3, for the estimate's error. Since the fused head (issue 24)
# tiny-qwen3's candidates lie ~100 MB apart: its logits chunk is most of what a batch changes.


def train_baseline_mb(config: Path) -> float:
    """Resident memory of a `tunelab train` process just before its model would load, as the plan counts it,
    in this environment: an impossible budget stops there and says it. Not a constant: file-backed pages of
    torch's libraries count, and how many are mapped depends on the page cache (482-488 MB in one checkout's
    environment here, 573 MB in a freshly installed clone on the same machine)."""
    proc = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config), "--max-memory", "1MB"],
                          capture_output=True, text=True, timeout=300)
    found = re.search(r"\+ ([\d,.]+) MB resident before the model", proc.stderr)
    assert proc.returncode == 2 and found, proc.stderr[-2000:]
    return float(found.group(1).replace(",", ""))


def budget_for(cfg: C.Config, target: tuple[int, int, bool], baseline_mb: float) -> float:
    from tunelab.estimate.command import data_shape

    seq_len, fraction = data_shape(cfg)  # the widest row train plans for
    cands = plan_for_budget(cfg, 1e9, device=CPU, seq_len=seq_len, supervised_fraction=fraction).candidates
    i = [(c.batch_size, c.grad_accum, c.gradient_checkpointing) for c in cands].index(target)
    assert i > 0, "the budget must make the plan change something"
    before = min(c.estimate_mb for c in cands[:i])
    slack = (1 + MARGIN) * (before - cands[i].estimate_mb) / 2
    assert slack > 50, f"candidates too close to test: {[(c.label(), round(c.estimate_mb)) for c in cands]}"
    return baseline_mb + (1 + MARGIN) * (before + cands[i].estimate_mb) / 2


def train_cli(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(config), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    return out


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_measured_peak_stays_under_the_budget_and_the_plan_trains_as_by_hand(tmp_path, name):
    """The planned run in a process of its own; meanwhile the same plan given by hand trains in this one
    (only its losses are compared). tiny-lora-128 is also stopped and resumed with the config as given."""
    from tunelab.train.recipe import train

    over, target = CONFIGS[name]
    resume = name == "tiny-lora-128"
    cfg = C.load(None, [*BASE, *over, f"output.dir={tmp_path / 'planned'}", f"training.save_every={int(resume)}"])
    C.save(cfg, tmp_path / "given.yaml")
    budget = f"{budget_for(cfg, target, train_baseline_mb(tmp_path / 'given.yaml')):.0f}MB"
    proc = train_cli(tmp_path / "given.yaml", "--max-memory", budget)
    b, a, ckpt = target
    train(C.load(None, [*BASE, *over, f"output.dir={tmp_path / 'hand'}", f"training.batch_size={b}",
                        f"training.grad_accum={a}", f"training.gradient_checkpointing={str(ckpt).lower()}",
                        f"training.max_steps={3 if resume else 2}"]))
    out = finished(proc)
    summary = json.loads((tmp_path / "planned" / "summary.json").read_text())
    plan = summary["memory_plan"]
    assert f"[tunelab] --max-memory {budget}: micro-batch {b} x {a} accumulation" in out
    assert (plan["batch_size"], plan["grad_accum"], plan["gradient_checkpointing"]) == target
    assert plan["measured_kind"] == "cpu_peak_rss" and plan["measured_peak_mb"] == summary["peak_mem_mb"]
    assert plan["measured_peak_mb"] < plan["budget_mb"] == C.memory_mb(budget) and plan["under_budget"]  # VmHWM
    saved = C.load(tmp_path / "planned" / "config.yaml")  # the run records the plan it used
    assert (saved.training.batch_size, saved.training.grad_accum, saved.training.gradient_checkpointing) == target
    assert saved.training.max_memory == budget
    if resume:  # the config as given (8 x 1), more steps: compared without its planned keys, the plan kept
        out = finished(train_cli(tmp_path / "given.yaml", "training.max_steps=3", "--max-memory", budget, "--resume"))
        assert "resumed from" in out and f"the resumed run's plan {b} x {a}" in out
        assert C.load(tmp_path / "planned" / "config.yaml").training.max_steps == 3
    planned, by_hand = losses(tmp_path / "planned"), losses(tmp_path / "hand")
    assert len(planned) == (3 if resume else 2) == len(by_hand)
    assert all(abs(x - y) <= 1e-5 for x, y in zip(planned, by_hand)), (planned, by_hand)


def test_an_impossible_budget_stops_before_any_weight_loads(tmp_path, monkeypatch):
    from tunelab.train import recipe

    def no_weights(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(recipe, "load_trainable", no_weights)
    over, _ = CONFIGS["tiny-full-256"]
    cfg = C.load(None, [*BASE, *over, f"output.dir={tmp_path / 'run'}", "training.max_memory=600MB"])
    with pytest.raises(ConfigError, match=r"600 MB cannot hold this training: the smallest plan, micro-batch 1 x 4 "
                                          r"accumulation with checkpointing on, is estimated at [\d,]+ MB"):
        recipe.train(cfg)
    assert not (tmp_path / "run").exists()

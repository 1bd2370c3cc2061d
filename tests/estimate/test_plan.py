"""`--max-memory`: the planner over the estimator's real numbers (tiny-qwen3's config, no weights), budget
parsing, the resume comparison and `tunelab estimate --max-memory`. Training under a budget, measured in
processes of their own: tests/train/test_max_memory.py.

    .venv/bin/python -m pytest tests/estimate/test_plan.py -q
"""
from __future__ import annotations

import argparse
import json

import pytest

from tunelab import config as C
from tunelab.errors import ConfigError
from tunelab.estimate.devices import DeviceProfile
from tunelab.estimate.plan import as_planned, candidates_of, parse_budget, plan_for_budget

CPU = DeviceProfile("test-cpu", "cpu", 16e9, 2e11, 1e11, 0.5)  # no throughput measurement in a unit test
BASE = ["model.name=tiny-qwen3", "data.max_length=256", "training.batch_size=8", "training.grad_accum=1"]


@pytest.fixture(scope="module")
def full(tunelab_home):
    return C.load(None, [*BASE, "method.name=full"])


@pytest.fixture(scope="module")
def smallest(full):
    return min(c.needs_mb for c in plan_for_budget(full, 1e9, device=CPU).candidates)


@pytest.mark.parametrize("text,mb", [("6GB", 6144), ("6GiB", 6144), ("6 gb", 6144), ("6000MB", 6000),
                                     ("512MiB", 512), ("1.5G", 1536), ("2048m", 2048)])
def test_budgets_parse_to_mb(text, mb):
    assert parse_budget(text) == mb


@pytest.mark.parametrize("bad", ["6", "lots", "-1GB", "0MB", "6PB", ""])
def test_a_bad_budget_names_the_key_or_flag_and_an_example(bad):
    with pytest.raises(ConfigError, match=r"--max-memory: expected .*e\.g\. 6GB"):
        parse_budget(bad, "--max-memory")
    with pytest.raises(ConfigError, match=r"training\.max_memory.*e\.g\. 6GB"):
        C.load(None, [f"training.max_memory={bad or 'x'}"])


def test_cli_flag_checked_before_anything_loads(capsys):
    from tunelab.cli import main

    assert main(["train", "no-such-config.yaml", "--max-memory", "lots"]) == 2
    assert "--max-memory: expected a size with a unit" in capsys.readouterr().err


def test_candidates_keep_the_effective_batch_fastest_expected_first():
    got = candidates_of(4, 2)
    assert got == [(8, 1, False), (4, 2, False), (2, 4, False), (1, 8, False),
                   (8, 1, True), (4, 2, True), (2, 4, True), (1, 8, True)]
    assert candidates_of(3, 1) == [(3, 1, False), (1, 3, False), (3, 1, True), (1, 3, True)]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_plan_fits_keeps_the_batch_and_a_larger_budget_is_never_slower(method):
    cfg = C.load(None, [*BASE, f"method.name={method}", "training.batch_size=4", "training.grad_accum=2"])
    every = plan_for_budget(cfg, 1e9, device=CPU, baseline_mb=300).candidates
    assert len({round(c.estimate_mb) for c in every}) > 2  # the candidates really differ
    budgets = sorted({c.needs_mb for c in every}) + [1e9]
    chosen = []
    for budget in budgets:
        plan = plan_for_budget(cfg, budget, device=CPU, baseline_mb=300)
        assert plan.batch_size * plan.grad_accum == 8
        assert plan.estimate_mb * 1.1 + 300 <= budget and plan.needs_mb <= budget
        assert all(c.needs_mb > budget for c in plan.candidates[: plan.tried - 1])  # the first that fits
        chosen.append(plan.tried)
    assert chosen == sorted(chosen, reverse=True)  # more memory: an earlier (faster expected) candidate
    assert chosen[-1] == 1 and (plan.batch_size, plan.grad_accum, plan.gradient_checkpointing) == (8, 1, False)


def test_margin_and_baseline_count(full):
    plan = plan_for_budget(full, 1e9, device=CPU, margin=0.25, baseline_mb=100)
    c = plan.candidates[0]
    assert c.needs_mb == pytest.approx(c.estimate_mb * 1.25 + 100)
    tight = plan_for_budget(full, c.needs_mb - 1, device=CPU, margin=0.25, baseline_mb=100)
    assert tight.tried > 1 and tight.needs_mb <= c.needs_mb - 1


def test_an_impossible_budget_names_the_smallest_plans_estimate(full, smallest):
    with pytest.raises(ConfigError) as e:
        plan_for_budget(full, smallest - 1, device=CPU)
    msg = str(e.value)
    small = min(plan_for_budget(full, 1e9, device=CPU).candidates, key=lambda c: c.needs_mb)
    assert f"estimated at {small.estimate_mb:,.0f} MB" in msg and f"{small.needs_mb:,.0f} MB" in msg
    assert "training.max_memory" in msg and "data.max_length" in msg and "method.name=lora" in msg
    assert plan_for_budget(full, smallest, device=CPU).needs_mb == smallest  # at the edge: it fits


def test_the_plan_applied_and_recorded(full):
    first = plan_for_budget(full, 1e9, device=CPU).candidates[0]
    plan = plan_for_budget(full, first.needs_mb - 1, device=CPU)  # the config's 8 x 1 does not fit
    cfg = plan.apply(full)
    t = cfg.training
    assert (t.batch_size, t.grad_accum, t.gradient_checkpointing) == (plan.batch_size, plan.grad_accum,
                                                                     plan.gradient_checkpointing) != (8, 1, False)
    assert full.training.batch_size == 8  # the config itself is left alone
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["given"] == {"batch_size": 8, "grad_accum": 1, "gradient_checkpointing": False}
    assert d["budget_mb"] == first.needs_mb - 1 and d["margin"] == 0.1 and len(d["candidates"]) == 8
    assert "8 x 1 needs" in plan.why and "selective checkpointing" in " ".join(plan.notes)
    line = plan.line("1.2GB")
    assert line.startswith(f"--max-memory 1.2GB: micro-batch {plan.batch_size} x {plan.grad_accum} accumulation")
    assert "tried first: 8 x 1" in line


def test_a_resumed_plan_is_kept_while_it_fits_else_refused(full):
    every = plan_for_budget(full, 1e9, device=CPU).candidates
    slow = every[-1]  # 1 x 8 with checkpointing: the smallest
    keep = (slow.batch_size, slow.grad_accum, slow.gradient_checkpointing)
    plan = plan_for_budget(full, 1e9, device=CPU, keep=keep)
    assert (plan.batch_size, plan.grad_accum, plan.gradient_checkpointing) == keep and "resumed" in plan.why
    with pytest.raises(ConfigError, match="--resume: the run was trained with the plan 1 x 8 ckpt"):
        plan_for_budget(full, slow.needs_mb - 1, device=CPU, keep=keep)


def test_resume_compares_a_planned_runs_config_without_its_planned_keys():
    given = C.to_dict(C.load(None, [*BASE, "training.max_memory=2GB"]))
    saved = C.to_dict(C.load(None, [*BASE, "training.max_memory=2GB", "training.batch_size=2",
                                    "training.grad_accum=4", "training.gradient_checkpointing=true"]))
    assert as_planned(saved, given) == given
    assert as_planned(saved, saved) == saved
    other_budget = C.to_dict(C.load(None, [*BASE, "training.max_memory=3GB"]))
    assert as_planned(saved, other_budget) == saved  # another budget: the saved values are compared as they are
    other_batch = C.to_dict(C.load(None, [*BASE, "training.max_memory=2GB", "training.batch_size=4"]))
    assert as_planned(saved, other_batch) == saved  # another effective batch: another run
    unplanned = C.to_dict(C.load(None, BASE))
    assert as_planned(unplanned, unplanned) == unplanned


def _estimate(argv):
    from tunelab.estimate import command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    return command.run(parser.parse_args(["estimate", *argv]))


def test_estimate_shows_the_plan_without_training(tmp_path, capsys, monkeypatch):
    from tunelab.estimate import command

    monkeypatch.setattr(command, "process_baseline_mb", lambda device: 0.0)
    path = tmp_path / "c.yaml"
    C.save(C.load(None, [*BASE, "method.name=full"]), path)
    every = plan_for_budget(C.load(path), 1e9, device="H100").candidates
    budget = f"{every[0].needs_mb - 1:.0f}MB"
    assert _estimate([str(path), "--device", "H100", "--max-memory", budget, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    plan = doc["plan"]
    assert plan["tried"] > 1 and plan["batch_size"] * plan["grad_accum"] == 8
    assert doc["estimate"]["inputs"]["batch_size"] == plan["batch_size"]
    assert round(doc["estimate"]["peak_mb"], 1) == plan["estimate_mb"]
    assert _estimate([str(path), "training.max_memory=" + budget, "--device", "H100"]) == 0  # the key does too
    out = capsys.readouterr().out
    assert "<- plan" in out and "too big" in out and f"--max-memory {budget}: micro-batch" in out
    with pytest.raises(ConfigError, match="cannot hold this training"):
        _estimate([str(path), "--device", "H100", "--max-memory", "1MB"])

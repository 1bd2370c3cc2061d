"""The run-directory policy: what --resume, --overwrite and a crash may and may not do to a run."""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import REPO
from tunelab import config as C
from tunelab.cli import main
from tunelab.errors import ConfigError, OutputExistsError, UserError
from tunelab.train.recipe import train

BASE = ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=24", "data.max_length=256", "data.val_size=4",
        "data.dedup=exact", "method.name=lora", "method.lora_r=4", "optimizer.lr=1e-2", "training.batch_size=2",
        "training.max_steps=4", "training.log_every=1", "training.eval_every=2", "training.save_every=2"]


def cfg(run: Path, *over: str) -> C.Config:
    return C.load(None, [*BASE, f"output.dir={run}", *over])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def crash_at(step_to_crash: int):
    def cb(step, state):
        if step == step_to_crash:
            raise KeyboardInterrupt("simulated kill")
    return cb


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A LoRA run killed after step 2 (its checkpoint) of 4."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg(run), callbacks=(crash_at(3),))
    return run


def test_resume_with_a_changed_config_is_refused_and_changes_nothing(interrupted, tmp_path):
    before = snapshot(interrupted)
    with pytest.raises(ConfigError) as e:
        train(cfg(interrupted, "optimizer.lr=5e-2", "data.n=30"), resume=True)
    msg = str(e.value)
    assert "optimizer.lr: 0.01 -> 0.05" in msg and "data.n: 24 -> 30" in msg and "2 key(s)" in msg
    assert snapshot(interrupted) == before


def test_resume_with_a_checkpoint_of_another_shape_changes_nothing(interrupted):
    """A safe-looking resume whose checkpoint cannot be restored (here: its weights file was replaced
    by one of another run) fails before config.yaml or data_stats.json are written."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = interrupted.parent / "copy"
    shutil.copytree(interrupted, copy)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace(str(interrupted), str(copy)))
    weights = copy / "checkpoints" / "step-000002" / "trainable.safetensors"
    save_file({k: v[:1].contiguous() for k, v in load_file(str(weights)).items()}, str(weights))
    before = snapshot(copy)
    with pytest.raises(UserError, match="cannot restore .*step-000002.*no file of .* was changed"):
        train(cfg(copy), resume=True)
    assert snapshot(copy) == before


def test_safe_changes_on_resume_are_recorded_and_the_run_continues(interrupted):
    import shutil

    run = interrupted.parent / "safe"
    shutil.copytree(interrupted, run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(interrupted), str(run)))
    (run / "checkpoints" / ".step-000004.tmp-deadbeef").mkdir()  # a save the kill interrupted
    (run / "checkpoints" / ".step-000004.tmp-deadbeef" / "trainable.safetensors").write_bytes(b"half")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "train", "lo')  # the kill cut the last line short
    summary = train(cfg(run, "training.max_steps=6", "training.log_every=2"), resume=True)
    assert summary["steps"] == 6
    fp = json.loads((run / "fingerprint.json").read_text())
    assert fp["resumes"] == [{"step": 2, "changed": {"training.log_every": [1, 2], "training.max_steps": [4, 6]}}]
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "train"]
    assert steps == [1, 2, 4, 6]  # rows after the checkpoint dropped, the truncated line gone, no duplicates
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_rows(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg(run, "training.save_every=0", "training.eval_every=0"), callbacks=(crash_at(2),))
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    train(cfg(run, "training.save_every=0", "training.eval_every=0", "training.max_steps=2"), resume=True)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]


def test_overwrite_never_deletes_what_tunelab_did_not_write(tmp_path, monkeypatch):
    # the working directory, holding the config and data the command is about to read
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_config.yaml").write_text("model:\n  name: tiny-qwen3\n")
    (work / "data.jsonl").write_text('{"question": "1+1?", "solution": "2", "answer": "2"}\n')
    monkeypatch.chdir(work)
    before = snapshot(work)
    assert main(["train", "my_config.yaml", "output.dir=.", "data.name=data.jsonl", "--overwrite"]) == 2
    assert snapshot(work) == before
    # a directory of the user's (no marker): refused, kept
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="files tunelab did not write"):
        train(cfg(mine), overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    # an output of another kind (an evaluation) is not replaced by a run
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / ".tunelab").write_text('{"kind": "eval"}')
    (ev / "results.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="is a tunelab eval directory, not a run"):
        train(cfg(ev), overwrite=True)


def test_overwrite_replaces_a_run_it_wrote(interrupted):
    import shutil

    run = interrupted.parent / "again"
    shutil.copytree(interrupted, run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(interrupted), str(run)))
    summary = train(cfg(run, "training.max_steps=2"), overwrite=True)
    assert summary["steps"] == 2 and json.loads((run / "fingerprint.json").read_text())["resumes"] == []


def test_export_refuses_to_replace_parts_of_a_run(interrupted, tmp_path):
    import shutil

    run = tmp_path / "done"
    train(cfg(run, "training.max_steps=2"))
    before = snapshot(run)
    assert main(["export", str(run), "--output", str(run / "checkpoints"), "--overwrite"]) == 2
    assert main(["export", str(run), "--output", str(run / "metrics.jsonl"), "--overwrite"]) == 2
    assert snapshot(run) == before


def test_report_to_a_package_that_is_missing_fails_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # find_spec raises/returns None for it
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else
                        importlib.machinery.PathFinder.find_spec(name))
    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs/quickstart.yaml"), *BASE, f"output.dir={run}",
                 "output.report_to=[wandb]"]) == 2
    assert "'output.report_to' has 'wandb', which is not installed" in capsys.readouterr().err
    assert not run.exists()


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(kw)
    fake.log = lambda *a, **k: None
    fake.finish = lambda: None
    monkeypatch.setitem(sys.modules, "wandb", fake)
    import importlib.machinery
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: importlib.machinery.ModuleSpec("wandb", None) if name == "wandb" else real(name, *a))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg(run, "output.report_to=[wandb]"), callbacks=(crash_at(3),))
    train(cfg(run, "output.report_to=[wandb]"), resume=True)
    assert len(calls) == 2 and calls[0]["id"] == calls[1]["id"] and calls[1]["resume"] == "allow"


def test_load_best_puts_the_best_weights_in_model(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from tunelab.train import loop

    losses = iter([3.0, 1.0, 2.0, 4.0])  # validation loss per evaluation: the best is at step 2
    monkeypatch.setattr(loop, "evaluate_loss", lambda *a, **k: next(losses))
    run = tmp_path / "run"
    summary = train(cfg(run, "training.load_best=true", "training.max_steps=4", "training.eval_every=1"))
    assert summary["best_step"] == summary["model_step"] == 2 and summary["steps"] == 4
    saved = load_file(str(run / "model" / "adapter_model.safetensors"))
    best = load_file(str(run / "checkpoints" / "step-000002" / "trainable.safetensors"))
    last = load_file(str(run / "checkpoints" / "step-000004" / "trainable.safetensors"))
    b_keys = [k for k in best if "lora_B" in k]
    assert b_keys and all((saved[k.replace(".default", "")] == best[k]).all() for k in b_keys)
    assert not all((saved[k.replace(".default", "")] == last[k]).all() for k in b_keys)

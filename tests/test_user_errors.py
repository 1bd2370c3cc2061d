"""Every failure a user causes is one message (exit status 2) naming the file, line or key and what was
expected, and changes nothing on disk. One row per case: the command, the message fragment."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tunelab.cli import main

QUICK = str(REPO / "configs/quickstart.yaml")
TINY = ["model.name=tiny-qwen3", "data.n=24", "data.val_size=4", "data.max_length=256", "data.dedup=exact",
        "training.max_steps=2", "training.batch_size=2", "method.lora_r=4"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "lora"
    assert main(["train", QUICK, *TINY, f"output.dir={run}"]) == 0
    return run


def setup_not_a_model(d: Path) -> list[str]:
    (d / "folder").mkdir()
    (d / "folder" / "readme.txt").write_text("hello")
    return ["eval", "--model", str(d / "folder"), "--task", "arith", "--limit", "1", "--output", str(d / "ev")]


def setup_adapter_missing(d: Path, run: Path) -> list[str]:
    shutil.copytree(run, d / "run")
    (d / "run" / "model" / "adapter_model.safetensors").unlink()
    return ["eval", "--model", str(d / "run"), "--task", "arith", "--limit", "1", "--output", str(d / "ev")]


def setup_damaged_weights(d: Path, run: Path) -> list[str]:
    from tunelab.models.load import resolve

    shutil.copytree(resolve("tiny-qwen3").path, d / "model")
    w = d / "model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return ["eval", "--model", str(d / "model"), "--task", "arith", "--limit", "1", "--output", str(d / "ev")]


def setup_unfinished_run(d: Path, run: Path) -> list[str]:
    (d / "run").mkdir()
    shutil.copy(run / "config.yaml", d / "run" / "config.yaml")
    return ["chat", str(d / "run")]


def setup_grade_rows(d: Path) -> list[str]:
    (d / "out.jsonl").write_text('{"prediction": "1", "gold": "1"}\n[1, 2]\n')
    return ["grade", "--task", "gsm8k", str(d / "out.jsonl"), "--output", str(d / "graded.jsonl")]


def setup_empty_report(d: Path) -> list[str]:
    (d / "nothing").mkdir()
    (d / "nothing" / "notes.txt").write_text("not a run")
    return ["report", str(d / "nothing")]


CASES = [  # (id, argv or setup(d) or setup(d, run), message fragment)
    ("batch_size=0", ["train", QUICK, "training.batch_size=0"], "'training.batch_size': expected at least 1, got 0"),
    ("grad_accum=0", ["train", QUICK, "training.grad_accum=0"], "'training.grad_accum': expected at least 1, got 0"),
    ("negative lr", ["train", QUICK, "optimizer.lr=-1e-3"], "'optimizer.lr': expected above 0, got -0.001"),
    ("warmup_ratio=3", ["train", QUICK, "schedule.warmup_ratio=3"], "'schedule.warmup_ratio': expected in [0, 1]"),
    ("lora_r=0", ["train", QUICK, "method.lora_r=0"], "'method.lora_r': expected at least 1, got 0"),
    ("one beta", ["train", QUICK, "optimizer.betas=[0.9]"], "'optimizer.betas': expected two numbers in [0, 1)"),
    ("keep_last=0", ["train", QUICK, "training.keep_last=0"], "'training.keep_last': expected at least 1"),
    ("unknown optimizer", ["prepare", QUICK, "optimizer.name=adam"], "'optimizer.name': expected one of 'adamw'"),
    ("eval --limit -1", ["eval", "--model", "tiny-qwen3", "--task", "arith", "--limit", "-1"],
     "'limit' (--limit) must be at least 1, got -1"),
    ("eval --limit 0", ["eval", "--model", "tiny-qwen3", "--task", "arith", "--limit", "0"],
     "'limit' (--limit) must be at least 1, got 0"),
    ("not a model", setup_not_a_model, "is a directory but not a model: it has no config.json"),
    ("adapter weights missing", setup_adapter_missing, "the adapter's weights (adapter_model.safetensors) are missing"),
    ("damaged safetensors", setup_damaged_weights, "the weights cannot be read"),
    ("unfinished run", setup_unfinished_run, "is a run directory without a trained model"),
    ("grade rows not objects", setup_grade_rows, "out.jsonl:2: each line must be a JSON object"),
    ("report without runs", setup_empty_report, "no run and no evaluation found"),
]


@pytest.mark.parametrize("case,argv,message", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_message_and_changes_nothing(case, argv, message, tmp_path, capsys, request):
    if callable(argv):
        needs_run = argv.__code__.co_argcount == 2
        argv = argv(tmp_path, request.getfixturevalue("lora_run")) if needs_run else argv(tmp_path)
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert "Traceback" not in err and err.count("error:") == 1
    assert snapshot(tmp_path) == before


def test_a_full_disk_is_named_and_loses_no_checkpoint(tmp_path, capsys, monkeypatch):
    """No space left while writing a checkpoint: one message naming what was being written; the
    earlier checkpoint is intact and the half-written one is gone."""
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def full_disk(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    monkeypatch.setattr("tunelab.train.checkpoint.save_file", full_disk)
    run = tmp_path / "run"
    argv = ["train", QUICK, *TINY, "training.max_steps=4", "training.save_every=1", "training.eval_every=0",
            f"output.dir={run}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "step-000002" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001"]
    json.loads((run / "checkpoints" / "step-000001" / "state.json").read_text())

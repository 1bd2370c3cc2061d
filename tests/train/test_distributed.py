"""Several processes equal one (issue 14): DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes
(gloo) against one process with the same data and the same global batch (one process: batch 2 x 2
accumulation steps; two processes: batch 2 each), fp32, tiny-qwen3, AdamW with a cosine schedule and
clipping: per-step training and validation losses and the final weights within 1e-4, for full
fine-tuning and LoRA; a run killed with SIGKILL right after its step-2 checkpoint and resumed ends
where one process ends; the saved model loads with plain transformers / peft.

Every multi-process run is a real launch (about 30 s each on 2 cores), shared by the assertions on it:
- full fine-tuning: `tunelab train --nproc 2 --strategy S` (the strategy's accelerate config is
  generated), killed after step 2 (tests/train/killhook), then the same command with `--resume`;
- LoRA: `accelerate launch --config_file configs/accelerate/<S>.yaml --num_processes 2` (the shipped
  files); DDP's LoRA run is two "machines" of one process each on localhost (multi_node.yaml).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.train.test_train import losses, weights
from tunelab import config as C
from tunelab.cli import main
from tunelab.errors import ConfigError, UserError

QUICK = str(REPO / "configs/quickstart.yaml")
COMMON = ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=40", "data.max_length=256", "data.val_size=8",
          "data.dedup=exact", "data.packing=false", "optimizer.name=adamw", "schedule.name=cosine",
          "schedule.warmup_ratio=0", "training.batch_size=2", "training.max_steps=3", "training.log_every=1",
          "training.eval_every=2", "training.save_every=2", "training.max_grad_norm=1.0"]
METHOD = {"full": ["method.name=full", "optimizer.lr=1e-3"],
          # no dropout: each process draws its own masks, so dropout cannot match one process
          "lora": ["method.name=lora", "method.lora_r=4", "method.lora_dropout=0", "optimizer.lr=1e-2"]}
SHIPPED = {"ddp": "multi_node.yaml", "fsdp": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml",
           "zero3": "deepspeed_zero3.yaml"}
TOL = 1e-4
IDS = torch.tensor([[151644, 872, 198, 16, 10, 16, 30, 151645, 198, 151644, 77091, 198, 17]])

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="pip install 'tunelab[deepspeed]' (make setup-test installs it)")


def strategies():
    return [pytest.param(s, marks=[pytest.mark.slow, *([needs_deepspeed] if s.startswith("zero") else [])])
            for s in ("ddp", "fsdp", "zero2", "zero3")]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run(cmd: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(**extra), cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, batch 2 x 2 accumulation steps: the run every strategy must reproduce."""
    from tunelab.train.recipe import train

    root = tmp_path_factory.mktemp("one")
    for method in METHOD:
        train(C.load(QUICK, [*COMMON, *METHOD[method], "training.grad_accum=2", f"output.dir={root / method}"]))
    return root


def logits(path: Path, method: str) -> torch.Tensor:
    """The saved model, loaded with plain transformers (full) or peft (LoRA)."""
    from transformers import AutoModelForCausalLM

    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(path / "model")
    else:
        from peft import PeftModel

        from tunelab.models.load import resolve

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve("tiny-qwen3").path),
                                          path / "model")
    with torch.no_grad():
        return model.eval()(IDS).logits


def assert_same_run(one: Path, two: Path, method: str, strategy: str) -> dict:
    """Per-step losses, validation losses, weights and the reloaded model's logits within TOL."""
    for split in ("train", "val"):
        a, b = losses(one, split), losses(two, split)
        assert len(a) == len(b) == {"train": 3, "val": 2}[split], (split, a, b)
        assert max(abs(x - y) for x, y in zip(a, b)) <= TOL, (split, a, b)
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= TOL, worst
    a, b = logits(one, method), logits(two, method)
    assert (a - b).abs().max().item() <= TOL * max(1.0, a.abs().max().item())
    summary = json.loads((two / "summary.json").read_text())
    assert summary["strategy"] == strategy and summary["num_processes"] == 2
    peaks = summary["peak_mem_mb_per_process"]
    assert len(peaks) == 2 and summary["peak_mem_mb"] == max(peaks) > 0
    return summary


def assert_checkpoint_layout(step_dir: Path, strategy: str) -> None:
    names = {p.name for p in step_dir.iterdir()}
    assert {"trainable.safetensors", "scheduler.pt", "rng.pt", "rng-rank1.pt", "state.json"} <= names
    assert {"ddp": "optimizer.pt", "fsdp": "fsdp", "zero2": "deepspeed", "zero3": "deepspeed"}[strategy] in names
    saved = json.loads((step_dir / "state.json").read_text())
    assert (saved["strategy"], saved["num_processes"]) == (strategy, 2)


@pytest.mark.parametrize("strategy", strategies())
def test_full_fine_tuning_killed_and_resumed_equals_one_process(reference, tmp_path, strategy):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tunelab", "train", QUICK, *COMMON, *METHOD["full"], "training.grad_accum=1",
           f"output.dir={out}", "--nproc", "2", "--strategy", strategy]
    killed = run(cmd, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "killhook"),
                                                 os.environ.get("PYTHONPATH", "")]), TUNELAB_TEST_KILL_AT_STEP="2")
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert not (out / "model").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    assert_checkpoint_layout(out / "checkpoints" / "step-000002", strategy)
    if strategy == "fsdp":  # another number of processes cannot continue it, and trying changes nothing
        copy = tmp_path / "copy"
        shutil.copytree(out, copy)
        (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace(str(out), str(copy)))
        before = {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()}
        from tunelab.train.recipe import train

        with pytest.raises(UserError, match="written by 2 process.*fsdp.*this run has 1 under single"):
            train(C.load(copy / "config.yaml"), resume=True)
        assert {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()} == before
    resumed = run([*cmd, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_run(reference / "full", out, "full", strategy)
    assert_checkpoint_layout(out / "checkpoints" / "step-000003", strategy)


@pytest.mark.parametrize("strategy", strategies())
def test_lora_with_the_shipped_accelerate_config_equals_one_process(reference, tmp_path, strategy):
    out = tmp_path / "run"
    args = ["-m", "tunelab", "train", QUICK, *COMMON, *METHOD["lora"], "training.grad_accum=1", f"output.dir={out}"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "configs" / "accelerate" / SHIPPED[strategy]), "--num_processes", "2"]
    if strategy == "ddp":  # two "machines" of one process each, meeting at 127.0.0.1 (static rendezvous)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        nodes = [subprocess.Popen([*launch, "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                                   "--main_process_port", str(port), *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env(), cwd=REPO) for rank in (0, 1)]
        outputs = [node.communicate(timeout=600)[0] for node in nodes]
        assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    else:
        done = run([*launch, *args])
        assert done.returncode == 0, done.stderr[-3000:]
    summary = assert_same_run(reference / "lora", out, "lora", strategy)
    assert summary["method"] == "lora" and summary["trainable_params"] < summary["total_params"]


# ------------------------------------------------------------------------------------------------
# fast: what is decided before anything is launched


def test_a_missing_deepspeed_names_the_extra(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert main(["train", QUICK, *COMMON, f"output.dir={tmp_path / 'run'}", "--nproc", "2", "--strategy", "zero2"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'tunelab[deepspeed]'" in err and err.count("error:") == 1
    assert not (tmp_path / "run").exists()
    # the same under `accelerate launch` with a DeepSpeed config, before any process group starts
    from tunelab.train.distributed import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"tunelab\[deepspeed\]"):
        make_accelerator(mixed_precision="no", cpu=True, grad_accum=1)


def test_fsdp_version_1_is_refused(monkeypatch):
    from tunelab.train.distributed import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP version 2"):
        make_accelerator(mixed_precision="no", cpu=True, grad_accum=1)


def test_a_stale_deepspeed_build_lock_is_named(tmp_path, monkeypatch, capsys):
    from tunelab.train.distributed import warn_stale_op_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("RANK", raising=False)
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    assert warn_stale_op_lock() is None  # a build running now holds a fresh lock
    os.utime(lock, (lock.stat().st_atime, lock.stat().st_mtime - 3600))
    message = warn_stale_op_lock()
    assert str(lock) in message and "60 minutes old" in message and message in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert warn_stale_op_lock() is None  # said once, by rank 0
    assert lock.exists()  # torch's lock: named, not removed


def test_deepspeed_takes_batch_accumulation_and_clipping_from_tunelab():
    from tunelab.train.distributed import configure_deepspeed

    def accelerator(**ds):
        plugin = types.SimpleNamespace(deepspeed_config={"train_micro_batch_size_per_gpu": "auto",
                                                         "gradient_accumulation_steps": "auto", **ds})
        return types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=plugin), num_processes=2)

    acc = accelerator(gradient_clipping="auto")
    configure_deepspeed(acc, batch_size=4, grad_accum=3, max_grad_norm=1.0)
    assert acc.state.deepspeed_plugin.deepspeed_config == {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3, "train_batch_size": 24,
        "gradient_clipping": 1.0}
    configure_deepspeed(accelerator(gradient_accumulation_steps=3, gradient_clipping=1), batch_size=4, grad_accum=3,
                        max_grad_norm=1.0)  # the same values written out are fine
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps: 1 \(tunelab's training.grad_accum: 3\)"):
        configure_deepspeed(accelerator(gradient_accumulation_steps=1), batch_size=4, grad_accum=3, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match=r"optimizer \(tunelab builds it from optimizer\.\*\)"):
        configure_deepspeed(accelerator(optimizer={"type": "AdamW"}), batch_size=4, grad_accum=1, max_grad_norm=0)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
def test_generated_accelerate_configs_are_accelerates(tmp_path, strategy):
    """What --strategy writes is read by accelerate's own config loader as the strategy it names."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    from tunelab.train.distributed import accelerate_config

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(strategy, 2)))
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes == 2 and str(cfg.distributed_type).endswith(
        {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[strategy])
    if strategy.startswith("zero"):
        assert cfg.deepspeed_config["zero_stage"] == int(strategy[-1])
    shipped = yaml.safe_load((REPO / "configs" / "accelerate" / SHIPPED[strategy]).read_text())
    for block in ("fsdp_config", "deepspeed_config"):  # the shipped files say the same where it matters
        for key in ("fsdp_version", "zero_stage", "zero3_init_flag"):
            if key in shipped.get(block, {}) and key in accelerate_config(strategy, 2).get(block, {}):
                assert shipped[block][key] == accelerate_config(strategy, 2)[block][key], key

"""The training engine end to end on tiny-qwen3: invariances (accumulation, resume), every method trains
and reloads with plain transformers/peft, metrics and summary, bad input. Several processes (DDP, FSDP,
DeepSpeed) against one: test_distributed.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab import config as C
from tunelab.paths import OutputExistsError
from tunelab.errors import TrainingDiverged
from tunelab.train.recipe import train

BASE = ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=40", "data.max_length=256", "data.val_size=8",
        "data.dedup=exact", "method.name=full", "optimizer.name=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.0",
        "schedule.name=constant", "training.batch_size=4", "training.max_steps=3", "training.log_every=1",
        "training.eval_every=0", "training.save_every=0", "training.max_grad_norm=0"]


def cfg(tmp_path: Path, name: str, *over: str) -> C.Config:
    return C.load(None, [*BASE, f"output.dir={tmp_path / name}", *over])


def losses(run: Path, split: str = "train") -> list[float]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == split]


def weights(run: Path) -> dict[str, torch.Tensor]:
    files = sorted((run / "model").glob("*.safetensors"))
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def assert_same_weights(a: Path, b: Path, tol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= tol, worst


@pytest.mark.parametrize("packing", [False, True])
def test_accumulation_invariance(tmp_path, packing):
    """batch 8 x 1 step == batch 1 x 8 accumulation steps (weights within 1e-5, fp32)."""
    p = f"data.packing={str(packing).lower()}"
    a = cfg(tmp_path, "a", p, "training.batch_size=8", "training.grad_accum=1", "training.max_steps=2")
    b = cfg(tmp_path, "b", p, "training.batch_size=1", "training.grad_accum=8", "training.max_steps=2")
    train(a)
    train(b)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(la) == 2 and all(abs(x - y) < 1e-5 for x, y in zip(la, lb))
    assert_same_weights(tmp_path / "a", tmp_path / "b", 1e-5)


def test_resume_equals_uninterrupted_run(tmp_path):
    """LoRA with dropout and AdamW: the RNG, optimizer, scheduler and data position all matter."""
    over = ["method.name=lora", "method.lora_r=4", "method.lora_dropout=0.1", "optimizer.name=adamw",
            "optimizer.lr=1e-2", "schedule.name=cosine", "schedule.warmup_steps=1", "training.max_steps=6",
            "training.save_every=2", "training.eval_every=2", "training.batch_size=2"]
    full = cfg(tmp_path, "full", *over)
    train(full)

    def crash(step, state):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")

    part = cfg(tmp_path, "part", *over)
    with pytest.raises(KeyboardInterrupt):
        train(part, callbacks=(crash,))
    assert not (tmp_path / "part" / "model").exists()
    steps = sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir())
    assert steps == ["step-000002", "step-000004"]
    train(part, resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    assert losses(tmp_path / "part", "val") == losses(tmp_path / "full", "val")
    assert_same_weights(tmp_path / "part", tmp_path / "full", 0.0)


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "lora_plus", "dora", "qlora"])
def test_each_method_trains_and_reloads_with_plain_libraries(tmp_path, method):
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_model, resolve
    from tunelab.train.methods import apply_method

    def base_logits(x):
        with torch.no_grad():
            return load_model("tiny-qwen3").eval()(x).logits

    over = [f"method.name={method}", "method.lora_r=4", "method.freeze_trainable_layers=1", "optimizer.name=adamw",
            "optimizer.lr=1e-2", "training.max_steps=2", "training.batch_size=2"]
    summary = train(cfg(tmp_path, "run", *over))
    run = tmp_path / "run"
    assert summary["method"] == method and 0 < summary["trainable_params"] <= summary["total_params"]
    meta = json.loads((run / "model" / "tunelab.json").read_text())
    assert meta["base_model"] == "tiny-qwen3" and meta["method"] == method
    ids = torch.tensor([[151644, 872, 198, 16, 10, 16, 30, 151645]])
    trained = load_file(str(run / "checkpoints" / "step-000002" / "trainable.safetensors"))
    if method in ("full", "freeze"):
        reloaded = AutoModelForCausalLM.from_pretrained(run / "model")  # plain transformers
        ref = load_model("tiny-qwen3")
        ref.load_state_dict({**ref.state_dict(), **trained})
        expected = ["model.layers.1.mlp.down_proj.weight"] if method == "freeze" else []
        assert all(k in trained for k in expected)
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve("tiny-qwen3").path)
        reloaded = PeftModel.from_pretrained(base, run / "model")  # plain peft
        ref = apply_method(load_model("tiny-qwen3"), method="dora" if method == "dora" else "lora", lora_r=4)
        params = dict(ref.named_parameters())
        for k, v in trained.items():
            with torch.no_grad():
                params[k].copy_(v)
    with torch.no_grad():
        a = reloaded.eval()(ids).logits
        b = ref.eval()(ids).logits
    # (for QLoRA both sides put the trained adapter on the fp32 base: the adapter file is what is checked)
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())
    assert (a - base_logits(ids)).abs().max().item() > 1e-6  # training changed the model
    tunelab_loaded = load_model(str(run))  # what eval/chat/serve use: the run directory itself
    if method == "qlora":  # the adapter goes back on the 4-bit base it was trained with
        assert any(type(p).__name__ == "Params4bit" for p in tunelab_loaded.parameters())
    else:
        with torch.no_grad():
            c = tunelab_loaded.eval()(ids).logits
        assert (c - a).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())


def test_metrics_summary_and_falling_loss(tmp_path):
    over = ["optimizer.name=adamw", "optimizer.lr=3e-3", "training.max_steps=12", "training.eval_every=6",
            "training.batch_size=4", "training.log_every=2", "training.save_every=6", "training.keep_last=1"]
    summary = train(cfg(tmp_path, "run", *over))
    run = tmp_path / "run"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in tr] == [2, 4, 6, 8, 10, 12]
    for key in ("step", "epoch", "split", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "peak_mem_mb", "elapsed_s"):
        assert key in tr[0]
    assert tr[-1]["loss"] < tr[0]["loss"] * 0.8  # it learns
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [6, 12] and all(r["loss"] > 0 for r in val)
    for key in ("method", "optimizer", "trainable_params", "total_params", "peak_mem_mb", "train_time_s",
                "epoch_times_s", "tokens_per_s", "final_train_loss", "final_val_loss"):
        assert key in summary
    assert summary["peak_mem_kind"] == "cpu_peak_rss" and summary["peak_mem_mb"] > 100
    assert summary["final_val_loss"] == val[-1]["loss"] and summary["steps"] == 12
    assert summary["tokens_per_s"] > 0 and len(summary["epoch_times_s"]) >= 1
    # keep_last=1 plus the best checkpoint by validation loss
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000012"]
    assert json.loads((run / "summary.json").read_text()) == summary
    assert C.load(run / "config.yaml").training.max_steps == 12
    assert list((run / "tensorboard").iterdir())


def test_no_validation_split(tmp_path):
    """data.val_size=0: every example trains, validation is skipped (datasets cannot reload an empty
    saved split, so the loader builds it in memory)."""
    summary = train(cfg(tmp_path, "run", "data.val_size=0", "training.eval_every=1"))
    run = tmp_path / "run"
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["examples_out"] == {"train": 40, "validation": 0}
    assert summary["final_val_loss"] is None and summary["steps"] == 3
    assert losses(run, "val") == [] and len(losses(run)) == 3 and (run / "model" / "tunelab.json").exists()


def test_nan_loss_stops_with_the_step(tmp_path):
    over = ["optimizer.lr=1e30", "training.max_steps=5", "training.save_every=1"]
    with pytest.raises(TrainingDiverged, match=r"at step \d; training stopped. Last good checkpoint: .*step-00000\d"):
        train(cfg(tmp_path, "run", *over))


def test_existing_output_is_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--resume.*--overwrite"):
        train(cfg(tmp_path, "run"))
    assert (tmp_path / "run" / "precious.txt").read_text() == "mine"


def test_pretraining_on_raw_text_from_scratch(tmp_path):
    text = tmp_path / "corpus.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"Line {i}: the quick brown fox jumps over {i} lazy dogs."})
                              for i in range(30)))
    summary = train(cfg(tmp_path, "run", "stage=pt", f"data.name={text}", "data.format=text",
                        "model.from_scratch=true", "training.max_steps=2"))
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    # every token is predicted except each example's first (nothing precedes it): the loss's own count
    n = sum(stats["examples_out"].values())
    assert stats["supervised_tokens"] == stats["tokens"] - n and summary["steps"] == 2

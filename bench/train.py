"""Training benchmark: tunelab against TRL's SFTTrainer and the padded-to-512 Trainer recipe.

    .venv/bin/python bench/train.py                      # CPU: SmolLM2-135M-Instruct, LoRA and full, ~28 min
    .venv/bin/python bench/train.py --tiny --out /tmp/b  # seconds-scale smoke run (tiny-qwen3), used by the test
    .venv/bin/python bench/train.py --gpu                # CUDA: random Qwen3-0.6B, bf16, length 2048, with MFU

What is measured, per (runner, method): supervised tokens per second over the timed optimizer steps
and the peak memory of the run (CPU: the child process's peak RSS; CUDA: torch.cuda.max_memory_allocated),
both read at the end of the last timed step. Every run is a fresh child process; the runners alternate
within each repeat and the table reports the median over repeats.

Runners
  tunelab       `tunelab.train.recipe.train(cfg)`, the real `tunelab train` path, with its defaults
                (packing into rows of --max-length, chunked loss on supervised positions only).
  tunelab_prev  the same with the defaults before issue 24's memory work: `training.cpu_allocator=torch`
                (torch's posix_memalign allocator, models/cpu_alloc.py) and
                `training.recompute_elementwise=false` (models/recompute.py): what they save and cost.
  tunelab_gc    the same with `training.gradient_checkpointing=true`, the memory-saving setting TRL's
                defaults switch on: the like-for-like memory comparison with trl_default.
  trl_default   `SFTTrainer` on a prompt-completion dataset with its defaults (gradient checkpointing
                on, completion-only loss) and only the shared settings below.
  trl_best      `SFTTrainer` with its fastest correct options here: padding_free=True (the micro-batch
                flattened into one row with restarting position ids), gradient checkpointing off. Its
                chunked ("fused LM head") loss is already on by default in TRL 1.16; liger-kernel is not
                installed, so `use_liger_kernel` is not an option here.
  hf_padded512  transformers `Trainer`, every example tokenized and padded to 512 tokens, labels -100 on
                the prompt and the padding, `default_data_collator` (the widespread tutorial recipe).

Identical inputs, and how they are made identical
  - The same GSM8K conversations and token ids (`workload.examples`); the parent checks that tunelab's
    prepared data equals them token for token and label for label.
  - The same example sets per micro-batch and per optimizer step: tunelab's own plan decides the
    order and grouping (`--batch` packed rows of `--max-length` tokens per micro-batch, x
    `--grad-accum` per step); the peers get exactly those examples per micro-batch through a batch
    sampler (their trainers' shuffling is thereby off). So all runners see the same supervised tokens
    in every step; `--batch` counts tunelab's packed rows, not examples (about 2.4 GSM8K examples fit
    a 512-token row with SmolLM2's template).
  - The same optimizer (torch AdamW, fused where supported, no weight decay), learning rate, constant
    schedule without warmup, gradient clipping at 1.0, LoRA (r 16, alpha 32, dropout 0, all linear
    layers), seed, steps and precision (fp32 on CPU; bf16 autocast over fp32 weights on CUDA; TRL's
    default bf16=True is therefore overridden on CPU). The loss is the mean over the supervised tokens
    of the whole accumulated step in every runner (transformers' `num_items_in_batch`).
  - Supervised tokens are counted one way for all: label positions != -100 after the shift
    (`workload.supervised`), checked against what each runner's batches really contained.
  - Step 1 is a warm-up and is not timed; steps 2..S+1 are (`--steps` S).
Before timing, one child computes each runner's loss on its own first micro-batch (same examples,
fp32, no grad) and the parent prints it next to tunelab's: the comparison is fair only if they agree.

Results go to `--out/train_cpu.json` (or `train_gpu.json`) with the machine, library versions and the
exact command (`harness.save`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import workload

RUNNERS = ("tunelab", "tunelab_prev", "tunelab_gc", "trl_default", "trl_best", "hf_padded512")
METHODS = ("lora", "full")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
PAD_TO = 512  # the tutorial recipe's fixed length
# GSM8K train: $TUNELAB_DATA when set (as tunelab finds data; bench/gpu_check.sh carries a copy), else ../shared/data
SHARED_DATA = Path(os.environ.get("TUNELAB_DATA") or harness.REPO.parent / "shared" / "data")
TOLERANCE = 1e-3  # relative difference allowed between a peer's first-batch loss and tunelab's
# Qwen3-0.6B's architecture (its config.json), built with random weights: nothing to download.
QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                 max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
RANDOM_ARCHS = {"qwen3-0.6b-random": QWEN3_06B}
# TRL's fastest correct settings here (see the docstring). padding_free without packing requires
# max_length=None; the plan only holds examples that fit --max-length.
TRL_BEST = {"padding_free": True, "max_length": None, "gradient_checkpointing": False}
# Dense bf16 peak of the GPUs we report MFU for (H200 has H100's compute with more memory).
# Rates measured on the 2-core CPU of BENCHMARKS.md (supervised tok/s, defaults), only to print an
# expected duration; tunelab_gc's are estimates.
CPU_SUP_RATE = {("tunelab", "lora"): 65, ("tunelab", "full"): 42, ("tunelab_prev", "lora"): 60,
                ("tunelab_prev", "full"): 40, ("tunelab_gc", "lora"): 50, ("tunelab_gc", "full"): 33,
                ("trl_default", "lora"): 37, ("trl_default", "full"): 26, ("trl_best", "lora"): 43,
                ("trl_best", "full"): 31, ("hf_padded512", "lora"): 23, ("hf_padded512", "full"): 18}
CHILD_OVERHEAD_S = 25  # interpreter + imports + model load + saving, per child


# ---------------------------------------------------------------------------------------------
# settings shared by parent and children


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.arg_parser(__doc__)
    p.add_argument("--model", default=None, help="tunelab model reference (default smollm2-135m-instruct; "
                   f"random-init names: {', '.join(RANDOM_ARCHS)})")
    p.add_argument("--examples", type=int, default=None, help="GSM8K train examples to load (default 64)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps, after 1 warm-up step (default 4)")
    p.add_argument("--batch", type=int, default=None, help="tunelab packed rows per micro-batch (default 1)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default 2)")
    p.add_argument("--max-length", type=int, default=None, help="max tokens per example / packed row (default 512)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats, median reported (default 2)")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--runners", default=",".join(RUNNERS))
    p.add_argument("--no-packing", action="store_true", help="tunelab without packing (length-grouped padding)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--tiny", action="store_true", help="tiny-qwen3, 10 examples, 1 timed step, 1 repeat (smoke test)")
    p.add_argument("--gpu", action="store_true", help="CUDA preset: random Qwen3-0.6B, bf16, length 2048")
    a = p.parse_args(argv)
    if a.tiny and a.gpu:
        p.error("--tiny and --gpu are different presets; pick one")
    preset = {"model": "smollm2-135m-instruct", "examples": 64, "steps": 4, "batch": 1, "grad_accum": 2,
              "max_length": 512, "repeats": 2, "device": "cpu"}
    if a.tiny:
        preset.update(model="tiny-qwen3", examples=16, steps=1, batch=1, grad_accum=2, repeats=1)
    if a.gpu:
        preset.update(model="qwen3-0.6b-random", examples=3000, steps=20, batch=2, grad_accum=4, max_length=2048,
                      repeats=3, device="cuda")
    harness.fill_defaults(a, preset)
    a.methods = [m for m in a.methods.split(",") if m]
    a.runners = [r for r in a.runners.split(",") if r]
    for name, got, known in (("--methods", a.methods, METHODS), ("--runners", a.runners, RUNNERS)):
        bad = [x for x in got if x not in known]
        if bad or not got:
            p.error(f"{name}: unknown {bad or 'empty'}; known: {', '.join(known)}")
    if "tunelab" not in a.runners:
        a.runners.insert(0, "tunelab")  # every ratio is tunelab / peer
    a.precision = "bf16" if a.device == "cuda" else "fp32"
    return a


def random_model_dir(name: str, seed: int) -> Path:
    """A model directory with a config (no weights) and the Qwen3 tokenizer, for random-init runs."""
    from transformers import AutoTokenizer, Qwen3Config

    from tunelab.models.builtin import ensure
    from tunelab.paths import home

    out = home() / "bench" / name
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(ensure("tiny-qwen3"))  # the real Qwen3 tokenizer and template
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(**RANDOM_ARCHS[name], bos_token_id=tok.pad_token_id, eos_token_id=im_end,
                         pad_token_id=tok.pad_token_id)
    tmp = out.parent / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def tunelab_config(s: dict[str, Any], run_dir: str | Path) -> Any:
    """The tunelab config of a run: tunelab's defaults plus only the shared settings."""
    from tunelab import config as C

    return C.from_dict({
        "model": {"name": s["model_dir"], "from_scratch": s["from_scratch"]},
        # val_size 1 (as in BENCHMARKS.md's results): the one held-out example is simply not in the plan,
        # and validation runs only after the timed steps
        "data": {"name": s["data"], "limit": s["examples"], "dedup": "none", "val_size": 1,
                 "max_length": s["max_length"], "packing": s["packing"]},
        "method": {"name": s["method"], "lora_r": LORA["r"], "lora_alpha": LORA["alpha"],
                   "lora_dropout": LORA["dropout"], "target_modules": ["all-linear"]},
        "optimizer": {"name": "adamw", "lr": s["lr"], "weight_decay": 0.0},
        "schedule": {"name": "constant", "warmup_steps": 0},
        "training": {"max_steps": s["steps"] + 1, "batch_size": s["batch"], "grad_accum": s["grad_accum"],
                     "precision": s["precision"], "seed": s["seed"], "max_grad_norm": 1.0, "log_every": 1,
                     "eval_every": 0, "save_every": 0,
                     "gradient_checkpointing": bool(s.get("gradient_checkpointing")),
                     **({"cpu_allocator": "torch", "recompute_elementwise": False} if s.get("previous") else {})},
        "output": {"dir": str(run_dir)},
    })


def peak_memory(device: str) -> tuple[float, str]:
    """What `tunelab train` reports as peak memory (CPU: peak RSS; CUDA: max allocated), for every runner."""
    import torch

    from tunelab.memory import peak_memory_mb

    mb, kind = peak_memory_mb(torch.device(device))
    return round(mb, 1), kind


def cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process. A high system share in the timed window means the
    run spent its time in the kernel (page faults): on shared VMs that comes and goes, so we record it."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# the plan: tunelab's own step plan, expressed as example indices of `workload.examples`


def tunelab_steps(s: dict[str, Any]) -> tuple[Any, Any, list]:
    """tunelab's tokenizer, prepared train split and epoch-0 step plan, exactly as fit() builds it on one
    process (loop.py: seed + epoch, drop_last only when distributed)."""
    from tunelab.data.prepare import prepare_from_config
    from tunelab.models.load import load_tokenizer
    from tunelab.train.loop import StepPlan

    tok = load_tokenizer(s["model_dir"])
    prepared = prepare_from_config(tunelab_config(s, "unused"), tok)  # the method plays no part
    train = prepared.load("train")
    plan = StepPlan([len(x) for x in train["input_ids"]], packing=s["packing"], max_length=s["max_length"],
                    batch_size=s["batch"], grad_accum=s["grad_accum"], world_size=1, seed=s["seed"])
    return tok, train, plan.epoch(0)


def build_plan(s: dict[str, Any]) -> dict[str, Any]:
    import torch

    tok, train, steps = tunelab_steps(s)
    exs = workload.examples(tok, s["data"], s["examples"])
    where: dict[tuple, list[int]] = {}
    for i, e in enumerate(exs):
        where.setdefault(tuple(e["ids"]), []).append(i)
    rows = []  # tunelab's prepared row -> workload example index
    for ids, labels in zip(train["input_ids"], train["labels"]):
        found = where.get(tuple(ids))
        if not found or exs[found[0]]["labels"] != labels:
            raise SystemExit("tunelab's prepared data differs from workload.examples: the inputs are not identical")
        rows.append(found.pop(0))
    need = s["steps"] + 1
    if len(steps) < need or any(len(st) != s["grad_accum"] for st in steps[:need]):
        per_step = len(exs) / max(1, len(steps))
        raise SystemExit(f"--examples {s['examples']} gives {len(steps)} full steps; {need} are needed "
                         f"(about {per_step:.0f} examples a step): raise --examples")
    micro = [[rows[i] for unit in mb for i in unit] for st in steps[:need] for mb in st]
    sup = [sum(workload.supervised(torch.tensor([exs[i]["labels"]])) for i in mb) for mb in micro]
    toks = [sum(len(exs[i]["ids"]) for i in mb) for mb in micro]
    return {"micro": micro, "sup": sup, "tokens": toks, "prepared_rows": len(train), "examples_loaded": len(exs),
            "longest": max(len(exs[i]["ids"]) for mb in micro for i in mb)}


# ---------------------------------------------------------------------------------------------
# children: tunelab


def tunelab_first_loss(s: dict[str, Any], method: str) -> dict[str, Any]:
    """tunelab's loss on the first micro-batch its own plan yields, with its own loss module."""
    import torch

    from tunelab.models.load import load_model
    from tunelab.models.loss import CausalLMLoss
    from tunelab.train.methods import apply_method
    from tunelab.train.objectives import build_objective

    tok, train, steps = tunelab_steps(s)
    batch = build_objective("sft", packing=s["packing"], pad_id=tok.pad_token_id).collate(train, steps[0][0])
    torch.manual_seed(s["seed"])
    model = load_model(s["model_dir"], from_scratch=s["from_scratch"], seed=s["seed"])
    model = apply_method(model, method=method, lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                         lora_dropout=LORA["dropout"], target_modules=["all-linear"])
    module = CausalLMLoss(model).to(s["device"]).train()
    with torch.no_grad():
        loss_sum, n = module(**{k: v.to(s["device"]) for k, v in batch.items()})
    return {"loss": (loss_sum / n).item(), "supervised": workload.supervised(batch["labels"]),
            "layout": f"{tuple(batch['input_ids'].shape)} packed" if s["packing"] else "padded"}


def tunelab_time(s: dict[str, Any]) -> dict[str, Any]:
    from tunelab.train.recipe import train

    total = s["steps"] + 1
    seen: dict[str, Any] = {"losses": []}

    def clock(step: int, state: Any) -> None:
        sync(s["device"])
        now = time.perf_counter()
        seen["losses"].append(state.last_train_loss)
        if step == 1:
            seen.update(t0=now, cpu0=cpu_times(), sup0=state.supervised_tokens)
        if step == total:
            seen.update(t1=now, cpu1=cpu_times(), sup1=state.supervised_tokens, peak=peak_memory(s["device"]))

    run_dir = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        summary = train(tunelab_config(s, run_dir), overwrite=True, callbacks=(clock,))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {**window(seen), "sup_seen": seen["sup1"] - seen["sup0"], "peak_mb": seen["peak"][0],
            "peak_kind": seen["peak"][1], "step_losses": seen["losses"], "params": summary["total_params"]}


def window(seen: dict[str, Any]) -> dict[str, float]:
    return {"seconds": seen["t1"] - seen["t0"], "user_s": round(seen["cpu1"][0] - seen["cpu0"][0], 2),
            "sys_s": round(seen["cpu1"][1] - seen["cpu0"][1], 2)}


# ---------------------------------------------------------------------------------------------
# children: peers


def peer_trainer(s: dict[str, Any], runner: str, method: str, out_dir: str) -> tuple[Any, list[dict], list[int]]:
    """The peer's trainer, built as its users build it plus the shared settings; and the examples."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments,
                              default_data_collator)

    tok = AutoTokenizer.from_pretrained(s["model_dir"])
    exs = workload.examples(tok, s["data"], s["examples"])
    torch.manual_seed(s["seed"])
    if s["from_scratch"]:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(s["model_dir"]), dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(s["model_dir"], dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear")
    shared = dict(output_dir=out_dir, max_steps=s["steps"] + 1, per_device_train_batch_size=s["batch"],
                  gradient_accumulation_steps=s["grad_accum"], learning_rate=s["lr"], lr_scheduler_type="constant",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=s["seed"], data_seed=s["seed"],
                  bf16=s["precision"] == "bf16", fp16=False, use_cpu=s["device"] == "cpu",
                  logging_steps=1, save_strategy="no", report_to="none")
    counts: list[int] = []

    class Planned:
        """Feeds the trainer tunelab's micro-batches in tunelab's order, and counts what it collates."""

        def get_train_dataloader(self):
            ds = self._remove_unused_columns(self.train_dataset, description="Training")

            def collate(rows):
                batch = self.data_collator(rows)
                counts.append(workload.supervised(batch["labels"]))
                return batch

            return self.accelerator.prepare(DataLoader(ds, batch_sampler=s["micro"], collate_fn=collate))

    if runner == "hf_padded512":
        width = max(PAD_TO, max(len(e["ids"]) for e in exs))  # never truncates a supervised token

        def tokenize(ex):
            enc = tok(ex["prompt"] + ex["completion"], max_length=width, padding="max_length", truncation=True)
            n_prompt = len(tok(ex["prompt"])["input_ids"])
            enc["labels"] = [t if i >= n_prompt and m else -100
                             for i, (t, m) in enumerate(zip(enc["input_ids"], enc["attention_mask"]))]
            return enc

        ds = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in exs])
        ds = ds.map(tokenize, remove_columns=["prompt", "completion"])
        if method == "lora":
            model = get_peft_model(model, lora)
        cls = type("PlannedTrainer", (Planned, Trainer), {})
        trainer = cls(model=model, args=TrainingArguments(**shared), train_dataset=ds,
                      data_collator=default_data_collator)
    else:
        from trl import SFTConfig, SFTTrainer

        if runner == "trl_default":
            args = SFTConfig(**shared, max_length=s["max_length"])
        else:
            args = SFTConfig(**shared, **TRL_BEST)
        ds = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in exs])
        cls = type("PlannedSFTTrainer", (Planned, SFTTrainer), {})
        trainer = cls(model=model, args=args, train_dataset=ds, processing_class=tok,
                      peft_config=lora if method == "lora" else None)
    if len(trainer.train_dataset) != len(exs):
        raise RuntimeError(f"{runner} dropped examples ({len(trainer.train_dataset)} of {len(exs)})")
    return trainer, exs, counts


def data_matches(trainer: Any, exs: list[dict]) -> str:
    """How many of the peer's tokenized rows equal tunelab's ids and supervised labels (the peers end at
    `<|im_end|>`, tunelab also has the template's unsupervised trailing newline)."""
    good = 0
    for row, ex in zip(trainer.train_dataset, exs):
        n = sum(row["attention_mask"]) if "attention_mask" in row else len(row["input_ids"])
        ids, labels = list(row["input_ids"][:n]), list(row["labels"][:n])
        tail_ok = all(x == -100 for x in ex["labels"][n:])
        good += ids == ex["ids"][:n] and labels[1:] == ex["labels"][1:n] and tail_ok and len(ex["ids"]) - n <= 1
    return f"{good}/{len(exs)}"


def peer_first_loss(s: dict[str, Any], runner: str, method: str) -> dict[str, Any]:
    """The peer's own loss (its compute_loss, its collator) on the first micro-batch it would train on."""
    import torch

    with tempfile.TemporaryDirectory() as out:
        trainer, exs, _ = peer_trainer(s, runner, method, out)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        sup = workload.supervised(batch["labels"])
        layout = f"{tuple(batch['input_ids'].shape)} " + ("padding-free" if "position_ids" in batch else "padded")
        trainer.model.train()
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch).item()
        return {"loss": loss, "supervised": sup, "layout": layout, "data_match": data_matches(trainer, exs)}


def peer_time(s: dict[str, Any]) -> dict[str, Any]:
    from transformers import TrainerCallback

    total = s["steps"] + 1
    seen: dict[str, Any] = {"losses": []}

    class Clock(TrainerCallback):
        # on_step_end comes right after the optimizer step, before logging: the same point as tunelab's callback
        def on_step_end(self, args, state, control, **kwargs):
            sync(s["device"])
            now = time.perf_counter()
            if state.global_step == 1:
                seen.update(t0=now, cpu0=cpu_times())
            if state.global_step == total:
                seen.update(t1=now, cpu1=cpu_times(), peak=peak_memory(s["device"]))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                seen["losses"].append(logs["loss"])

    with tempfile.TemporaryDirectory() as out:
        trainer, _, counts = peer_trainer(s, s["runner"], s["method"], out)
        trainer.add_callback(Clock())
        trainer.train()
    a = s["grad_accum"]
    return {**window(seen), "sup_seen": sum(counts[a:total * a]),
            "counts_match_plan": counts[: total * a] == s["sup"], "peak_mb": seen["peak"][0],
            "peak_kind": seen["peak"][1], "step_losses": seen["losses"]}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["mode"] == "check":
        out = {}
        for method in spec["methods"]:
            for runner in spec["runners"]:
                one = (tunelab_first_loss(spec, method) if runner.startswith("tunelab")
                       else peer_first_loss(spec, runner, method))
                out[f"{runner}/{method}"] = one
                print(f"[check] {runner}/{method}: {one}", flush=True)
        return out
    if spec["runner"].startswith("tunelab"):
        return tunelab_time({**spec, "gradient_checkpointing": spec["runner"] == "tunelab_gc",
                             "previous": spec["runner"] == "tunelab_prev"})
    return peer_time(spec)


# ---------------------------------------------------------------------------------------------
# parent


def flops_per_token(model_dir: Path, params: int, seq: int) -> float:
    from tunelab.models.flops import flops_per_token as per_token

    return per_token(json.loads((model_dir / "config.json").read_text()), params, seq)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.child:
        harness.emit(child(json.loads(a.child)))
        return 0
    if not (SHARED_DATA / "gsm8k_train.jsonl").is_file():
        print(f"missing {SHARED_DATA / 'gsm8k_train.jsonl'}", file=sys.stderr)
        return 2
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda / --gpu: no CUDA GPU here", file=sys.stderr)
        return 2
    from tunelab.models.load import resolve

    from_scratch = a.model in RANDOM_ARCHS
    model_dir = random_model_dir(a.model, a.seed) if from_scratch else Path(resolve(a.model).path)
    spec: dict[str, Any] = {
        "model": a.model, "model_dir": str(model_dir), "from_scratch": from_scratch,
        "data": str(SHARED_DATA / "gsm8k_train.jsonl"), "examples": a.examples, "max_length": a.max_length,
        "packing": not a.no_packing, "batch": a.batch, "grad_accum": a.grad_accum, "steps": a.steps, "lr": a.lr,
        "seed": a.seed, "device": a.device, "precision": a.precision, "method": "lora",
    }
    plan = build_plan(spec)
    spec.update(micro=plan["micro"], sup=plan["sup"])
    acc = a.grad_accum
    timed = slice(acc, (a.steps + 1) * acc)
    sup_timed, tok_timed = sum(plan["sup"][timed]), sum(plan["tokens"][timed])
    n_ex = [len(m) for m in plan["micro"]]
    print(f"# tunelab vs peers, training: {a.model} on GSM8K, {a.device} {a.precision}, "
          f"{plan['prepared_rows']} examples prepared, max length {a.max_length}")
    print(f"# {a.steps} timed steps + 1 warm-up, {acc} micro-batches a step of {a.batch} packed row(s) "
          f"= {min(n_ex)}-{max(n_ex)} examples each; timed: {tok_timed} tokens, {sup_timed} supervised")
    padded_timed = PAD_TO * sum(n_ex[timed])  # what hf_padded512 computes on in the timed steps (max length <= 512)
    if a.max_length <= PAD_TO and "hf_padded512" in a.runners:
        print(f"# hf_padded512 computes on {padded_timed} tokens for those {tok_timed} ({padded_timed / tok_timed:.2f}x)")
    print(f"# lr {a.lr}, constant, AdamW, LoRA r {LORA['r']} alpha {LORA['alpha']} all-linear, "
          f"seed {a.seed}, {a.repeats} repeat(s), runners {', '.join(a.runners)}")
    env = {"CUDA_VISIBLE_DEVICES": ""} if a.device == "cpu" else {}
    if a.device == "cpu":
        total = len(a.methods) * (1 + a.repeats * len(a.runners)) * CHILD_OVERHEAD_S
        for r in a.runners:
            for m in a.methods:
                total += a.repeats * (a.steps + 1) / a.steps * sup_timed / CPU_SUP_RATE[r, m]
        print(f"# expected duration on a 2-core CPU: about {total / 60:.0f} min (rough)")
    t_start = time.perf_counter()

    # 1. the fairness check: every runner's loss on the same first micro-batch
    check = harness.run_child(Path(__file__), {**spec, "run": "check", "mode": "check", "methods": a.methods,
                                               "runners": a.runners}, env=env)
    check_rows = []
    for m in a.methods:
        ref = check[f"tunelab/{m}"]
        for r in a.runners:
            c = check[f"{r}/{m}"]
            diff = abs(c["loss"] - ref["loss"])
            ok = diff <= TOLERANCE * abs(ref["loss"]) and c["supervised"] == plan["sup"][0]
            n = plan["prepared_rows"]
            check_rows.append({"runner": r, "method": m, "loss": f"{c['loss']:.6f}", "tunelab loss": f"{ref['loss']:.6f}",
                               "abs diff": f"{diff:.1e}", "sup tokens": c["supervised"], "batch layout": c["layout"],
                               "data = tunelab": c.get("data_match", f"{n}/{n}"), "OK": "yes" if ok else "NO"})
    print("\n## Loss on the same first micro-batch (mean over its supervised tokens, fp32, no grad)\n")
    print(harness.table(check_rows, ["runner", "method", "loss", "tunelab loss", "abs diff", "sup tokens",
                                     "batch layout", "data = tunelab", "OK"]))
    print(f"\n(OK: relative difference <= {TOLERANCE:g} and the same {plan['sup'][0]} supervised tokens)\n")

    # 2. timing: fresh process per run, runners alternating within each repeat
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(a.repeats):
        for m in a.methods:
            for r in a.runners:
                res = harness.run_child(Path(__file__), {**spec, "run": f"{r}/{m}#{rep}", "mode": "time",
                                                         "runner": r, "method": m}, env=env)
                res["sup_tok_s"] = round(sup_timed / res["seconds"], 2)
                res["tok_s"] = round(tok_timed / res["seconds"], 2)
                runs.setdefault((r, m), []).append(res)
                print(f"[{rep + 1}/{a.repeats}] {r:13s} {m:5s} {res['sup_tok_s']:9.1f} sup tok/s  "
                      f"{res['peak_mb']:9.1f} MB  ({res['seconds']:.1f} s timed, kernel time "
                      f"{res['sys_s'] / res['seconds']:.0%} of it, {res['process_wall_s']:.0f} s process)", flush=True)

    # 3. medians, ratios, table
    from tunelab.models.flops import mfu, peak_flops as gpu_peak

    peak_flops = gpu_peak(torch.cuda.get_device_name(0)) if a.device == "cuda" else None
    rows = []
    for m in a.methods:
        base = None
        for r in a.runners:
            rs = runs[(r, m)]
            row = {"runner": r, "method": m, "sup tok/s": statistics.median(x["sup_tok_s"] for x in rs),
                   "tok/s": statistics.median(x["tok_s"] for x in rs),
                   "peak MB": statistics.median(x["peak_mb"] for x in rs),
                   "loss 1st/last step": "/".join(f"{x:.4f}" for x in (rs[0]["step_losses"][0], rs[0]["step_losses"][-1])),
                   "sup tokens ok": all(x["sup_seen"] == sup_timed and x.get("counts_match_plan", True) for x in rs)}
            if r == "tunelab":
                base = row
                fpt = flops_per_token(model_dir, rs[0]["params"], a.max_length)
            row["speed tunelab/x"] = harness.ratio(base["sup tok/s"], row["sup tok/s"])
            row["memory tunelab/x"] = harness.ratio(base["peak MB"], row["peak MB"])
            if a.device == "cuda":
                row["MFU"] = mfu(row["tok/s"], fpt, peak_flops)
            rows.append(row)
    cols = ["runner", "method", "sup tok/s", "peak MB", "speed tunelab/x", "memory tunelab/x"]
    cols += ["tok/s", "MFU"] if a.device == "cuda" else []
    cols += ["loss 1st/last step"]
    kind = runs[(a.runners[0], a.methods[0])][0]["peak_kind"]
    print(f"\n## Training throughput (median of {a.repeats}), peak memory = {kind}\n")
    print(harness.table(rows, cols))
    targets = {"trl_default": ("speed >= 1.3x", 1.3), "trl_best": ("speed >= 1.0x", 1.0),
               "hf_padded512": ("speed >= 3x", 3.0)} if a.device == "cpu" else {}
    verdicts = []
    for row in rows:
        if row["runner"] in targets:
            label, need = targets[row["runner"]]
            verdicts.append(f"{row['method']}: vs {row['runner']} {label}: {row['speed tunelab/x']} "
                            f"{'met' if (row['speed tunelab/x'] or 0) >= need else 'NOT met'}")
        if row["runner"] == "trl_default" and a.device == "cpu":
            mem = row["memory tunelab/x"]
            verdicts.append(f"{row['method']}: vs trl_default memory <= 0.8x: {mem} "
                            f"{'met' if mem is not None and mem <= 0.8 else 'NOT met'}")
    for m in a.methods if a.device == "cpu" else ():
        # like for like: gradient checkpointing on both sides (TRL's default), so memory and speed with it
        by = {r["runner"]: r for r in rows if r["method"] == m}
        if "tunelab_prev" in by:  # the defaults against the defaults before issue 24 (memory, speed)
            prev = by["tunelab_prev"]
            mem = harness.ratio(by["tunelab"]["peak MB"], prev["peak MB"])
            speed = harness.ratio(by["tunelab"]["sup tok/s"], prev["sup tok/s"])
            verdicts.append(f"{m}: tunelab vs tunelab_prev (the defaults before issue 24): memory {mem}x, "
                            f"speed {speed}x")
        if "tunelab_gc" in by and "trl_default" in by:
            gc, trl = by["tunelab_gc"], by["trl_default"]
            mem, speed = harness.ratio(gc["peak MB"], trl["peak MB"]), harness.ratio(gc["sup tok/s"], trl["sup tok/s"])
            verdicts.append(f"{m}: tunelab_gc vs trl_default (both checkpointing) memory <= 0.8x: {mem} "
                            f"{'met' if mem is not None and mem <= 0.8 else 'NOT met'}, speed {speed}x")
    if verdicts:
        print("\nTargets (CPU):\n  " + "\n  ".join(verdicts))
    bad_counts = [r for r in rows if not r["sup tokens ok"]]
    if bad_counts:
        print("WARNING: supervised tokens seen differ from the plan for: "
              + ", ".join(f"{r['runner']}/{r['method']}" for r in bad_counts))
    wall = time.perf_counter() - t_start
    print(f"\n(total {wall / 60:.1f} min)")

    payload = {
        "settings": {k: v for k, v in spec.items() if k not in ("micro", "sup", "method")} | {
            "repeats": a.repeats, "methods": a.methods, "runners": a.runners, "lora": LORA,
            "timed_supervised_tokens": sup_timed, "timed_tokens": tok_timed,
            "timed_tokens_padded_to_512": padded_timed if a.max_length <= PAD_TO else None, "micro_batches": plan["micro"],
            "micro_batch_supervised_tokens": plan["sup"], "pad_to": PAD_TO,
            "flops_per_token": fpt if a.device == "cuda" else None, "bf16_peak_flops": peak_flops},
        "loss_check": check_rows,
        "loss_check_passed": all(r["OK"] == "yes" for r in check_rows),
        "results": rows,
        "runs": {f"{r}/{m}": v for (r, m), v in runs.items()},
        "targets": verdicts,
        "wall_s": round(wall, 1),
    }
    path = harness.save("train_gpu" if a.device == "cuda" else "train_cpu", payload, a.out)
    print(f"results: {path}")
    return 0 if payload["loss_check_passed"] and not bad_counts else 1


if __name__ == "__main__":
    sys.exit(main())

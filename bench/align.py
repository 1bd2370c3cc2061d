"""Alignment benchmark: tunelab `stage: dpo` and `stage: grpo` against TRL 1.16's DPOTrainer and GRPOTrainer.

    .venv/bin/python bench/align.py                      # CPU: SmolLM2-135M-Instruct, ~15-20 min on 2 cores
    .venv/bin/python bench/align.py --parts dpo          # only the DPO half
    .venv/bin/python bench/align.py --tiny --out /tmp/b  # seconds-scale smoke run (tiny-qwen3), used by the test

DPO (LoRA and full fine-tuning, CPU fp32): preference pairs per second and peak memory (the child
process's VmHWM, as `tunelab train` reports it), read at the end of the last timed optimizer step.
  tunelab       `tunelab.train.recipe.train(cfg)` with `stage: dpo` and its defaults (sigmoid loss; the
                reference log-probs computed once before training by the model as loaded and cached,
                for LoRA and full fine-tuning alike; that pass is not in the timed steps, as TRL's
                precompute pass is not for trl_best).
  trl_default   `DPOTrainer` with its defaults plus the shared settings below (gradient checkpointing
                on; a second model loaded as the reference for full fine-tuning).
  trl_best      `DPOTrainer` with its fastest options here: `precompute_ref_log_probs=True` (no reference
                forward pass during training, for LoRA too) and gradient checkpointing off. TRL 1.16's
                `padding_free` is "temporarily unavailable" (it warns and falls back to padding), so it
                is not used; liger-kernel is not installed.
  And under bf16 autocast on both sides (their step-2 losses are not compared with the fp32 runners'):
  tunelab_amp   tunelab with `training.precision: bf16`.
  trl_bf16      trl_best with `bf16=True` (TRL's fastest on this AMX CPU).
  The verdicts: each tunelab runner against each TRL runner, and the fastest of each side.
Identical inputs: the same pairs (`arith_pairs` when that built-in set is installed, else pairs built
from GSM8K train: chosen = the problem's reference solution, rejected = the reference solution of the
next problem, i.e. a fluent but wrong answer), rendered by tunelab's renderer (the tokenizer's chat
template); the parent checks that TRL's tokenized rows equal tunelab's ids with the same reply mask.
The same pairs per micro-batch and per step (tunelab's own step plan, fed to TRL through a batch
sampler), the same optimizer (torch AdamW, no weight decay), learning rate, constant schedule, clipping
at 1.0, LoRA (r 16, alpha 32, dropout 0, all linear layers), beta and seed. Step 1 is a warm-up; steps
2..S+1 are timed. Before timing, one child computes each runner's DPO loss on its first micro-batch
(policy = reference, so log 2 for every runner); after the timed runs the parent compares every
runner's step-2 loss and reward margin (after one identical update) with tunelab's.

GRPO (LoRA by default; `--grpo-methods lora,full`): completions per second and wall time per step of
  tunelab       `stage: grpo` on `arith_en` prompts (rendered as `tunelab eval` renders them), reward
                `correct` (train/rewards.py: the evaluation grader).
  tunelab_bf16  the same with `objective.rollout_dtype: bfloat16` (rollouts from a merged bf16 copy of the
                policy, refreshed each step, the loss importance-corrected; the refresh is timed as rollout).
  trl_default   `GRPOTrainer` with its defaults (gradient checkpointing on, no vLLM) and the same reward
                function (tunelab's `correct`, called from a TRL-signature wrapper).
  trl_best      the same with gradient checkpointing off.
  tunelab_amp   tunelab_bf16 plus `training.precision: bf16` (the training forward and backward under
                bf16 autocast, weights and optimizer fp32).
  trl_bf16      trl_best plus `bf16=True` (TRL's mixed precision: autocast in training and generation).
                On a CPU that multiplies bf16 fast (AMX) this is TRL's fastest here, faster than trl_best.
The verdicts: each tunelab runner against each TRL runner, and the fastest of each side's runners.
Shared: the same prompt ids (checked in each child against what TRL tokenized), the same prompts per
step in the same order (tunelab's plan; TRL's `shuffle_dataset=False` over a dataset in that order),
num_generations G, max completion length, temperature 1.0, top_p 1.0, loss `dapo`, epsilon 0.2,
beta (KL) 0, one optimisation pass per generation. Both sample, so the completions differ: the table
shows completions/s, generated tokens/s and the mean completion length of each runner, and the time
spent generating, so a speed difference that is only a length difference shows.

Results go to `--out/align_cpu.json` (`harness.save`: machine, library versions, exact command).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import workload

RUNNERS = ("tunelab", "trl_default", "trl_best")
# GRPO also runs tunelab with its rollouts sampled from a bfloat16 copy (objective.rollout_dtype=bfloat16)
GRPO_RUNNERS = ("tunelab", "tunelab_bf16", "tunelab_amp", "trl_default", "trl_best", "trl_bf16")
METHODS = ("lora", "full")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
GSM8K = harness.REPO.parent / "shared" / "data" / "gsm8k_train.jsonl"
BF16 = ("tunelab_amp", "trl_bf16")  # runners under bf16 autocast
DPO_RUNNERS = ("tunelab", "tunelab_amp", "trl_default", "trl_best", "trl_bf16")  # RUNNERS: the fp32 loss check
LOSS_TOL = 1e-4  # relative difference allowed between a runner's DPO loss and tunelab's (fp32)
STEP2_TOL = 2e-2  # after one AdamW update, different kernels (fused head, padding) drift a little
DEFAULTS = dict(model="smollm2-135m-instruct", parts="dpo,grpo", methods="lora,full", grpo_methods="lora",
                steps=2, dpo_batch=2, dpo_accum=1, max_length=512, grpo_batch=2, grpo_accum=1,
                generations=4, max_new_tokens=64, repeats=1)
TINY = dict(model="tiny-qwen3", parts="dpo,grpo", methods="lora,full", grpo_methods="lora", steps=1,
            dpo_batch=1, dpo_accum=2, max_length=512, grpo_batch=1, grpo_accum=2, generations=2,
            max_new_tokens=8, repeats=1)
TARGETS = {"dpo": ("pairs/s >= 1.5x and peak memory <= 0.8x", 1.5, 0.8), "grpo": ("completions/s >= 2x", 2.0, None)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.arg_parser(__doc__)
    p.add_argument("--model", default=None, help="tunelab model reference (default smollm2-135m-instruct)")
    p.add_argument("--parts", default=None, help="dpo,grpo (default both)")
    p.add_argument("--methods", default=None, help="DPO methods (default lora,full)")
    p.add_argument("--grpo-methods", default=None, help="GRPO methods (default lora)")
    p.add_argument("--dpo-runners", default=",".join(DPO_RUNNERS),
                   help="DPO runners, tunelab first (default: all, %(default)s)")
    p.add_argument("--grpo-runners", default=",".join(GRPO_RUNNERS),
                   help="GRPO runners, the first the base of the tok/s ratio (default: all, %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps, after 1 warm-up step (default 2)")
    p.add_argument("--dpo-batch", type=int, default=None, help="pairs per micro-batch (default 2)")
    p.add_argument("--dpo-accum", type=int, default=None, help="DPO micro-batches per step (default 1)")
    p.add_argument("--max-length", type=int, default=None, help="max tokens of a DPO row / GRPO prompt+completion")
    p.add_argument("--grpo-batch", type=int, default=None, help="prompts per GRPO micro-batch (default 2)")
    p.add_argument("--grpo-accum", type=int, default=None, help="GRPO micro-batches per step (default 1)")
    p.add_argument("--generations", type=int, default=None, help="GRPO completions per prompt, G (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="GRPO max completion length (default 64)")
    p.add_argument("--pairs", choices=("auto", "arith_pairs", "gsm8k"), default="auto",
                   help="preference set: arith_pairs if installed (auto), or pairs built from GSM8K train")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats, median reported (default 1)")
    p.add_argument("--tiny", action="store_true", help="tiny-qwen3, 1 timed step, short completions (smoke test)")
    a = p.parse_args(argv)
    harness.fill_defaults(a, TINY if a.tiny else DEFAULTS)
    for key, known in (("parts", ("dpo", "grpo")), ("methods", METHODS), ("grpo_methods", METHODS),
                       ("grpo_runners", GRPO_RUNNERS), ("dpo_runners", DPO_RUNNERS)):
        got = [x for x in getattr(a, key).split(",") if x]
        if not got or any(x not in known for x in got):
            p.error(f"--{key.replace('_', '-')}: {got}; known: {', '.join(known)}")
        setattr(a, key, got)
    return a


# ---------------------------------------------------------------------------------------------
# shared pieces of the children


def common_config(s: dict[str, Any], method: str, run_dir: str | Path, batch: int, accum: int) -> dict[str, Any]:
    """The config sections every tunelab run here shares: tunelab's defaults plus the shared settings."""
    m = {"name": method}
    if method == "lora":
        m.update(lora_r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=["all-linear"])
    return {"model": {"name": s["model_dir"]}, "method": m,
            "optimizer": {"name": "adamw", "lr": s["lr"], "weight_decay": 0.0},
            "schedule": {"name": "constant", "warmup_steps": 0},
            "training": {"max_steps": s["steps"] + 1, "batch_size": batch, "grad_accum": accum, "precision": "fp32",
                         "seed": s["seed"], "max_grad_norm": 1.0, "log_every": 1, "eval_every": 0, "save_every": 0},
            "output": {"dir": str(run_dir)}}


def dpo_config(s: dict[str, Any], method: str, run_dir: str | Path) -> Any:
    from tunelab import config as C

    d = common_config(s, method, run_dir, s["dpo_batch"], s["dpo_accum"])
    if s.get("runner") == "tunelab_amp":
        d["training"]["precision"] = "bf16"
    return C.from_dict({**d, "stage": "dpo", "objective": {"loss": "sigmoid", "beta": s["beta"]},
                        "data": {"name": s["pairs_file"], "dedup": "none", "val_size": 0, "max_length": s["max_length"]}})


def grpo_config(s: dict[str, Any], method: str, run_dir: str | Path) -> Any:
    from tunelab import config as C

    d = common_config(s, method, run_dir, s["grpo_batch"], s["grpo_accum"])
    if s.get("runner") == "tunelab_amp":
        d["training"]["precision"] = "bf16"
    return C.from_dict({**d, "stage": "grpo", "data": {"name": "arith_en", "limit": s["limit"], "dedup": "none",
                                                       "max_length": s["max_length"]},
                        "objective": {"num_generations": s["generations"], "max_new_tokens": s["max_new_tokens"],
                                      "temperature": 1.0, "top_p": 1.0, "rewards": ["correct"], "loss_type": "dapo",
                                      "epsilon": 0.2, "kl_coef": 0.0,
                                      "rollout_dtype": "bfloat16" if s.get("runner") in ("tunelab_bf16", "tunelab_amp")
                                      else "model"}})


def peak_mb() -> float:
    import torch

    from tunelab.memory import peak_memory_mb

    return round(peak_memory_mb(torch.device("cpu"))[0], 1)


def no_dataset_hashing() -> None:
    """TRL's trainers `map` their dataset with the tokenizer as an argument; `datasets` fingerprints that
    by pickling the tokenizer (~15 s a map for Qwen3's). Setup only, outside every timed window; a random
    fingerprint changes nothing here (as in tests/train/test_alignment_parity.py)."""
    import datasets.arrow_dataset as ad
    from datasets.fingerprint import generate_random_fingerprint

    ad.update_fingerprint = lambda *a, **k: generate_random_fingerprint()


def trl_shared(s: dict[str, Any], out: str, batch: int, accum: int) -> dict[str, Any]:
    return dict(output_dir=out, max_steps=s["steps"] + 1, per_device_train_batch_size=batch,
                gradient_accumulation_steps=accum, learning_rate=s["lr"], lr_scheduler_type="constant",
                warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=s["seed"], data_seed=s["seed"],
                bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to="none")


def trl_model(s: dict[str, Any]) -> tuple[Any, Any, Any]:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(s["model_dir"])
    torch.manual_seed(s["seed"])
    model = AutoModelForCausalLM.from_pretrained(s["model_dir"], dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear")
    return tok, model, lora if s["method"] == "lora" else None


def timed(s: dict[str, Any], seen: dict[str, Any], step: int) -> None:
    """Called at the end of optimizer step `step` (1-based): the window opens after the warm-up step."""
    now = time.perf_counter()
    if step == 1:
        seen["t0"] = now
    if step == s["steps"] + 1:
        seen.update(t1=now, peak_mb=peak_mb())


# ---------------------------------------------------------------------------------------------
# DPO: the pairs and the plan


def pair_records(source: str, n: int) -> list[dict[str, Any]]:
    """n preference pairs as {prompt: messages, chosen: text, rejected: text}."""
    if source == "arith_pairs":
        from tunelab.data.sources import iter_records

        def text(reply: Any) -> str:  # a reply as text, or as TRL's list of one assistant message
            return reply if isinstance(reply, str) else reply[0]["content"]

        out = []
        for _, rec in iter_records("arith_pairs"):
            prompt = rec["prompt"] if isinstance(rec["prompt"], list) else [{"role": "user", "content": rec["prompt"]}]
            out.append({"prompt": prompt, "chosen": text(rec["chosen"]), "rejected": text(rec["rejected"])})
            if len(out) == n:
                break
        return out
    # GSM8K train, converted as `tunelab prepare` converts it (boxed instruction); the rejected reply is the
    # next problem's reference solution: fluent, well formatted, wrong for this problem
    convs = workload.conversations(str(GSM8K), n + 1)
    return [{"prompt": c["messages"][:-1], "chosen": c["messages"][-1]["content"],
             "rejected": convs[i + 1]["messages"][-1]["content"]} for i, c in enumerate(convs[:n])]


def pairs_source(choice: str) -> str:
    if choice != "auto":
        return choice
    from tunelab.data.sources import PACKAGE_DATA, data_dirs

    name = "arith_pairs_en.jsonl"
    return "arith_pairs" if any((d / name).is_file() for d in [PACKAGE_DATA, *data_dirs()]) else "gsm8k"


def rendered_pairs(tok: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pair as tunelab renders it (ids, labels per side) and as text for TRL (prompt, chosen, rejected)."""
    from tunelab.data.render import build_renderer

    r = build_renderer(tok, supervise="last_turn")
    out = []
    for rec in records:
        row: dict[str, Any] = {}
        for side in ("chosen", "rejected"):
            msgs = rec["prompt"] + [{"role": "assistant", "content": rec[side]}]
            row[f"{side}_ids"], row[f"{side}_labels"] = r.render(msgs)
            row["prompt"], row[side] = workload.prompt_completion(r, msgs)
        out.append(row)
    return out


def dpo_plan(s: dict[str, Any], method: str = "lora") -> dict[str, Any]:
    """tunelab's prepared pairs and its epoch-0 step plan, as record indices of the pairs file."""
    from tunelab.data.batching import pair_lengths
    from tunelab.data.prepare import prepare_from_config
    from tunelab.models.load import load_tokenizer
    from tunelab.train.loop import StepPlan

    tok = load_tokenizer(s["model_dir"])
    prepared = prepare_from_config(dpo_config(s, method, "unused"), tok)
    train = prepared.load("train")
    plan = StepPlan(pair_lengths(train), packing=False, max_length=s["max_length"], batch_size=s["dpo_batch"],
                    grad_accum=s["dpo_accum"], world_size=1, seed=s["seed"]).epoch(0)
    recs = [json.loads(l) for l in Path(s["pairs_file"]).read_text().splitlines() if l.strip()]
    mine = rendered_pairs(tok, recs)
    where = {(tuple(p["chosen_ids"]), tuple(p["rejected_ids"])): j for j, p in enumerate(mine)}
    rows = []  # prepared row -> record index
    for ex in train:
        j = where.get((tuple(ex["chosen_input_ids"]), tuple(ex["rejected_input_ids"])))
        if j is None or mine[j]["chosen_labels"] != ex["chosen_labels"] or mine[j]["rejected_labels"] != ex["rejected_labels"]:
            raise SystemExit("tunelab's prepared pairs differ from the rendered pairs file: inputs not identical")
        rows.append(j)
    return {"tok": tok, "prepared": prepared, "train": train, "plan": plan,
            "micro": [[rows[i] for u in mb for i in u] for st in plan for mb in st], "pairs": mine}


# ---------------------------------------------------------------------------------------------
# DPO children


class _Acc:  # what Metrics.read and with_reference_logps need of an accelerator, on one CPU process
    device, num_processes, mixed_precision, is_main_process, is_local_main_process = "cpu", 1, "no", True, True
    autocast = staticmethod(contextlib.nullcontext)


def tunelab_dpo_first(s: dict[str, Any], method: str) -> dict[str, Any]:
    """tunelab's loss and rewards on its first planned micro-batch, through its own objective module
    (with the cached reference log-probs the recipe computes, `with_reference_logps`)."""
    import torch

    from tunelab.models.load import identity, load_model
    from tunelab.train.dpo import STATS, Preference, reference_mode, with_reference_logps
    from tunelab.train.methods import apply_method

    p = dpo_plan(s, method)
    torch.manual_seed(s["seed"])
    model = apply_method(load_model(s["model_dir"]), method=method, lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                         lora_dropout=LORA["dropout"], target_modules=["all-linear"])
    obj = Preference(pad_id=p["tok"].pad_token_id, loss="sigmoid", beta=s["beta"],
                     reference=reference_mode("sigmoid", "auto"))
    train = p["train"]
    if obj.reference == "cached":
        train, _ = with_reference_logps(model, obj, p["prepared"], train, p["prepared"].load("validation"),
                                        model_id=identity(s["model_dir"]), accelerator=_Acc(),
                                        batch_size=s["dpo_batch"])
    batch = obj.collate(train, p["plan"][0][0])
    module = obj.wrap(model).train()
    with torch.no_grad():
        loss_sum, n = module(**batch)
    stats = obj.stats.read("train", _Acc(), STATS)
    return {"loss": (loss_sum / n).item(), "margin": stats["rewards/margins"], "pairs": int(n),
            "reference": obj.reference}


def trl_dpo_trainer(s: dict[str, Any], out: str) -> tuple[Any, list[list[int]]]:
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from trl import DPOConfig, DPOTrainer

    no_dataset_hashing()
    tok, model, lora = trl_model(s)
    kw = trl_shared(s, out, s["dpo_batch"], s["dpo_accum"])
    if s["runner"] in ("trl_best", "trl_bf16"):
        kw.update(precompute_ref_log_probs=True, gradient_checkpointing=False)
    kw["bf16"] = s["runner"] == "trl_bf16"
    args = DPOConfig(**kw, beta=s["beta"], max_length=s["max_length"])
    pairs = json.loads(Path(s["pairs_text"]).read_text())
    ds = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    seen: list[list[int]] = []

    class Planned(DPOTrainer):
        """tunelab's micro-batches, in tunelab's order; and which pairs each collated batch held."""

        def get_train_dataloader(self):
            data = self._remove_unused_columns(self.train_dataset, description="Training")

            def collate(idx):
                seen.append(idx)
                return self.data_collator([data[i] for i in idx])

            return self.accelerator.prepare(DataLoader(range(len(data)), batch_sampler=s["micro"], collate_fn=collate))

    trainer = Planned(model=model, ref_model=None, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    if len(trainer.train_dataset) != len(pairs):
        raise RuntimeError(f"TRL dropped pairs ({len(trainer.train_dataset)} of {len(pairs)})")
    return trainer, seen


def trl_data_match(trainer: Any, pairs: list[dict[str, Any]]) -> str:
    """How many of TRL's tokenized pairs equal tunelab's ids with the same reply mask (TRL's rows end at
    `<|im_end|>`; tunelab's also hold the template's unsupervised newline after it)."""
    good = 0
    for row, p in zip(trainer.train_dataset, pairs):
        ok = True
        for side in ("chosen", "rejected"):
            ids = list(row["prompt_ids"]) + list(row[f"{side}_ids"])
            mask = [0] * len(row["prompt_ids"]) + [1] * len(row[f"{side}_ids"])
            n = len(ids)
            ours, labels = p[f"{side}_ids"], p[f"{side}_labels"]
            ok &= (ids == ours[:n] and mask == [int(x != -100) for x in labels[:n]]
                   and len(ours) - n <= 1 and all(x == -100 for x in labels[n:]))
        good += ok
    return f"{good}/{len(pairs)}"


def trl_dpo_first(s: dict[str, Any]) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory() as out:
        trainer, _ = trl_dpo_trainer(s, out)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.model.train()
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch).item()
        m = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        pairs = json.loads(Path(s["pairs_text"]).read_text())
        return {"loss": loss, "margin": m["rewards/margins"], "pairs": int(batch["input_ids"].shape[0] // 2),
                "data_match": trl_data_match(trainer, pairs)}


def tunelab_dpo_time(s: dict[str, Any]) -> dict[str, Any]:
    from tunelab import rundir
    from tunelab.train.recipe import train

    seen: dict[str, Any] = {}
    run_dir = Path(tempfile.mkdtemp(prefix="bench_align_"))
    try:
        train(dpo_config(s, s["method"], run_dir), overwrite=True, callbacks=(lambda step, st: timed(s, seen, step),))
        logs = [json.loads(l) for l in (run_dir / rundir.METRICS).read_text().splitlines()]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rows = [r for r in logs if r.get("split") == "train"]
    return {"seconds": seen["t1"] - seen["t0"], "peak_mb": seen["peak_mb"], "step_losses": [r["loss"] for r in rows],
            "step_margins": [r["rewards/margins"] for r in rows], "micro_seen": s["micro"]}


def trl_dpo_time(s: dict[str, Any]) -> dict[str, Any]:
    from transformers import TrainerCallback

    seen: dict[str, Any] = {"losses": [], "margins": []}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # right after the optimizer step
            timed(s, seen, state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                seen["losses"].append(logs["loss"])
                seen["margins"].append(logs["rewards/margins"])

    with tempfile.TemporaryDirectory() as out:
        trainer, micro_seen = trl_dpo_trainer(s, out)
        trainer.add_callback(Clock())
        trainer.train()
    return {"seconds": seen["t1"] - seen["t0"], "peak_mb": seen["peak_mb"], "step_losses": seen["losses"],
            "step_margins": seen["margins"], "micro_seen": micro_seen}


# ---------------------------------------------------------------------------------------------
# GRPO: prompts, plan, children


def grpo_plan(s: dict[str, Any]) -> dict[str, Any]:
    """tunelab's prompts (prepare_prompts: arith_en rendered as evaluation renders it) and its plan's
    prompt order over the steps run."""
    from tunelab.models.load import load_tokenizer
    from tunelab.train.grpo import prepare_prompts
    from tunelab.train.loop import StepPlan

    tok = load_tokenizer(s["model_dir"])
    train = prepare_prompts(grpo_config(s, "lora", "unused"), tok).load("train")
    plan = StepPlan([len(p) + s["max_new_tokens"] for p in train["prompt_ids"]], packing=False,
                    max_length=s["max_length"], batch_size=s["grpo_batch"], grad_accum=s["grpo_accum"], world_size=1,
                    seed=s["seed"]).epoch(0)
    order = [i for st in plan[: s["steps"] + 1] for mb in st for u in mb for i in u]
    if len(order) < (s["steps"] + 1) * s["grpo_batch"] * s["grpo_accum"]:
        raise SystemExit(f"{len(train)} prompts give {len(plan)} steps; {s['steps'] + 1} are needed")
    prompts = [{"ids": train[i]["prompt_ids"], "text": tok.decode(train[i]["prompt_ids"]), "answer": train[i]["answer"]}
               for i in order]
    return {"prompts": prompts, "prompt_tokens": [len(p["ids"]) for p in prompts]}


def tunelab_grpo_time(s: dict[str, Any]) -> dict[str, Any]:
    from tunelab import rundir
    from tunelab.train import grpo
    from tunelab.train.recipe import train

    seen: dict[str, Any] = {"rollouts": [], "prompt_ids": []}
    rollout = grpo.GRPO.rollout

    def timed_rollout(self, prompts):  # the rollout of step self.step (0-based), with its wall time
        t0 = time.perf_counter()
        out = rollout(self, prompts)
        seen["rollouts"].append({"step": self.step, "seconds": time.perf_counter() - t0, "completions": len(out),
                                 "tokens": sum(len(r[2]) for r in out)})
        seen["prompt_ids"] += [p for p in prompts for _ in range(self.G)]
        return out

    grpo.GRPO.rollout = timed_rollout
    run_dir = Path(tempfile.mkdtemp(prefix="bench_align_"))
    try:
        train(grpo_config(s, s["method"], run_dir), overwrite=True, callbacks=(lambda step, st: timed(s, seen, step),))
        logs = [json.loads(l) for l in (run_dir / rundir.METRICS).read_text().splitlines()]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rows = [r for r in logs if r.get("split") == "train"]
    return grpo_result(s, seen, [r["loss"] for r in rows], [r.get("reward") for r in rows],
                       [ids for ids in seen.pop("prompt_ids")])


def trl_grpo_time(s: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tunelab.train.rewards import correct

    no_dataset_hashing()
    tok, model, lora = trl_model(s)
    seen: dict[str, Any] = {"rollouts": [], "losses": [], "rewards": [], "prompt_ids": []}

    def correct_reward(prompts, completions, answer, **kw):  # TRL's signature around tunelab's function
        return correct(completions, answer, prompts)


    class Timed(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **k):
            t0 = time.perf_counter()
            ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **k)
            seen["rollouts"].append({"step": self.state.global_step, "seconds": time.perf_counter() - t0,
                                     "completions": len(ids), "tokens": sum(len(c) for c in ids)})
            seen["prompt_ids"] += [list(p) for p in prompt_ids]
            return ids, logprobs

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timed(s, seen, state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                seen["losses"].append(logs["loss"])
                seen["rewards"].append(logs.get("reward"))

    ds = Dataset.from_list([{"prompt": p["text"], "answer": p["answer"]} for p in s["prompts"]])
    with tempfile.TemporaryDirectory() as out:
        # per_device_train_batch_size counts completions in TRL: a micro-batch is grpo_batch prompts x G
        kw = trl_shared(s, out, s["grpo_batch"] * s["generations"], s["grpo_accum"])
        if s["runner"] in ("trl_best", "trl_bf16"):
            kw["gradient_checkpointing"] = False
        kw["bf16"] = s["runner"] == "trl_bf16"
        args = GRPOConfig(**kw, num_generations=s["generations"], max_completion_length=s["max_new_tokens"],
                          temperature=1.0, top_p=1.0, loss_type="dapo", epsilon=0.2, beta=0.0, shuffle_dataset=False)
        trainer = Timed(model=model, reward_funcs=correct_reward, args=args, train_dataset=ds, processing_class=tok,
                        peft_config=lora, callbacks=[Clock()])
        trainer.train()
    return grpo_result(s, seen, seen["losses"], seen["rewards"], seen.pop("prompt_ids"))


def grpo_result(s: dict[str, Any], seen: dict[str, Any], losses: list, rewards: list, prompt_ids: list) -> dict:
    """Counts over the timed steps (0-based step index 1..S: the warm-up step 0 is not timed)."""
    win = [r for r in seen["rollouts"] if 1 <= r["step"] <= s["steps"]]
    G = s["generations"]
    expected = [p["ids"] for p in s["prompts"] for _ in range(G)]
    return {"seconds": seen["t1"] - seen["t0"], "peak_mb": seen["peak_mb"],
            "completions": sum(r["completions"] for r in win), "gen_tokens": sum(r["tokens"] for r in win),
            "gen_seconds": sum(r["seconds"] for r in win), "rollout_calls": seen["rollouts"],
            "step_losses": losses, "step_rewards": rewards,
            # the same prompt ids, in the same order, G times each, as the plan says
            "prompts_match": [list(p) for p in prompt_ids] == expected[: len(prompt_ids)]
            and len(prompt_ids) == len(expected)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["mode"] == "dpo_check":
        out = {}
        for method in spec["methods"]:
            for runner in RUNNERS:
                s = {**spec, "method": method, "runner": runner}
                out[f"{runner}/{method}"] = tunelab_dpo_first(s, method) if runner == "tunelab" else trl_dpo_first(s)
                print(f"[check] {runner}/{method}: {out[f'{runner}/{method}']}", flush=True)
        return out
    fn = {("dpo", True): tunelab_dpo_time, ("dpo", False): trl_dpo_time,
          ("grpo", True): tunelab_grpo_time, ("grpo", False): trl_grpo_time}[spec["mode"],
                                                                        spec["runner"].startswith("tunelab")]
    return fn(spec)


# ---------------------------------------------------------------------------------------------
# parent


def timed_runs(spec: dict[str, Any], methods: list[str], repeats: int, report: Any,
               runners: tuple[str, ...] = RUNNERS) -> dict[tuple[str, str], list]:
    """Fresh child per run; runners alternate within a repeat, and the order rotates between repeats."""
    runs: dict[tuple[str, str], list] = {}
    for rep in range(repeats):
        for m in methods:
            k = rep % len(runners)
            order = runners[k:] + runners[:k]
            for r in order:
                res = harness.run_child(Path(__file__), {**spec, "run": f"{spec['mode']} {r}/{m}#{rep}",
                                                         "runner": r, "method": m}, timeout=3600)
                runs.setdefault((r, m), []).append(res)
                print(f"[{spec['mode']} {rep + 1}/{repeats}] {r:11s} {m:4s} {report(res)}", flush=True)
    return runs


def run_dpo(a: argparse.Namespace, base: dict[str, Any], work: Path) -> dict[str, Any]:
    n_pairs = (a.steps + 1) * a.dpo_batch * a.dpo_accum
    source = pairs_source(a.pairs)
    records = pair_records(source, n_pairs)
    pairs_file, pairs_text = work / "pairs.jsonl", work / "pairs_text.json"
    pairs_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    spec = {**base, "mode": "dpo", "pairs_file": str(pairs_file), "pairs_text": str(pairs_text),
            "dpo_batch": a.dpo_batch, "dpo_accum": a.dpo_accum, "beta": a.beta, "pairs_source": source}
    plan = dpo_plan(spec)
    pairs_text.write_text(json.dumps(plan["pairs"]))  # text for TRL, tunelab's ids and labels to compare with
    spec["micro"] = plan["micro"]
    row_tokens = [sum(len(plan["pairs"][j][f"{side}_ids"]) for j in mb for side in ("chosen", "rejected"))
                  for mb in plan["micro"]]
    timed_mb = slice(a.dpo_accum, (a.steps + 1) * a.dpo_accum)
    pairs_timed, tokens_timed = a.steps * a.dpo_batch * a.dpo_accum, sum(row_tokens[timed_mb])
    print(f"\n# DPO: {a.model}, {len(records)} pairs from {source}, CPU fp32, beta {a.beta}, lr {a.lr}, "
          f"{a.steps} timed steps + 1 warm-up of {a.dpo_accum} micro-batches x {a.dpo_batch} pairs; "
          f"timed: {pairs_timed} pairs, {tokens_timed} tokens (both sides, unpadded)", flush=True)

    check = harness.run_child(Path(__file__), {**spec, "run": "dpo check", "mode": "dpo_check", "methods": a.methods},
                              timeout=3600)
    check_rows = []
    for m in a.methods:
        ref = check[f"tunelab/{m}"]
        for r in RUNNERS:
            c = check[f"{r}/{m}"]
            ok = (abs(c["loss"] - ref["loss"]) <= LOSS_TOL * abs(ref["loss"]) and c["pairs"] == a.dpo_batch
                  and abs(c["loss"] - math.log(2)) <= 1e-4 and c.get("data_match", "1/1").split("/")[0]
                  == c.get("data_match", "1/1").split("/")[1])
            check_rows.append({"runner": r, "method": m, "loss": round(c["loss"], 7), "tunelab loss": round(ref["loss"], 7),
                               "log 2": round(math.log(2), 7), "margin": c["margin"], "pairs": c["pairs"],
                               "data = tunelab": c.get("data_match", f"{len(records)}/{len(records)}"),
                               "OK": "yes" if ok else "NO"})
    print("\n## DPO loss on the same first micro-batch (policy = reference: log 2)\n")
    print(harness.table(check_rows, ["runner", "method", "loss", "tunelab loss", "log 2", "margin", "pairs",
                                     "data = tunelab", "OK"]))

    def report(res):
        return (f"{pairs_timed / res['seconds']:7.3f} pairs/s {tokens_timed / res['seconds']:8.1f} tok/s "
                f"{res['peak_mb']:8.1f} MB ({res['seconds']:.1f} s timed, {res['process_wall_s']:.0f} s process)")

    runners = tuple(a.dpo_runners)
    if runners[0] != "tunelab":
        raise SystemExit("--dpo-runners: tunelab first (the base of the ratios and of the step-2 check)")
    runs = timed_runs(spec, a.methods, a.repeats, report, runners)
    rows, step2 = [], []
    ours = [r for r in runners if r.startswith("tunelab")]  # each tunelab runner is a base of ratios
    for m in a.methods:
        ref2 = runs[("tunelab", m)][0]
        for r in runners:
            rs = runs[(r, m)]
            sec = statistics.median(x["seconds"] for x in rs)
            row = {"runner": r, "method": m, "pairs/s": round(pairs_timed / sec, 4), "tok/s": round(tokens_timed / sec, 2),
                   "s/step": round(sec / a.steps, 2), "peak MB": statistics.median(x["peak_mb"] for x in rs),
                   "same pairs": all(x["micro_seen"][: len(spec["micro"])] == spec["micro"] for x in rs)}
            rows.append(row)
            x = rs[0]
            ok = all(abs(v - w) <= STEP2_TOL * max(abs(w), 1e-3) for v, w in
                     ((x["step_losses"][1], ref2["step_losses"][1]), (x["step_margins"][1], ref2["step_margins"][1]))) \
                if a.steps >= 1 and r not in BF16 else None  # bf16 autocast: not the fp32 trajectory
            step2.append({"runner": r, "method": m, "step 1 loss": round(x["step_losses"][0], 6),
                          "step 2 loss": round(x["step_losses"][1], 6), "step 2 margin": round(x["step_margins"][1], 6),
                          "tunelab step 2 loss": round(ref2["step_losses"][1], 6),
                          "tunelab step 2 margin": round(ref2["step_margins"][1], 6),
                          "OK": "yes" if ok else "n/a (bf16)" if r in BF16 else "NO"})
    print(f"\n## DPO after one identical update (step 2 loss and reward margin; OK: within {STEP2_TOL:g} relative)\n")
    print(harness.table([{k: f"{v:.6f}" if isinstance(v, float) else v for k, v in r.items()} for r in step2],
                        ["runner", "method", "step 1 loss", "step 2 loss", "tunelab step 2 loss", "step 2 margin",
                         "tunelab step 2 margin", "OK"]))
    for row in rows:
        for t in ours:
            base = next(x for x in rows if x["runner"] == t and x["method"] == row["method"])
            row[f"speed {t}/x"] = harness.ratio(base["pairs/s"], row["pairs/s"])
            row[f"memory {t}/x"] = harness.ratio(base["peak MB"], row["peak MB"])
    print(f"\n## DPO throughput (median of {a.repeats}), peak memory = VmHWM of the child process\n")
    print(harness.table(rows, ["runner", "method", "pairs/s", "tok/s", "s/step", "peak MB"]
                        + [f"{k} {t}/x" for t in ours for k in ("speed", "memory")] + ["same pairs"]))
    label, need_speed, need_mem = TARGETS["dpo"]

    def verdict(m: str, t: str, row: dict[str, Any], prefix: str = "") -> str:
        sp, mem = row[f"speed {t}/x"], row[f"memory {t}/x"]
        met = bool(sp and sp >= need_speed and mem is not None and mem <= need_mem)
        return (f"dpo {m} {prefix or t + ' vs ' + row['runner']}: {label}: speed {sp}x, memory {mem}x -> "
                f"{'met' if met else 'NOT met'}")

    verdicts = [verdict(r["method"], t, r) for t in ours for r in rows if r["runner"].startswith("trl")]
    if len(ours) > 1 or len([r for r in runners if r.startswith("trl")]) > 1:
        for m in a.methods:  # each side's fastest configuration
            mine = [r for r in rows if r["method"] == m]
            best = {side: max((r for r in mine if r["runner"].startswith(side)), key=lambda r: r["pairs/s"])
                    for side in ("tunelab", "trl")}
            verdicts.append(verdict(m, best["tunelab"]["runner"], best["trl"],
                                    f"fastest tunelab ({best['tunelab']['runner']}) vs fastest TRL ({best['trl']['runner']})"))
    return {"settings": {k: v for k, v in spec.items() if k not in ("run", "mode")} | {
                "methods": a.methods, "pairs": len(records), "timed_pairs": pairs_timed, "timed_tokens": tokens_timed,
                "micro_batch_tokens": row_tokens},
            "loss_check": check_rows, "loss_check_passed": all(r["OK"] == "yes" for r in check_rows),
            "step2_check": step2, "step2_check_passed": all(r["OK"] in ("yes", "n/a (bf16)") for r in step2),
            "results": rows, "targets": verdicts, "runs": {f"{r}/{m}": v for (r, m), v in runs.items()}}


def run_grpo(a: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    per_step = a.grpo_batch * a.grpo_accum
    spec = {**base, "mode": "grpo", "grpo_batch": a.grpo_batch, "grpo_accum": a.grpo_accum,
            "generations": a.generations, "max_new_tokens": a.max_new_tokens, "limit": (a.steps + 1) * per_step}
    plan = grpo_plan(spec)
    spec["prompts"] = plan["prompts"]  # TRL's dataset: tunelab's prompts in tunelab's plan order
    print(f"\n# GRPO: {a.model}, arith_en prompts ({min(plan['prompt_tokens'])}-{max(plan['prompt_tokens'])} tokens), "
          f"CPU (fp32 unless the runner says bf16), {per_step} prompts x G={a.generations} = {per_step * a.generations} completions a step "
          f"({a.grpo_accum} micro-batches), max {a.max_new_tokens} new tokens, temperature 1.0, reward `correct`, "
          f"{a.steps} timed steps + 1 warm-up", flush=True)

    def report(res):
        return (f"{res['completions'] / res['seconds']:6.3f} completions/s {res['gen_tokens'] / res['seconds']:7.2f} "
                f"gen tok/s {res['seconds'] / a.steps:6.1f} s/step, mean length "
                f"{res['gen_tokens'] / max(res['completions'], 1):.1f}, generating {res['gen_seconds']:.1f} s, "
                f"{res['peak_mb']:8.1f} MB, prompts match {res['prompts_match']} ({res['process_wall_s']:.0f} s process)")

    runners = tuple(a.grpo_runners)
    runs = timed_runs(spec, a.grpo_methods, a.repeats, report, runners)
    ours = [r for r in runners if r.startswith("tunelab")]  # each tunelab runner is a base of ratios
    rows = []
    for m in a.grpo_methods:
        mine = []
        for r in runners:
            rs = runs[(r, m)]
            med = lambda f: statistics.median(f(x) for x in rs)  # noqa: E731
            mine.append({"runner": r, "method": m,
                         "completions/s": round(med(lambda x: x["completions"] / x["seconds"]), 4),
                         "gen tok/s": round(med(lambda x: x["gen_tokens"] / x["seconds"]), 2),
                         "s/step": round(med(lambda x: x["seconds"]) / a.steps, 2),
                         "mean length": round(med(lambda x: x["gen_tokens"] / max(x["completions"], 1)), 1),
                         "generating s/step": round(med(lambda x: x["gen_seconds"]) / a.steps, 2),
                         "completions/step": med(lambda x: x["completions"]) / a.steps,
                         "peak MB": med(lambda x: x["peak_mb"]), "same prompts": all(x["prompts_match"] for x in rs)})
        for t in ours:
            base = next(x for x in mine if x["runner"] == t)
            for row in mine:
                row[f"speed {t}/x"] = harness.ratio(base["completions/s"], row["completions/s"])
                row[f"memory {t}/x"] = harness.ratio(base["peak MB"], row["peak MB"])
                if t == runners[0]:
                    row[f"tok/s {t}/x"] = harness.ratio(base["gen tok/s"], row["gen tok/s"])
        rows += mine
    print(f"\n## GRPO throughput (median of {a.repeats}); both sample, so completions and their lengths differ\n")
    print(harness.table(rows, ["runner", "method", "completions/s", "gen tok/s", "s/step", "mean length",
                               "generating s/step", "peak MB"]
                        + [f"{k} {t}/x" for t in ours for k in ("speed", "tok/s", "memory") if k != "tok/s"
                           or t == runners[0]] + ["same prompts"]))
    label, need, _ = TARGETS["grpo"]
    verdicts = [f"grpo {r['method']} {t} vs {r['runner']}: {label}: {r[f'speed {t}/x']}x -> "
                f"{'met' if (r[f'speed {t}/x'] or 0) >= need else 'NOT met'}"
                for t in ours for r in rows if r["runner"].startswith("trl")]
    for m in a.grpo_methods:  # each side's fastest configuration
        mine = [r for r in rows if r["method"] == m]
        best = {side: max((r for r in mine if r["runner"].startswith(side)), key=lambda r: r["completions/s"],
                          default=None) for side in ("tunelab", "trl")}
        if best["tunelab"] and best["trl"]:
            x = best["trl"][f"speed {best['tunelab']['runner']}/x"]
            verdicts.append(f"grpo {m} fastest tunelab ({best['tunelab']['runner']}) vs fastest TRL "
                            f"({best['trl']['runner']}): {label}: {x}x -> {'met' if (x or 0) >= need else 'NOT met'}")
    settings = {k: v for k, v in spec.items() if k not in ("run", "mode", "prompts")}
    settings["prompt_texts"] = [p["text"] for p in plan["prompts"]]
    return {"settings": settings, "results": rows, "targets": verdicts,
            "runs": {f"{r}/{m}": v for (r, m), v in runs.items()}}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.child:
        harness.emit(child(json.loads(a.child)))
        return 0
    from tunelab.models.load import resolve

    import os

    load3_before = os.getloadavg()
    t_start = time.perf_counter()
    base = {"model": a.model, "model_dir": str(resolve(a.model).path), "steps": a.steps, "lr": a.lr, "seed": a.seed,
            "max_length": a.max_length}
    payload: dict[str, Any] = {"repeats": a.repeats}
    work = Path(tempfile.mkdtemp(prefix="bench_align_"))
    try:
        if "dpo" in a.parts:
            payload["dpo"] = run_dpo(a, base, work)
        if "grpo" in a.parts:
            payload["grpo"] = run_grpo(a, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load3_after = os.getloadavg()
    payload["load_avg_before"] = [round(x, 2) for x in load3_before]
    payload["load_avg_after"] = [round(x, 2) for x in load3_after]
    payload["wall_s"] = round(time.perf_counter() - t_start, 1)
    targets = [t for part in ("dpo", "grpo") if part in payload for t in payload[part]["targets"]]
    payload["targets"] = targets
    print("\nTargets (CPU):\n  " + "\n  ".join(targets))
    print(f"\nload average (1, 5, 15 min) before {payload['load_avg_before']}, after {payload['load_avg_after']} "
          f"on {harness.machine()['cores']} cores (shared machine); total {payload['wall_s'] / 60:.1f} min")
    # one file per set of parts: a DPO-only and a GRPO-only run do not overwrite each other
    path = harness.save("align_cpu" if len(a.parts) == 2 else f"align_cpu_{a.parts[0]}", payload, a.out)
    print(f"results: {path}")
    ok = all(payload["dpo"][k] for k in ("loss_check_passed", "step2_check_passed")) if "dpo" in payload else True
    ok &= all(r["same prompts"] for r in payload.get("grpo", {}).get("results", []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

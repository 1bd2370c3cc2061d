"""`tunelab train`: the builder that turns a config into a model, data, optimizer and a call to `fit`.

    tunelab train configs/quickstart.yaml [key=value ...] [--resume | --overwrite] [--nproc N]

It writes the run directory, the contract every later command reads:
`config.yaml` (resolved), `metrics.jsonl`, `summary.json`, `data_stats.json`, `model/`
(a transformers model for full/freeze runs, a PEFT adapter for LoRA-family runs, always with the
tokenizer and the exact chat template used in training, and `tunelab.json` naming the base model),
`checkpoints/` and TensorBoard files under `tensorboard/`. Only the main process writes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from ..paths import OutputExistsError


def device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def mixed_precision(precision: str, device: str) -> str:
    """accelerate's mixed_precision value: bf16/fp16 autocast on GPU, fp32 on CPU unless asked."""
    import torch

    if precision == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise OutputExistsError("--resume and --overwrite contradict each other; pick one")
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise OutputExistsError(f"{run_dir} exists and is not empty; pass --resume to continue its latest "
                                "checkpoint or --overwrite to start again (it will be deleted)")


def run_metadata(cfg: C.Config, renderer_template: str, compute_dtype: str | None = None) -> dict[str, Any]:
    from .. import __version__

    quant = None
    if cfg.method.name == "qlora":
        quant = {"quant_type": cfg.method.quant_type, "double_quant": cfg.method.double_quant,
                 "compute_dtype": compute_dtype or "float32"}
    return {"quantization": quant, "base_model": cfg.model.name, "tokenizer": cfg.model.tokenizer or cfg.model.name,
            "method": cfg.method.name, "stage": cfg.stage, "template": renderer_template,
            "enable_thinking": cfg.data.enable_thinking, "supervise": cfg.data.supervise,
            "from_scratch": cfg.model.from_scratch, "tunelab_version": __version__}


def train(cfg: C.Config, *, resume: bool = False, overwrite: bool = False,
          callbacks: tuple[Callable[[int, dict], None], ...] = ()) -> dict[str, Any]:
    run_dir = Path(cfg.output.dir)
    if int(os.environ.get("RANK", "0")) == 0:  # other processes would see the files rank 0 starts writing
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    from .methods import check_supported

    device = device_type()
    check_supported(cfg.method.name, device=device, precision=cfg.training.precision)  # before loading anything
    from .optim import OPTIMIZERS, SCHEDULES

    for key, name, known in (("optimizer.name", cfg.optimizer.name, OPTIMIZERS),
                             ("schedule.name", cfg.schedule.name, SCHEDULES)):
        if name not in known:
            raise C.ConfigError(f"config key '{key}': unknown '{name}'; known: {', '.join(sorted(known))}")

    import torch
    from accelerate import Accelerator

    from ..data.batching import step_plan
    from ..data.prepare import prepare_from_config
    from ..models.load import load_model, load_tokenizer, torch_dtype
    from . import checkpoint as ckpt
    from .loop import fit
    from .loss import CausalLMLoss
    from .methods import apply_method, count_params, describe, quantization_config
    from .metrics import MetricsLogger, peak_memory_mb
    from .optim import build_optimizer, build_scheduler, param_groups, warmup_steps_for

    mp = mixed_precision(cfg.training.precision, device)
    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    main = accelerator.is_main_process
    if main and overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()
    resume_from = ckpt.latest(run_dir / "checkpoints") if resume else None
    if resume and resume_from is None and main:
        accelerator.print(f"[tunelab] --resume: no checkpoint in {run_dir / 'checkpoints'}; starting from scratch")
    torch.manual_seed(cfg.training.seed)

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                               revision=cfg.model.revision)
    with accelerator.main_process_first():
        prepared, tokenizer = prepare_from_config(cfg, tokenizer=tokenizer)
    train_ds, val_ds = prepared.load("train"), prepared.load("validation")

    load_kwargs: dict[str, Any] = {}
    compute = None
    if cfg.method.name == "qlora":
        compute = cfg.method.compute_dtype
        if compute == "auto":
            compute = "bfloat16" if mp == "bf16" else ("float16" if mp == "fp16" else "float32")
        load_kwargs["quantization_config"] = quantization_config(
            quant_type=cfg.method.quant_type, double_quant=cfg.method.double_quant, compute_dtype=torch_dtype(compute))
        if device == "cuda":
            load_kwargs["device_map"] = {"": accelerator.local_process_index}
    model = load_model(cfg.model.name, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                       trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
                       from_scratch=cfg.model.from_scratch, seed=cfg.training.seed, **load_kwargs)
    m = cfg.method
    model = apply_method(model, method=m.name, freeze_trainable_layers=m.freeze_trainable_layers,
                         freeze_trainable_modules=m.freeze_trainable_modules, lora_r=m.lora_r,
                         lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.target_modules,
                         use_rslora=m.use_rslora, gradient_checkpointing=cfg.training.gradient_checkpointing)
    accelerator.print(f"[tunelab] {describe(model, m.name)}")
    trainable, total = count_params(model)

    t = cfg.training
    o = cfg.optimizer
    groups = param_groups(model, lr=o.lr, weight_decay=o.weight_decay,
                          lora_plus_ratio=m.lora_plus_ratio if m.name == "lora_plus" else None)
    optimizer = build_optimizer(o.name, groups, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
                                eps=o.eps, momentum=o.momentum, nesterov=o.nesterov)
    lengths = [len(x) for x in train_ds["input_ids"]]
    steps_per_epoch = len(step_plan(lengths, packing=cfg.data.packing, max_length=cfg.data.max_length,
                                    batch_size=t.batch_size, grad_accum=t.grad_accum,
                                    world_size=accelerator.num_processes, seed=t.seed,
                                    drop_last=accelerator.num_processes > 1))
    total_steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * steps_per_epoch))
    s = cfg.schedule
    scheduler = build_scheduler(s.name, optimizer, total_steps=total_steps,
                                warmup_steps=warmup_steps_for(total_steps, s.warmup_steps, s.warmup_ratio),
                                min_lr_ratio=s.min_lr_ratio)
    loss_module, optimizer = accelerator.prepare(CausalLMLoss(model), optimizer)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        C.save(cfg, run_dir / "config.yaml")
        (run_dir / "data_stats.json").write_text(json.dumps(prepared.stats, indent=2, ensure_ascii=False))
    logger = MetricsLogger(run_dir, enabled=main, report_to=cfg.output.report_to, config=C.to_dict(cfg),
                           resume_step=json.loads((resume_from / "state.json").read_text())["step"] if resume_from else None)
    accelerator.print(f"[tunelab] {len(train_ds)} train / {len(val_ds)} validation examples, "
                      f"{steps_per_epoch} steps per epoch, {total_steps} steps, precision {mp}, device {device}"
                      f" x {accelerator.num_processes}")
    try:
        state = fit(accelerator, model, loss_module, optimizer, scheduler, train_ds, val_ds, run_dir=run_dir,
                    packing=cfg.data.packing, max_length=cfg.data.max_length, batch_size=t.batch_size,
                    grad_accum=t.grad_accum, total_steps=total_steps, max_grad_norm=t.max_grad_norm,
                    log_every=t.log_every, eval_every=t.eval_every, save_every=t.save_every,
                    keep_last=t.keep_last, patience=t.early_stopping_patience, seed=t.seed,
                    pad_id=tokenizer.pad_token_id, logger=logger, resume_from=resume_from, callbacks=callbacks)
    finally:
        logger.close()

    peak, peak_kind = peak_memory_mb(accelerator.device)
    summary = {
        "method": m.name, "optimizer": o.name, "stage": cfg.stage, "model": cfg.model.name,
        "trainable_params": trainable, "total_params": total, "peak_mem_mb": round(peak, 1), "peak_mem_kind": peak_kind,
        "train_time_s": round(state["train_time_s"], 3), "epoch_times_s": state["epoch_times_s"],
        "steps": state["step"], "epochs_completed": state["epoch"], "tokens": state["tokens"],
        "supervised_tokens": state["supervised_tokens"],
        "tokens_per_s": round(state["tokens"] / max(state["train_time_s"], 1e-9), 2),
        "supervised_tokens_per_s": round(state["supervised_tokens"] / max(state["train_time_s"], 1e-9), 2),
        "final_train_loss": state["last_train_loss"], "final_val_loss": state["last_val_loss"],
        "best_val_loss": None if math.isinf(state["best_val"]) else state["best_val"], "best_step": state["best_step"],
        "stopped_early": state["stopped_early"], "precision": mp, "device": device,
        "num_processes": accelerator.num_processes,
    }
    accelerator.wait_for_everyone()
    if main:
        save_model(accelerator.unwrap_model(loss_module).model, tokenizer, run_dir / "model",
                   run_metadata(cfg, prepared.stats["template"], compute))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary


def save_model(model: Any, tokenizer: Any, out: Path, meta: dict[str, Any]) -> None:
    """A transformers model dir (full/freeze) or a PEFT adapter dir, plus tokenizer and metadata."""
    from ..paths import atomic_dir

    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "tunelab.json").write_text(json.dumps(meta, indent=2))

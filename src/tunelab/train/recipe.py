"""`tunelab train`: the builder that turns a config into a model, data, optimizer and a call to `fit`.

    tunelab train configs/quickstart.yaml [key=value ...] [--resume | --overwrite] [--nproc N]

`train` reads top to bottom as the steps of a run: open the run directory, prepare the data, load
and adapt the model, build the optimizer and schedule over the planned steps, fit, summarise, save.
Each step is a small function below taking plain values. It writes the run directory described in
`tunelab/rundir.py`; only the main process writes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from .. import rundir
from ..errors import OutputExistsError


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


def qlora_settings(method: C.MethodConfig, mixed: str) -> dict[str, Any] | None:
    """The 4-bit settings of a QLoRA run (recorded in tunelab.json, so eval and export load the same base)."""
    if method.name != "qlora":
        return None
    compute = method.compute_dtype
    if compute == "auto":
        compute = {"bf16": "bfloat16", "fp16": "float16"}.get(mixed, "float32")
    return {"quant_type": method.quant_type, "double_quant": method.double_quant, "compute_dtype": C.DTYPES[compute]}


def load_trainable(cfg: C.Config, quant: dict[str, Any] | None, *, device: str, local_rank: int) -> Any:
    """The model of `cfg`, made trainable by its method (a PeftModel for the LoRA family)."""
    from ..models.load import load_model, quantization_config
    from .methods import apply_method

    kwargs: dict[str, Any] = {}
    if quant:
        kwargs["quantization_config"] = quantization_config(**quant)
        if device == "cuda":
            kwargs["device_map"] = {"": local_rank}
    model = load_model(cfg.model.name, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                       trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
                       from_scratch=cfg.model.from_scratch, seed=cfg.training.seed, **kwargs)
    m = cfg.method
    return apply_method(model, method=m.name, freeze_trainable_layers=m.freeze_trainable_layers,
                        freeze_trainable_modules=m.freeze_trainable_modules, lora_r=m.lora_r,
                        lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.target_modules,
                        use_rslora=m.use_rslora, gradient_checkpointing=cfg.training.gradient_checkpointing)


def build_optimization(cfg: C.Config, model: Any, total_steps: int) -> tuple[Any, Any]:
    from .optim import build_optimizer, build_scheduler, param_groups

    o, s, m = cfg.optimizer, cfg.schedule, cfg.method
    groups = param_groups(model, lr=o.lr, weight_decay=o.weight_decay,
                          lora_plus_ratio=m.lora_plus_ratio if m.name == "lora_plus" else None)
    optimizer = build_optimizer(o.name, groups, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas),
                                eps=o.eps, momentum=o.momentum, nesterov=o.nesterov)
    scheduler = build_scheduler(s.name, optimizer, total_steps=total_steps, warmup_steps=s.warmup_steps,
                                warmup_ratio=s.warmup_ratio, min_lr_ratio=s.min_lr_ratio)
    return optimizer, scheduler


def train(cfg: C.Config, *, resume: bool = False, overwrite: bool = False,
          callbacks: tuple[Callable[[int, Any], None], ...] = ()) -> dict[str, Any]:
    run_dir = Path(cfg.output.dir)
    if int(os.environ.get("RANK", "0")) == 0:  # other processes would see the files rank 0 starts writing
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    from .methods import check_supported

    device = device_type()
    check_supported(cfg.method.name, device=device, precision=cfg.training.precision)  # before loading anything

    import torch
    from accelerate import Accelerator

    from ..data.prepare import prepare_from_config
    from ..models.load import load_tokenizer
    from . import checkpoint as ckpt
    from .loop import FitSettings, StepPlan, fit
    from .methods import count_params, describe
    from .metrics import MetricsLogger
    from .objectives import build_objective

    mp = mixed_precision(cfg.training.precision, device)
    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    main = accelerator.is_main_process
    # 1. the run directory
    if main and overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()
    resume_from = ckpt.latest(run_dir / rundir.CHECKPOINTS) if resume else None
    if resume and resume_from is None and main:
        accelerator.print(f"[tunelab] --resume: no checkpoint in {run_dir / rundir.CHECKPOINTS}; starting from scratch")
    torch.manual_seed(cfg.training.seed)

    # 2. data
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                               revision=cfg.model.revision)
    with accelerator.main_process_first():
        prepared = prepare_from_config(cfg, tokenizer)
    train_ds, val_ds = prepared.load("train"), prepared.load("validation")
    t = cfg.training
    plan = StepPlan([len(x) for x in train_ds["input_ids"]], packing=cfg.data.packing, max_length=cfg.data.max_length,
                    batch_size=t.batch_size, grad_accum=t.grad_accum, world_size=accelerator.num_processes, seed=t.seed)
    steps_per_epoch = plan.steps_per_epoch
    if steps_per_epoch == 0:
        raise C.ConfigError(f"the training set ({len(train_ds)} examples) is smaller than one step's batch "
                            f"(training.batch_size {t.batch_size} x training.grad_accum {t.grad_accum} x "
                            f"{accelerator.num_processes} processes)")
    total_steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * steps_per_epoch))

    # 3. model, objective, optimizer
    quant = qlora_settings(cfg.method, mp)
    model = load_trainable(cfg, quant, device=device, local_rank=accelerator.local_process_index)
    accelerator.print(f"[tunelab] {describe(model, cfg.method.name)}")
    trainable, total = count_params(model)
    objective = build_objective(cfg.stage, packing=cfg.data.packing, pad_id=tokenizer.pad_token_id)
    optimizer, scheduler = build_optimization(cfg, model, total_steps)
    module, optimizer = accelerator.prepare(objective.wrap(model), optimizer)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        C.save(cfg, run_dir / rundir.CONFIG)
        (run_dir / rundir.DATA_STATS).write_text(json.dumps(prepared.stats, indent=2, ensure_ascii=False))
    resume_step = json.loads((resume_from / "state.json").read_text())["step"] if resume_from else None
    logger = MetricsLogger(run_dir, enabled=main, report_to=cfg.output.report_to, config=C.to_dict(cfg),
                           resume_step=resume_step)
    accelerator.print(f"[tunelab] {len(train_ds)} train / {len(val_ds)} validation examples, "
                      f"{steps_per_epoch} steps per epoch, {total_steps} steps, precision {mp}, device {device}"
                      f" x {accelerator.num_processes}")
    # 4. fit
    settings = FitSettings(total_steps=total_steps, max_grad_norm=t.max_grad_norm, log_every=t.log_every,
                           eval_every=t.eval_every, save_every=t.save_every, keep_last=t.keep_last,
                           patience=t.early_stopping_patience)
    try:
        state = fit(accelerator, model, module, objective, optimizer, scheduler, train_ds, val_ds, plan, settings,
                    run_dir=run_dir, logger=logger, resume_from=resume_from, callbacks=callbacks)
    finally:
        logger.close()

    # 5. summary and the model
    from ..memory import peak_memory_mb

    peak, peak_kind = peak_memory_mb(accelerator.device)
    o = cfg.optimizer
    summary = {
        "method": cfg.method.name, "optimizer": o.name, "stage": cfg.stage, "model": cfg.model.name,
        "trainable_params": trainable, "total_params": total, "peak_mem_mb": round(peak, 1), "peak_mem_kind": peak_kind,
        "train_time_s": round(state.train_time_s, 3), "epoch_times_s": state.epoch_times_s,
        "steps": state.step, "epochs_completed": state.epoch, "tokens": state.tokens,
        "supervised_tokens": state.supervised_tokens,
        "tokens_per_s": round(state.tokens / max(state.train_time_s, 1e-9), 2),
        "supervised_tokens_per_s": round(state.supervised_tokens / max(state.train_time_s, 1e-9), 2),
        "final_train_loss": state.last_train_loss, "final_val_loss": state.last_val_loss,
        "best_val_loss": None if math.isinf(state.best_val) else state.best_val, "best_step": state.best_step,
        "stopped_early": state.stopped_early, "precision": mp, "device": device,
        "num_processes": accelerator.num_processes,
    }
    accelerator.wait_for_everyone()
    if main:
        meta = rundir.build_metadata(
            base_model=cfg.model.name, tokenizer=cfg.model.tokenizer or cfg.model.name, method=cfg.method.name,
            stage=cfg.stage, template=prepared.stats["template"], enable_thinking=cfg.data.enable_thinking,
            supervise=cfg.data.supervise, from_scratch=cfg.model.from_scratch, quantization=quant)
        rundir.save_model(accelerator.unwrap_model(module).model, tokenizer, run_dir / rundir.MODEL, meta)
        (run_dir / rundir.SUMMARY).write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary

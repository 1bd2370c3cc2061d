"""`tunelab train`: the builder that turns a config into a model, data, optimizer and a call to `fit`.

    tunelab train configs/quickstart.yaml [key=value ...] [--resume | --overwrite] [--nproc N [--strategy S]]

`train` reads top to bottom as the steps of a run: open the run directory, prepare the data, load
and adapt the model, build the optimizer and schedule over the planned steps, fit, summarise, save.
Each step is a small function below taking plain values. It writes the run directory described in
`tunelab/rundir.py`; only the main process writes. Under several processes every process runs `train`
(`accelerate launch`; the strategy is accelerate's config, see train/distributed.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from .. import config as C
from .. import rundir
from ..errors import OutputExistsError, UserError
from ..paths import MARKER


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


def inputs_of(cfg: C.Config) -> list[str]:
    """Local paths a run reads (its data and model): --overwrite must never delete them."""
    return [x for x in (cfg.data.name, cfg.model.name, cfg.model.tokenizer) if x and Path(x).exists()]


def check_run_dir(run_dir: Path, cfg: C.Config, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The run-directory policy, applied before anything is loaded or written. Returns the saved
    fingerprint of the run being resumed (None otherwise).

    - a new run needs an absent or empty directory; `--overwrite` replaces only a tunelab run
      directory (paths.check_removable), never the working directory or an input;
    - `--resume` continues a tunelab run whose config differs at most in SAFE_ON_RESUME keys (more
      steps or epochs, logging, evaluation and save frequency); any other difference is refused with
      the list of keys, and nothing is changed.
    """
    from ..paths import check_writable

    if resume and overwrite:
        raise OutputExistsError("--resume and --overwrite contradict each other; pick one")
    has_files = run_dir.is_dir() and any(run_dir.iterdir())
    if resume and has_files:
        saved = rundir.read_config(run_dir)
        if saved is None:
            raise OutputExistsError(f"--resume: {run_dir} is not a tunelab run directory (no {rundir.CONFIG})")
        from ..estimate.plan import as_planned  # a planned run: its plan is checked again once the data is known

        changes = rundir.config_changes(as_planned(C.to_dict(saved), C.to_dict(cfg)), C.to_dict(cfg))
        unsafe = rundir.unsafe_on_resume(changes)
        if unsafe:
            raise C.ConfigError(f"--resume: the config differs from the run's in {len(unsafe)} key(s) that would "
                                f"mix two runs: {rundir.describe_changes(unsafe)}. Resume with the run's own config "
                                f"({run_dir / rundir.CONFIG}), or start a new run in another directory (or "
                                f"--overwrite). Only {', '.join(k.rstrip('.') for k in rundir.SAFE_ON_RESUME)} "
                                "may change on resume")
        return {**(rundir.read_fingerprint(run_dir) or {}), "changes": changes}
    if not resume:
        if has_files and not overwrite:
            raise OutputExistsError(f"{run_dir} exists and is not empty; pass --resume to continue its latest "
                                    "checkpoint or --overwrite to start again (which deletes it, if tunelab wrote it)")
        check_writable(run_dir, overwrite, kind="run", inputs=inputs_of(cfg))
    return None


def qlora_settings(method: C.MethodConfig, mixed: str) -> dict[str, Any] | None:
    """The 4-bit settings of a QLoRA run (recorded in tunelab.json, so eval and export load the same base)."""
    if method.name != "qlora":
        return None
    compute = method.compute_dtype
    if compute == "auto":
        compute = {"bf16": "bfloat16", "fp16": "float16"}.get(mixed, "float32")
    return {"quant_type": method.quant_type, "double_quant": method.double_quant, "compute_dtype": C.DTYPES[compute]}


def load_trainable(cfg: C.Config, quant: dict[str, Any] | None, *, tokenizer: Any, device: str,
                   local_rank: int) -> Any:
    """The model of `cfg`, made trainable by its method (a PeftModel for the LoRA family)."""
    from ..models.load import fit_vocabulary, is_adapter_ref, load_merged, load_model, quantization_config, resolve
    from .methods import apply_method

    kwargs: dict[str, Any] = {}
    if quant:
        kwargs["quantization_config"] = quantization_config(**quant)
        if device == "cuda":
            kwargs["device_map"] = {"": local_rank}
    if is_adapter_ref(cfg.model.name) and not cfg.model.from_scratch:
        # a run whose model is an adapter (an SFT LoRA, before DPO or GRPO): its adapter merged into the base
        # is the model this run starts from (and, adapters off, its reference); this run's adapter goes on top
        if quant:
            raise C.ConfigError(f"model.name {cfg.model.name} is a LoRA run; method qlora needs a plain model to "
                                "quantize: use method lora on it, or export it merged first (tunelab export)")
        model = load_merged(resolve(cfg.model.name).path)
    else:
        model = load_model(cfg.model.name, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                           trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
                           from_scratch=cfg.model.from_scratch, arch=dataclasses.asdict(cfg.model.arch),
                           seed=cfg.training.seed, **kwargs)
    # from scratch with another tokenizer: the embedding takes the tokenizer's vocabulary; a pretrained
    # model whose vocabulary is smaller than its tokenizer's is refused (its new rows would be random)
    fit_vocabulary(model, tokenizer, from_scratch=cfg.model.from_scratch, own_tokenizer=not cfg.model.tokenizer)
    m = cfg.method
    return apply_method(model, method=m.name, freeze_trainable_layers=m.freeze_trainable_layers,
                        freeze_trainable_modules=m.freeze_trainable_modules, lora_r=m.lora_r,
                        lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.target_modules,
                        use_rslora=m.use_rslora, gradient_checkpointing=cfg.training.gradient_checkpointing)


def _estimate(cfg: C.Config, device: str, supervised_fraction: float | None, nproc: int, strategy: str,
              show: bool, seq_len: int | None = None) -> Any:
    """`tunelab estimate` for this run, or None when it cannot be made (an architecture the estimator
    does not know is refused there; training must not fail for it). `seq_len`: the data's widest row,
    so the estimate checked against this run's peak is of the batches it really trains on."""
    from ..estimate import estimate_from_config

    try:
        est = estimate_from_config(cfg, device=device, supervised_fraction=supervised_fraction, nproc=nproc,
                                   strategy=strategy if strategy in ("fsdp", "zero2", "zero3") else "ddp",
                                   seq_len=seq_len)
    except UserError as e:
        if show:
            print(f"[tunelab] no memory estimate: {e}", flush=True)
        return None
    if show:
        from ..estimate.command import print_estimate

        print_estimate(est, title="estimate before training (tunelab estimate)")
    return est


def _fit_budget(cfg: C.Config, accelerator: Any, device: str, strategy: str, lengths: list[int], *, packing: bool,
                supervised_fraction: float | None, keep: dict[str, Any] | None) -> tuple[C.Config, Any]:
    """`cfg` with the plan for training.max_memory applied (estimate/plan.py), and the plan. Made for the
    data's widest row and what the process already holds (resident memory on CPU: the budget is the
    process's; the largest over processes, so every process reaches the same plan). `keep`: a resumed
    run's saved config, whose plan must still fit. Impossible: a ConfigError before any weight loads."""
    from ..data.batching import widest_row
    from ..estimate.check import baseline_mb
    from ..estimate.plan import PLANNED, parse_budget, plan_for_budget

    t = cfg.training
    held = [baseline_mb(accelerator.device)]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        held = gather_object(held)
    plan = plan_for_budget(cfg, parse_budget(t.max_memory), device=device, supervised_fraction=supervised_fraction,
                           seq_len=widest_row(lengths, packing=packing, max_length=cfg.data.max_length, seed=t.seed) or None,
                           nproc=accelerator.num_processes, strategy=strategy if strategy in ("fsdp", "zero2", "zero3") else "ddp",
                           baseline_mb=max(held), keep=tuple(keep["training"][k] for k in PLANNED) if keep else None)
    accelerator.print(f"[tunelab] {plan.line(t.max_memory)}\n[tunelab]   why: {plan.why}; {plan.notes[0]}", flush=True)
    accelerator.gradient_accumulation_steps = plan.grad_accum  # the accelerator was made with the config's
    return plan.apply(cfg), plan


def objective_settings(cfg: C.Config, tokenizer: Any, end_of_turn: str, run_dir: Path) -> dict[str, Any]:
    """The keyword arguments of `build_objective(cfg.stage, ...)`: plain values read from the config."""
    o = cfg.objective
    if cfg.stage in ("sft", "pt"):
        return dict(packing=cfg.data.packing, pad_id=tokenizer.pad_token_id)
    if cfg.stage == "dpo":
        from .dpo import reference_mode

        return dict(pad_id=tokenizer.pad_token_id, loss=o.loss, beta=o.beta, label_smoothing=o.label_smoothing,
                    simpo_gamma=o.simpo_gamma, reference=reference_mode(o.loss, o.reference))
    from ..models.generation import pad_token_id, stop_token_ids
    from .rewards import build_rewards

    stop = stop_token_ids(tokenizer, end_of_turn)
    return dict(tokenizer=tokenizer, pad_id=pad_token_id(tokenizer, stop), stop_ids=stop,
                rewards=build_rewards(list(o.rewards), weights=o.reward_weights, reward_fn=o.reward_fn),
                num_generations=o.num_generations, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
                top_p=o.top_p, scale_rewards=o.scale_rewards, loss_type=o.loss_type, epsilon=o.epsilon,
                epsilon_high=o.epsilon_high, kl_coef=o.kl_coef,
                reference="adapters_off" if cfg.method.name in ("lora", "lora_plus", "dora", "qlora") else "copy",
                seed=cfg.training.seed, generation_batch_size=o.generation_batch_size,
                rollout_dtype=o.rollout_dtype, rollout_is_cap=o.rollout_is_cap,
                samples_path=run_dir / rundir.SAMPLES, sample_every=o.sample_every)


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
    # 0. everything that can be refused before anything is loaded or written
    main_rank = int(os.environ.get("RANK", "0")) == 0  # other processes would see rank 0's files
    resumed = check_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite) if main_rank else None
    from .methods import check_supported
    from .metrics import MetricsLogger, check_external

    device = device_type()
    check_supported(cfg.method.name, device=device, precision=cfg.training.precision)
    check_external(cfg.output.report_to)

    import torch

    from ..data.prepare import prepare_from_config
    from ..models.load import config_tokenizer, identity
    from ..paths import clean_leftovers, mark, remove_output
    from . import checkpoint as ckpt
    from .distributed import check_strategy, configure_deepspeed, make_accelerator, strategy_of
    from .loop import FitSettings, StepPlan, TrainState, fit
    from .methods import count_params, describe
    from .objectives import build_objective

    mp = mixed_precision(cfg.training.precision, device)
    accelerator = make_accelerator(mixed_precision=mp, cpu=device == "cpu", grad_accum=cfg.training.grad_accum)
    strategy = strategy_of(accelerator)
    check_strategy(cfg, strategy)
    main = accelerator.is_main_process
    from ..models.cpu_alloc import install as install_allocator

    allocator = install_allocator(cfg.training.cpu_allocator, device)  # before any weight (models/cpu_alloc.py)
    if device == "cpu":
        accelerator.print(f"[tunelab] CPU tensors from: {allocator}")
    if main and overwrite:
        remove_output(run_dir, "run", inputs_of(cfg))
    if main:
        for d in (run_dir, run_dir / rundir.CHECKPOINTS):  # what an interrupted save left behind
            clean_leftovers(d)
    accelerator.wait_for_everyone()
    resume_from = ckpt.latest(run_dir / rundir.CHECKPOINTS) if resume else None
    if resume and resume_from is None and main:
        accelerator.print(f"[tunelab] --resume: no checkpoint in {run_dir / rundir.CHECKPOINTS}; starting from scratch")
    torch.manual_seed(cfg.training.seed)

    # 1. data
    tokenizer = config_tokenizer(cfg)
    with accelerator.main_process_first():
        if cfg.stage == "grpo":  # prompts with reference answers, rendered as evaluation renders them
            from .grpo import prepare_prompts

            prepared = prepare_prompts(cfg, tokenizer)
        else:
            prepared = prepare_from_config(cfg, tokenizer)
    fingerprint = {"config": C.to_dict(cfg), "data": prepared.stats.get("data_fingerprint"),
                   "model": identity(cfg.model.name) if not cfg.model.from_scratch else f"scratch:{cfg.model.name}"}
    if resumed and resume_from is not None:
        for what in ("data", "model"):
            if resumed.get(what) and resumed[what] != fingerprint[what]:
                raise C.ConfigError(f"--resume: the run's {what} changed since it was trained (same config, other "
                                    f"content: {resumed[what]} -> {fingerprint[what]}); resuming would mix two "
                                    "runs. Start a new run (another output.dir, or --overwrite)")
    train_ds, val_ds = prepared.load("train"), prepared.load("validation")
    t = cfg.training
    objective = build_objective(cfg.stage, **objective_settings(cfg, tokenizer, prepared.stats.get("end_of_turn", ""),
                                                                 run_dir))
    lengths = objective.lengths(train_ds)
    memory_plan = None
    if t.max_memory:  # 1b. --max-memory: micro-batch, accumulation and checkpointing chosen to fit, before any weight
        cfg, memory_plan = _fit_budget(cfg, accelerator, device, strategy, lengths, packing=objective.packing,
                                       supervised_fraction=prepared.stats.get("supervised_fraction"),
                                       keep=C.to_dict(rundir.read_config(run_dir)) if resume_from is not None else None)
        t, fingerprint["config"] = cfg.training, C.to_dict(cfg)  # the saved config is the plan used
    plan = StepPlan(lengths, packing=objective.packing, max_length=cfg.data.max_length,
                    batch_size=t.batch_size, grad_accum=t.grad_accum, world_size=accelerator.num_processes, seed=t.seed)
    steps_per_epoch = plan.steps_per_epoch
    if steps_per_epoch == 0:
        raise C.ConfigError(f"the training set ({len(train_ds)} examples) is smaller than one step's batch "
                            f"(training.batch_size {t.batch_size} x training.grad_accum {t.grad_accum} x "
                            f"{accelerator.num_processes} processes)")
    total_steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * steps_per_epoch))

    # 2. the estimate (tunelab estimate), printed now and checked against the measured peak at the end
    from ..estimate.check import baseline_mb
    from ..memory import peak_memory_mb

    est = _estimate(cfg, device, prepared.stats.get("supervised_fraction"), accelerator.num_processes, strategy,
                    show=main, seq_len=plan.widest or None)
    mem_base, (peak_before, _) = baseline_mb(accelerator.device), peak_memory_mb(accelerator.device)

    # 3. model, objective, optimizer; a resumed run's checkpoint restored before any file is written
    quant = qlora_settings(cfg.method, mp)
    model = load_trainable(cfg, quant, tokenizer=tokenizer, device=device, local_rank=accelerator.local_process_index)
    if t.trim_heap and allocator != "malloc-aligned":  # glibc < 2.38's holes handed back (models/heap.py);
        # tunelab's allocator leaves none to hand back
        from ..models.heap import trim_heap_during_forward

        trim_heap_during_forward(model, device=device)
    if t.recompute_elementwise and not t.gradient_checkpointing:  # fewer kept activations (models/recompute.py)
        from ..models.recompute import recompute_elementwise

        patched = recompute_elementwise(model)
        accelerator.print(f"[tunelab] recompute_elementwise: {patched} RMSNorm / MLP modules remake their outputs "
                          "in the backward" if patched else "[tunelab] recompute_elementwise: no module this "
                          "model has is one it knows (Llama/Qwen RMSNorm, gated MLP); activations kept as they are")
    trainable, total = count_params(model)
    from ..models.flops import flops_per_token

    per_token = flops_per_token(model.config, total, cfg.data.max_length)
    accelerator.print(f"[tunelab] {describe(model, cfg.method.name)}; {per_token / 1e9:.3g} GFLOPs per trained "
                      f"token (6N + 12·L·d·T at T={cfg.data.max_length})")
    if getattr(objective, "reference", None) == "cached":  # dpo: before any weight changes or restore
        from .dpo import with_reference_logps

        # 4-bit weights give other log-probabilities than the same model unquantized: part of the cache key
        model_id = fingerprint["model"] + (f" 4bit {sorted(quant.items())}" if quant else "")
        with accelerator.main_process_first():
            train_ds, val_ds = with_reference_logps(model, objective, prepared, train_ds, val_ds, model_id=model_id,
                                                    accelerator=accelerator, batch_size=t.batch_size)
    if getattr(objective, "reference", None) == "copy" and cfg.objective.kl_coef > 0:  # grpo, full/freeze
        import copy

        objective.ref_model = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer, scheduler = build_optimization(cfg, model, total_steps)
    if strategy.startswith("zero"):  # the engine needs the micro-batch size, accumulation and clipping
        configure_deepspeed(accelerator, batch_size=t.batch_size, grad_accum=t.grad_accum,
                            max_grad_norm=t.max_grad_norm)
    module, optimizer = accelerator.prepare(objective.wrap(model), optimizer)  # the scheduler stays tunelab's
    state = None
    if resume_from is not None:
        try:
            state = TrainState.from_dict(ckpt.load(resume_from, accelerator=accelerator, model=model, module=module,
                                                   optimizer=optimizer, scheduler=scheduler))
        except Exception as e:  # a checkpoint of another shape, a truncated file: nothing has been changed yet
            raise UserError(f"--resume: cannot restore {resume_from} into this run's model and optimizer "
                            f"({type(e).__name__}: {e}); no file of {run_dir} was changed") from None
        accelerator.print(f"[tunelab] resumed from {resume_from} at step {state.step}")
    if main and cfg.stage == "grpo":  # samples logged after the restored step are sampled again
        rundir.trim_rows(run_dir / rundir.SAMPLES, state.step if state else 0)

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / MARKER).is_file():
            mark(run_dir, "run")
        C.save(cfg, run_dir / rundir.CONFIG)
        (run_dir / rundir.DATA_STATS).write_text(json.dumps(prepared.stats, indent=2, ensure_ascii=False))
        history = (resumed or {}).get("resumes", [])
        if state is not None:  # what changed (safe keys only) is recorded with the step it changed at
            history = [*history, {"step": state.step, "changed": {k: list(v) for k, v in resumed["changes"].items()}}]
        rundir.write_fingerprint(run_dir, {**fingerprint, "resumes": history})
    logger = MetricsLogger(run_dir, enabled=main, report_to=cfg.output.report_to, config=C.to_dict(cfg),
                           resume_step=(state.step if state else 0) if resume else None)
    accelerator.print(f"[tunelab] {len(train_ds)} train / {len(val_ds)} validation examples, "
                      f"{steps_per_epoch} steps per epoch, {total_steps} steps, precision {mp}, device {device}"
                      f" x {accelerator.num_processes} ({strategy})")
    # 4. fit
    settings = FitSettings(total_steps=total_steps, max_grad_norm=t.max_grad_norm, log_every=t.log_every,
                           eval_every=t.eval_every, save_every=t.save_every, keep_last=t.keep_last,
                           patience=t.early_stopping_patience)
    try:
        state = fit(accelerator, model, module, objective, optimizer, scheduler, train_ds,
                    None if cfg.stage == "grpo" else val_ds, plan, settings,
                    run_dir=run_dir, logger=logger, state=state, callbacks=callbacks)
    finally:
        logger.close()
    if t.load_best and state.best_step is not None and state.best_step != state.step:
        # model/ gets the weights of the best validation loss (its checkpoint is never pruned)
        ckpt.load_weights(run_dir / rundir.CHECKPOINTS / f"step-{state.best_step:06d}", model)
        accelerator.print(f"[tunelab] training.load_best: model/ holds step {state.best_step} "
                          f"(validation loss {state.best_val:.4f}), not the last step {state.step}")

    # 5. summary and the model
    import platform

    from accelerate.utils import gather_object

    from ..env import environment
    from ..estimate.check import summary_entry
    from ..models.flops import mfu, peak_flops

    peak, peak_kind = peak_memory_mb(accelerator.device)
    peaks = gather_object([round(peak, 1)]) if accelerator.num_processes > 1 else [round(peak, 1)]
    o = cfg.optimizer
    summary = {
        "method": cfg.method.name, "optimizer": o.name, "stage": cfg.stage, "model": cfg.model.name,
        "trainable_params": trainable, "total_params": total, "peak_mem_mb": max(peaks), "peak_mem_kind": peak_kind,
        "peak_mem_mb_per_process": peaks, "cpu_allocator": allocator if device == "cpu" else None,
        "train_time_s": round(state.train_time_s, 3), "epoch_times_s": state.epoch_times_s,
        "steps": state.step, "epochs_completed": state.epoch, "tokens": state.tokens,
        "supervised_tokens": state.supervised_tokens,
        "tokens_per_s": round(state.tokens / max(state.train_time_s, 1e-9), 2),
        "supervised_tokens_per_s": round(state.supervised_tokens / max(state.train_time_s, 1e-9), 2),
        "final_train_loss": state.last_train_loss, "final_val_loss": state.last_val_loss,
        "best_val_loss": None if math.isinf(state.best_val) else state.best_val, "best_step": state.best_step,
        "model_step": state.best_step if t.load_best and state.best_step is not None else state.step,
        "stopped_early": state.stopped_early, "precision": mp, "device": device,
        "num_processes": accelerator.num_processes, "strategy": strategy,
        "flops_per_token": per_token,
        "mfu": mfu(state.tokens / max(state.train_time_s, 1e-9), per_token,
                   peak_flops(torch.cuda.get_device_name()) if device == "cuda" else None),
        "data_sources": prepared.stats.get("sources"),
        "memory_plan": None if memory_plan is None else {**memory_plan.to_dict(), "measured_peak_mb": round(peak, 1),
                                                         "measured_kind": peak_kind,
                                                         "under_budget": max(peaks) <= memory_plan.budget_mb},
        "estimate": None if est is None else summary_entry(
            est, peak_mb=peak, baseline_mb=mem_base, kind=peak_kind, peak_before_mb=peak_before if device == "cpu" else None),
        "environment": environment(torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"),
    }
    # a sharded model is gathered whole (every process takes part) for a plain `from_pretrained` directory
    inner = accelerator.unwrap_model(module).model
    whole = ckpt.full_state(inner, keep=main) if strategy in ckpt.COLLECTIVE else None
    accelerator.wait_for_everyone()
    if main:
        meta = rundir.build_metadata(
            base_model=cfg.model.name, tokenizer=cfg.model.tokenizer or cfg.model.name, method=cfg.method.name,
            stage=cfg.stage, template=prepared.stats["template"], enable_thinking=cfg.data.enable_thinking,
            supervise=cfg.data.supervise, from_scratch=cfg.model.from_scratch, quantization=quant)
        rundir.save_model(inner if whole is None else _Gathered(inner, whole), tokenizer, run_dir / rundir.MODEL, meta)
        (run_dir / rundir.SUMMARY).write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the process group of several processes
    return summary


class _Gathered:
    """`model` whose `save_pretrained` writes `state_dict`: the weights gathered from every process's
    shards (a PeftModel keeps the adapter's part of it, as it does of its own state_dict)."""

    def __init__(self, model: Any, state_dict: dict[str, Any]):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, path: Any, **kwargs: Any) -> None:
        self.model.save_pretrained(path, state_dict=self.state_dict, **kwargs)

"""The training loop: one explicit loop for every method, optimizer, stage and device layout.

Read top to bottom, `fit` does in order: take the epoch's planned steps, run each step's
micro-batches (forward, loss, backward), clip, optimizer and scheduler step, log, evaluate,
checkpoint. Methods (full, freeze, LoRA, QLoRA, ...) only change which parameters are trainable; the
stage's objective (objectives.py) builds batches, counts loss tokens and supplies the loss module;
accelerate supplies devices, mixed precision and data parallelism.

Loss normalisation: each step's loss is the sum of token losses over the *whole* accumulated batch
(all micro-batches, all processes) divided by its number of supervised tokens. So batch 8 x 1
step, batch 1 x 8 accumulation steps and 2 processes x 4 give the same update (tested), unlike the
common mean-per-micro-batch, which over-weights short examples.

Several processes (DDP, FSDP, DeepSpeed ZeRO-2/3; train/distributed.py) run this same loop, in the
engines' own terms: each micro-batch tells accelerate whether it ends the step (`sync_gradients`:
DDP and FSDP reduce gradients then, DeepSpeed's engine steps its optimizer then, inside `backward`),
and the loss handed to `backward` is scaled so that what the engine divides by (accumulation steps)
and averages over (processes) turns back into the step's token sum over its token count.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import rundir
from ..data.batching import step_plan, widest_row
from ..errors import TrainingDiverged
from ..memory import peak_memory_mb
from . import checkpoint as ckpt
from .metrics import MetricsLogger


class StepPlan:
    """Each epoch as optimizer steps -> micro-batches -> units -> example indices (data/batching.py),
    computed once per epoch; epoch e is shuffled with seed + e, the same on every process."""

    def __init__(self, lengths: list[int], *, packing: bool, max_length: int, batch_size: int, grad_accum: int,
                 world_size: int, seed: int):
        self.lengths, self.seed = lengths, seed
        self.kwargs = dict(packing=packing, max_length=max_length, batch_size=batch_size, grad_accum=grad_accum,
                           world_size=world_size, drop_last=world_size > 1)
        self._cached: tuple[int, list] | None = None

    def epoch(self, e: int) -> list:
        if self._cached is None or self._cached[0] != e:
            self._cached = (e, step_plan(self.lengths, seed=self.seed + e, **self.kwargs))
        return self._cached[1]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.epoch(0))

    @property
    def widest(self) -> int:
        """The longest row of epoch 0: the sequence length the memory estimate is made for."""
        return widest_row(self.lengths, packing=self.kwargs["packing"], max_length=self.kwargs["max_length"],
                          seed=self.seed)


@dataclass
class FitSettings:
    total_steps: int
    max_grad_norm: float = 1.0  # 0: no clipping
    log_every: int = 10
    eval_every: int = 50  # 0: only at epoch ends and at the end
    save_every: int = 100  # 0: only the best and the last checkpoint
    keep_last: int = 2
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint's state.json and restored on resume."""
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0
    epoch_times_s: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    epoch_time_s: float = 0.0
    tokens: int = 0
    supervised_tokens: int = 0
    last_train_loss: float | None = None
    last_val_loss: float | None = None
    last_eval_step: int | None = None
    stopped_early: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def evaluate_loss(accelerator: Any, module: torch.nn.Module, objective: Any, ds: Any, plan: StepPlan) -> float:
    """Validation loss = sum of token losses / number of supervised tokens over the whole set."""
    if ds is None or len(ds) == 0:
        return float("nan")
    world, rank = accelerator.num_processes, accelerator.process_index
    val_plan = StepPlan(objective.lengths(ds), packing=plan.kwargs["packing"],
                        max_length=plan.kwargs["max_length"], batch_size=plan.kwargs["batch_size"], grad_accum=1,
                        world_size=1, seed=0)
    batches = [units for step in val_plan.epoch(0) for units in step]
    mine = batches[rank::world]
    unwrapped = accelerator.unwrap_model(module)  # no DDP buffer broadcast; FSDP/ZeRO-3 hooks stay on the layers
    unwrapped.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        # every process runs as many forward passes (FSDP and ZeRO-3 gather weights inside each one);
        # a process with one batch fewer repeats its first and drops the result
        for i in range(-(-len(batches) // world)):
            units = mine[i] if i < len(mine) else batches[0]
            batch = {k: v.to(accelerator.device) for k, v in objective.collate(ds, units).items()}
            objective.begin_step(torch.tensor(objective.count(batch), dtype=torch.float64))  # this batch alone
            loss, n = unwrapped(**batch)
            if i < len(mine):
                total += torch.stack([loss.double(), n.double()])
    if hasattr(unwrapped, "reshard"):  # FSDP2's root keeps its weights gathered after a forward without backward
        unwrapped.reshard()
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1].clamp(min=1)).item()


def fit(accelerator: Any, model: torch.nn.Module, module: torch.nn.Module, objective: Any, optimizer: Any,
        scheduler: Any, train_ds: Any, val_ds: Any, plan: StepPlan, settings: FitSettings, *, run_dir: Path,
        logger: MetricsLogger, state: TrainState | None = None,
        callbacks: tuple[Callable[[int, TrainState], None], ...] = ()) -> TrainState:
    """Train `module` (the objective's wrapper of `model`, prepared by accelerate) for settings.total_steps,
    from `state` (a resumed run's, restored with its checkpoint) or from the start."""
    s = settings
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    state = state or TrainState()
    params = [p for p in model.parameters() if p.requires_grad]
    ckpt_dir = Path(run_dir) / rundir.CHECKPOINTS
    has_val = val_ds is not None and len(val_ds) > 0

    def save_checkpoint() -> None:  # every process takes part (shards are gathered or written by each)
        ckpt.save(ckpt_dir, step=state.step, accelerator=accelerator, model=model, module=module,
                  optimizer=optimizer, scheduler=scheduler, state=state.as_dict(), keep_last=s.keep_last,
                  best_step=state.best_step)

    def epoch_progress() -> float:
        return round(state.epoch + state.step_in_epoch / max(1, len(plan.epoch(state.epoch))), 4)

    def run_eval() -> bool:
        """Evaluate; return True when early stopping says stop."""
        val = evaluate_loss(accelerator, module, objective, val_ds, plan)
        state.last_val_loss, state.last_eval_step = val, state.step
        mem, _ = peak_memory_mb(accelerator.device)
        logger.log({"step": state.step, "epoch": epoch_progress(), "split": "val", "loss": val,
                    **objective.metrics("val", accelerator),
                    "peak_mem_mb": round(mem, 1), "elapsed_s": round(state.train_time_s, 3)})
        if val < state.best_val:
            state.best_val, state.best_step, state.bad_evals = val, state.step, 0
            save_checkpoint()  # the best checkpoint is kept by pruning
            return False
        state.bad_evals += 1
        return bool(s.patience) and state.bad_evals >= s.patience

    from tqdm.auto import tqdm

    bar = tqdm(total=s.total_steps, initial=state.step, disable=not main, desc="train", dynamic_ncols=True)
    window = {"loss": 0.0, "norm": 0, "sup": 0, "tokens": 0, "time": 0.0}
    stop = False
    while state.step < s.total_steps and not stop:
        steps = plan.epoch(state.epoch)
        for k in range(state.step_in_epoch, len(steps)):
            t0 = time.perf_counter()
            objective.prepare_step(state.step)  # e.g. GRPO seeds its rollouts by step: resume samples the same
            micro = [{key: v.to(accelerator.device) for key, v in batch.items()}
                     for batch in objective.collate_step(train_ds, steps[k][rank::world])]
            # the objective's counts (loss normaliser, input tokens, and any it needs itself) over the whole
            # step and every process: what each micro-batch's summed loss is divided by
            counts = torch.tensor([list(objective.count(b)) for b in micro], dtype=torch.float64,
                                  device=accelerator.device).sum(0)
            totals = accelerator.reduce(counts, "sum")
            objective.begin_step(totals)
            n_norm, n_tok, n_sup = totals[:3].tolist()  # for sft/pt the normaliser is the supervised tokens

            # forward, loss, backward over the micro-batches; the last one ends the step. (Not accelerate's
            # `accumulate`, which counts calls: a short last step of an epoch would put it out of phase.)
            module.train()
            step_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            for i, batch in enumerate(micro):
                last = i == len(micro) - 1
                accelerator.sync_gradients = last  # DDP/FSDP reduce gradients, DeepSpeed steps, on the last only
                with contextlib.nullcontext() if last else accelerator.no_sync(module):
                    with accelerator.autocast():
                        loss_sum, _ = module(**batch)
                    # backward divides by the accumulation steps and the processes' gradients are averaged:
                    # multiplying by both leaves the step's loss sum over its normaliser (tokens, pairs, ...)
                    accelerator.backward(loss_sum * (world * accelerator.gradient_accumulation_steps / max(n_norm, 1)))
                step_loss += loss_sum.detach().double()

            # the norm of the whole gradient, clipped to max_grad_norm (DeepSpeed clips inside its step
            # and reports the norm); 0 (off) clips at infinity, which only measures
            grad_norm = accelerator.clip_grad_norm_(params, s.max_grad_norm or math.inf)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss_value = accelerator.reduce(step_loss, "sum").item() / max(n_norm, 1)
            state.step += 1
            state.step_in_epoch = k + 1
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss is {loss_value} at step {state.step}; training stopped. "
                                       f"Last good checkpoint: {ckpt.latest(ckpt_dir) or 'none'}")
            dt = time.perf_counter() - t0
            state.train_time_s += dt
            state.epoch_time_s += dt
            state.tokens += int(n_tok)
            state.supervised_tokens += int(n_sup)
            state.last_train_loss = loss_value
            window["loss"] += loss_value * n_norm
            window["norm"] += n_norm
            window["sup"] += n_sup
            window["tokens"] += n_tok
            window["time"] += dt
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{n_tok / dt:.0f}")

            if state.step % s.log_every == 0 or state.step == s.total_steps:
                mem, _ = peak_memory_mb(accelerator.device)
                logger.log({"step": state.step, "epoch": epoch_progress(), "split": "train",
                            "loss": window["loss"] / max(window["norm"], 1), "lr": lr, "grad_norm": grad_norm,
                            "tokens": int(window["tokens"]), "supervised_tokens": int(window["sup"]),
                            "tokens_per_s": round(window["tokens"] / window["time"], 2),
                            "supervised_tokens_per_s": round(window["sup"] / window["time"], 2),
                            "peak_mem_mb": round(mem, 1), "elapsed_s": round(state.train_time_s, 3),
                            **objective.metrics("train", accelerator)})
                window = {"loss": 0.0, "norm": 0, "sup": 0, "tokens": 0, "time": 0.0}
            if s.eval_every and state.step % s.eval_every == 0 and has_val:
                stop = run_eval()
            if s.save_every and state.step % s.save_every == 0 and state.best_step != state.step:
                save_checkpoint()
            for cb in callbacks:
                cb(state.step, state)
            if stop or state.step >= s.total_steps:
                break
        if state.step_in_epoch == len(steps):  # the epoch is complete
            state.epoch_times_s.append(round(state.epoch_time_s, 3))
            state.epoch, state.step_in_epoch, state.epoch_time_s = state.epoch + 1, 0, 0.0
            if has_val and state.last_eval_step != state.step:
                stop = run_eval() or stop
    bar.close()
    if has_val and state.last_eval_step != state.step:
        run_eval()
    if state.step_in_epoch:  # a partial last epoch still has a time
        state.epoch_times_s.append(round(state.epoch_time_s, 3))
    state.stopped_early = stop
    if not (ckpt.list_steps(ckpt_dir) and ckpt.list_steps(ckpt_dir)[-1] == state.step):
        save_checkpoint()
    return state

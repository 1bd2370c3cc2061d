"""The training loop: one explicit loop for every method, optimizer and device layout.

Read top to bottom, `fit` does in order: plan the epoch's steps, run each step's micro-batches
(forward, loss, backward), clip, optimizer and scheduler step, log, evaluate, checkpoint. Methods
(full, freeze, LoRA, QLoRA, ...) only change which parameters are trainable; accelerate supplies
devices, mixed precision and data parallelism (DDP, FSDP, DeepSpeed) without changing this code.

Loss normalisation: each step's loss is the sum of token losses over the *whole* accumulated batch
(all micro-batches, all processes) divided by its number of supervised tokens. So batch 8 x 1
step, batch 1 x 8 accumulation steps and 2 processes x 4 give the same update (tested), unlike the
common mean-per-micro-batch, which over-weights short examples.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.batching import collate_packed, collate_padded, step_plan
from ..data.render import IGNORE_INDEX
from . import checkpoint as ckpt
from ..errors import TrainingDiverged
from .metrics import MetricsLogger, peak_memory_mb


def _collate(ds: Any, units: list[list[int]], *, packing: bool, pad_id: int) -> dict[str, torch.Tensor]:
    idx = [i for u in units for i in u]
    rows = ds[idx] if idx else {"input_ids": [], "labels": []}
    examples = [{"input_ids": a, "labels": b} for a, b in zip(rows["input_ids"], rows["labels"])]
    if packing:
        it = iter(examples)
        return collate_packed([[next(it) for _ in u] for u in units], pad_id)
    return collate_padded(examples, pad_id)


def _supervised(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _real_tokens(batch: dict[str, torch.Tensor]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())  # packed rows: padding only at a row's end, negligible


def evaluate_loss(accelerator: Any, loss_module: torch.nn.Module, ds: Any, *, packing: bool, max_length: int,
                  batch_size: int, pad_id: int) -> float:
    """Validation loss = sum of token losses / number of supervised tokens over the whole set."""
    if ds is None or len(ds) == 0:
        return float("nan")
    lengths = [len(x) for x in ds["input_ids"]]
    world, rank = accelerator.num_processes, accelerator.process_index
    module = accelerator.unwrap_model(loss_module)  # no DDP collectives: ranks may run unequal batches
    module.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        for step in step_plan(lengths, packing=packing, max_length=max_length, batch_size=batch_size, seed=0):
            for units in step[rank::world]:
                batch = {k: v.to(accelerator.device) for k, v in _collate(ds, units, packing=packing, pad_id=pad_id).items()}
                loss, n = module(**batch)
                total += torch.stack([loss.double(), n.double()])
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1].clamp(min=1)).item()


def fit(
    accelerator: Any, model: torch.nn.Module, loss_module: torch.nn.Module, optimizer: Any, scheduler: Any,
    train_ds: Any, val_ds: Any, *, run_dir: Path, packing: bool, max_length: int, batch_size: int,
    grad_accum: int, total_steps: int, max_grad_norm: float, log_every: int, eval_every: int, save_every: int,
    keep_last: int, patience: int, seed: int, pad_id: int, logger: MetricsLogger, resume_from: Path | None = None,
    callbacks: tuple[Callable[[int, dict], None], ...] = (),
) -> dict[str, Any]:
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    lengths = [len(x) for x in train_ds["input_ids"]]

    def plan(epoch: int) -> list:
        return step_plan(lengths, packing=packing, max_length=max_length, batch_size=batch_size,
                         grad_accum=grad_accum, world_size=world, seed=seed + epoch, drop_last=world > 1)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "step_in_epoch": 0, "best_val": math.inf, "best_step": None,
                             "bad_evals": 0, "epoch_times_s": [], "train_time_s": 0.0, "epoch_time_s": 0.0,
                             "tokens": 0, "supervised_tokens": 0, "last_train_loss": None, "last_val_loss": None,
                             "stopped_early": False}
    if resume_from is not None:
        state.update(ckpt.load(resume_from, model=model, optimizer=optimizer, scheduler=scheduler))
        accelerator.print(f"[tunelab] resumed from {resume_from} at step {state['step']}")
    params = [p for p in model.parameters() if p.requires_grad]
    ckpt_dir = Path(run_dir) / "checkpoints"
    has_val = val_ds is not None and len(val_ds) > 0

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        if main:
            ckpt.save(ckpt_dir, step=state["step"], model=model, optimizer=optimizer, scheduler=scheduler,
                      state=state, keep_last=keep_last, best_step=state["best_step"])
        accelerator.wait_for_everyone()

    def run_eval() -> bool:
        """Evaluate; return True when early stopping says stop."""
        val = evaluate_loss(accelerator, loss_module, val_ds, packing=packing, max_length=max_length,
                            batch_size=batch_size, pad_id=pad_id)
        state["last_val_loss"] = val
        state["last_eval_step"] = state["step"]
        mem, _ = peak_memory_mb(accelerator.device)
        logger.log({"step": state["step"], "epoch": round(state["epoch"] + state["step_in_epoch"] / n_steps, 4),
                    "split": "val", "loss": val, "peak_mem_mb": round(mem, 1),
                    "elapsed_s": round(state["train_time_s"], 3)})
        if val < state["best_val"]:
            state.update(best_val=val, best_step=state["step"], bad_evals=0)
            save_checkpoint()  # the best checkpoint is kept by pruning
            return False
        state["bad_evals"] += 1
        return bool(patience) and state["bad_evals"] >= patience

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["step"], disable=not main, desc="train", dynamic_ncols=True)
    window = {"loss": 0.0, "sup": 0, "tokens": 0, "time": 0.0}
    stop = False
    n_steps = len(plan(state["epoch"]))
    if n_steps == 0:
        raise ValueError(f"the training set ({len(lengths)} examples) is smaller than one step's batch "
                         f"({batch_size} x {grad_accum} x {world} processes)")
    while state["step"] < total_steps and not stop:
        steps = plan(state["epoch"])
        for k in range(state["step_in_epoch"], len(steps)):
            t0 = time.perf_counter()
            micro = [
                {key: v.to(accelerator.device) for key, v in _collate(train_ds, units, packing=packing, pad_id=pad_id).items()}
                for units in steps[k][rank::world]
            ]
            counts = torch.tensor([sum(_supervised(b) for b in micro), sum(_real_tokens(b) for b in micro)],
                                  dtype=torch.float64, device=accelerator.device)
            n_sup, n_tok = accelerator.reduce(counts, "sum").tolist()

            # forward, loss, backward over the micro-batches; gradients sync on the last one only
            loss_module.train()
            step_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            for i, batch in enumerate(micro):
                sync = i == len(micro) - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(loss_module):
                    with accelerator.autocast():
                        loss_sum, _ = loss_module(**batch)
                    # DDP averages gradients over processes; scaling by `world` turns that into a sum
                    accelerator.backward(loss_sum * (world / max(n_sup, 1)))
                step_loss += loss_sum.detach().double()

            if max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(params, max_grad_norm))
            else:
                grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss_value = accelerator.reduce(step_loss, "sum").item() / max(n_sup, 1)
            state["step"] += 1
            state["step_in_epoch"] = k + 1
            if not math.isfinite(loss_value):
                last = ckpt.latest(ckpt_dir)
                raise TrainingDiverged(f"loss is {loss_value} at step {state['step']}; training stopped. "
                                       f"Last good checkpoint: {last or 'none'}")
            dt = time.perf_counter() - t0
            state["train_time_s"] += dt
            state["epoch_time_s"] += dt
            state["tokens"] += int(n_tok)
            state["supervised_tokens"] += int(n_sup)
            state["last_train_loss"] = loss_value
            window["loss"] += loss_value * n_sup
            window["sup"] += n_sup
            window["tokens"] += n_tok
            window["time"] += dt
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{n_tok / dt:.0f}")

            if state["step"] % log_every == 0 or state["step"] == total_steps:
                mem, _ = peak_memory_mb(accelerator.device)
                logger.log({"step": state["step"], "epoch": round(state["epoch"] + (k + 1) / len(steps), 4),
                            "split": "train", "loss": window["loss"] / max(window["sup"], 1), "lr": lr,
                            "grad_norm": grad_norm, "tokens": int(window["tokens"]),
                            "supervised_tokens": int(window["sup"]),
                            "tokens_per_s": round(window["tokens"] / window["time"], 2),
                            "supervised_tokens_per_s": round(window["sup"] / window["time"], 2),
                            "peak_mem_mb": round(mem, 1), "elapsed_s": round(state["train_time_s"], 3)})
                window = {"loss": 0.0, "sup": 0, "tokens": 0, "time": 0.0}
            if eval_every and state["step"] % eval_every == 0 and has_val:
                stop = run_eval()
            if save_every and state["step"] % save_every == 0 and state["best_step"] != state["step"]:
                save_checkpoint()
            for cb in callbacks:
                cb(state["step"], state)
            if stop or state["step"] >= total_steps:
                break
        if state["step_in_epoch"] == len(steps):  # the epoch is complete
            state["epoch_times_s"].append(round(state["epoch_time_s"], 3))
            state.update(epoch=state["epoch"] + 1, step_in_epoch=0, epoch_time_s=0.0)
            if has_val and state.get("last_eval_step") != state["step"]:
                stop = run_eval() or stop
    bar.close()
    if has_val and state.get("last_eval_step") != state["step"]:
        run_eval()
    if state["step_in_epoch"]:  # a partial last epoch still has a time
        state["epoch_times_s"].append(round(state["epoch_time_s"], 3))
    state["stopped_early"] = stop
    if not (ckpt.list_steps(ckpt_dir) and ckpt.list_steps(ckpt_dir)[-1] == state["step"]):
        save_checkpoint()
    return state

"""Checkpoints that survive crashes and resume exactly, under every strategy (train/distributed.py).

A checkpoint `checkpoints/step-000120/` holds
- `trainable.safetensors`: the trainable weights, whole (gathered from their shards under FSDP and ZeRO-3);
- the optimizer state: `optimizer.pt` (one process, DDP), or one shard per process where the engine
  keeps it sharded: `fsdp/` (FSDP, written by torch.distributed.checkpoint) and `deepspeed/`
  (DeepSpeed's own checkpoint of its partitioned optimizer state and fp32 master weights);
- `scheduler.pt`, every process's RNG states (`rng.pt`, and `rng-rank{r}.pt` for process r > 0: LoRA
  dropout draws differently on each process), and `state.json` (step, epoch, position in the epoch,
  best validation loss, early-stopping counter, and the strategy and number of processes that wrote it).

It is written under a temporary name and renamed when complete, so the newest directory named `step-*`
is always whole; shards are written by every process into `.step-NNNNNN.tmp-shards` first, which an
interrupted save leaves for the next start to clean. Only the last `keep_last` are kept, plus the one
with the best validation loss. Every `torch.load` here uses `weights_only=True` (DeepSpeed and
torch.distributed.checkpoint read their own shards). A checkpoint resumes only under the strategy and
number of processes that wrote it: the step plan depends on the number of processes, the shards on both.

Why our own format rather than `accelerator.save_state`: it is small (trainable weights only, so a
LoRA checkpoint is megabytes), readable, and loads without unpickling arbitrary objects.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..paths import atomic_dir
from .distributed import full, set_full, strategy_of

STEP_DIR = re.compile(r"^step-(\d+)$")
COLLECTIVE = ("fsdp", "zero3")  # strategies whose weights are sharded: gathering them takes every process


def trainable_state(model: torch.nn.Module, *, keep: bool = True) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the CPU. Under FSDP and ZeRO-3 every process must call this
    (gathering is collective); a process with keep=False lets each whole tensor go at once."""
    return _whole({n: p for n, p in model.named_parameters() if p.requires_grad}, keep)


def full_state(model: torch.nn.Module, *, keep: bool = True) -> dict[str, torch.Tensor]:
    """Every weight and buffer of `model`, whole, on the CPU: the final model of a sharded run. A tied
    weight (the output head sharing the embedding) appears once, under its first name, as
    `save_pretrained` writes it."""
    seen: set[int] = set()
    tensors = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            tensors[name] = t
    return _whole(tensors, keep)


def _whole(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        whole = full(t)
        if keep:
            out[name] = whole.detach().contiguous().cpu()
    return out


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: Path, *, step: int, accelerator: Any, model: torch.nn.Module, module: torch.nn.Module,
         optimizer: Any, scheduler: Any, state: dict[str, Any], keep_last: int, best_step: int | None) -> Path:
    """Write checkpoint `step`. Every process calls this: sharded weights are gathered and shards are
    written by each process; the main process writes everything else."""
    from accelerate.utils import gather_object

    root, main = Path(root), accelerator.is_main_process
    out = root / f"step-{step:06d}"
    strategy = strategy_of(accelerator)
    weights = trainable_state(model, keep=main) if main or strategy in COLLECTIVE else {}
    rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    shards = root / f".{out.name}.tmp-shards"
    optim = None
    if strategy.startswith("zero"):  # the engine's partitioned optimizer state and fp32 master weights
        module.save_checkpoint(str(shards), tag="deepspeed", save_latest=False, exclude_frozen_parameters=True)
    elif strategy == "fsdp":  # each process's shard of the optimizer state
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save({"optimizer": get_optimizer_state_dict(module, optimizer.optimizer)}, checkpoint_id=shards / "fsdp")
    elif main:
        optim = optimizer.state_dict()
    accelerator.wait_for_everyone()  # every shard is on disk
    if main:
        with atomic_dir(out, owned=True) as tmp:
            save_file(weights, str(tmp / "trainable.safetensors"))
            if optim is not None:
                torch.save(optim, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            for rank, rng in enumerate(rngs):
                torch.save(rng, tmp / (f"rng-rank{rank}.pt" if rank else "rng.pt"))
            if shards.is_dir():
                for part in shards.iterdir():
                    part.rename(tmp / part.name)
                shards.rmdir()
            (tmp / "state.json").write_text(json.dumps({**state, "step": step, "strategy": strategy,
                                                        "num_processes": accelerator.num_processes}, indent=2))
        prune(root, keep_last=keep_last, keep=best_step)
    accelerator.wait_for_everyone()
    return out


def list_steps(root: Path) -> list[int]:
    if not Path(root).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(root).iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())


def prune(root: Path, *, keep_last: int, keep: int | None = None) -> None:
    steps = list_steps(root)
    for s in steps[: max(0, len(steps) - keep_last)]:
        if s != keep:
            shutil.rmtree(Path(root) / f"step-{s:06d}", ignore_errors=True)


def latest(root: Path) -> Path | None:
    steps = list_steps(root)
    return Path(root) / f"step-{steps[-1]:06d}" if steps else None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Only the trainable weights of a checkpoint, into `model` (training.load_best); every process calls it."""
    params = dict(model.named_parameters())
    for name, tensor in load_file(str(path / "trainable.safetensors")).items():
        set_full(params[name], tensor)


def load(path: Path, *, accelerator: Any, model: torch.nn.Module, module: torch.nn.Module, optimizer: Any,
         scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint into an already built (and prepared) model/optimizer/scheduler; returns its
    state. Every process calls this."""
    saved = json.loads((path / "state.json").read_text())
    strategy, world = strategy_of(accelerator), accelerator.num_processes
    wrote = (saved.get("strategy", strategy), saved.get("num_processes", world))  # older checkpoints: not recorded
    if wrote != (strategy, world):
        raise ValueError(f"{path} was written by {wrote[1]} process(es) under strategy {wrote[0]}, this run has "
                         f"{world} under {strategy}; resume with the same --nproc and --strategy")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:3]}...); "
                         "was it written by a run with another method or model?")
    shape = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in params.items()}  # ZeRO-3 keeps 1/N locally
    wrong = [f"{n} {tuple(t.shape)} != {shape[n]}" for n, t in weights.items()
             if n in shape and tuple(t.shape) != shape[n]]  # copy_ would broadcast instead of failing
    if wrong:
        raise ValueError(f"{path}: checkpoint shapes do not match the model: {wrong[:3]}")
    if strategy.startswith("zero"):  # weights, fp32 master weights and optimizer state: the engine's shards
        loaded, _ = module.load_checkpoint(str(path), tag="deepspeed", load_module_strict=False,
                                           load_optimizer_states=True, load_lr_scheduler_states=False)
        if loaded is None:
            raise ValueError(f"{path}: no DeepSpeed shards in {path / 'deepspeed'}")
    else:
        for name, tensor in weights.items():
            set_full(params[name], tensor)
        if strategy == "fsdp":  # each process reads its own shard into the optimizer's sharded state
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

            shards = {"optimizer": get_optimizer_state_dict(module, optimizer.optimizer)}
            dcp.load(shards, checkpoint_id=path / "fsdp")
            set_optimizer_state_dict(module, optimizer.optimizer, shards["optimizer"])
        else:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rank = accelerator.process_index
    own = path / f"rng-rank{rank}.pt"
    set_rng_state(torch.load(own if rank and own.exists() else path / "rng.pt", weights_only=True))
    return saved

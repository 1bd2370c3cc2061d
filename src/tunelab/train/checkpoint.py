"""Checkpoints that survive crashes and resume exactly.

A checkpoint `checkpoints/step-000120/` holds the trainable weights (safetensors), the optimizer and
scheduler states, every RNG state, and `state.json` (step, epoch, position in the epoch, best
validation loss, early-stopping counter). It is written under a temporary name and renamed when
complete, so the newest directory named `step-*` is always whole. Only the last `keep_last` are kept,
plus the one with the best validation loss. Every `torch.load` here uses `weights_only=True`.

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

STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


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


def save(root: Path, *, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: dict[str, Any],
         keep_last: int, best_step: int | None) -> Path:
    out = Path(root) / f"step-{step:06d}"
    with atomic_dir(out, owned=True) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    prune(root, keep_last=keep_last, keep=best_step)
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
    """Only the trainable weights of a checkpoint, into `model` (training.load_best)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(str(path / "trainable.safetensors")).items():
            params[name].copy_(tensor)


def load(path: Path, *, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint into an already built model/optimizer/scheduler; returns its state."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:3]}...); "
                         "was it written by a run with another method or model?")
    wrong = [f"{n} {tuple(t.shape)} != {tuple(params[n].shape)}" for n, t in weights.items()
             if n in params and t.shape != params[n].shape]  # copy_ would broadcast instead of failing
    if wrong:
        raise ValueError(f"{path}: checkpoint shapes do not match the model: {wrong[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())

"""Optimizers and learning-rate schedules for tunelab's training loop.

Three small steps, each callable alone (the recipe reads the config and passes plain arguments):

    groups = param_groups(model, lr=2e-4, weight_decay=0.01, lora_plus_ratio=16)   # who decays, who is fast
    opt = build_optimizer("adamw", groups, lr=2e-4, weight_decay=0.01)              # OPTIMIZERS[name]
    sched = build_scheduler("cosine", opt, total_steps=1000, warmup_ratio=0.03)    # SCHEDULES[name]

Schedule convention (the one of transformers' `get_cosine_schedule_with_warmup`): the multiplier of
the lr at scheduler step `s` is `s / warmup` while `s < warmup`, so with warmup > 0 the very first
update uses lr * 0; then `constant` stays at 1.0, `linear` falls to `min_lr_ratio` at `total_steps`
and `cosine` follows half a cosine down to `min_lr_ratio` at `total_steps` (and stays there after).
The multiplier scales each group's own lr, so the LoRA+ ratio holds throughout.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

# ---------------------------------------------------------------------------------------------
# parameter groups


def _no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, normalisation weights and DoRA magnitudes: decaying them towards 0 only hurts
    (a LayerNorm gain of 0 switches the layer off); all of them are 1-D, the name test catches
    the odd 2-D exception and makes the intent readable."""
    return (param.ndim <= 1 or "norm" in name.lower() or name.endswith(".bias")
            or "lora_magnitude_vector" in name)


def param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float,
                 lora_plus_ratio: float | None = None) -> list[dict]:
    """Trainable parameters split into optimizer groups with their own "lr", "weight_decay" and a
    "name" for logging: decay, no_decay and, with LoRA+, lora_B / lora_B_no_decay at lr * ratio.

    LoRA+ (Hayou et al. 2024): B starts at zero and must move far more than A, so it gets a larger lr
    (ratio ~16). Groups are ordered base lr first, because the loop logs the lr of group 0."""
    # (is lora_B under LoRA+, decays) -> group name
    names = {(False, True): "decay", (False, False): "no_decay",
             (True, True): "lora_B", (True, False): "lora_B_no_decay"}
    buckets: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            fast = lora_plus_ratio is not None and "lora_B" in name
            buckets.setdefault(names[fast, not _no_decay(name, p)], []).append(p)
    if not buckets:
        raise ValueError("no trainable parameters: every parameter of the model has requires_grad=False")
    groups = []
    for (fast, decay), group in names.items():  # dicts keep insertion order: base lr first
        if group in buckets:
            groups.append({"params": buckets[group], "name": group, "lr": lr * lora_plus_ratio if fast else lr,
                           "weight_decay": weight_decay if decay else 0.0})
    return groups


# ---------------------------------------------------------------------------------------------
# optimizers: name -> builder(groups, lr, weight_decay, betas, eps, momentum, nesterov)


def _fused_ok(groups: list[dict]) -> bool:
    """Whether torch has fused AdamW kernels for every parameter's device and dtype. Recent torch
    only finds out at the first step(), too late to fall back, so we ask before building."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices as devices
        supported = set(devices())
    except ImportError:  # private helper moved: assume the two devices fused has always covered
        supported = {"cuda", "cpu"}
    return all(p.is_floating_point() and p.device.type in supported for g in groups for p in g["params"])


def _adamw(groups, *, lr, weight_decay, betas, eps, **_):
    # fused runs the whole update in one kernel per device/dtype (fastest); where it is not
    # supported (e.g. complex parameters) foreach handles everything AdamW does. Older torch
    # checks at construction instead, hence the except as well.
    kwargs = dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    if _fused_ok(groups):
        try:  # copies: torch writes its defaults (fused=True too) into the group dicts it is given
            opt = torch.optim.AdamW([dict(g) for g in groups], fused=True, **kwargs)
            opt.tunelab_impl = "fused"
            return opt
        except (RuntimeError, ValueError):
            pass
    opt = torch.optim.AdamW(groups, foreach=True, **kwargs)
    opt.tunelab_impl = "foreach"
    return opt


def _sgd(groups, *, lr, weight_decay, momentum, nesterov, **_):
    if nesterov and momentum <= 0:
        raise ValueError(f"sgd: nesterov=True needs momentum > 0 (got momentum={momentum}); "
                         "Nesterov's look-ahead is a step along the momentum buffer")
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def _adamw_8bit(groups, *, lr, weight_decay, betas, eps, **_):
    # imported here: bitsandbytes is an optional extra and slow to import
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError("optimizer 'adamw_8bit' needs bitsandbytes: pip install bitsandbytes") from e
    return bnb.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


def _adafactor(groups, *, lr, weight_decay, **_):
    # Adafactor has its own eps pair and beta2 schedule; Adam's betas/eps do not apply
    if hasattr(torch.optim, "Adafactor"):  # torch >= 2.5
        return torch.optim.Adafactor(groups, lr=lr, weight_decay=weight_decay)
    from transformers.optimization import Adafactor

    # a fixed lr that our scheduler drives, not Adafactor's own relative-step schedule
    return Adafactor(groups, lr=lr, weight_decay=weight_decay, scale_parameter=False,
                     relative_step=False, warmup_init=False)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": _sgd,
    "adamw_8bit": _adamw_8bit,
    "adafactor": _adafactor,
}


def _unknown(kind: str, name: str, known: dict) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


def build_optimizer(name: str, groups: list[dict], *, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """The optimizer `name` over `groups`; a group's own "lr"/"weight_decay" override these defaults."""
    if name not in OPTIMIZERS:
        raise _unknown("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name](groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                            momentum=momentum, nesterov=nesterov)


# ---------------------------------------------------------------------------------------------
# schedules: name -> shape(progress in [0, 1], min_lr_ratio) -> multiplier after warmup


def _constant(progress: float, min_lr_ratio: float) -> float:
    return 1.0


def _linear(progress: float, min_lr_ratio: float) -> float:
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)


def _cosine(progress: float, min_lr_ratio: float) -> float:
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
}


def _multiplier(step: int, *, shape: Callable[[float, float], float], warmup_steps: int, total_steps: int,
                min_lr_ratio: float) -> float:
    """lr multiplier at scheduler step `step` (0 before the first optimizer update)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return shape(progress, min_lr_ratio)


def warmup_steps_for(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warmup length in steps: `warmup_steps` when > 0, else ceil(warmup_ratio * total_steps)."""
    if warmup_steps < 0 or not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f"warmup_steps must be >= 0 and warmup_ratio in [0, 1] "
                         f"(got {warmup_steps}, {warmup_ratio})")
    if warmup_steps > 0:
        return warmup_steps
    # round first: 0.1 * 30 is 3.0000000000000004 in floating point, whose ceil would be 4
    return math.ceil(round(warmup_ratio * total_steps, 9))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                    warmup_ratio: float = 0.0, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with warmup then the shape `name`; a warmup longer than the run simply never ends.

    The multiplier is a functools.partial of module-level functions, not a lambda: it pickles, and
    `scheduler.state_dict()` holds only numbers, so checkpoints load with torch.load(weights_only=True)
    (a restored scheduler rebuilds the same partial from the config and continues from last_epoch)."""
    if name not in SCHEDULES:
        raise _unknown("schedule", name, SCHEDULES)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1] (got {min_lr_ratio})")
    fn = functools.partial(_multiplier, shape=SCHEDULES[name], min_lr_ratio=min_lr_ratio, total_steps=total_steps,
                           warmup_steps=warmup_steps_for(total_steps, warmup_steps, warmup_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


"""Training objectives: what a stage trains on, the seam through which new stages enter the one loop.

    objective = build_objective("sft", packing=True, pad_id=tok.pad_token_id)
    module = objective.wrap(model)              # forward(**batch) -> (loss_sum, n_loss_tokens)
    batch = objective.collate(train_ds, units)  # a micro-batch of tensors
    n_loss, n_inputs = objective.count(batch)   # summed over the step and all processes by the loop

The loop (loop.py) never looks inside a batch: it asks the objective to build it, to count the
tokens its loss is normalised by, and for the module whose forward returns the summed loss. `sft` and
`pt` are both next-token prediction (they differ in how `prepare` builds ids and labels), so both map
to `CausalLM`. A preference or distillation stage adds one class here (its own collate of chosen and
rejected rows, its own count and loss module) and one line in `OBJECTIVES`: `dpo` (dpo.py: preference
pairs, DPO/IPO/robust/ORPO/SimPO) and `grpo` (grpo.py: rollouts from the evaluation engine, graded
by the task's grader) are such classes.

What an objective provides (`Objective` below gives the defaults):
- `lengths(ds)`: a length per example, what the step plan batches and packs by;
- `collate(ds, units)`: a micro-batch of tensors (`collate_step(ds, micro)`: a step's, all at once);
- `count(batch)`: (loss normaliser, input tokens, supervised tokens, *anything the objective needs
  summed over the whole step); the loop sums each over the step's micro-batches and all processes,
  hands the totals back through `begin_step(totals)`, and divides the step's summed loss by the first;
- `prepare_step(step)`: called before a step's batches are collated;
- `metrics(split, accelerator)`: the objective's own metrics since it was last asked (reduced over
  processes), merged into the metrics line; `{}` for next-token prediction;
- `wrap(model)`: the module whose forward returns (summed loss, normaliser).
"""
from __future__ import annotations

from typing import Any

import torch

from ..data.batching import collate_packed, collate_padded, count_supervised


class Objective:
    """The defaults of the seam (see the module docstring)."""

    packing = False

    def lengths(self, ds: Any) -> list[int]:
        return [len(x) for x in ds["input_ids"]]

    def prepare_step(self, step: int) -> None:
        pass

    def collate_step(self, ds: Any, micro: list[list[list[int]]]) -> list[dict[str, torch.Tensor]]:
        """A step's micro-batches (one list of units each); an objective that must see the whole step at
        once (GRPO generates every prompt of a step in one batched call) overrides it."""
        return [self.collate(ds, units) for units in micro]

    def begin_step(self, totals: torch.Tensor) -> None:
        pass

    def metrics(self, split: str, accelerator: Any) -> dict[str, float]:
        return {}


class Metrics:
    """Sums of an objective's per-example statistics, by split, reduced over processes when read.

    `add(split, n, **sums)` adds n examples and the sums of each statistic over them; `read` returns
    each as a mean over its examples (`name/n` counts kept apart for statistics of another unit) and
    starts again. Every process must call `read` at the same point (it is a collective)."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, float]] = {}

    def add(self, split: str, n: float, **sums: float) -> None:
        bucket = self.sums.setdefault(split, {})
        bucket["_n"] = bucket.get("_n", 0.0) + float(n)
        for k, v in sums.items():
            bucket[k] = bucket.get(k, 0.0) + float(v)

    def read(self, split: str, accelerator: Any, keys: tuple[str, ...]) -> dict[str, float]:
        """Means of `keys` (a fixed list: every process reduces the same tensor, even one with no data)."""
        bucket = self.sums.pop(split, {})
        values = torch.tensor([bucket.get("_n", 0.0), *(bucket.get(k, 0.0) for k in keys)], dtype=torch.float64,
                              device=accelerator.device)
        values = accelerator.reduce(values, "sum") if accelerator.num_processes > 1 else values
        n = values[0].item()
        if n == 0:
            return {}
        return {k: round(v / n, 6) for k, v in zip(keys, values[1:].tolist())}


class CausalLM(Objective):
    """Next-token cross-entropy on supervised positions, summed (see models/loss.py)."""

    def __init__(self, *, packing: bool, pad_id: int):
        self.packing, self.pad_id = packing, pad_id

    def collate(self, ds: Any, units: list[list[int]]) -> dict[str, torch.Tensor]:
        """A micro-batch from `units` (each a packed row of example indices, or one example)."""
        idx = [i for u in units for i in u]
        rows = ds[idx] if idx else {"input_ids": [], "labels": []}
        examples = [{"input_ids": a, "labels": b} for a, b in zip(rows["input_ids"], rows["labels"])]
        if self.packing:
            it = iter(examples)
            return collate_packed([[next(it) for _ in u] for u in units], self.pad_id)
        return collate_padded(examples, self.pad_id)

    def count(self, batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
        """(tokens the loss is averaged over, input tokens, supervised tokens) of a micro-batch."""
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        sup = count_supervised(batch["labels"])
        return sup, real, sup  # packed rows: padding only at a row's end, negligible

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from ..models.loss import CausalLMLoss

        return CausalLMLoss(model)


def _dpo(**kwargs: Any) -> Objective:
    from .dpo import Preference

    return Preference(**kwargs)


def _grpo(**kwargs: Any) -> Objective:
    from .grpo import GRPO

    return GRPO(**kwargs)


OBJECTIVES: dict[str, Any] = {"sft": CausalLM, "pt": CausalLM, "dpo": _dpo, "grpo": _grpo}


def build_objective(stage: str, **kwargs: Any) -> Any:
    from ..errors import ConfigError

    if stage not in OBJECTIVES:
        raise ConfigError(f"config key 'stage': unknown '{stage}'; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[stage](**kwargs)

"""Training objectives: what a stage trains on, the seam through which new stages enter the one loop.

    objective = build_objective("sft", packing=True, pad_id=tok.pad_token_id)
    module = objective.wrap(model)              # forward(**batch) -> (loss_sum, n_loss_tokens)
    batch = objective.collate(train_ds, units)  # a micro-batch of tensors
    n_loss, n_inputs = objective.count(batch)   # summed over the step and all processes by the loop

The loop (loop.py) never looks inside a batch: it asks the objective to build it, to count the
tokens its loss is normalised by, and for the module whose forward returns the summed loss. `sft` and
`pt` are both next-token prediction (they differ in how `prepare` builds ids and labels), so both map
to `CausalLM`. A preference or distillation stage adds one class here (its own collate of chosen and
rejected rows, its own count and loss module) and one line in `OBJECTIVES`.
"""
from __future__ import annotations

from typing import Any

import torch

from ..data.batching import collate_packed, collate_padded, count_supervised


class CausalLM:
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

    def count(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(tokens the loss is averaged over, input tokens) of a micro-batch."""
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        return count_supervised(batch["labels"]), real  # packed rows: padding only at a row's end, negligible

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from ..models.loss import CausalLMLoss

        return CausalLMLoss(model)


OBJECTIVES: dict[str, type] = {"sft": CausalLM, "pt": CausalLM}


def build_objective(stage: str, **kwargs: Any) -> Any:
    from ..errors import ConfigError

    if stage not in OBJECTIVES:
        raise ConfigError(f"config key 'stage': unknown '{stage}'; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[stage](**kwargs)

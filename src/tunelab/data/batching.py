"""Batches from tokenized examples: padding-free packing, or padding with length-grouped batches; and
batches of preference pairs (`collate_pairs`, `pair_lengths`) for `stage: dpo`.

Packing puts several examples into one row with position ids restarting at 0 for each example.
transformers (>= 4.54, incl. 5.x) reads those restarts and builds a block-diagonal causal mask for
SDPA/eager/flash attention when no 2D attention mask is passed and no KV cache is used, so attention
never crosses examples. Labels keep the Hugging Face convention (the model shifts them); the first
token of every packed example is set to IGNORE_INDEX so no token is predicted from the end of the
previous example (in SFT it is a prompt token anyway; in pretraining this costs one token a sample).

The loss of a packed batch equals the loss of the same examples run one by one (tested to 1e-5).
"""
from __future__ import annotations

import random
from typing import Any, Sequence

from .render import IGNORE_INDEX


def pack_bins(lengths: Sequence[int], max_tokens: int, *, seed: int = 0, window: int = 1024) -> list[list[int]]:
    """Group example indices into rows of at most `max_tokens` tokens.

    Shuffled (seeded) so rows mix the data, then first-fit decreasing within windows of `window`
    examples: near-optimal fill without sorting the whole data set by length.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    bins: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: -lengths[i])
        open_bins: list[tuple[int, list[int]]] = []  # (free tokens, indices)
        for i in chunk:
            n = min(lengths[i], max_tokens)
            for b, (free, idx) in enumerate(open_bins):
                if n <= free:
                    idx.append(i)
                    open_bins[b] = (free - n, idx)
                    break
            else:
                open_bins.append((max_tokens - n, [i]))
        bins.extend(idx for _, idx in open_bins)
    random.Random(seed + 1).shuffle(bins)
    return bins


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int = 0, mega: int = 50) -> list[list[int]]:
    """Batches of similar lengths (little padding) in a random order, as HF's `group_by_length`."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    batches = []
    step = batch_size * mega
    for w in range(0, len(order), step):
        chunk = sorted(order[w : w + step], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def widest_row(lengths: Sequence[int], *, packing: bool, max_length: int, seed: int = 0) -> int:
    """The longest row of the first epoch (a micro-batch is padded to its longest row): with packing the
    longest packed row (at most `max_length`), else the longest example. What the memory estimate of a
    run is made for; below `max_length` whenever no example or packed row reaches it."""
    if not packing:
        return max(lengths, default=0)
    return max((sum(lengths[i] for i in unit) for unit in pack_bins(lengths, max_length, seed=seed)), default=0)


def step_plan(lengths: Sequence[int], *, packing: bool, max_length: int, batch_size: int, grad_accum: int = 1,
              world_size: int = 1, seed: int = 0, drop_last: bool = False) -> list[list[list[list[int]]]]:
    """One epoch as optimizer steps -> micro-batches -> units -> example indices.

    A unit is a packed row (several examples) or, without packing, one example. Each step holds
    `batch_size * grad_accum * world_size` units, sorted by length inside the step and cut into
    micro-batches of `batch_size`; process `r` of `world_size` takes micro-batches `r::world_size`.
    Because the step's content does not depend on how it is cut, batch 8 x 1 accumulation step,
    batch 1 x 8 accumulation steps and 2 processes x 4 give the same update (tested).
    """
    if packing:
        units = pack_bins(lengths, max_length, seed=seed)
    else:
        units = [[i] for b in length_grouped_batches(lengths, batch_size * grad_accum * world_size, seed=seed)
                 for i in b]
    size = {id(u): sum(lengths[i] for i in u) for u in units}
    per_step = batch_size * grad_accum * world_size
    steps = []
    for s in range(0, len(units), per_step):
        group = units[s : s + per_step]
        if len(group) < per_step and drop_last:
            break
        group = sorted(group, key=lambda u: -size[id(u)])
        steps.append([group[j : j + batch_size] for j in range(0, len(group), batch_size)])
    return steps


def supervised_mask(labels: Any) -> Any:
    """Positions that enter the loss: those whose *next* token is supervised (labels[..., 1:] != -100).

    The one definition of "supervised tokens": the loss (models/loss.py) averages over exactly these,
    the training loop normalises by their count, and prepared statistics count them per example."""
    return labels[..., 1:] != IGNORE_INDEX


def count_supervised(labels: Any) -> int:
    return int(supervised_mask(labels).sum())


def collate_packed(rows: list[list[dict[str, Any]]], pad_id: int) -> dict[str, Any]:
    """`rows` is a batch of rows, each a list of examples {input_ids, labels} packed together."""
    import torch

    flat = []
    for row in rows:
        ids, labels, pos = [], [], []
        for ex in row:
            ids += ex["input_ids"]
            labels += [IGNORE_INDEX] + list(ex["labels"][1:])
            pos += range(len(ex["input_ids"]))
        flat.append((ids, labels, pos))
    width = max(len(ids) for ids, _, _ in flat)
    out_ids, out_labels, out_pos = [], [], []
    for ids, labels, pos in flat:
        pad = width - len(ids)
        out_ids.append(ids + [pad_id] * pad)
        out_labels.append(labels + [IGNORE_INDEX] * pad)
        out_pos.append(list(pos) + list(range(pad)))  # padding is its own "example": attends to itself only
    return {
        "input_ids": torch.tensor(out_ids),
        "labels": torch.tensor(out_labels),
        "position_ids": torch.tensor(out_pos),
    }


def collate_padded(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded batch with an attention mask (the classic layout)."""
    import torch

    width = max(len(ex["input_ids"]) for ex in examples)
    ids, labels, mask = [], [], []
    for ex in examples:
        pad = width - len(ex["input_ids"])
        ids.append(list(ex["input_ids"]) + [pad_id] * pad)
        labels.append(list(ex["labels"]) + [IGNORE_INDEX] * pad)
        mask.append([1] * len(ex["input_ids"]) + [0] * pad)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


# -- preference pairs (stage: dpo) --------------------------------------------------------------

def pair_lengths(ds: Any) -> list[int]:
    """Tokens per pair of a prepared `stage: dpo` split: the longer of its two sides, which is what the
    pair costs in a batch (`collate_pairs` pads both sides to one width). What a step plan batches by."""
    import pyarrow.compute as pc

    if not len(ds):
        return []
    table = ds.with_format("arrow")[:]
    chosen, rejected = (pc.list_value_length(table[f"{side}_input_ids"]) for side in ("chosen", "rejected"))
    return pc.max_element_wise(chosen, rejected).to_pylist()


def collate_pairs(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """One right-padded batch of B pairs: rows 0..B-1 the chosen sides, rows B..2B-1 the rejected sides
    in the same order (so pair i is rows i and B + i), all padded to the widest of the 2B rows; one
    forward pass scores both. input_ids, labels and attention_mask are [2B, T]."""
    rows = [{"input_ids": ex[f"{side}_input_ids"], "labels": ex[f"{side}_labels"]}
            for side in ("chosen", "rejected") for ex in examples]
    return collate_padded(rows, pad_id)

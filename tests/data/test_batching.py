"""Packing: position ids restart per example, attention never crosses examples, and the loss of a
packed batch equals the loss of the same examples run one by one (fp32, tiny Qwen3)."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from tunelab.data.batching import collate_packed, collate_padded, length_grouped_batches, pack_bins
from tunelab.data.render import IGNORE_INDEX


def examples(n=7, seed=0, vocab=5000):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(5, 40)
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        k = rng.randint(1, length - 1)  # prompt of k tokens, reply after it
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * k + ids[k:]})
    return out


def summed_loss(model, batch):
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss.item(), int((labels != IGNORE_INDEX).sum())


def test_pack_bins_fill_and_cover():
    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_bins(lengths, 256, seed=3)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 256 for b in bins)
    fill = sum(lengths) / (256 * len(bins))
    assert fill > 0.95
    assert bins == pack_bins(lengths, 256, seed=3) and bins != pack_bins(lengths, 256, seed=4)


def test_collate_packed_positions_restart():
    exs = examples(3)
    batch = collate_packed([exs], pad_id=0)
    pos = batch["position_ids"][0].tolist()
    expected = [p for ex in exs for p in range(len(ex["input_ids"]))]
    assert pos == expected
    starts = [0, len(exs[0]["input_ids"]), len(exs[0]["input_ids"]) + len(exs[1]["input_ids"])]
    assert all(batch["labels"][0, s].item() == IGNORE_INDEX for s in starts)


def test_packed_loss_equals_one_by_one(tiny_qwen):
    exs = examples(7)
    total, count = 0.0, 0
    for ex in exs:
        loss, n = summed_loss(tiny_qwen, collate_padded([ex], pad_id=0))
        total, count = total + loss, count + n
    # two packed rows of different widths (the shorter one padded) in one batch
    packed = collate_packed([exs[:4], exs[4:]], pad_id=0)
    assert "attention_mask" not in packed
    p_loss, p_count = summed_loss(tiny_qwen, packed)
    assert p_count == count
    assert abs(p_loss / p_count - total / count) < 1e-5


def test_padded_batch_equals_one_by_one(tiny_qwen):
    exs = examples(5, seed=2)
    single = [summed_loss(tiny_qwen, collate_padded([ex], pad_id=0)) for ex in exs]
    loss, n = summed_loss(tiny_qwen, collate_padded(exs, pad_id=0))
    assert n == sum(c for _, c in single)
    assert abs(loss / n - sum(l for l, _ in single) / n) < 1e-5


def test_length_grouped_batches_reduce_padding():
    rng = random.Random(5)
    lengths = [rng.randint(1, 500) for _ in range(400)]
    batches = length_grouped_batches(lengths, 8, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(400))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    naive = sum(max(lengths[j:j + 8]) * len(lengths[j:j + 8]) for j in range(0, 400, 8))  # batches in data order
    assert padded < 0.7 * naive
    assert batches == length_grouped_batches(lengths, 8, seed=0)


def test_the_widest_row_is_what_the_memory_estimate_is_made_for():
    from tunelab.train.loop import StepPlan

    kw = dict(max_length=256, batch_size=2, grad_accum=1, world_size=1, seed=0)
    assert StepPlan([150, 100, 200, 60], packing=False, **kw).widest == 200  # the longest example
    packed = StepPlan([150, 100, 200, 60], packing=True, **kw)
    rows = [sum(packed.lengths[i] for i in u) for step in packed.epoch(0) for micro in step for u in micro]
    assert packed.widest == max(rows) <= 256 and sorted(rows) != [60, 100, 150, 200]  # rows really packed

"""Perplexity, defined exactly: exp(mean negative log-likelihood over the scored tokens).

- Conversations: the scored tokens are the supervised ones of training (assistant replies and their
  end-of-turn token), rendered by the same renderer, so this is exp(validation loss).
- Raw text: every token after the first; texts longer than the context are scored with a sliding
  window (`max_length` tokens, advancing by `stride`), each token scored once with up to
  `max_length - stride` tokens of preceding context, as in the Hugging Face perplexity guide.
The token losses come from `models/loss.py`, the same code the training loop uses.
"""
from __future__ import annotations

import math
from typing import Any

from ..data.render import IGNORE_INDEX


def _score(model: Any, examples: list[dict[str, list[int]]], batch_size: int) -> tuple[float, int]:
    import torch

    from ..data.batching import collate_padded
    from ..models.loss import CausalLMLoss

    loss_fn = CausalLMLoss(model).eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = collate_padded([examples[i] for i in order[s : s + batch_size]], pad_id=0)
            loss, n = loss_fn(**{k: v.to(device) for k, v in batch.items()})
            total += float(loss)
            count += int(n)
    return total, count


def text_windows(ids: list[int], max_length: int, stride: int) -> list[dict[str, list[int]]]:
    """Windows over one long text; labels mark the tokens each window newly scores."""
    out, prev_end = [], 0
    for begin in range(0, max(1, len(ids) - 1), stride):
        end = min(begin + max_length, len(ids))
        window = ids[begin:end]
        new = end - prev_end  # tokens not scored by an earlier window
        labels = [IGNORE_INDEX] * (len(window) - new) + window[len(window) - new :]
        out.append({"input_ids": window, "labels": labels})
        prev_end = end
        if end == len(ids):
            break
    return out


def perplexity(model: Any, renderer: Any, examples: list[dict[str, Any]], *, max_length: int = 1024,
               stride: int = 512, batch_size: int = 4) -> dict[str, Any]:
    scored = []
    for ex in examples:
        if "messages" in ex:
            ids, labels = renderer.render(ex["messages"])
            scored.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
        else:
            ids = list(renderer.tokenizer(ex["text"], add_special_tokens=True)["input_ids"])
            scored.extend(text_windows(ids, max_length, stride))
    nll, n = _score(model, scored, batch_size)
    return {"n": len(examples), "scored_tokens": n, "nll_sum": nll, "mean_nll": nll / max(1, n),
            "perplexity": math.exp(nll / n) if n else float("nan")}

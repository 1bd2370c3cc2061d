"""Inference efficiency at batch sizes 1, 4 and 8 with a stated prompt and output length.

For each batch size: time to first token (a `generate` call for one new token), end-to-end latency
(a call for `new_tokens` tokens, forced with `min_new_tokens`), decode tokens/s
= batch x (new_tokens - 1) / (latency - time to first token), and peak memory
(`torch.cuda.max_memory_allocated` on GPU; on CPU the process's peak resident memory, which only
grows, so read it as "at most").
"""
from __future__ import annotations

import time
from typing import Any

PROMPT_TEXT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
               "How many clips did Natalia sell altogether in April and May? ")


def measure(model: Any, tokenizer: Any, *, batch_sizes: tuple[int, ...] = (1, 4, 8), prompt_tokens: int = 128,
            new_tokens: int = 32, repeats: int = 1) -> list[dict[str, Any]]:
    import torch

    from ..memory import peak_memory_mb

    device = next(model.parameters()).device
    base = tokenizer(PROMPT_TEXT * (prompt_tokens // 20 + 2), add_special_tokens=False)["input_ids"][:prompt_tokens]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    model.eval()
    for bs in batch_sizes:
        ids = torch.tensor([base] * bs, device=device)
        mask = torch.ones_like(ids)
        common = dict(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=pad, use_cache=True,
                      eos_token_id=None, temperature=None, top_p=None, top_k=None)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        best_first, best_total = float("inf"), float("inf")
        with torch.no_grad():
            model.generate(**common, max_new_tokens=2, min_new_tokens=2)  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                model.generate(**common, max_new_tokens=1, min_new_tokens=1)
                best_first = min(best_first, time.perf_counter() - t)
                t = time.perf_counter()
                model.generate(**common, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
                best_total = min(best_total, time.perf_counter() - t)
        mem, kind = peak_memory_mb(device)
        decode = bs * (new_tokens - 1) / max(best_total - best_first, 1e-9)
        rows.append({"batch_size": bs, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                     "ttft_s": round(best_first, 4), "latency_s": round(best_total, 4),
                     "decode_tokens_per_s": round(decode, 2), "peak_mem_mb": round(mem, 1), "peak_mem_kind": kind})
    return rows

"""Generation settings shared by every command that generates (eval rollouts, chat, serve, export).

Each of them must stop at the same tokens and decode the same way, or the served reply would differ
from the evaluated one: `stop_token_ids` (the template's end-of-turn token, then the tokenizer's
eos), `generate_kwargs` (greedy at temperature 0, nucleus sampling otherwise) and `decode_reply`
(special tokens dropped, stripped) are the one definition. Tests check served == evaluated.
"""
from __future__ import annotations

from typing import Any


def stop_token_ids(tokenizer: Any, eot: str) -> list[int]:
    """Ids that end a reply: the end-of-turn token of the template (`<|im_end|>`), then eos."""
    ids = []
    if eot:
        ids.append(tokenizer.convert_tokens_to_ids(eot))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def pad_token_id(tokenizer: Any, stop_ids: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def generate_kwargs(*, max_new_tokens: int, temperature: float, top_p: float, stop_ids: list[int],
                    pad_id: int) -> dict[str, Any]:
    """Keyword arguments of `model.generate`: greedy when temperature is 0, else sampling with top-p.

    Greedy unsets temperature/top_p/top_k explicitly: a model's generation_config may carry sampling
    defaults (SmolLM2's does) that transformers would otherwise warn about or apply."""
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
                                  use_cache=True)
    if temperature > 0:
        # top_k=0: the whole distribution (nucleus sampling by top_p alone). transformers' default of 50 would
        # sample GRPO's rollouts from a truncated distribution that its loss then scores in full (off-policy)
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def decode_reply(tokenizer: Any, ids: list[int]) -> str:
    """The reply as every command shows it: special tokens dropped, surrounding whitespace stripped."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()

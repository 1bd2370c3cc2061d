"""The identical inputs every benchmark gives tunelab and its peers.

GSM8K examples go through tunelab's own conversion (`load_conversations`, the `\\boxed{}`
instruction of `apply_prompts`, `normalise`), exactly as `tunelab prepare` does with
`data.name=gsm8k data.limit=N data.dedup=none`. Peers get the same conversations as text rendered
by tunelab's renderer (the tokenizer's own chat template): `prompt` is the rendered prompt up to and
including the generation prompt, `completion` is the reply up to and including the end-of-turn token
(`<|im_end|>`). Tokenized, prompt + completion equals tunelab's ids token for token, minus the
template's trailing newline after `<|im_end|>`, which tunelab does not supervise; so a peer that masks
the prompt (TRL's `completion_only_loss`, the -100 recipe) trains on exactly tunelab's supervised tokens.
"""
from __future__ import annotations

from typing import Any


def conversations(source: str, n: int) -> list[dict[str, Any]]:
    from tunelab.data.clean import normalise
    from tunelab.data.prompts import apply_prompts
    from tunelab.data.sources import load_conversations

    convs = load_conversations(source, limit=n, gsm8k_boxed=True)
    return [normalise(apply_prompts(c)) for c in convs]


def prompt_completion(renderer: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    """Text of the prompt (with the generation prompt) and of the last reply (with end-of-turn)."""
    prompt = renderer.prompt_text(messages[:-1])
    full = renderer._text(messages)
    if not full.startswith(prompt):
        raise ValueError("the template renders the prompt differently alone and inside the conversation")
    completion = full[len(prompt):]
    return prompt, completion[: completion.rindex(renderer.eot) + len(renderer.eot)]


def examples(tokenizer: Any, source: str, n: int) -> list[dict[str, Any]]:
    """[{messages, prompt, completion, ids, labels}] for the first `n` examples of `source`."""
    from tunelab.data.render import build_renderer

    renderer = build_renderer(tokenizer)
    out = []
    for conv in conversations(source, n):
        msgs = conv["messages"]
        ids, labels = renderer.render(msgs)
        prompt, completion = prompt_completion(renderer, msgs)
        out.append({"messages": msgs, "prompt": prompt, "completion": completion, "ids": ids, "labels": labels})
    return out


def supervised(labels: Any) -> int:
    """Supervised tokens of a batch, as tunelab counts them (positions whose next token is predicted)."""
    from tunelab.data.batching import count_supervised

    return count_supervised(labels)

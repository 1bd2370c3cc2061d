"""Chat templates: the tokenizer's own by default, built-ins for base models without one.

`use_template(tokenizer, name)` makes the named template the tokenizer's `chat_template`, so that
training, evaluation, chat and serve all render through `tokenizer.apply_chat_template` and the one
renderer in `render.py`; the tokenizer saved with a trained model carries it to every later command.

Built-ins (Jinja, same variables as Hugging Face templates):
- `chatml`: `<|im_start|>role\\n...<|im_end|>\\n` (Qwen, SmolLM2 style) with no default system prompt;
- `plain`:  `User: ...\\nAssistant:\\n...<eos>` for base models with no special tokens;
- `alpaca`: the Stanford Alpaca prompt with `### Instruction:` / `### Response:`.
"""
from __future__ import annotations

from typing import Any

from .conversation import DataError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
    "{% else %}{{ 'Assistant:\\n' + message['content'] + eos_token + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\\n' }}{% endif %}"
)

ALPACA = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Below is an instruction that describes a task. '"
    " + 'Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML, "plain": PLAIN, "alpaca": ALPACA}


def use_template(tokenizer: Any, name: str = "auto") -> str:
    """Set the tokenizer's chat template by name and return the name actually used.

    `auto` keeps the tokenizer's own template, or falls back to `chatml` when it has none.
    """
    if name == "auto":
        if getattr(tokenizer, "chat_template", None):
            return "tokenizer"
        name = "chatml"
    if name == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("template 'tokenizer' requested, but the tokenizer has no chat template")
        return name
    if name not in TEMPLATES:
        raise DataError(f"unknown template '{name}'; known: auto, tokenizer, {', '.join(TEMPLATES)}")
    tokenizer.chat_template = TEMPLATES[name]
    return name


def end_of_turn(tokenizer: Any, template_kwargs: dict[str, Any] | None = None) -> str:
    """The special-token text that closes an assistant reply (`<|im_end|>`, `</s>`, ...), or "".

    Found by rendering a probe conversation and reading which special token directly follows the
    reply, so it works for any template without a per-model table.
    """
    probe = "tunelab-probe-reply"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, **(template_kwargs or {}))
    tail = text[text.rindex(probe) + len(probe):]
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    candidates = [s for s in specials if s and tail.startswith(s)]
    return max(candidates, key=len) if candidates else ""

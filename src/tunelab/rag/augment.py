"""Put retrieved passages into a conversation: a pure function, the one place the context text is made.

    messages = augment([{"role": "user", "content": "How many clips?"}], hits, mode="system")

`chat --rag`, `serve --rag` and `eval --rag` call this and then render the messages with tunelab's one
renderer (`tunelab.data.render`), so training, evaluation and serving see the same text. The input is
never modified; with no hits the messages come back unchanged (a copy).

Modes
  system           the context becomes a system message (appended after a blank line to an existing
                   one). Note that a template with a default system prompt (SmolLM2) then shows ours
                   instead of its default.
  before_question  the context goes in front of the last user message, separated by a blank line.

The default rendering, with `[n]` numbers the answer can cite and `file:line` (or `file[i]`) sources:

    Use the numbered passages below if they help to answer, and cite them as [n].

    [1] gsm8k_train.jsonl:12
    Natalia sold 48/2 = 24 clips in May. ...

    [2] notes.md:40
    ...

`template` must contain `{passages}`; `passage_template` may use `{n}`, `{citation}` and `{text}`.
"""
from __future__ import annotations

from typing import Any

TEMPLATE = "Use the numbered passages below if they help to answer, and cite them as [n].\n\n{passages}"
PASSAGE_TEMPLATE = "[{n}] {citation}\n{text}"
MODES = ("system", "before_question")


def _field(hit: Any, name: str) -> str:
    value = hit.get(name) if isinstance(hit, dict) else getattr(hit, name, None)
    if value is None:
        raise ValueError(f"a hit needs {name!r} (a retrieve.Hit, or a dict with 'text' and 'citation'), got {hit!r:.80}")
    return str(value)


def render_context(hits: list[Any], template: str = TEMPLATE, passage_template: str = PASSAGE_TEMPLATE) -> str:
    if "{passages}" not in template:
        raise ValueError(f"the context template must contain {{passages}}, got {template!r}")
    passages = "\n\n".join(passage_template.format(n=n, citation=_field(h, "citation"), text=_field(h, "text").strip())
                           for n, h in enumerate(hits, 1))
    return template.replace("{passages}", passages)


def augment(messages: list[dict[str, str]], hits: list[Any], mode: str = "system", template: str = TEMPLATE,
            passage_template: str = PASSAGE_TEMPLATE) -> list[dict[str, str]]:
    """New messages with the passages of `hits` rendered into them (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"augment mode {mode!r} is not one of {', '.join(MODES)}")
    out = [dict(m) for m in messages]
    if not hits:
        return out
    context = render_context(hits, template, passage_template)
    if mode == "system":
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{context}" if out[0]["content"] else context
        else:
            out.insert(0, {"role": "system", "content": context})
        return out
    last_user = next((i for i in range(len(out) - 1, -1, -1) if out[i].get("role") == "user"), None)
    if last_user is None:
        raise ValueError("mode 'before_question' needs a user message to put the context before")
    out[last_user]["content"] = f"{context}\n\n{out[last_user]['content']}"
    return out

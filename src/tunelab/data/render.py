"""The one renderer: conversation -> (input_ids, labels), used by train, eval, chat and serve.

Ids come from the tokenizer's own chat template, so they equal
`tokenizer.apply_chat_template(messages, tokenize=True)` token for token (tests check this on many
conversations). Labels are built in the same pass: IGNORE_INDEX everywhere except the assistant
replies, whose content and end-of-turn token (`<|im_end|>`, `</s>`) are supervised.

How the replies are located (why not prefix rendering): Qwen3 renders the last assistant turn with
an empty `<think>` block but earlier ones without it, so rendering growing prefixes of a
conversation does not reproduce the full rendering. Instead we render the conversation once more
with every content replaced by a unique placeholder, read where the template put each one, and map
the real contents onto those positions; the tokenizer's character offsets then give the labels.

The prompt/reply boundary is the one inference uses: `render_prompt(messages[:-1])` is exactly the
token prefix before the last reply (for Qwen3 with `enable_thinking=False` the empty thinking block
belongs to the prompt, so chat and eval ask the model to continue where training supervised it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .conversation import DataError
from .templates import end_of_turn, use_template

IGNORE_INDEX = -100  # the one place this number lives; torch's cross_entropy default

SUPERVISE = ("all_turns", "last_turn", "all_tokens")


def _placeholder(i: int) -> str:
    return f"\ue000{i}\ue001"  # private-use code points: never in real text, never altered by templates


@dataclass
class Renderer:
    tokenizer: Any
    template: str = "auto"  # name of the template in use (after `use_template`)
    supervise: str = "all_turns"
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    eot: str = ""

    # -- conversations ---------------------------------------------------------------------
    def _text(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **self.template_kwargs
        )

    def _layout(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
        """Rendered text, the character span of every message's content, and of each assistant reply
        (content + end-of-turn)."""
        masked = [{**m, "content": _placeholder(i)} for i, m in enumerate(messages)]
        skeleton = self._text(masked)
        text, contents, spans, pos, cursor = [], [], [], 0, 0
        for i, m in enumerate(messages):
            ph = _placeholder(i)
            at = skeleton.find(ph, pos)
            if at < 0:
                raise DataError(f"template '{self.template}' dropped or rewrote message {i} ({m['role']}); "
                                "cannot locate it to build the loss mask")
            text.append(skeleton[pos:at])
            cursor += at - pos
            start = cursor
            text.append(m["content"])
            cursor += len(m["content"])
            contents.append((start, cursor))
            pos = at + len(ph)
            if m["role"] == "assistant":
                end = cursor + (len(self.eot) if skeleton.startswith(self.eot, pos) and self.eot else 0)
                spans.append((start, end))
        text.append(skeleton[pos:])
        return "".join(text), contents, spans

    def reply_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """Rendered text and the character span of each assistant reply (content + end-of-turn)."""
        text, _, spans = self._layout(messages)
        return text, spans

    def render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        return self.render_many([messages])[0]

    def render_many(self, conversations: list[list[dict[str, str]]],
                    wheres: list[str] | None = None) -> list[tuple[list[int], list[int]]]:
        """`render` for several conversations with one tokenizer call: the fast tokenizer encodes a
        batch in parallel in Rust (and saves a Python round trip per example), which is most of the
        time of `tunelab prepare` on a big file. `wheres` name the records, for error messages."""
        texts, all_spans = [], []
        for k, messages in enumerate(conversations):
            text, contents, spans = self._layout(messages)
            rendered = self._text(messages)
            if rendered != text:  # the template transforms content: only placeholders could tell
                raise self._changed(messages, text, rendered, contents, wheres[k] if wheres else "")
            texts.append(text)
            all_spans.append(spans)
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [self._labels(ids, offsets, spans)
                for ids, offsets, spans in zip(enc["input_ids"], enc["offset_mapping"], all_spans)]

    def _changed(self, messages: list[dict[str, str]], text: str, rendered: str,
                 contents: list[tuple[int, int]], where: str) -> DataError:
        """The error for a template that renders a message's content other than verbatim (Qwen3's drops
        blank lines at the start of the last reply, and anything up to a `</think>` in a reply): the
        loss mask needs each content where the placeholders said, so the record is named, not guessed at."""
        first = next((i for i, (a, b) in enumerate(zip(text, rendered)) if a != b), min(len(text), len(rendered)))
        i = next((j for j, (a, b) in enumerate(contents) if first <= b), len(messages) - 1)
        m = messages[i]
        return DataError(
            f"{where + ': ' if where else ''}template '{self.template}' changes the content of message {i} "
            f"({m['role']}, starting {m['content'][:40]!r}) when rendering, so its tokens cannot be located for "
            "the loss mask. Qwen3's template, for one, removes blank lines at the start of the last reply "
            "(data.normalize=basic, the default, removes them from every reply) and moves a '<think>...</think>' "
            "block out of a reply (remove it from the data); or choose another data.template")

    def _labels(self, ids: list[int], offsets: list[tuple[int, int]],
                spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        if self.supervise == "all_tokens":
            return list(ids), list(ids)
        if self.supervise == "last_turn":
            spans = spans[-1:]
        labels = [IGNORE_INDEX] * len(ids)
        k = 0
        for t, (a, b) in enumerate(offsets):
            while k < len(spans) and spans[k][1] <= a:
                k += 1
            if k == len(spans):
                break
            s, e = spans[k]
            if a < e and b > s:  # the token overlaps a reply
                labels[t] = ids[t]
        return list(ids), labels

    def render_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Ids of the prompt that asks the model for the next assistant reply (eval, chat, serve)."""
        return list(self.tokenizer(self._text(messages, True), add_special_tokens=False)["input_ids"])

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        return self._text(messages, True)

    # -- raw text (continued pretraining) --------------------------------------------------
    def render_text(self, text: str) -> tuple[list[int], list[int]]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids, list(ids)


def build_renderer(
    tokenizer: Any, *, template: str = "auto", enable_thinking: bool = False, supervise: str = "all_turns"
) -> Renderer:
    if supervise not in SUPERVISE:
        raise DataError(f"unknown supervise mode '{supervise}'; known: {', '.join(SUPERVISE)}")
    used = use_template(tokenizer, template)
    kwargs = {"enable_thinking": enable_thinking}
    return Renderer(tokenizer, used, supervise, kwargs, end_of_turn(tokenizer, kwargs))

"""Batched rollouts with the training template: the prompts come from the same renderer as training.

    gen = Generator(model, tokenizer, stop_token_ids(tokenizer, renderer.eot))
    outputs = gen.generate(prompt_ids, GenerationSettings(max_new_tokens=512))   # greedy, batched, KV cache

Why batched and grouped by length: on a CPU, one `generate` call per question leaves most of the
matrix units idle; a batch of similar-length prompts, left-padded so every row ends at the same
position, decodes all rows in one step per token. Generation stops at the template's end-of-turn
token (e.g. `<|im_end|>`) as well as the tokenizer's eos.

Sampling: `n` samples per prompt, sample j seeded with `seed + j`, so runs are repeatable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .generation import decode_reply, generate_kwargs, pad_token_id


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    batch_size: int = 16

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length (longest first: OOM shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the first stop string (plain-text few-shot: where the next example would begin)."""
    cut = min((i for s in stop_strings if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut].strip()


class Generator:
    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], stop_strings: list[str] | None = None):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, stop_ids
        self.pad_id = pad_token_id(tokenizer, stop_ids)
        self.stop_strings = list(stop_strings or [])

    def _batch(self, prompts: list[list[int]], s: GenerationSettings) -> list[tuple[str, int, list[int]]]:
        """(reply text, generated tokens, generated ids up to and with the stop token) per prompt."""
        import torch

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        kwargs = generate_kwargs(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 stop_ids=self.stop_ids, pad_id=self.pad_id)
        if self.stop_strings:  # each row stops at its own stop string; the text is cut there below
            kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        results = []
        for row in out[:, width:].tolist():
            n = len(row)
            for j, t in enumerate(row):
                if t in self.stop_ids:
                    n = j + 1
                    break
            new = [t for t in row[:n] if t != self.pad_id or t in self.stop_ids]
            text = decode_reply(self.tokenizer, new)
            results.append((cut_at_stop(text, self.stop_strings) if self.stop_strings else text, len(new), new))
        return results

    def generate(self, prompts: list[list[int]], s: GenerationSettings,
                 on_batch: Callable[[list[int], int, list[tuple[str, int]]], None] | None = None,
                 skip: Iterable[tuple[int, int]] = (), progress: bool = True,
                 with_ids: bool = False) -> dict[tuple[int, int], tuple]:
        """Return {(prompt index, sample index): (text, generated tokens)}; `skip` holds finished pairs.
        `with_ids`: (text, generated tokens, generated ids) instead (GRPO trains on the very ids sampled)."""
        import torch
        from tqdm.auto import tqdm

        done = set(skip)
        out: dict[tuple[int, int], tuple[str, int]] = {}
        self.model.eval()
        todo = [(j, b) for j in range(s.n) for b in length_batches([len(p) for p in prompts], s.batch_size)]
        todo = [(j, [i for i in b if (i, j) not in done]) for j, b in todo]
        todo = [(j, b) for j, b in todo if b]
        bar = tqdm(total=sum(len(b) for _, b in todo), desc="generate", unit="prompt", disable=not progress)
        for j, batch in todo:
            torch.manual_seed(s.seed + j)  # sample j is reproducible whatever the batching
            res = [r if with_ids else r[:2] for r in self._batch([prompts[i] for i in batch], s)]
            for i, r in zip(batch, res):
                out[(i, j)] = r
            if on_batch is not None:
                on_batch(batch, j, res)
            bar.update(len(batch))
            bar.set_postfix(tok=sum(r[1] for r in res))
        bar.close()
        return out

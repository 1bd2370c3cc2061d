"""Batched rollouts with the training template: the prompts come from the same renderer as training.

    gen = Generator(model, tokenizer, stop_token_ids(tokenizer, renderer.eot))
    outputs = gen.generate(prompt_ids, GenerationSettings(max_new_tokens=512))   # greedy, batched, KV cache

Why batched and grouped by length: on a CPU, one `generate` call per question leaves most of the
matrix units idle; a batch of similar-length prompts, left-padded so every row ends at the same
position, decodes all rows in one step per token. Generation stops at the template's end-of-turn
token (e.g. `<|im_end|>`) as well as the tokenizer's eos.

Sampling: `n` samples per prompt, sample j seeded with `seed + j`, so runs are repeatable.

The decoding loop is tunelab's own (`decode`), not `model.generate`, when no stop string is asked
for: a prefill that keeps only the last position's logits, then one forward per token with the KV
cache, greedy or an exact inverse-CDF draw (one uniform per row; temperature, then top-p as
transformers' TopPLogitsWarper). Why by hand: on a CPU a small model's decoding is bound by reading
the weights, and what `generate` adds around the forward (its logits processors, stopping criteria,
and `torch.multinomial`'s exponential draw over the whole vocabulary, ~8 ms a token for 8 rows of a
49k vocabulary) was ~25% of a SmolLM2 rollout; it also hands back each sampled token's
log-probability under the distribution it was drawn from, which GRPO needs when its rollouts come
from a lower-precision copy (train/grpo.py). Greedy decoding equals `generate` token for token
(tests/models/test_generate.py); stop strings (plain-text few-shot) go through `generate`.

Two things `generate` does not do, both for GRPO's rollouts (G samples of each prompt in one batch):
identical prompts are prefilled once and their KV cache rows copied (`_unique_rows`), and the KV cache
is written into tensors allocated once for the whole decode (`_slab_layer`) instead of growing by a
`torch.cat` of the whole cache per layer and token.

After the prefill (the model's own forward), each token of a Llama-family model (Llama, SmolLM2, Qwen2,
Qwen3, Mistral) is made by models/decode_step.py, the same computation written out with ~30 ops a layer
instead of ~120 and bf16 weights packed for oneDNN on a CPU (SmolLM2 bf16, 8 rows: 42 -> 28 ms a token),
peft LoRA layers included; other models (and DoRA) run their own forward for every token.
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


def _cache_keyword(model: Any) -> str | None:
    """The keyword under which the forward of a transformers causal LM (or of the model a PEFT wrapper
    holds) takes its KV cache (`cache` since transformers 5.x, `past_key_values` before), if it also
    takes `logits_to_keep`; else None (such a model decodes through `generate`)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    if "logits_to_keep" not in params:
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def can_decode(model: Any) -> bool:
    """Whether `decode` can run this model (else `model.generate` does)."""
    return _cache_keyword(model) is not None


def _draw(logits: Any, temperature: float, top_p: float) -> tuple[Any, Any]:
    """(token [B], its log-probability under the sampled distribution [B]) for next-token logits [B, V].
    Greedy at temperature 0 (log-probability 0). Otherwise softmax(logits / temperature), restricted to
    the smallest head of tokens whose mass reaches top_p (at least one; transformers' TopPLogitsWarper),
    then one uniform per row through the cumulative distribution: exact, and one random number a row."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1), logits.new_zeros(logits.shape[0], dtype=torch.float32)
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    if top_p < 1.0:
        logp = torch.log_softmax(logits, dim=-1)
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        mass_before = sorted_logp.exp().cumsum(-1) - sorted_logp.exp()
        drop = (mass_before >= top_p).scatter(-1, order, mass_before >= top_p)
        probs = torch.softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    else:
        probs = torch.softmax(logits, dim=-1)
    cdf = probs.cumsum(-1)
    u = cdf[:, -1:] * (1.0 - torch.rand(cdf.shape[0], 1, device=cdf.device))  # in (0, total]: never a 0-mass token
    token = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[1] - 1).squeeze(1)
    return token, probs.gather(1, token[:, None]).squeeze(1).log()


def _slab_layer():
    """transformers' DynamicLayer, written in place into a [B, H, capacity, D] tensor allocated at its first
    update (`capacity` = prompt width + max_new_tokens), handing the model views of the filled part. The
    plain layer concatenates the whole cache with the new token at every step of every layer, a copy of
    the cache per token that grows with the length: SmolLM2 bf16, 8 rows, 400 new tokens: 52.5 ms a token
    instead of 59 (measured; no difference to see at 64)."""
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            b, h, _, d = key_states.shape
            self.slab_k = key_states.new_empty(b, h, self.capacity, d)
            self.slab_v = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:
                raise RuntimeError(f"KV cache of {self.capacity} positions is full ({end} asked)")
            self.slab_k[:, :, self.length:end] = key_states
            self.slab_v[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.slab_k[:, :, :end], self.slab_v[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            if self.is_initialized:
                self.slab_k, self.slab_v = self.slab_k[indices], self.slab_v[indices]
                self.keys, self.values = self.slab_k[:, :, :self.length], self.slab_v[:, :, :self.length]

    return SlabLayer


def _new_cache(capacity: int) -> Any:
    """A DynamicCache whose layers are `_slab_layer()`s of `capacity` positions."""
    from transformers import DynamicCache

    layer = _slab_layer()
    cache = DynamicCache()
    cache.layer_class_to_replicate = lambda: layer(capacity)
    return cache


def _unique_rows(ids: Any, mask: Any) -> tuple[Any, Any] | None:
    """(indices of the distinct rows, each row's distinct row) when some rows repeat (GRPO's G samples of a
    prompt), else None. The distinct rows are prefilled once and their cache copied to the repeats
    instead of running the same prompt positions through the model G times."""
    import torch

    rows = torch.cat([ids, mask], dim=1)
    uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if uniq.shape[0] == rows.shape[0]:
        return None
    first = torch.full((uniq.shape[0],), rows.shape[0], dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0], device=ids.device), reduce="amin")
    return first, inverse


def _next_logits(model: Any, cache: dict[str, Any], **inputs: Any) -> Any:
    """The next-token logits [B, V] at the last position. The decoder runs, then the head on the last
    hidden state made contiguous: transformers' `logits_to_keep=1` hands the head a strided slice, and a
    bfloat16 matmul on such a slice computes (and allocates) the head for every prompt position (8 x 90
    positions x 49k vocabulary: a 430 MB transient and 90x the work, measured with SmolLM2). Models whose
    head is not a plain projection (Gemma's soft-capping, Cohere's scale) use their own logits."""
    from .loss import plain_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not plain_head(base.config):
        return model(**inputs, **cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    hidden = base.get_decoder()(**inputs, **cache, use_cache=True).last_hidden_state
    return base.get_output_embeddings()(hidden[:, -1].contiguous())


def decode(model: Any, ids: Any, mask: Any, *, max_new_tokens: int, temperature: float, top_p: float,
           stop_ids: list[int], pad_id: int, on_token: Callable[[Any], bool] | None = None) -> tuple[Any, Any]:
    """Left-padded prompts [B, W] -> (new ids [B, T], their sampling log-probabilities [B, T]), T <= max_new_tokens:
    rows that stopped are filled with pad_id (as `generate` fills them), and decoding ends when every row has.
    `on_token(tokens [B])` sees each step's tokens as they are drawn (the server streams them); it returns
    True to stop there (a cancelled request)."""
    import torch

    from .decode_step import decode_step

    B, W = ids.shape
    step = decode_step(model, W + max_new_tokens)  # None: the model's own forward makes each token
    mask = torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)
    positions = (mask[:, :W].cumsum(1) - 1).clamp_(min=0)
    kv = _new_cache(W + max_new_tokens)
    cache = {_cache_keyword(model) or "past_key_values": kv}
    stops = torch.tensor(stop_ids, device=ids.device)
    running = torch.ones(B, dtype=torch.bool, device=ids.device)
    tokens, logps = [], []
    with torch.no_grad():
        repeats = _unique_rows(ids, mask[:, :W])
        if repeats is None:
            logits = _next_logits(model, cache, input_ids=ids, attention_mask=mask[:, :W], position_ids=positions)
        else:  # each distinct prompt once, then its logits and cache rows to every row that repeats it
            first, inverse = repeats
            logits = _next_logits(model, cache, input_ids=ids[first], attention_mask=mask[first, :W],
                                  position_ids=positions[first])[inverse]
            kv.batch_select_indices(inverse)
        position = positions[:, -1:]
        for t in range(max_new_tokens):
            token, logp = _draw(logits, temperature, top_p)
            token = torch.where(running, token, torch.full_like(token, pad_id))
            tokens.append(token)
            logps.append(torch.where(running, logp, torch.zeros_like(logp)))
            running &= ~torch.isin(token, stops)
            cancelled = on_token(token) if on_token is not None else False
            if cancelled or t + 1 == max_new_tokens or not bool(running.any()):
                break
            position = position + 1
            if step is not None:
                logits = step(token, position, mask[:, : W + t + 1], kv)
            else:
                logits = _next_logits(model, cache, input_ids=token[:, None], attention_mask=mask[:, : W + t + 1],
                                      position_ids=position)
    return torch.stack(tokens, 1), torch.stack(logps, 1)


class Generator:
    def __init__(self, model: Any, tokenizer: Any, stop_ids: list[int], stop_strings: list[str] | None = None,
                 engine: str = "auto"):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, stop_ids
        self.pad_id = pad_token_id(tokenizer, stop_ids)
        self.stop_strings = list(stop_strings or [])
        # tunelab's loop unless a stop string is asked for (transformers' StopStringCriteria) or the model's
        # forward lacks what the loop calls; "hf" forces `model.generate`
        self.engine = engine if engine != "auto" else \
            ("tunelab" if not self.stop_strings and can_decode(model) else "hf")

    def _batch(self, prompts: list[list[int]], s: GenerationSettings) -> list[tuple[str, int, list[int], list[float]]]:
        """(reply text, generated tokens, generated ids up to and with the stop token, their sampling
        log-probabilities: empty from `generate`) per prompt."""
        import torch

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        if self.engine == "tunelab":
            new_ids, new_logps = decode(self.model, ids, mask, max_new_tokens=s.max_new_tokens,
                                        temperature=s.temperature, top_p=s.top_p, stop_ids=self.stop_ids,
                                        pad_id=self.pad_id)
            rows, row_logps = new_ids.tolist(), new_logps.tolist()
        else:
            kwargs = generate_kwargs(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                     stop_ids=self.stop_ids, pad_id=self.pad_id)
            if self.stop_strings:  # each row stops at its own stop string; the text is cut there below
                kwargs.update(stop_strings=self.stop_strings, tokenizer=self.tokenizer)
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            rows, row_logps = out[:, width:].tolist(), [[] for _ in prompts]
        results = []
        for row, logps in zip(rows, row_logps):
            n = len(row)
            for j, t in enumerate(row):
                if t in self.stop_ids:
                    n = j + 1
                    break
            keep = [j for j, t in enumerate(row[:n]) if t != self.pad_id or t in self.stop_ids]
            new = [row[j] for j in keep]
            text = decode_reply(self.tokenizer, new)
            results.append((cut_at_stop(text, self.stop_strings) if self.stop_strings else text, len(new), new,
                            [logps[j] for j in keep] if logps else []))
        return results

    def generate(self, prompts: list[list[int]], s: GenerationSettings,
                 on_batch: Callable[[list[int], int, list[tuple[str, int]]], None] | None = None,
                 skip: Iterable[tuple[int, int]] = (), progress: bool = True,
                 with_ids: bool = False) -> dict[tuple[int, int], tuple]:
        """Return {(prompt index, sample index): (text, generated tokens)}; `skip` holds finished pairs.
        `with_ids`: (text, generated tokens, generated ids, their sampling log-probabilities) instead (GRPO
        trains on the very ids sampled; the log-probabilities are empty from the "hf" engine)."""
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

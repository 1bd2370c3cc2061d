"""Log-likelihood of continuations given contexts, as lm-evaluation-harness defines it, computed faster.

    reqs = [encode_pair(tokenizer, "Question ...\\nAnswer:", " A"), ...]
    scores = loglikelihoods(model, reqs, batch_size=16)      # [(log p(cont | ctx), is_greedy), ...]

Definition (lm-eval's `hf` model, `_encode_pair` + `_loglikelihood_tokens`):
- trailing whitespace of the context moves to the front of the continuation ("Answer: ", "A" is
  scored as "Answer:", " A");
- the token ids of the continuation are `tok(context + continuation)[len(tok(context)):]`: the whole
  text is tokenized once and cut where the context's own tokenization ends (so a merge across the
  boundary is scored as lm-eval scores it); special tokens as the tokenizer adds them by default;
- log p = sum over continuation tokens of log_softmax(logits) at the position before each token
  (fp32), is_greedy = every continuation token is the argmax there;
- a context + continuation longer than `max_length + 1` tokens loses tokens on the left.

How it is faster than one padded forward per (context, choice) row with full logits:
1. rows are `context + continuation[:-1]`; identical rows run once (a multiple-choice item whose
   choices are single tokens, " A" ... " D", is one row);
2. rows are sorted as token sequences, so rows sharing a prefix (the few-shot examples of one
   subject, the question of one item) are neighbours; a run of rows sharing at least `min_shared`
   tokens computes that prefix once (batch 1) and every row of the run continues from its KV cache.
   Runs nest: a subject's header is shared by its items, an item's question by its choices;
3. the output head and the softmax are applied only at the positions that are scored, not at every
   position of every row (for a 150k-token vocabulary the head is most of the work).
Results equal the plain computation within float noise (tests: 1e-4 in fp32, against a direct
forward of each row and against lm-eval itself in bench/eval_parity.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split exactly as lm-eval's `_encode_pair` (causal models)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:  # lm-eval conditions an empty context on a prefix token (BOS, else EOS)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    whole = list(tokenizer(context + continuation)["input_ids"])
    ctx = list(tokenizer(context)["input_ids"])
    return ctx, whole[len(ctx):]


@dataclass
class _Row:
    tokens: list[int]  # context + continuation[:-1], truncated on the left like lm-eval
    first: int  # smallest position whose next-token distribution a request on this row needs
    requests: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (request, first position, targets)


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _lcp(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def can_share_prefix(model: Any) -> bool:
    """A plain KV cache can be shared only by full-attention layers (a sliding window would drop keys)."""
    cfg = _base(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False
    return not (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True))


class _Scorer:
    def __init__(self, model: Any, batch_size: int, min_shared: int, share: bool):
        import torch

        self.torch = torch
        self.base = _base(model)
        self.decoder = self.base.get_decoder()
        self.head = self.base.get_output_embeddings()
        cfg = self.base.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.logit_scale = getattr(cfg, "logit_scale", None)
        self.device = next(model.parameters()).device
        self.batch_size, self.min_shared = batch_size, min_shared
        self.share = share and can_share_prefix(model)
        import inspect

        # transformers renamed `past_key_values` to `cache` (5.2x); pass whichever this version takes
        params = inspect.signature(self.decoder.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.forwards = 0  # decoder calls (for the bench)
        self.tokens = 0  # token positions run through the decoder

    def _cache(self, kv: list[tuple[Any, Any]] | None, batch: int) -> Any:
        if kv is None:
            return None
        from transformers import DynamicCache

        # `update` concatenates into new tensors, so expanded views of the shared prefix stay untouched
        return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])

    def _decode(self, ids: list[list[int]], kv: list[tuple[Any, Any]] | None, keep_cache: bool = False) -> Any:
        width = max(len(r) for r in ids)
        x = self.torch.tensor([r + [0] * (width - len(r)) for r in ids], device=self.device)
        # right padding needs no mask: causal attention never lets a real token see a later pad
        out = self.decoder(input_ids=x, use_cache=keep_cache or kv is not None,
                           **{self.cache_arg: self._cache(kv, len(ids))})
        self.forwards += 1
        self.tokens += sum(len(r) for r in ids)
        return out

    def extend(self, kv: list[tuple[Any, Any]] | None, tokens: list[int]) -> list[tuple[Any, Any]]:
        """The KV cache of `kv`'s prefix followed by `tokens` (batch 1)."""
        out = self._decode([tokens], kv, keep_cache=True)
        cache = out.get("cache", None)
        cache = out.past_key_values if cache is None else cache
        return [(layer.keys, layer.values) for layer in cache.layers]

    def log_probs(self, hidden: Any) -> Any:
        logits = self.head(hidden).float()
        if self.logit_scale:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = self.torch.tanh(logits / self.softcap) * self.softcap
        return self.torch.log_softmax(logits, dim=-1)

    def leaves(self, rows: list[_Row], start: int, kv: list[tuple[Any, Any]] | None,
               results: list[tuple[float, bool] | None]) -> None:
        """Rows that continue from the cache of `tokens[:start]`, in batches (longest first)."""
        rows = sorted(rows, key=lambda r: -len(r.tokens))
        for s in range(0, len(rows), self.batch_size):
            batch = rows[s : s + self.batch_size]
            hidden = self._decode([r.tokens[start:] for r in batch], kv).last_hidden_state
            picks, owners = [], []
            for b, r in enumerate(batch):
                for pos in range(r.first, len(r.tokens)):
                    picks.append((b, pos - start))
                owners.append(len(picks))
            bi = self.torch.tensor([p[0] for p in picks], device=self.device)
            pi = self.torch.tensor([p[1] for p in picks], device=self.device)
            lp = self.log_probs(hidden[bi, pi])  # [scored positions, vocab]
            greedy = lp.argmax(-1).tolist()
            offset = 0
            for b, r in enumerate(batch):
                for req, first, targets in r.requests:
                    at = offset + first - r.first
                    t = self.torch.tensor(targets, device=self.device)
                    rows_lp = lp[at : at + len(targets)]
                    total = float(rows_lp.gather(1, t[:, None]).sum())
                    results[req] = (total, greedy[at : at + len(targets)] == targets)
                offset = owners[b]

    def run(self, rows: list[_Row], start: int, kv: list[tuple[Any, Any]] | None,
            results: list[tuple[float, bool] | None]) -> None:
        """`rows` (sorted) all share tokens[:start], whose cache is `kv`: split them into runs that share
        at least `min_shared` more tokens, compute each such prefix once and recurse; the rest are leaves."""
        if not self.share:
            return self.leaves(rows, start, kv, results)
        leaves: list[_Row] = []
        i = 0
        while i < len(rows):
            j, shared = i + 1, None
            while j < len(rows):
                limit = min(rows[i].first, rows[j].first)  # a scored position must stay outside the prefix
                n = _lcp(rows[i].tokens, rows[j].tokens, limit)
                if n - start < self.min_shared or (shared is not None and n < start + (shared - start) // 2):
                    break  # shares too little, or would halve what the run shares
                shared = n if shared is None else min(shared, n)
                j += 1
            if shared is None:
                leaves.append(rows[i])
            else:
                self.run(rows[i:j], shared, self.extend(kv, rows[i].tokens[start:shared]), results)
            i = j
        if leaves:
            self.leaves(leaves, start, kv, results)


def loglikelihoods(model: Any, requests: list[tuple[list[int], list[int]]], *, batch_size: int = 16,
                   share_prefix: bool = True, min_shared: int = 32, max_length: int | None = None,
                   stats: dict[str, int] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """[(log-likelihood, is_greedy)] for each (context ids, continuation ids); see the module docstring.

    `share_prefix=False` gives one padded forward per distinct row (no KV sharing), for comparison."""
    import torch

    if max_length is None:
        max_length = getattr(_base(model).config, "max_position_embeddings", None) or 2048
    rows: dict[tuple[int, ...], _Row] = {}
    for k, (ctx, cont) in enumerate(requests):
        if not ctx or not cont:
            raise ValueError(f"request {k}: context and continuation must both have tokens "
                             f"(got {len(ctx)} and {len(cont)}); use encode_pair")
        whole = (ctx + cont)[-(max_length + 1):]
        tokens = whole[:-1]
        first = len(tokens) - len(cont)
        row = rows.setdefault(tuple(tokens), _Row(tokens, first))
        row.first = min(row.first, first)
        row.requests.append((k, first, cont))
    ordered = [rows[key] for key in sorted(rows)]
    scorer = _Scorer(model, batch_size, min_shared, share_prefix)
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    model.eval()
    with torch.inference_mode():
        scorer.run(ordered, 0, None, results)
    if stats is not None:
        stats.update(rows=len(ordered), forwards=scorer.forwards, tokens=scorer.tokens,
                     shared=int(scorer.share))
    return results  # type: ignore[return-value]

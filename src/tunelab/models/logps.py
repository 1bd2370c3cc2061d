"""Per-token log-probabilities of the supervised tokens, in chunks: what preference and RL losses are made of.

`token_logps` is the sibling of `CausalLMLoss` (models/loss.py) and follows the same plan for the same
reason (a 151,936-token vocabulary makes full logits huge, and most positions are not scored): run
the decoder to hidden states, keep only positions whose *next* token is supervised
(`supervised_mask`), then apply the output head, log_softmax and gather chunk by chunk under
activation checkpointing, so at most one chunk of logits exists in the forward and the backward pass.
Without autocast, for a plain projection head, the head, log-softmax, gather and entropy of a chunk are one
function (models/loss.py `_FusedHead`) that keeps only the logits; the entropy is computed only when asked.

The result is flat: one value per scored position in row-major order, with the batch row of each
(`rows`) and the sequence it belongs to (`seqs`: the row for a padded batch, the packed example for a
packed one). Per-sequence sums are `per_row(values, seqs, n)`. It equals
`log_softmax(model(...).logits.float() / temperature)` gathered at the next tokens (tests check values
and gradients, padded and packed).

`completion_logps` scores completions that continue shared prompts (GRPO's G samples of a prompt): each
distinct prompt goes through the decoder once, its key/value cache is copied to the rows that continue
it (a differentiable index: the backward sums the rows' gradients into the prompt), and only the
completion positions run per row. The same log-probabilities and gradients as one forward over every
prompt + completion row (to rounding; tests), with the prompt's work done once instead of G times: in
the GRPO benchmark (prompts of 74-90 tokens, 64-token completions, G = 4) 44% fewer positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batching import supervised_mask
from .loss import _base, _fusable, chunk_rows, fused_head, over_chunks, plain_head


@dataclass
class TokenLogps:
    logps: torch.Tensor  # [n] float32: log p(labels[b, p+1] | prefix) at every scored position (b, p)
    rows: torch.Tensor  # [n] long: batch row of each scored position
    seqs: torch.Tensor  # [n] long: sequence of each: the row, or with position_ids the packed example
    n_seqs: int  # rows, or packed examples (padding tails included, with no scored positions)
    entropy: torch.Tensor | None = None  # [n] float32, no grad: entropy of the predictive distribution


def per_row(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum of `values` per row (or sequence): a tensor of `n_rows` sums, differentiable."""
    return values.new_zeros(n_rows, dtype=values.dtype).index_add(0, rows, values)


def counts(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Number of scored positions per row (or sequence)."""
    return torch.bincount(rows, minlength=n_rows)


def _logps_of(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
              entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain computation from logits (models whose head is not a plain projection, autocast)."""
    logits = logits.float()
    if temperature != 1.0:  # GRPO scores completions at the sampling temperature, as TRL does
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    ent = None
    if entropy:
        with torch.no_grad():  # entropy is a metric: no graph
            ent = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), ent


def _chunk(head, hidden, targets, temperature, entropy):
    if _fusable(head, hidden):  # the head, log-softmax and gather in one function that keeps only the logits
        return fused_head(hidden, head.weight, targets, per_token=True, scale=1.0 / temperature, entropy=entropy)
    return _logps_of(head(hidden), targets, temperature, entropy)


def chunked_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int,
                  temperature: float = 1.0, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs of `targets`, entropies or None) under `head(hidden)`, `chunk` rows at a time."""
    parts = over_chunks(_chunk, head, hidden, targets, chunk, temperature, entropy)
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), (torch.cat([p[1] for p in parts]) if entropy else None)


def _seqs(keep: torch.Tensor, rows: torch.Tensor, position_ids: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Sequence index of each scored position: its row, or its packed example (a new one at every
    position id 0, counted row-major; position p is scored for the token at p+1, which belongs to the
    example of p+1, the same as p's since packed examples start with an unscored token)."""
    if position_ids is None:
        return rows, keep.shape[0]
    starts = position_ids == 0
    starts[:, 0] = True  # a row always starts a sequence
    ids = starts.flatten().cumsum(0).view_as(position_ids) - 1
    return ids[:, 1:][keep], int(starts.sum())


def token_logps(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
                chunk_size: int | None = None, entropy: bool = False, temperature: float = 1.0) -> TokenLogps:
    """Log-probabilities of the supervised next tokens (see the module docstring). `entropy=True` also
    returns the entropy at each scored position (no grad); `temperature` divides the logits first."""
    base = _base(model)
    keep = supervised_mask(labels)
    targets = labels[:, 1:][keep]
    rows = keep.nonzero()[:, 0]
    seqs, n_seqs = _seqs(keep, rows, position_ids)
    if not plain_head(base.config):
        # the head is not a plain projection for these models (Gemma 2/3, Cohere): use the model's own logits
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        logits = model(**{k: v for k, v in inputs.items() if v is not None}, use_cache=False).logits
        logps, ent = _logps_of(logits[:, :-1][keep], targets, temperature, entropy)
    else:
        out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False)
        hidden = out.last_hidden_state[:, :-1][keep]
        chunk = chunk_size or chunk_rows(model)
        logps, ent = chunked_logps(base.get_output_embeddings(), hidden, targets, chunk, temperature, entropy)
    return TokenLogps(logps=logps, rows=rows, seqs=seqs, n_seqs=n_seqs, entropy=ent)


def _shares_prompts(model: torch.nn.Module) -> bool:
    """Whether `completion_logps` can run the prompts once: a cache keyword in the forward (as generation
    needs), a plain projection head, and no gradient checkpointing (transformers' checkpointed layers drop
    the cache in training)."""
    from .generate import _cache_keyword

    base = _base(model)
    if not plain_head(base.config):
        return False
    if any(getattr(m, "gradient_checkpointing", False) for m in base.modules()):
        return False
    return _cache_keyword(model) is not None


def completion_logps(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group: torch.Tensor,
                     completion_ids: torch.Tensor, completion_mask: torch.Tensor, *, chunk_size: int | None = None,
                     entropy: bool = False, temperature: float = 1.0, share: bool = True) -> TokenLogps:
    """Log-probabilities of completion tokens [B, C] (right-padded, `completion_mask`) where row b continues
    prompt `group[b]` of the distinct prompts [U, W] (right-padded, `prompt_mask`); one value per real
    completion token, row-major, as `token_logps` gives for the rows prompt + completion. `share` (and
    `_shares_prompts`): each prompt runs once (module docstring); else one forward over the full rows.
    Prompts are right-padded so that no query attends to nothing (a left pad would: its softmax over no
    key is not a number, and its backward would spread that into the weights' gradients)."""
    from transformers import DynamicCache

    from .generate import _cache_keyword

    keep = completion_mask.bool()
    targets = completion_ids[keep]
    rows = keep.nonzero()[:, 0]
    B, C = completion_ids.shape
    U, W = prompt_ids.shape
    lengths = prompt_mask.sum(1)
    if not (share and _shares_prompts(model)):  # the rows prompt + completion, right-padded: token_logps
        from ..data.render import IGNORE_INDEX

        width = int((lengths[group] + completion_mask.sum(1)).max())
        ids = completion_ids.new_zeros(B, width)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids)
        for b in range(B):
            p, c = int(lengths[group[b]]), int(completion_mask[b].sum())
            ids[b, :p], ids[b, p:p + c] = prompt_ids[group[b], :p], completion_ids[b, :c]
            labels[b, p:p + c] = completion_ids[b, :c]
            mask[b, :p + c] = 1
        return token_logps(model, ids, labels, mask, chunk_size=chunk_size, entropy=entropy,
                           temperature=temperature)
    base = _base(model)
    decoder = base.get_decoder()
    cache = DynamicCache()
    kw = {_cache_keyword(model): cache}
    steps = torch.arange(max(W, C), device=prompt_ids.device)
    hp = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=steps[:W].expand(U, W),
                 use_cache=True, **kw).last_hidden_state
    cache.batch_select_indices(group)  # each row's copy of its prompt's keys and values (indexing: differentiable)
    hc = decoder(input_ids=completion_ids, attention_mask=torch.cat([prompt_mask[group], completion_mask], 1),
                 position_ids=lengths[group][:, None] + steps[:C], use_cache=True, **kw).last_hidden_state
    # completion token j is predicted from the hidden state before it: the prompt's last, then completion j-1
    last = hp[torch.arange(U, device=hp.device), lengths - 1]
    hidden = torch.cat([last[group][:, None], hc[:, :-1]], 1)[keep]
    del cache, hp, hc
    logps, ent = chunked_logps(base.get_output_embeddings(), hidden, targets, chunk_size or chunk_rows(model),
                               temperature, entropy)
    return TokenLogps(logps=logps, rows=rows, seqs=rows, n_seqs=B, entropy=ent)

"""The training loss: next-token cross-entropy on supervised positions only, in chunks.

Why by hand: with a 151,936-token vocabulary (Qwen), the full logits tensor of a batch of 8 x 2048
tokens is 10 GB in fp32, and most of it belongs to prompt positions whose loss is masked anyway.
We run the decoder to hidden states, keep only positions whose *next* token is supervised, and
apply the output head and cross-entropy chunk by chunk under activation checkpointing, so at most
one chunk of logits (chunk x vocab) exists at a time, in the forward and in the backward pass.
The result equals `F.cross_entropy(model(...).logits[:, :-1], labels[:, 1:], reduction="sum")`
(tests check loss and gradients). Without autocast the head and the cross-entropy of a chunk are one
function (`_FusedHead`) that keeps only the logits and adds the head's gradient in place.

`CausalLMLoss` is a `LossModule`: an `nn.Module` around the model so that data-parallel wrappers (DDP,
FSDP, DeepSpeed through accelerate) see one forward call and synchronise gradients as usual; it shows
them the model's `config` (DeepSpeed sizes its buckets from `hidden_size`) and `_no_split_modules`
(FSDP shards each decoder layer on its own). The DPO and GRPO losses (train/dpo.py, grpo.py) are too.
It returns the *sum* of token losses and the number of supervised tokens; the loop divides by the
token count of the whole accumulated (and all-reduced) batch.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data.batching import supervised_mask
from ..data.render import IGNORE_INDEX


def _base(model: torch.nn.Module) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_head(config: Any) -> bool:
    """Whether a model's logits are its output head applied to the last hidden state and nothing more:
    not for Gemma 2/3's soft-capping or Cohere's logit scale, which use the model's own logits."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return not getattr(text, "final_logit_softcapping", None) and not getattr(text, "logit_scale", None)


def _chunk_ce(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if _fusable(head, hidden):
        return fused_head(hidden, head.weight, targets, per_token=False)[0]
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _fusable(head: torch.nn.Module, hidden: torch.Tensor) -> bool:
    """A plain bias-free projection in the hidden states' dtype, no autocast: what `_FusedHead` computes."""
    return (type(head) is torch.nn.Linear and head.bias is None and head.weight.dtype == hidden.dtype
            and not torch.is_autocast_enabled(hidden.device.type))


def _grad_in_place(weight: torch.Tensor) -> bool:
    """Whether the head's gradient may be put into `weight.grad` directly: only where nothing watches the
    parameter's gradient accumulation (DDP, FSDP and DeepSpeed hook it; they all start a process group)."""
    import torch.distributed as dist

    return ((weight.grad is None or (weight.grad.shape == weight.shape and weight.grad.is_contiguous()))
            and not (dist.is_available() and dist.is_initialized())
            and not getattr(weight, "_post_accumulate_grad_hooks", None) and not weight._backward_hooks)


LSE_ROWS = 32  # rows of logits whose log-sum-exp is taken at once (one temporary that size: 19 MB for Qwen)


def _log_sum_exp(logits: torch.Tensor, entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row log-sum-exp of `logits` and, with `entropy`, the entropy of each row's softmax, LSE_ROWS rows
    at a time: torch.logsumexp makes two temporaries the size of its input; here one block-sized one.
    The entropy is lse - sum(p * z) with p = exp(z - lse): the same block's exponents, no second pass."""
    n = logits.shape[0]
    lse = torch.empty(n, dtype=logits.dtype, device=logits.device)
    ent = torch.empty(n, dtype=logits.dtype, device=logits.device) if entropy else None
    for s in range(0, n, LSE_ROWS):
        part = logits[s : s + LSE_ROWS]
        top = part.amax(dim=-1, keepdim=True)
        e = (part - top).exp_()
        total = e.sum(dim=-1)
        torch.log(total, out=lse[s : s + LSE_ROWS]).add_(top.squeeze(-1))
        if ent is not None:
            ent[s : s + LSE_ROWS] = lse[s : s + LSE_ROWS] - e.mul_(part).sum(dim=-1) / total
        del e  # before the next block's: one block-sized temporary at a time
    return lse, ent


class _FusedHead(torch.autograd.Function):
    """The output head and what is made of its logits, fused by hand for memory and speed (issue 24):
    `per_token=False` the summed cross-entropy of `hidden @ weight.T` against `targets` (the SFT/pt loss),
    `per_token=True` each row's log-probability of its target (dpo, grpo: models/logps.py) and optionally
    its entropy (no grad), both of the logits times `scale` (1 / the sampling temperature).

    Autograd's version keeps log-softmax, builds two more logits-sized gradients (and the entropy's
    exponent and product: two more) and a new vocab x hidden head gradient (113 MB for SmolLM2) that is
    then added to the one accumulated from earlier micro-batches, all at the moment the step peaks (the
    start of the backward, every activation alive). Here only the logits are kept; in the backward they
    become their own gradient in place (softmax - one-hot, times the upstream gradient), and the head's
    gradient is added straight into `weight.grad` when one exists (`_grad_in_place`). Equal to
    `F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")`, and to `log_softmax`
    gathered at the targets, to rounding (tests/models/test_loss.py, test_logps.py)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float,
                per_token: bool, entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(hidden, weight).float()
        if scale != 1.0:
            logits.mul_(scale)
        lse, ent = _log_sum_exp(logits, entropy and per_token)
        picked = logits.gather(1, targets[:, None]).squeeze(1)
        out = picked - lse if per_token else lse.sum() - picked.sum()
        ctx.save_for_backward(hidden, weight, targets, logits, lse)
        # the parameter itself: under checkpointing the saved tensors come back as other tensor objects
        ctx.param, ctx.scale, ctx.per_token = weight, scale, per_token
        ent = ent if ent is not None else logits.new_empty(0)
        ctx.mark_non_differentiable(ent)
        return out, ent

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, _ent: Any) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, logits, lse = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None, None
        # d loss / d logit = coef * (softmax - one-hot): coef = grad for the summed cross-entropy, -grad of
        # each row for its log-probability; times `scale` for the logits' own scaling
        coef = (grad * ctx.scale if not ctx.per_token else grad.neg().mul_(ctx.scale)[:, None])
        d = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' own memory
        d.scatter_add_(1, targets[:, None], d.new_full((d.shape[0], 1), -1.0)).mul_(coef)
        d = d.to(hidden.dtype)
        grad_hidden = d @ weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            # not through autograd, which would hold each chunk's gradient until the backward is done with the
            # weight (a tied embedding's is added in place later); no AccumulateGrad for this use of the weight
            param = ctx.param
            if not _grad_in_place(param):
                grad_weight = d.t() @ hidden
            elif param.grad is None:
                param.grad = d.t() @ hidden
            else:
                param.grad.addmm_(d.t(), hidden)
        return grad_hidden, grad_weight, None, None, None, None


def fused_head(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, per_token: bool,
               scale: float = 1.0, entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_FusedHead` (see there): (summed cross-entropy, or per-row log-probabilities; entropies or None)."""
    out, ent = _FusedHead.apply(hidden, weight, targets, scale, per_token, entropy)
    return out, (ent if entropy and per_token else None)


def over_chunks(fn: Any, head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int,
                *args: Any) -> list[Any]:
    """`fn(head, hidden, targets, *args)` on `chunk` rows at a time, each under activation checkpointing when a
    gradient is needed, so at most one chunk of logits exists in the forward and the backward pass. The
    one chunking loop of the SFT loss and of the per-token log-probabilities (logps.py)."""
    if hidden.shape[0] <= chunk:  # fits the budget in one piece: no recomputation needed
        return [fn(head, hidden, targets, *args)]
    parts = []
    for s in range(0, hidden.shape[0], chunk):
        h, t = hidden[s : s + chunk], targets[s : s + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(fn, head, h, t, *args, use_reentrant=False))
        else:
            parts.append(fn(head, h, t, *args))
    return parts


def chunk_rows(model: torch.nn.Module, logits_budget_mb: int = 256) -> int:
    """Rows of fp32 logits that fit the budget (441 for Qwen's 151,936 tokens)."""
    vocab = _base(model).get_output_embeddings().weight.shape[0]
    return max(64, logits_budget_mb * 2**20 // (4 * vocab))


def chunked_ce(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum of cross-entropy of `head(hidden)` against `targets`, `chunk` rows at a time."""
    parts = over_chunks(_chunk_ce, head, hidden, targets, chunk)
    return parts[0] if len(parts) == 1 else sum(parts, hidden.new_zeros((), dtype=torch.float32))


class LossModule(torch.nn.Module):
    """A training objective's module around the model: DDP, FSDP and DeepSpeed (through accelerate) see
    one forward call, the model's `config` (DeepSpeed sizes its buckets from `hidden_size`) and its
    `_no_split_modules` (FSDP shards each decoder layer on its own). Every objective's loss is one."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = _base(model).config
        self._no_split_modules = getattr(_base(model), "_no_split_modules", None)


class CausalLMLoss(LossModule):
    def __init__(self, model: torch.nn.Module, chunk_size: int | None = None, logits_budget_mb: int = 256):
        super().__init__(model)
        self.chunk_size = chunk_size or chunk_rows(model, logits_budget_mb)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        base = _base(self.model)
        if not plain_head(base.config):
            # the head is not a plain projection for these models (Gemma 2/3, Cohere): use the model's own
            return reference_loss(self.model, {"input_ids": input_ids, "labels": labels,
                                               "attention_mask": attention_mask, "position_ids": position_ids})
        out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = supervised_mask(labels)
        n_tokens = keep.sum()
        loss = chunked_ce(base.get_output_embeddings(), hidden[keep], targets[keep], self.chunk_size)
        return loss, n_tokens


def reference_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain computation (full logits), for tests and for checking peers use the same loss."""
    inputs = {k: v for k, v in batch.items() if k != "labels" and v is not None}
    logits = model(**inputs, use_cache=False).logits.float()
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, supervised_mask(batch["labels"]).sum()

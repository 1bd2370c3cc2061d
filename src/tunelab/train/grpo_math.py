"""GRPO math: group-relative advantages, the clipped surrogate with a k3 KL penalty, and how the
per-token losses of a step are normalised. Pure functions over flat per-token tensors (the layout of
`models/logps.token_logps`: one value per scored completion token), matching TRL 1.16's GRPOTrainer
(`_generate_and_score_completions` for advantages, `_compute_loss` for the loss; parity tested in
tests/train/test_alignment_parity.py).

Normalisation. The training loop divides a step's summed loss by the step's summed count, so each
loss type is a (sum, count) pair over the whole accumulated step (`grpo_sum_and_count`):

  loss_type  sum                      count                         TRL 1.16
  grpo       Σ_i mean_t l_it          sequences                     mean over a micro-batch's sequences / accumulation steps
  bnpo       Σ_it l_it                completion tokens             token mean of each MICRO-batch / accumulation steps
  dapo       Σ_it l_it                completion tokens             token sum / the tokens of the whole generation batch
  dr_grpo    Σ_it l_it                sequences × max_completion    sum / (micro-batch sequences × max_completion_length) / accumulation steps

Where tunelab differs: TRL's bnpo normalises each micro-batch by its own token count, so micro-batches
with fewer tokens weigh more; tunelab's bnpo normalises by the step's tokens, i.e. bnpo == dapo here
(TRL's dapo with the default steps_per_generation == gradient_accumulation_steps). grpo and dr_grpo
agree with TRL whenever the step's micro-batches hold the same number of sequences (they do in TRL);
with one micro-batch all four equal TRL exactly.
"""
from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    # unbiased (Bessel-corrected) std that skips NaN rewards: TRL's `nanstd`
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    std = torch.sqrt(var * n / (n - 1))
    return std if dim is None else std.squeeze(dim)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """Advantages of `rewards` [N*G], laid out group by group (G = `group_size` completions of one prompt).

    reward − group mean, divided by (std + 1e-4) where std is the unbiased std of the group
    ("group") or of the whole batch ("batch"); "none" (Dr. GRPO) only centres. A NaN reward (an
    unscorable completion) is left out of the group statistics and gets advantage 0. As TRL 1.16.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; known: {', '.join(SCALE_REWARDS)}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    adv = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).view(-1)
    if scale_rewards == "group":
        std = _nanstd(grouped, dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(adv)
        adv = adv / (std + 1e-4)
    elif scale_rewards == "batch":
        std = _nanstd(rewards.float()) if rewards.numel() > 1 else torch.zeros(())
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def grpo_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages_per_token: torch.Tensor, *,
                    epsilon_low: float = 0.2, epsilon_high: float | None = None, delta: float | None = None,
                    ref_logps: torch.Tensor | None = None, kl_coef: float = 0.0, kl_bias_correction: bool = True
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token GRPO loss (same shape as `logps`) and detached token-mean stats.

    ratio = exp(logps − old_logps); loss = −min(ratio·A, clip(ratio, 1−ε_low, 1+ε_high)·A)
    (with `delta`, the unclipped ratio is also capped at delta: two-sided clipping, INTELLECT-2),
    plus kl_coef · (exp(ref − logp) − (ref − logp) − 1), the k3 estimator of KL(π‖π_ref), multiplied
    by the (differentiable, unclipped) ratio when `kl_bias_correction` (TRL 1.16's default
    `use_bias_correction_kl=True`, DeepSeek-V3.2: the unbiased reverse-KL gradient off-policy; it
    changes the gradient even on-policy, where the ratio's value is 1).
    ε_high defaults to ε_low. Stats as TRL logs them: clip_ratio/low_mean (ratio < 1−ε_low where
    A < 0), clip_ratio/high_mean (ratio > 1+ε_high where A > 0), clip_ratio/region_mean (either),
    and kl (when kl_coef > 0, after the correction, as TRL logs it), each a mean over the given tokens."""
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + eps_high)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    loss = -torch.min(unclipped * advantages_per_token, clipped * advantages_per_token)
    with torch.no_grad():
        low = (unclipped < 1 - epsilon_low) & (advantages_per_token < 0)
        high = (unclipped > 1 + eps_high) & (advantages_per_token > 0)
        stats = {"clip_ratio/low_mean": low.float().mean(), "clip_ratio/high_mean": high.float().mean(),
                 "clip_ratio/region_mean": (low | high).float().mean()}
    if kl_coef:
        if ref_logps is None:
            raise ValueError("kl_coef > 0 needs ref_logps")
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        if kl_bias_correction:
            kl = kl * ratio
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach().mean()
    return loss, stats


def truncated_is(per_token_loss: torch.Tensor, logps: torch.Tensor, rollout_logps: torch.Tensor, cap: float
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Token losses weighted by min(pi / pi_rollout, cap), the policy's probability of each sampled token
    over the probability it was sampled with (a lower-precision rollout copy): truncated importance
    sampling (Yao et al. 2025; TRL's `vllm_importance_sampling_mode="token_truncate"`). The weight is
    a constant (no gradient). Also the token-mean ratio before truncation and the truncated fraction."""
    with torch.no_grad():
        ratio = torch.exp(logps.float() - rollout_logps.to(logps.device).float())
        weight = ratio.clamp(max=cap)
        stats = {"rollout_is_ratio": float(ratio.mean()) if ratio.numel() else 1.0,
                 "rollout_is_truncated": float((ratio > cap).float().mean()) if ratio.numel() else 0.0}
    return per_token_loss * weight.to(per_token_loss.dtype), stats


def grpo_normaliser(loss_type: str, token_counts: torch.Tensor, max_completion_length: int | None = None
                    ) -> tuple[torch.Tensor, float]:
    """(weight of each sequence's tokens [S], count) for `loss_type` (see the module docstring):
    the step's loss is Σ_it weight_i · l_it / Σ count over the step's micro-batches."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    n_seqs = token_counts.numel()
    if loss_type == "grpo":
        return 1.0 / token_counts.clamp(min=1).float(), float(n_seqs)
    ones = torch.ones(n_seqs, device=token_counts.device)
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("loss_type dr_grpo needs max_completion_length")
        return ones, float(n_seqs * max_completion_length)
    return ones, float(token_counts.sum())  # bnpo, dapo


def grpo_sum_and_count(per_token_loss: torch.Tensor, seqs: torch.Tensor, n_seqs: int, loss_type: str,
                       max_completion_length: int | None = None) -> tuple[torch.Tensor, float]:
    """The micro-batch's (summed loss, count) for flat per-token losses whose sequence is `seqs`."""
    token_counts = torch.bincount(seqs, minlength=n_seqs)
    weights, count = grpo_normaliser(loss_type, token_counts, max_completion_length)
    return (per_token_loss * weights.to(per_token_loss.dtype)[seqs]).sum(), count

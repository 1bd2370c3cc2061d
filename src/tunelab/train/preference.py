"""Preference losses over per-sequence log-probabilities: DPO (sigmoid), IPO, robust DPO, ORPO, SimPO.

Pure functions of tensors, one value per pair, so the training loop's objective only has to compute
the summed log-probs of each reply (`models/logps.py`) and sum the per-pair losses. Each variant
matches TRL 1.16 exactly (tests/train/test_alignment_parity.py computes TRL's loss on the same batch):

  loss     TRL source (1.16)                                     log-probs used    reference model
  sigmoid  DPOTrainer._compute_loss, "sigmoid"                   summed            yes
  ipo      DPOTrainer._compute_loss, "ipo"                       log-ratios / len  yes
  robust   DPOTrainer._compute_loss, "robust" (label_smoothing)  summed            yes
  simpo    experimental CPOTrainer.cpo_loss, "simpo", cpo_alpha=0  averaged        no
  orpo     experimental ORPOTrainer.odds_ratio_loss + NLL        averaged          no

"summed" = Σ log p over the reply's tokens; "averaged" = that sum / the reply's token count; IPO
divides each *log-ratio* (policy minus reference, both summed) by the reply's token count.
Rewards are reported as TRL does: β·(logp − ref_logp) (summed) for the DPO family, β·(averaged logp)
for SimPO and ORPO. `label_smoothing` is used by robust and simpo only (TRL 1.16's DPO "sigmoid"
ignores it); giving it to another loss is an error rather than a silent no-op.

ORPO's total in TRL is `NLL − mean_pairs(β·logσ(log_odds))`, where the NLL is a token mean over the
batch's chosen sequences (TRL 1.16 scores the *whole* chosen sequence, prompt included: every
non-padding token after the first). `orpo_terms` returns the two parts as sums so a loop that
accumulates micro-batches can divide each by its own step-level count (pairs; NLL tokens); with one
micro-batch that is exactly TRL's loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "robust", "orpo", "simpo")
NEEDS_REFERENCE = {"sigmoid": True, "ipo": True, "robust": True, "orpo": False, "simpo": False}
_USES_SMOOTHING = ("robust", "simpo")


@dataclass
class PreferenceOut:
    losses: torch.Tensor  # [B] per-pair loss to minimise (for orpo: the odds-ratio term only, no NLL)
    chosen_rewards: torch.Tensor  # [B] detached, as TRL reports them for this loss type
    rejected_rewards: torch.Tensor  # [B] detached
    loss: torch.Tensor  # scalar: mean over pairs (+ chosen_nll for orpo when given): TRL's loss for one batch
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] detached, TRL's other logged values

    def metrics(self) -> dict[str, float]:
        """Means over the pairs, named as TRL logs them."""
        c, r = self.chosen_rewards, self.rejected_rewards
        out = {"rewards/chosen": c.mean().item(), "rewards/rejected": r.mean().item(),
               "rewards/accuracies": (c > r).float().mean().item(), "rewards/margins": (c - r).mean().item()}
        out.update({k: v.float().mean().item() for k, v in self.extras.items()})
        return out


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable on both sides of −ln 2 (the usual two-branch form, as TRL)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _orpo_log_odds(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor) -> torch.Tensor:
    # log odds(y) = log p − log(1 − p) with p the length-averaged probability (ORPO paper Eq. 4, 7)
    c, r = chosen_avg.float(), rejected_avg.float()
    return (c - r) - (log1mexp(c) - log1mexp(r))


def preference_loss(loss_type: str, *, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                    chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
                    ref_chosen_logps: torch.Tensor | None = None, ref_rejected_logps: torch.Tensor | None = None,
                    beta: float = 0.1, label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                    chosen_nll: torch.Tensor | None = None) -> PreferenceOut:
    """Per-pair preference losses (see the module docstring). `*_logps` are SUMMED log-probs of each
    reply [B], `*_tokens` the reply token counts [B]; `chosen_nll` (orpo only) the already-normalised
    NLL scalar added to `loss`."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown preference loss {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    if label_smoothing and loss_type not in _USES_SMOOTHING:
        raise ValueError(f"label_smoothing is used by {' and '.join(_USES_SMOOTHING)} only, not {loss_type!r}")
    if loss_type == "robust" and not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    if chosen_nll is not None and loss_type != "orpo":
        raise ValueError("chosen_nll is part of the orpo loss only")
    extras: dict[str, torch.Tensor] = {}

    if NEEDS_REFERENCE[loss_type]:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(f"{loss_type!r} needs reference log-probs (ref_chosen_logps, ref_rejected_logps)")
        chosen_ratio = chosen_logps - ref_chosen_logps
        rejected_ratio = rejected_logps - ref_rejected_logps
        delta = chosen_ratio - rejected_ratio
        if loss_type == "sigmoid":  # DPO, Rafailov et al. Eq. 7
            losses = -F.logsigmoid(beta * delta)
        elif loss_type == "ipo":  # IPO Eq. 17 on per-token log-ratios (TRL: confirmed with the IPO authors)
            d = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
            losses = (d - 1 / (2 * beta)) ** 2
        else:  # robust DPO (Chowdhury et al.): unbiased under a label-flip rate of label_smoothing
            eps = label_smoothing
            losses = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
        chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        extras["logps/chosen"], extras["logps/rejected"] = chosen_logps.detach(), rejected_logps.detach()
    else:
        chosen_avg = chosen_logps / chosen_tokens.clamp(min=1)
        rejected_avg = rejected_logps / rejected_tokens.clamp(min=1)
        if loss_type == "simpo":  # SimPO Eq. 6 with TRL CPO's label smoothing
            logits = (chosen_avg - rejected_avg) - simpo_gamma / beta
            losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                      - F.logsigmoid(-beta * logits) * label_smoothing)
        else:  # orpo
            log_odds = _orpo_log_odds(chosen_avg, rejected_avg)
            ratio = F.logsigmoid(log_odds)
            losses = -beta * ratio
            extras["log_odds_ratio"], extras["log_odds_chosen"] = ratio.detach(), log_odds.detach()
            if chosen_nll is not None:
                extras["nll_loss"] = chosen_nll.detach().expand_as(losses)
        chosen_rewards, rejected_rewards = beta * chosen_avg.detach(), beta * rejected_avg.detach()
        extras["logps/chosen"], extras["logps/rejected"] = chosen_avg.detach(), rejected_avg.detach()

    loss = losses.mean() + (chosen_nll if chosen_nll is not None else 0.0)
    return PreferenceOut(losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                         loss=loss, extras=extras)


def orpo_terms(*, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_tokens: torch.Tensor,
               rejected_tokens: torch.Tensor, nll_logps: torch.Tensor, beta: float = 0.1
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO's two parts as sums: (Σ_pairs −β·logσ(log_odds), Σ_tokens −log p over `nll_logps`).

    `nll_logps` are the per-token log-probs of the NLL positions (TRL: every token of each chosen
    sequence, prompt included). tunelab's normalisation: the step loss is
    `odds_sum / step_pairs + nll_sum / step_nll_tokens`, both counts over the whole accumulated step;
    with one micro-batch this equals TRL's `nll_mean − mean(β·logσ(log_odds))`."""
    out = preference_loss("orpo", chosen_logps=chosen_logps, rejected_logps=rejected_logps,
                          chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens, beta=beta)
    return out.losses.sum(), -nll_logps.sum()

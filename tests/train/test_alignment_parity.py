"""Alignment math: preference losses (train/preference.py) and GRPO (train/grpo_math.py).

First closed-form checks of the pure functions, then parity with TRL 1.16 computed inside the test on
the same tiny-qwen3 batch or the same tensors (see each test's docstring for how TRL is driven)."""
from __future__ import annotations

import math

import pytest
import torch

from tunelab.train.preference import orpo_terms, preference_loss

# ---------------------------------------------------------------- closed forms


def _pairs():
    # summed log-probs of 3 pairs with different reply lengths, and a reference
    return dict(chosen_logps=torch.tensor([-12.0, -30.0, -5.0]), rejected_logps=torch.tensor([-15.0, -28.0, -9.0]),
                chosen_tokens=torch.tensor([4, 10, 2]), rejected_tokens=torch.tensor([5, 7, 3]),
                ref_chosen_logps=torch.tensor([-13.0, -29.0, -6.0]),
                ref_rejected_logps=torch.tensor([-14.0, -29.0, -8.0]))


def test_dpo_family_closed_forms():
    p = _pairs()
    delta = (p["chosen_logps"] - p["ref_chosen_logps"]) - (p["rejected_logps"] - p["ref_rejected_logps"])
    out = preference_loss("sigmoid", **p, beta=0.5)
    assert torch.allclose(out.losses, torch.log1p(torch.exp(-0.5 * delta)))
    assert torch.allclose(out.chosen_rewards, 0.5 * (p["chosen_logps"] - p["ref_chosen_logps"]))
    assert torch.allclose(out.loss, out.losses.mean())
    # robust with no smoothing is DPO; with smoothing eps it is the unbiased mix
    assert torch.allclose(preference_loss("robust", **p, beta=0.5).losses, out.losses)
    eps = 0.1
    rob = preference_loss("robust", **p, beta=0.5, label_smoothing=eps).losses
    l_pos, l_neg = torch.log1p(torch.exp(-0.5 * delta)), torch.log1p(torch.exp(0.5 * delta))
    assert torch.allclose(rob, ((1 - eps) * l_pos - eps * l_neg) / (1 - 2 * eps))
    # ipo works on per-token log-ratios
    ipo = preference_loss("ipo", **p, beta=0.5).losses
    d = ((p["chosen_logps"] - p["ref_chosen_logps"]) / p["chosen_tokens"]
         - (p["rejected_logps"] - p["ref_rejected_logps"]) / p["rejected_tokens"])
    assert torch.allclose(ipo, (d - 1.0) ** 2)


def test_reference_free_closed_forms():
    p = {k: v for k, v in _pairs().items() if not k.startswith("ref")}
    ca, ra = p["chosen_logps"] / p["chosen_tokens"], p["rejected_logps"] / p["rejected_tokens"]
    simpo = preference_loss("simpo", **p, beta=2.0, simpo_gamma=0.5)
    assert torch.allclose(simpo.losses, torch.log1p(torch.exp(-2.0 * (ca - ra) + 0.5)))
    assert torch.allclose(simpo.chosen_rewards, 2.0 * ca)
    orpo = preference_loss("orpo", **p, beta=0.1, chosen_nll=torch.tensor(1.5))
    odds = lambda lp: lp.double().exp() / (1 - lp.double().exp())  # noqa: E731
    log_or = torch.log(odds(ca) / odds(ra))
    assert torch.allclose(orpo.extras["log_odds_chosen"].double(), log_or, atol=1e-5)
    assert torch.allclose(orpo.losses.double(), 0.1 * torch.log1p(torch.exp(-log_or)), atol=1e-6)
    assert torch.allclose(orpo.loss, 1.5 + orpo.losses.mean())
    nll_logps = torch.tensor([-1.0, -2.0, -0.5])
    odds_sum, nll_sum = orpo_terms(**p, nll_logps=nll_logps, beta=0.1)
    assert torch.allclose(odds_sum, orpo.losses.sum()) and nll_sum.item() == 3.5


def test_preference_loss_errors_name_the_choice():
    p = _pairs()
    with pytest.raises(ValueError, match="known: sigmoid, ipo, robust, orpo, simpo"):
        preference_loss("kto", **p)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss("sigmoid", **p, label_smoothing=0.1)
    no_ref = {k: v for k, v in p.items() if not k.startswith("ref")}
    with pytest.raises(ValueError, match="reference"):
        preference_loss("ipo", **no_ref)


def test_losses_have_gradients_and_zero_margin_is_log2():
    c = torch.tensor([-3.0], requires_grad=True)
    out = preference_loss("sigmoid", chosen_logps=c, rejected_logps=torch.tensor([-3.0]),
                          chosen_tokens=torch.tensor([2]), rejected_tokens=torch.tensor([2]),
                          ref_chosen_logps=torch.tensor([-3.0]), ref_rejected_logps=torch.tensor([-3.0]), beta=0.1)
    assert math.isclose(out.loss.item(), math.log(2), rel_tol=1e-6)
    out.loss.backward()
    assert math.isclose(c.grad.item(), -0.05, rel_tol=1e-5)  # d/dc −logσ(β(c − r)) at 0 = −β/2


def test_group_advantages_closed_form():
    from tunelab.train.grpo_math import group_advantages

    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 4, "group")
    std = torch.tensor([0.0, 1.0, 1.0, 0.0]).std()  # unbiased: sqrt(1/3)
    assert torch.allclose(a[:4], (r[:4] - 0.5) / (std + 1e-4)) and a[4:].abs().max() == 0
    assert torch.allclose(group_advantages(r, 4, "none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    nan = group_advantages(torch.tensor([1.0, float("nan"), 0.0, 2.0]), 4, "none")
    assert nan.tolist() == [0.0, 0.0, -1.0, 1.0]  # NaN left out of the mean, and gets 0


def test_grpo_token_loss_closed_form_and_normalisers():
    from tunelab.train.grpo_math import grpo_sum_and_count, grpo_token_loss

    logps = torch.tensor([-1.0, -1.0, -1.0, -2.0], requires_grad=True)
    old = torch.tensor([-1.0, -1.5, -0.5, -2.0])  # ratios 1, e^.5, e^-.5, 1
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, stats = grpo_token_loss(logps, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    assert torch.allclose(loss, torch.tensor([-1.0, -1.28, 0.8, 1.0]))  # both clipped ones held at the bound
    assert stats["clip_ratio/high_mean"] == 0.25 and stats["clip_ratio/low_mean"] == 0.25
    assert stats["clip_ratio/region_mean"] == 0.5
    ref = torch.tensor([-1.0, -0.5, -1.0, -1.0])
    loss_kl, stats = grpo_token_loss(logps, old, adv, ref_logps=ref, kl_coef=0.1)
    d = ref - logps.detach()
    assert torch.allclose(stats["kl"], (d.exp() - d - 1).mean())
    seqs = torch.tensor([0, 0, 0, 1])
    s, n = grpo_sum_and_count(loss, seqs, 2, "grpo")
    assert n == 2 and torch.allclose(s, loss[:3].mean() + loss[3])
    s, n = grpo_sum_and_count(loss, seqs, 2, "dapo")
    assert n == 4 and torch.allclose(s, loss.sum())
    s, n = grpo_sum_and_count(loss, seqs, 2, "dr_grpo", max_completion_length=8)
    assert n == 16 and torch.allclose(s, loss.sum())

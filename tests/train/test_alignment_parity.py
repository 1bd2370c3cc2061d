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
    loss_kl, stats = grpo_token_loss(logps, old, adv, epsilon_high=0.28, ref_logps=ref, kl_coef=0.1,
                                     kl_bias_correction=False)
    d = ref - logps.detach()
    assert torch.allclose(stats["kl"], (d.exp() - d - 1).mean())
    assert torch.allclose(loss_kl, loss + 0.1 * (d.exp() - d - 1))
    _, stats = grpo_token_loss(logps, old, adv, ref_logps=ref, kl_coef=0.1)  # weighted by the ratio (TRL default)
    assert torch.allclose(stats["kl"], ((d.exp() - d - 1) * (logps.detach() - old).exp()).mean())
    seqs = torch.tensor([0, 0, 0, 1])
    s, n = grpo_sum_and_count(loss, seqs, 2, "grpo")
    assert n == 2 and torch.allclose(s, loss[:3].mean() + loss[3])
    s, n = grpo_sum_and_count(loss, seqs, 2, "dapo")
    assert n == 4 and torch.allclose(s, loss.sum())
    s, n = grpo_sum_and_count(loss, seqs, 2, "dr_grpo", max_completion_length=8)
    assert n == 16 and torch.allclose(s, loss.sum())


# ---------------------------------------------------------------- parity with TRL 1.16
# TRL's trainers are built for real (tiny args, no saving, fp32: TRL configs default to bf16 autocast,
# which would make TRL's numbers differ from any fp32 computation by ~1e-3) around deep copies of
# tiny-qwen3 (they patch the model's forward), and their own loss functions are called on a
# collated batch; tunelab computes the same quantities with `token_logps` and the pure functions.

TOL = 1e-5
IGNORE = -100


@pytest.fixture(autouse=True)
def _no_dataset_hashing(monkeypatch):
    """TRL's trainers `map` their dataset with the tokenizer as an argument; `datasets` fingerprints
    that by pickling Qwen3's 151,669-token tokenizer (~15 s a map on this CPU). A random fingerprint
    changes nothing here (nothing is cached between tests)."""
    import datasets.arrow_dataset as ad
    from datasets.fingerprint import generate_random_fingerprint

    monkeypatch.setattr(ad, "update_fingerprint", lambda *a, **k: generate_random_fingerprint())


def _trl_args(config_cls, tmp_path, **kw):
    return config_cls(output_dir=str(tmp_path / "trl"), report_to="none", save_strategy="no", use_cpu=True,
                      bf16=False, per_device_train_batch_size=3, **kw)


def _close(a, b, tol=TOL):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) <= tol * max(1.0, abs(b))


@pytest.fixture(scope="module")
def pairs(qwen_tok):
    """3 (prompt, chosen, rejected) id triples of different lengths, rendered with Qwen3's template."""
    tok, end = qwen_tok, qwen_tok.convert_tokens_to_ids("<|im_end|>")
    rows = [("What is 2+2?", "4.", "It is five, I think."),
            ("Name a colour.", "Blue is a colour that many people like.", "Seven."),
            ("Say hi", "Hi!", "No")]
    out = []
    for q, c, r in rows:
        prompt = list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                              tokenize=True)["input_ids"])
        out.append({"prompt_ids": prompt, "chosen_ids": tok(c)["input_ids"] + [end],
                    "rejected_ids": tok(r)["input_ids"] + [end]})
    return out


@pytest.fixture(scope="module")
def policy_and_ref(tiny_qwen):
    import copy

    policy = copy.deepcopy(tiny_qwen).eval()
    ref = copy.deepcopy(tiny_qwen).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a perturbed reference, so rewards and margins are not all zero
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g) * p.abs().mean())
    return policy, ref


def _sums(model, input_ids, labels, attention_mask):
    from tunelab.models.logps import counts, per_row, token_logps

    out = token_logps(model, input_ids, labels, attention_mask)
    return per_row(out.logps, out.seqs, out.n_seqs), counts(out.seqs, out.n_seqs), out


@pytest.mark.parametrize("loss_type,label_smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.1)])
def test_dpo_family_matches_trl_dpotrainer(qwen_tok, pairs, policy_and_ref, tmp_path, loss_type, label_smoothing):
    """TRL: DPOTrainer(model, ref_model) built on a 1-row dataset; `compute_loss` on the batch of our 3
    pairs collated by TRL's DataCollatorForPreference; loss and logged rewards read from `_metrics`."""
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    policy, ref = policy_and_ref
    beta = 0.5
    args = _trl_args(DPOConfig, tmp_path, loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}]),
                         processing_class=qwen_tok)
    batch = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)(pairs)
    trainer.model.train()  # TRL logs under 'train' or 'eval' by the model's mode
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    sums, n_tok, _ = _sums(policy, batch["input_ids"], labels, batch["attention_mask"])
    with torch.no_grad():
        ref_sums, _, _ = _sums(ref, batch["input_ids"], labels, batch["attention_mask"])
    B = len(pairs)
    out = preference_loss(loss_type, chosen_logps=sums[:B], rejected_logps=sums[B:], chosen_tokens=n_tok[:B],
                          rejected_tokens=n_tok[B:], ref_chosen_logps=ref_sums[:B], ref_rejected_logps=ref_sums[B:],
                          beta=beta, label_smoothing=label_smoothing)
    ours = out.metrics()
    assert _close(out.loss, trl_loss), (out.loss.item(), trl_loss.item())
    for key in ("rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert _close(ours[key], trl[key]), (key, ours[key], trl[key])
    assert abs(ours["rewards/margins"]) > 1e-3  # the perturbed reference makes the margins non-trivial



def _paired_batch(pairs, pad_id):
    """TRL's legacy paired layout (CPO/ORPO `concatenated_forward`): chosen_* and rejected_* rows,
    right-padded, labels -100 on the prompt and the padding."""
    from tunelab.data.batching import collate_padded

    out = {}
    for side in ("chosen", "rejected"):
        exs = [{"input_ids": p["prompt_ids"] + p[f"{side}_ids"],
                "labels": [IGNORE] * len(p["prompt_ids"]) + p[f"{side}_ids"]} for p in pairs]
        b = collate_padded(exs, pad_id=pad_id)
        out.update({f"{side}_input_ids": b["input_ids"], f"{side}_attention_mask": b["attention_mask"],
                    f"{side}_labels": b["labels"]})
    return out


def _reference_free_inputs(policy, batch):
    # the rows TRL's concatenated_inputs builds: chosen then rejected, padded to one width
    import torch.nn.functional as F

    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    cat = {k: torch.cat([F.pad(batch[f"chosen_{k}"], (0, width - batch[f"chosen_{k}"].shape[1]), value=v),
                         F.pad(batch[f"rejected_{k}"], (0, width - batch[f"rejected_{k}"].shape[1]), value=v)])
           for k, v in (("input_ids", 0), ("attention_mask", 0), ("labels", IGNORE))}
    sums, n_tok, _ = _sums(policy, cat["input_ids"], cat["labels"], cat["attention_mask"])
    return cat, sums, n_tok


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpotrainer(qwen_tok, pairs, policy_and_ref, tmp_path, label_smoothing):
    """TRL: experimental CPOTrainer with loss_type="simpo", cpo_alpha=0 (pure SimPO); its
    `get_batch_loss_metrics` on our 3 pairs in its paired layout."""
    import copy

    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    policy, _ = policy_and_ref
    tok = qwen_tok
    args = _trl_args(CPOConfig, tmp_path, loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.5,
                     label_smoothing=label_smoothing)
    trainer = CPOTrainer(model=copy.deepcopy(policy), args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}]))
    batch = _paired_batch(pairs, tok.pad_token_id)
    trl_loss, trl = trainer.get_batch_loss_metrics(trainer.model, batch)

    _, sums, n_tok = _reference_free_inputs(policy, batch)
    B = len(pairs)
    out = preference_loss("simpo", chosen_logps=sums[:B], rejected_logps=sums[B:], chosen_tokens=n_tok[:B],
                          rejected_tokens=n_tok[B:], beta=2.0, simpo_gamma=0.5, label_smoothing=label_smoothing)
    ours = out.metrics()
    assert _close(out.loss, trl_loss), (out.loss.item(), trl_loss.item())
    for key in ("rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert _close(ours[key], trl[key]), (key, ours[key], trl[key])


def test_orpo_matches_trl_orpotrainer(qwen_tok, pairs, policy_and_ref, tmp_path):
    """TRL: experimental ORPOTrainer's `get_batch_loss_metrics` on our 3 pairs in its paired layout.
    Its NLL covers every token of the chosen sequences (prompt included), so ours does too here;
    with one micro-batch, odds_sum / pairs + nll_sum / nll_tokens is TRL's loss."""
    import copy

    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from tunelab.models.logps import token_logps

    policy, _ = policy_and_ref
    tok = qwen_tok
    beta = 0.25
    trainer = ORPOTrainer(model=copy.deepcopy(policy), args=_trl_args(ORPOConfig, tmp_path, beta=beta),
                          processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}]))
    batch = _paired_batch(pairs, tok.pad_token_id)
    trl_loss, trl = trainer.get_batch_loss_metrics(trainer.model, batch)

    cat, sums, n_tok = _reference_free_inputs(policy, batch)
    B = len(pairs)
    chosen = {k: cat[k][:B] for k in ("input_ids", "attention_mask")}
    nll = token_logps(policy, chosen["input_ids"], chosen["input_ids"].masked_fill(chosen["attention_mask"] == 0,
                                                                                   IGNORE), chosen["attention_mask"])
    terms = dict(chosen_logps=sums[:B], rejected_logps=sums[B:], chosen_tokens=n_tok[:B], rejected_tokens=n_tok[B:])
    odds_sum, nll_sum = orpo_terms(**terms, nll_logps=nll.logps, beta=beta)
    loss = odds_sum / B + nll_sum / nll.logps.numel()
    assert _close(loss, trl_loss), (loss.item(), trl_loss.item())
    out = preference_loss("orpo", **terms, beta=beta, chosen_nll=nll_sum / nll.logps.numel())
    assert _close(out.loss, trl_loss)
    ours = out.metrics()
    for key in ("rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected",
                "log_odds_ratio", "log_odds_chosen", "nll_loss"):
        assert _close(ours[key], trl[key]), (key, ours[key], trl[key])


REWARDS = [1.0, 0.0, 0.5, 2.0, 3.0, 3.0, 3.0, 3.0]  # the second group has zero spread: advantage 0
GROUP = 4


@pytest.fixture(scope="module")
def grpo_trainer(qwen_tok, policy_and_ref, tmp_path_factory):
    """TRL 1.16 GRPOTrainer around a copy of tiny-qwen3 with a reward function that returns REWARDS,
    sampling at temperature 0.7 (so the scoring temperature is checked too)."""
    import copy

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions, **kw):
        return REWARDS[: len(completions)]

    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), report_to="none", save_strategy="no",
                      use_cpu=True, bf16=False, per_device_train_batch_size=8, num_generations=GROUP,
                      max_completion_length=6, temperature=0.7, loss_type="grpo", beta=0.0, epsilon=0.2,
                      epsilon_high=0.28)
    trainer = GRPOTrainer(model=copy.deepcopy(policy_and_ref[0]), reward_funcs=reward, args=args,
                          processing_class=qwen_tok,
                          train_dataset=Dataset.from_list([{"prompt": "What is 2+2?"}, {"prompt": "Say hi"}]))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we do not run
    return trainer


def test_group_advantages_match_trl_grpotrainer(grpo_trainer):
    """TRL: `_generate_and_score_completions` (generates with the tiny model, scores with the fixed
    rewards) for two prompts x 4 generations; its advantages against ours from the same rewards."""
    from tunelab.train.grpo_math import group_advantages

    batch = [{"prompt": "What is 2+2?"}] * GROUP + [{"prompt": "Say hi"}] * GROUP
    out = grpo_trainer._generate_and_score_completions(batch)
    ours = group_advantages(torch.tensor(REWARDS), GROUP, "group")
    assert torch.allclose(ours, out["advantages"], atol=TOL, rtol=0)
    assert ours[:GROUP].abs().min() > 0.1 and ours[GROUP:].abs().max() == 0


@pytest.mark.parametrize("loss_type,kl_coef,kl_bias_correction", [
    ("grpo", 0.0, True), ("dapo", 0.0, True), ("dr_grpo", 0.0, True), ("bnpo", 0.0, True),
    ("grpo", 0.04, True), ("dapo", 0.04, False)])
def test_grpo_loss_matches_trl_grpotrainer(grpo_trainer, loss_type, kl_coef, kl_bias_correction):
    """TRL: GRPOTrainer._compute_loss on a hand-made batch (left-padded prompts, right-padded
    completions of different lengths, advantages, old and reference per-token log-probs made by
    perturbing the policy's own, so some ratios are clipped on each side); loss, logged stats and
    gradients. The trainer is built once; `loss_type`, `beta` (the KL coefficient) and
    `args.use_bias_correction_kl` are set on it per case: they are read only inside `_compute_loss`
    (a reference model is only needed to *make* ref_per_token_logps, given here)."""
    from tunelab.models.logps import token_logps
    from tunelab.train.grpo_math import grpo_sum_and_count, grpo_token_loss

    tr = grpo_trainer
    tr.loss_type, tr.beta, tr.args.use_bias_correction_kl = loss_type, kl_coef, kl_bias_correction
    tr._metrics["train"].clear()
    g = torch.Generator().manual_seed(1)
    B, P, C = 2 * GROUP, 5, tr.max_completion_length
    prompt_ids = torch.randint(100, 150000, (B, P), generator=g)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[GROUP:, :2] = 0  # the second prompt is shorter: left padding
    completion_ids = torch.randint(100, 150000, (B, C), generator=g)
    lengths = torch.tensor([6, 3, 5, 1, 6, 2, 4, 6])
    completion_mask = (torch.arange(C) < lengths[:, None]).long()
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.5, 0.9, -0.2, 0.0, 0.6])

    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, P:] = completion_ids.masked_fill(completion_mask == 0, IGNORE)
    model = tr.model
    ours = token_logps(model, input_ids, labels, attention_mask, temperature=0.7)
    mask = completion_mask.bool()
    with torch.no_grad():
        # old log-probs alternately above and below the policy's: ratios exp(∓0.3..0.9) clip on both sides
        sign = (-1.0) ** torch.arange(ours.logps.numel())
        old = ours.logps.detach() + sign * (0.3 + 0.6 * torch.rand(ours.logps.shape, generator=g))
        ref = ours.logps.detach() + 0.3 * torch.randn(ours.logps.shape, generator=g)
    as_2d = lambda flat: torch.zeros(B, C).masked_scatter(mask, flat)  # noqa: E731
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": as_2d(old),
              "ref_per_token_logps": as_2d(ref), "num_items_in_batch": completion_mask.sum()}
    trl_loss = tr._compute_loss(model, inputs)
    trl = {k: v[-1] for k, v in tr._metrics["train"].items()}

    per_token, stats = grpo_token_loss(ours.logps, old, advantages[ours.rows], epsilon_low=0.2, epsilon_high=0.28,
                                       ref_logps=ref, kl_coef=kl_coef,
                                       kl_bias_correction=kl_bias_correction)
    total, count = grpo_sum_and_count(per_token, ours.seqs, ours.n_seqs, loss_type, max_completion_length=C)
    assert _close(total / count, trl_loss), (loss_type, (total / count).item(), trl_loss.item())
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") + (("kl",) if kl_coef else ()):
        assert _close(stats[key], trl[key]), (key, stats[key], trl[key])
    assert stats["clip_ratio/low_mean"] > 0 and stats["clip_ratio/high_mean"] > 0
    # and the gradients agree
    model.zero_grad()
    trl_loss.backward()
    g_trl = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ours = token_logps(model, input_ids, labels, attention_mask, temperature=0.7)
    per_token, _ = grpo_token_loss(ours.logps, old, advantages[ours.rows], epsilon_low=0.2, epsilon_high=0.28,
                                   ref_logps=ref, kl_coef=kl_coef,
                                       kl_bias_correction=kl_bias_correction)
    total, count = grpo_sum_and_count(per_token, ours.seqs, ours.n_seqs, loss_type, max_completion_length=C)
    (total / count).backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, g_trl[n], atol=1e-6, rtol=1e-4), n
    model.zero_grad()


def test_truncated_importance_sampling_closed_form():
    """Each token's loss times min(exp(logp - rollout_logp), cap), the weight without gradient."""
    from tunelab.train.grpo_math import truncated_is

    logps = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    rollout = torch.tensor([-1.0, -2.0 - math.log(2), -0.5 - math.log(5), -3.0 + math.log(4)])
    per_token = -logps * 1.5
    out, stats = truncated_is(per_token, logps.detach(), rollout, cap=3.0)
    assert torch.allclose(out, per_token * torch.tensor([1.0, 2.0, 3.0, 0.25]), atol=1e-6)
    out.sum().backward()
    assert torch.allclose(logps.grad, -1.5 * torch.tensor([1.0, 2.0, 3.0, 0.25]), atol=1e-6)
    assert stats["rollout_is_ratio"] == pytest.approx((1 + 2 + 5 + 0.25) / 4, rel=1e-5)
    assert stats["rollout_is_truncated"] == 0.25

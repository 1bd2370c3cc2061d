"""Parameter groups (who decays, LoRA+ lr), every optimizer taking a real step, and the exact lr
multipliers of the schedules, including a state_dict round trip through torch.load(weights_only=True)."""
from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from torch import nn

from tunelab.train.optim import (OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler, param_groups,
                                 warmup_steps_for)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, ids):
        return self.norm(self.proj(self.emb(ids))) + self.frozen.weight.sum()


def _names(model, groups):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: sorted(by_id[id(p)] for p in g["params"]) for g in groups}


def _lora_model(**lora_kwargs):
    peft = pytest.importorskip("peft")
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    return peft.get_peft_model(model, peft.LoraConfig(target_modules=["q_proj", "v_proj"], **lora_kwargs))


LORA = "base_model.model.model.layers.0.self_attn.{}_proj.{}.default.weight"


# ---------------------------------------------------------------- param groups


def test_groups_split_decay_from_biases_and_norms_and_skip_frozen():
    model = Tiny()
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    assert _names(model, groups) == {"decay": ["emb.weight", "proj.weight"],
                                     "no_decay": ["norm.bias", "norm.weight", "proj.bias"]}
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [("decay", 1e-3, 0.1),
                                                                         ("no_decay", 1e-3, 0.0)]


def test_no_trainable_parameters_is_an_error():
    model = Tiny().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, lr=1e-3, weight_decay=0.0)


def test_lora_groups_only_adapters():
    model = _lora_model()
    groups = param_groups(model, lr=2e-4, weight_decay=0.01)
    assert _names(model, groups) == {"decay": sorted(LORA.format(m, ab) for m in "qv" for ab in ("lora_A", "lora_B"))}


def test_lora_plus_gives_lora_b_ratio_times_lr_and_dora_magnitudes_no_decay():
    model = _lora_model(use_dora=True)
    groups = param_groups(model, lr=2e-4, weight_decay=0.01, lora_plus_ratio=16.0)
    assert _names(model, groups) == {
        "decay": [LORA.format("q", "lora_A"), LORA.format("v", "lora_A")],
        "no_decay": [LORA.format("q", "lora_magnitude_vector"), LORA.format("v", "lora_magnitude_vector")],
        "lora_B": [LORA.format("q", "lora_B"), LORA.format("v", "lora_B")],
    }
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert lrs == {"decay": (2e-4, 0.01), "no_decay": (2e-4, 0.0), "lora_B": (pytest.approx(3.2e-3), 0.01)}
    assert groups[0]["name"] == "decay"  # the loop logs group 0's lr: the base lr, not LoRA+'s
    # the optimizer keeps the group's own lr, not the default
    opt = build_optimizer("adamw", groups, lr=1.0, weight_decay=0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-4, 2e-4, 3.2e-3])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0, 0.01]


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_takes_a_step_that_changes_weights(name):
    if name == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(name, param_groups(model, lr=1e-2, weight_decay=0.01), lr=1e-2, weight_decay=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.arange(6)).pow(2).mean().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"emb.weight", "proj.weight", "proj.bias", "norm.weight", "norm.bias"}


def test_adamw_reports_its_implementation():
    groups = param_groups(Tiny(), lr=1e-3, weight_decay=0.0)
    opt = build_optimizer("adamw", groups, lr=1e-3, weight_decay=0.0)
    assert opt.tunelab_impl == "fused"  # torch >= 2.4 has fused AdamW kernels for CPU floats too
    assert opt.defaults["fused"] is True and isinstance(opt, torch.optim.AdamW)
    assert all(set(g) == {"params", "name", "lr", "weight_decay"} for g in groups)  # caller's dicts untouched


def test_adamw_falls_back_to_foreach_where_fused_is_refused():
    # torch refuses fused=True for complex parameters; foreach handles them
    p = nn.Parameter(torch.tensor([1 + 2j, 3 - 1j]))
    opt = build_optimizer("adamw", [{"params": [p]}], lr=0.1, weight_decay=0.0)
    assert opt.tunelab_impl == "foreach" and opt.defaults["foreach"] is True
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([0.9 + 2j, 2.9 - 1j]), atol=1e-5)  # Adam's first step: lr*sign


def test_sgd_nesterov_needs_momentum():
    groups = param_groups(Tiny(), lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        build_optimizer("sgd", groups, lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=True)
    opt = build_optimizer("sgd", groups, lr=0.1, weight_decay=0.0, momentum=0.9, nesterov=True)
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


def test_unknown_optimizer_lists_known_names():
    with pytest.raises(ValueError, match="'lion'; known: adafactor, adamw, adamw_8bit, sgd$"):
        build_optimizer("lion", param_groups(Tiny(), lr=0.1, weight_decay=0.0), lr=0.1, weight_decay=0.0)


# ---------------------------------------------------------------- schedules


def _lrs(sched, n):
    """The lr used by each of the first n optimizer updates."""
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def _sched(name, **kw):
    p = nn.Parameter(torch.zeros(1))
    return build_scheduler(name, torch.optim.SGD([p], lr=1.0), **kw)


def test_warmup_is_linear_from_zero_then_constant():
    lrs = _lrs(_sched("constant", total_steps=20, warmup_steps=4), 8)
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])


def test_cosine_multipliers():
    # warmup 10, then 100 decay steps to 0.1: midpoint (1 + 0.1) / 2, end 0.1, and it stays there
    lrs = _lrs(_sched("cosine", total_steps=110, warmup_steps=10, min_lr_ratio=0.1), 115)
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1) and lrs[114] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_linear_multipliers():
    lrs = _lrs(_sched("linear", total_steps=100, warmup_steps=0, min_lr_ratio=0.0), 101)
    assert lrs[0] == 1.0 and lrs[25] == pytest.approx(0.75) and lrs[50] == pytest.approx(0.5)
    assert lrs[100] == 0.0


def test_multiplier_scales_each_groups_own_lr():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1.6e-2}], lr=1.0)
    sched = build_scheduler("linear", opt, total_steps=10, warmup_steps=2)
    opt.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([5e-4, 8e-3])


def test_warmup_ratio_conversion():
    assert warmup_steps_for(30, 0, 0.1) == 3  # not 4: 0.1 * 30 is 3.0000000000000004 in floats
    assert warmup_steps_for(1000, 0, 0.03) == 30
    assert warmup_steps_for(10, 0, 0.15) == 2  # ceil(1.5)
    assert warmup_steps_for(100, 7, 0.5) == 7  # steps win over the ratio
    assert warmup_steps_for(100, 0, 0.0) == 0
    lrs = _lrs(_sched("constant", total_steps=40, warmup_ratio=0.1), 5)
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    with pytest.raises(ValueError):
        warmup_steps_for(10, 0, 1.5)


def test_unknown_schedule_lists_known_names():
    assert sorted(SCHEDULES) == ["constant", "cosine", "linear"]
    with pytest.raises(ValueError, match="'wsd'; known: constant, cosine, linear$"):
        _sched("wsd", total_steps=10)


def test_state_dict_round_trips_with_weights_only_and_continues_identically():
    kw = dict(total_steps=50, warmup_steps=5, min_lr_ratio=0.1)
    sched = _sched("cosine", **kw)
    pickle.dumps(sched.lr_lambdas[0])  # a partial of module-level functions, not a lambda
    _lrs(sched, 17)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    restored = _sched("cosine", **kw)
    restored.load_state_dict(state)
    assert restored.last_epoch == 17 and restored.get_last_lr() == sched.get_last_lr()
    assert restored.lr_lambdas[0].func is sched.lr_lambdas[0].func  # loading kept our multiplier
    assert _lrs(restored, 40) == _lrs(sched, 40)

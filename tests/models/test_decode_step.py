"""The hand-written decoding step (models/decode_step.py) against the model's own forward: Llama, Qwen2 (q/k/v
biases), Qwen3 (q/k norms) and Mistral, fp32 and bf16 with oneDNN-packed weights, peft LoRA layers, a weight
changed in place, and the models it must leave to their own forward."""
from __future__ import annotations

import pytest
import torch

from tunelab.models import decode_step as DS
from tunelab.models.generate import _cache_keyword, _new_cache, _next_logits, decode
from tunelab.models.load import load_model


def tiny(family: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    arch = dict(layers=2) if family == "qwen3" else dict(family=family, layers=2)
    m = load_model("tiny-qwen3", from_scratch=True, arch=arch).to(dtype).eval()
    if family == "qwen2":  # biases that are not zero, so a step that dropped them would show
        for layer in m.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(lin.bias, std=0.5)
    return m


def both_ways(model, steps: int = 5):
    """Logits of `steps` decoding steps after a left-padded prompt: (the model's forward, the written step)."""
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    tokens = torch.randint(0, vocab, (steps, 3), generator=g)
    key = _cache_keyword(model)
    out = []
    with torch.no_grad():
        for written in (False, True):
            kv = {key: _new_cache(7 + steps)}
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            _next_logits(model, kv, input_ids=ids, attention_mask=mask, position_ids=pos)
            step, m, position, rows = DS.decode_step(model, 7 + steps) if written else None, mask, pos[:, -1:], []
            for t in range(steps):
                m, position = torch.cat([m, m.new_ones(3, 1)], 1), position + 1
                rows.append(step(tokens[t], position, m, kv[key]) if written else
                            _next_logits(model, kv, input_ids=tokens[t][:, None], attention_mask=m, position_ids=position))
            out.append(torch.stack(rows).float())
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_step_equals_the_models_forward_in_fp32(family, tunelab_home):
    model = tiny(family)
    assert model.config.model_type == family
    theirs, mine = both_ways(model)
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5)
    assert list(DS._checked[model]._packed) == [id(model.lm_head.weight)]  # in fp32 only the head is packed


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_bf16_packed_weights_give_the_plain_products_bit_for_bit(family, tunelab_home, monkeypatch):
    model = tiny(family, torch.bfloat16)
    theirs, packed = both_ways(model)
    assert DS._checked[model]._packed  # oneDNN's packed copies were used
    assert (packed - theirs).abs().max() <= 0.05 * theirs.std()  # bf16 rounding apart from transformers' ops
    monkeypatch.setattr(DS, "_machine_bytes", lambda: 1000)  # weights over 1/8 of the memory stay unpacked
    _, plain = both_ways(model)
    assert not DS._checked[model]._packed
    assert torch.equal(packed, plain)


def test_packed_copy_follows_a_weight_changed_in_place(tunelab_home):
    model = tiny("llama", torch.bfloat16)
    before, _ = both_ways(model)
    with torch.no_grad():  # what GRPO's rollout copy refresh does to its weights every step
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(3.0)
        model.lm_head.weight.add_(0.1)
    theirs, mine = both_ways(model)
    assert (theirs - before).abs().max() > 10 * (mine - theirs).abs().max()
    assert (mine - theirs).abs().max() <= 0.05 * theirs.std()


def test_decode_uses_the_step_and_samples_the_same_tokens(tunelab_home, monkeypatch):
    model = tiny("qwen3")
    ids = torch.randint(0, 1000, (4, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    runs = []
    for use in (True, False):
        if not use:
            monkeypatch.setattr(DS, "decode_step", lambda model, capacity: None)
        torch.manual_seed(5)
        runs.append(decode(model, ids, mask, max_new_tokens=12, temperature=1.0, top_p=0.9, stop_ids=[], pad_id=0))
    (tok_a, lp_a), (tok_b, lp_b) = runs
    assert torch.equal(tok_a, tok_b) and torch.allclose(lp_a, lp_b, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_lora_adapters_are_added_as_peft_adds_them(family, tunelab_home):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny(family), LoraConfig(r=4, lora_alpha=16, target_modules="all-linear",
                                                   init_lora_weights=False, lora_dropout=0.1)).eval()
    theirs, mine = both_ways(lora)
    with lora.disable_adapter():
        plain, _ = both_ways(lora)
    assert (theirs - plain).abs().max() > 0.1  # the adapters change the logits
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5)
    lora.train()  # dropout: the model's own forward
    assert DS.decode_step(lora, 16) is None


def test_models_it_leaves_to_their_own_forward(tunelab_home):
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(tiny("qwen3"), LoraConfig(r=4, target_modules="all-linear", use_dora=True)).eval()
    assert DS.decode_step(dora, 16) is None and "DoRA" in DS._supported(dora.get_base_model(), 16)
    mistral = tiny("mistral")
    mistral.config.sliding_window = 8
    assert DS._supported(mistral, 16) == "a sliding window of 8 positions"
    assert DS._supported(mistral, 8) is None
    hooked = tiny("llama")  # a forward hook the written step would skip: the check sees the difference
    hooked.model.layers[1].mlp.down_proj.register_forward_hook(lambda mod, args, out: out * 2)
    assert DS._supported(hooked, 16) is None and DS.decode_step(hooked, 16) is None


def test_a_checked_model_is_not_kept_alive(tunelab_home):
    import gc
    import weakref

    model = tiny("llama")
    both_ways(model, steps=1)
    assert model in DS._checked
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None

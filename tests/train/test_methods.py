"""Fine-tuning methods on a tiny random Qwen3: exact trainable counts from the layer shapes, gradients
exactly on the trainable weights (with and without gradient checkpointing), QLoRA through real
bitsandbytes 4-bit weights on CPU, and the errors a user can cause."""
from __future__ import annotations

import math
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from tunelab.train.methods import (METHODS, MethodError, apply_method, check_supported, count_params,
                                   describe, linear_module_names)
from tunelab.models.load import quantization_config

H, I, V, HEAD, NQ, NKV, LAYERS = 64, 128, 256, 16, 4, 2, 3
# (in, out) of every linear layer in one decoder layer
SHAPES = {"q_proj": (H, NQ * HEAD), "k_proj": (H, NKV * HEAD), "v_proj": (H, NKV * HEAD), "o_proj": (NQ * HEAD, H),
          "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
LAYER_PARAMS = sum(i * o for i, o in SHAPES.values()) + 2 * HEAD + 2 * H  # + q_norm, k_norm, two RMSNorms
TOTAL = V * H + LAYERS * LAYER_PARAMS + H + H * V  # embed, layers, final norm, untied lm_head


def tiny(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
                                        num_attention_heads=NQ, num_key_value_heads=NKV, head_dim=HEAD,
                                        tie_word_embeddings=False))


@pytest.fixture
def model():
    return tiny()


def lora_count(r: int, names) -> int:
    return LAYERS * sum(r * (SHAPES[n][0] + SHAPES[n][1]) for n in names)


def backward(model) -> float:
    """One training forward+backward on a fixed batch; returns the loss."""
    model.train()
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item()


def randomize_lora_b(model) -> None:
    # peft starts every B at zero, so at step 0 dL/dA = 0 exactly; a random B makes "every trainable
    # weight gets a gradient" a real check of the graph rather than a fact about the initialisation.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)


def assert_grads_exactly_on_trainable(model) -> None:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_tiny_model_total_matches_shapes(model):
    assert count_params(model) == (TOTAL, TOTAL) == (143_904, 143_904)
    assert linear_module_names(model) == sorted(SHAPES)  # lm_head excluded


@pytest.mark.parametrize("method,kwargs,expected", [
    ("full", {}, TOTAL),
    ("freeze", {"freeze_trainable_layers": 1}, LAYER_PARAMS),
    ("freeze", {"freeze_trainable_layers": 1, "freeze_trainable_modules": ["lm_head"]}, LAYER_PARAMS + H * V),
    ("freeze", {"freeze_trainable_layers": 0, "freeze_trainable_modules": ["model.norm", "embed_tokens"]}, H + V * H),
    ("lora", {"lora_r": 4, "target_modules": ["q_proj", "v_proj"]}, lora_count(4, ["q_proj", "v_proj"])),
    ("lora", {"lora_r": 4}, lora_count(4, SHAPES)),
    ("lora_plus", {"lora_r": 8}, lora_count(8, SHAPES)),
    # DoRA: one magnitude per output feature of every adapted module
    ("dora", {"lora_r": 4, "target_modules": ["q_proj", "v_proj"]},
     lora_count(4, ["q_proj", "v_proj"]) + LAYERS * (SHAPES["q_proj"][1] + SHAPES["v_proj"][1])),
])
def test_trainable_counts_from_shapes(model, method, kwargs, expected):
    model = apply_method(model, method=method, **kwargs)
    trainable, total = count_params(model)
    assert trainable == expected
    assert total == TOTAL + (expected if method in ("lora", "lora_plus", "dora") else 0)
    assert describe(model, method) == (f"method {method}: trainable {trainable:,} / total {total:,} "
                                       f"({100 * trainable / total:.2f}%)")


def test_all_linear_covers_every_projection_but_not_lm_head(model):
    model = apply_method(model, method="lora", lora_r=4)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == set(SHAPES)
    assert not any("lm_head.lora" in n for n, _ in model.named_parameters())


def test_freeze_one_layer_trains_only_the_last_layer(model):
    model = apply_method(model, method="freeze", freeze_trainable_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(f"model.layers.{LAYERS - 1}.") for n in trainable)
    assert len(trainable) == len(list(model.model.layers[-1].parameters()))


def test_freeze_with_tied_embeddings_unfreezes_both_names():
    m = Qwen3ForCausalLM(Qwen3Config(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=2,
                                     num_attention_heads=NQ, num_key_value_heads=NKV, head_dim=HEAD,
                                     tie_word_embeddings=True))
    m = apply_method(m, method="freeze", freeze_trainable_layers=0, freeze_trainable_modules=["lm_head"])
    assert m.model.embed_tokens.weight is m.lm_head.weight and m.model.embed_tokens.weight.requires_grad
    assert count_params(m)[0] == V * H  # one shared matrix, counted once


def test_freeze_errors_name_the_problem(model):
    with pytest.raises(MethodError, match="bogus") as e:
        apply_method(model, method="freeze", freeze_trainable_modules=["bogus"])
    for name in ("embed_tokens", "lm_head", "q_proj", "norm"):
        assert name in str(e.value)
    with pytest.raises(MethodError, match="3 decoder layers"):
        apply_method(tiny(), method="freeze", freeze_trainable_layers=4)


def test_missing_target_module_lists_the_linear_layers(model):
    with pytest.raises(MethodError) as e:
        apply_method(model, method="lora", target_modules=["q_proj", "query_key_value"])
    msg = str(e.value)
    assert "query_key_value" in msg and "q_proj" in msg and "down_proj" in msg
    assert "'q_proj'" not in msg.split("match")[0]  # only the missing name is reported as missing


def test_rslora_scaling_is_alpha_over_sqrt_r(model):
    plain = apply_method(tiny(), method="lora", lora_r=4, lora_alpha=8)
    rs = apply_method(model, method="lora", lora_r=4, lora_alpha=8, use_rslora=True)
    assert plain.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == 8 / 4
    assert rs.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(4))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("method", ["full", "freeze", "lora", "lora_plus", "dora"])
def test_backward_gives_grads_exactly_on_trainable(model, method, checkpointing):
    model = apply_method(model, method=method, freeze_trainable_layers=1, lora_r=4,
                         gradient_checkpointing=checkpointing)
    randomize_lora_b(model)
    # Count how often the last decoder layer's MLP starts: checkpointing recomputes it during backward.
    # (A pre-hook: torch's non-reentrant recomputation stops early, once the last saved tensor it needs is
    # rebuilt, so a forward hook after the MLP may never fire.)
    calls = []
    layer = model.get_base_model().model.layers[-1] if hasattr(model, "get_base_model") else model.model.layers[-1]
    layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    loss = backward(model)
    assert math.isfinite(loss) and loss > 0
    assert len(calls) == (2 if checkpointing else 1)
    assert_grads_exactly_on_trainable(model)
    if checkpointing:
        assert model.config.use_cache is False


@pytest.mark.parametrize("method", ["freeze", "lora"])
def test_checkpointing_needs_no_input_grad_hook(model, method):
    """Non-reentrant checkpointing gives gradients behind a frozen embedding without the
    enable_input_require_grads() hook that transformers and peft add anyway: remove it and train."""
    model = apply_method(model, method=method, freeze_trainable_layers=1, lora_r=4, gradient_checkpointing=True)
    randomize_lora_b(model)
    embed = model.get_input_embeddings()
    embed._forward_hooks.clear()
    seen = []
    embed.register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))
    backward(model)
    assert seen == [False]  # the embedding output carries no grad into the checkpointed layers
    assert_grads_exactly_on_trainable(model)


def test_qlora_on_4bit_weights(tmp_path):
    try:
        check_supported("qlora", device="cpu", precision="fp32")
    except MethodError as e:
        # This bitsandbytes has no CPU path: the failure must come up front, saying what to do.
        assert "bitsandbytes" in str(e) and "method=lora" in str(e)
        return
    tiny().save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization_config())
    weight = q.model.layers[0].self_attn.q_proj.weight
    assert type(weight).__name__ == "Params4bit" and weight.numel() * 2 == H * NQ * HEAD  # two values a byte
    linear = LAYERS * sum(i * o for i, o in SHAPES.values())
    assert count_params(q) == (TOTAL - linear, TOTAL)  # logical weights, as in fp32; 4-bit ones never train
    assert linear_module_names(q) == sorted(SHAPES)
    q = apply_method(q, method="qlora", lora_r=4, gradient_checkpointing=True)
    assert count_params(q) == (lora_count(4, SHAPES), TOTAL + lora_count(4, SHAPES))
    randomize_lora_b(q)
    assert math.isfinite(backward(q))
    assert_grads_exactly_on_trainable(q)
    assert all(not p.requires_grad for p in q.parameters() if type(p).__name__ == "Params4bit")


def test_qlora_needs_a_4bit_model_and_4bit_needs_qlora(model, tmp_path):
    with pytest.raises(MethodError, match="quantization_config"):
        apply_method(model, method="qlora")
    try:
        check_supported("qlora", device="cpu", precision="fp32")
    except MethodError:
        return
    tiny().save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization_config())
    with pytest.raises(MethodError, match="method=qlora"):
        apply_method(q, method="full")


def test_quantization_config_fields():
    c = quantization_config(quant_type="fp4", double_quant=False, compute_dtype="bfloat16")
    assert c.load_in_4bit and c.bnb_4bit_quant_type == "fp4" and not c.bnb_4bit_use_double_quant
    assert c.bnb_4bit_compute_dtype == torch.bfloat16


def test_check_supported_errors():
    for method in [m for m in METHODS if m != "qlora"]:  # qlora is tested with real 4-bit weights
        check_supported(method, device="cpu", precision="fp32")
    check_supported("lora", device="cpu", precision="bf16")
    with pytest.raises(MethodError, match="fp16 needs a CUDA GPU"):
        check_supported("lora", device="cpu", precision="fp16")
    with pytest.raises(MethodError) as e:
        check_supported("prefix_tuning", device="cpu", precision="fp32")
    assert "prefix_tuning" in str(e.value) and all(m in str(e.value) for m in METHODS)
    with pytest.raises(MethodError, match="unknown method"):
        apply_method(tiny(), method="prefix_tuning")


def test_check_supported_bf16_on_an_old_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(MethodError, match="bf16 is not supported by this GPU"):
        check_supported("full", device="cuda", precision="bf16")


def test_check_supported_qlora_without_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(MethodError, match="pip install bitsandbytes"):
        check_supported("qlora", device="cpu", precision="fp32")


def test_check_supported_qlora_with_a_build_lacking_the_backend(monkeypatch):
    functional = pytest.importorskip("bitsandbytes.functional")

    def no_backend(*a, **k):
        raise NotImplementedError("no kernel for device cpu")

    monkeypatch.setattr(functional, "quantize_4bit", no_backend)
    with pytest.raises(MethodError, match="cannot quantize to 4 bits on cpu.*no kernel"):
        check_supported("qlora", device="cpu", precision="fp32")

"""A model built from scratch with its size from the config: the architecture, the parameter count,
FLOPs per token, a reload with plain from_pretrained, and the vocabulary taken from the tokenizer."""
from __future__ import annotations

import pytest
import torch

from tunelab import config as C
from tunelab.models.flops import flops_per_token
from tunelab.models.load import fit_vocabulary, load_model, load_tokenizer
from tunelab.train.methods import count_params


def test_arch_keys_change_the_named_models_architecture(tmp_path):
    m = load_model("tiny-qwen3", from_scratch=True,
                   arch=dict(layers=3, hidden_size=96, heads=6, kv_heads=2, intermediate_size=256, rope_theta=5e4,
                             tie_embeddings=False, context_length=512))
    c = m.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (3, 96, 6, 2)
    assert (c.head_dim, c.intermediate_size, c.max_position_embeddings) == (16, 256, 512)
    assert c.rope_parameters["rope_theta"] == 5e4 and c.tie_word_embeddings is False
    assert len(m.model.layers) == 3 and m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    total = sum(p.numel() for p in m.parameters())
    assert count_params(m) == (total, total)
    assert flops_per_token(c, total, 256) == 6 * total + 12 * 3 * 96 * 256
    m.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # plain transformers reloads it
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, m(ids).logits, atol=1e-5)


def test_another_family_and_a_tokenizer_of_its_own():
    tok = load_tokenizer("smollm2-135m-instruct")  # 49,152 tokens, not Qwen3's 151,669
    m = load_model("tiny-qwen3", from_scratch=True, arch=dict(family="llama", layers=2))
    fit_vocabulary(m, tok, from_scratch=True, own_tokenizer=False)
    assert type(m).__name__ == "LlamaForCausalLM" and m.config.num_hidden_layers == 2
    rows = m.get_input_embeddings().weight.shape[0]
    assert rows == 49152 == m.config.vocab_size and rows % 64 == 0


def test_a_pretrained_model_smaller_than_its_tokenizer_is_refused():
    tok = load_tokenizer("tiny-qwen3")
    m = load_model("smollm2-135m-instruct")
    with pytest.raises(C.ConfigError, match="the tokenizer has 151,669 tokens but the model's embedding only 49,152"):
        fit_vocabulary(m, tok, from_scratch=False, own_tokenizer=False)


def test_arch_needs_from_scratch_and_consistent_heads():
    with pytest.raises(C.ConfigError, match="only a model built from scratch"):
        C.load(None, ["model.arch.layers=2"])
    with pytest.raises(C.ConfigError, match="'model.arch.kv_heads': 4 must divide model.arch.heads"):
        C.load(None, ["model.from_scratch=true", "model.arch.heads=6", "model.arch.kv_heads=4"])


def test_qlora_of_a_from_scratch_model_is_refused_at_load_with_the_reason():
    """Before: it loaded, built the model and failed in training with 'needs a model loaded with 4-bit
    weights', which reads as if quantization had been forgotten."""
    with pytest.raises(C.ConfigError, match="'method.name': qlora adapts a pretrained model .* use full or lora"):
        C.load(None, ["model.from_scratch=true", "method.name=qlora"])
    assert C.load(None, ["model.from_scratch=true", "method.name=lora"]).method.name == "lora"

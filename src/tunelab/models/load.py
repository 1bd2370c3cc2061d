"""One loader for every model reference: built-in offline name, local directory, or hub id.

    tok = load_tokenizer("tiny-qwen3")
    model = load_model("smollm2-135m-instruct", dtype="float32")

Resolution order: a built-in name (`tunelab models`), then an existing local directory, then a
Hugging Face hub id (real `from_pretrained`, which needs network). A reference that is none of these
raises one message naming what was looked for, where, and how to get it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .builtin import BUILTINS, ModelNotFoundError, ensure

# bitsandbytes (imported by peft) warns on every start on CPUs with AVX512-BF16 that it could not fetch an
# optional kernel from the hub (`kernels` package); its fallback works and this workplace has no hub access.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ModelRef:
    kind: str  # "builtin" | "local" | "hub"
    path: str  # directory for builtin/local, repo id for hub
    name: str  # what the user wrote


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def resolve(ref: str) -> ModelRef:
    if ref in BUILTINS:
        return ModelRef("builtin", str(ensure(ref)), ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "model").is_dir() and not (path / "config.json").exists():
            path = path / "model"  # a tunelab run directory: its `model/` holds the weights
        return ModelRef("local", str(path), ref)
    if _looks_like_hub_id(ref):
        return ModelRef("hub", ref, ref)
    raise ModelNotFoundError(
        f"model '{ref}' not found: it is not a built-in name ({', '.join(BUILTINS)}), "
        f"not a local directory ({path.resolve()} does not exist), and not a hub id of the form owner/name.\n"
        "  list built-ins with `tunelab models`; pass a directory saved with save_pretrained, or a hub id online."
    )


def _wrap_hub_error(ref: ModelRef, err: Exception) -> Exception:
    if ref.kind != "hub":
        return err
    return ModelNotFoundError(
        f"model '{ref.name}' could not be loaded from the Hugging Face hub ({type(err).__name__}: {err}).\n"
        "  without network, use a built-in model (`tunelab models`) or a local directory; "
        "online, check the id and your HF_TOKEN for gated models."
    )


def load_tokenizer(ref: str | ModelRef, *, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    r = resolve(ref) if isinstance(ref, str) else ref
    try:
        tok = AutoTokenizer.from_pretrained(r.path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as e:
        raise _wrap_hub_error(r, e) from None
    if tok.pad_token is None:
        # Never pad with a token that also ends turns in the data (see NOTES: SmolLM2) unless there is
        # nothing else; labels are masked by position, not by pad id, so either is safe for training.
        tok.pad_token = tok.eos_token
    return tok


DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.float32
    return getattr(torch, DTYPES[name])


def load_model(
    ref: str | ModelRef,
    *,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
    from_scratch: bool = False,
    seed: int = 0,
    **kwargs: Any,
) -> Any:
    """Load a causal LM. `dtype="auto"` means fp32 (the CPU default; mixed precision is the loop's job)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    r = resolve(ref) if isinstance(ref, str) else ref
    adapter = Path(r.path) / "adapter_config.json"
    if r.kind == "local" and adapter.is_file():
        return _load_adapter(Path(r.path), dtype=dtype, attn_implementation=attn_implementation,
                             trust_remote_code=trust_remote_code, **kwargs)
    try:
        if from_scratch:
            config = AutoConfig.from_pretrained(r.path, trust_remote_code=trust_remote_code, revision=revision)
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(
                config, dtype=torch_dtype(dtype), attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
            )
        return AutoModelForCausalLM.from_pretrained(
            r.path, dtype=torch_dtype(dtype), attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, revision=revision, **kwargs,
        )
    except OSError as e:
        raise _wrap_hub_error(r, e) from None


def run_metadata(path: str | Path) -> dict[str, Any]:
    """`tunelab.json` written beside a trained model (base model, method, template), or {}."""
    meta = Path(path) / "tunelab.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _load_adapter(path: Path, **kwargs: Any) -> Any:
    """A PEFT adapter directory: load its base model (by the reference tunelab saved), then the adapter."""
    from peft import PeftModel

    meta = run_metadata(path)
    base_ref = meta.get("base_model") or json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    q = meta.get("quantization")
    if q and "quantization_config" not in kwargs:  # a QLoRA adapter is used on the 4-bit base it was trained on
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"], bnb_4bit_use_double_quant=q["double_quant"],
            bnb_4bit_compute_dtype=torch_dtype(q["compute_dtype"]))
    base = load_model(base_ref, **kwargs)
    return PeftModel.from_pretrained(base, str(path))

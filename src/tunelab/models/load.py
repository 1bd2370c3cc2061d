"""One loader for every model reference: built-in offline name, local directory, or hub id.

    tok = load_tokenizer("tiny-qwen3")
    model = load_model("smollm2-135m-instruct", dtype="float32")

Resolution order: a built-in name (`tunelab models`), then an existing local directory, then a
Hugging Face hub id (real `from_pretrained`, which needs network). A reference that is none of these
raises one message naming what was looked for, where, and how to get it.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import ConfigError, ModelNotFoundError
from .builtin import BUILTINS, ensure

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
        model = rundir.model_dir(path)  # a run directory: its model/
        if not any((model / f).is_file() for f in ("config.json", rundir.ADAPTER_CONFIG, "tokenizer_config.json")):
            if (path / rundir.CONFIG).is_file():
                raise ModelNotFoundError(f"{path} is a run directory without a trained model ({rundir.MODEL}/ is "
                                         "missing): its training did not finish; `tunelab train CONFIG --resume` "
                                         "continues it")
            raise ModelNotFoundError(f"{path} is a directory but not a model: it has no config.json (a transformers "
                                     f"model) or {rundir.ADAPTER_CONFIG} (a PEFT adapter)")
        return ModelRef("local", str(model), ref)
    if _looks_like_hub_id(ref):
        return ModelRef("hub", ref, ref)
    raise ModelNotFoundError(
        f"model '{ref}' not found: it is not a built-in name ({', '.join(BUILTINS)}), "
        f"not a local directory ({path.resolve()} does not exist), and not a hub id of the form owner/name.\n"
        "  list built-ins with `tunelab models`; pass a directory saved with save_pretrained, or a hub id online."
    )


def identity(ref: str | ModelRef) -> str:
    """What a model reference points at, cheaply: a hash of its config and of each weight file's name,
    size and first and last 64 KiB (a retrained or replaced model gets another identity; reading
    gigabytes to hash them whole would make every run wait). A hub id is its id and revision.
    An adapter directory includes its base model's identity."""
    import hashlib

    r = resolve(ref) if isinstance(ref, str) else ref
    if r.kind == "hub":
        return f"hub:{r.path}"
    h = hashlib.sha256()
    path = Path(r.path)
    for f in sorted(path.iterdir()):
        if f.name.endswith((".json", ".safetensors", ".bin", ".gguf", ".model", ".jinja")) and f.is_file():
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(65536))
                if size > 131072:
                    fh.seek(-65536, 2)
                    h.update(fh.read())
    if rundir.is_adapter(path) and (base := rundir.adapter_base(path)):
        with contextlib.suppress(ModelNotFoundError):
            h.update(identity(base).encode())
    return h.hexdigest()[:16]


def _wrap_hub_error(ref: ModelRef, err: Exception) -> Exception:
    if ref.kind != "hub":
        return err
    return ModelNotFoundError(
        f"model '{ref.name}' could not be loaded from the Hugging Face hub ({type(err).__name__}: {err}).\n"
        "  without network, use a built-in model (`tunelab models`) or a local directory; "
        "online, check the id and your HF_TOKEN for gated models."
    )


def config_tokenizer(cfg: Any) -> Any:
    """The tokenizer a config's data is tokenized with: `model.tokenizer` when set (e.g. one trained by
    `tunelab tokenizer train`), else the model's own (prepare, train and estimate --data alike)."""
    return load_tokenizer(cfg.model.tokenizer or cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                          revision=cfg.model.revision)


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


def torch_dtype(name: str) -> Any:
    """A dtype name of the config's one vocabulary (`fp32`/`float32`, `bf16`/`bfloat16`, `fp16`/`float16`;
    `auto` is fp32: mixed precision is the training loop's job) -> the torch dtype."""
    import torch

    from ..config import DTYPES

    return torch.float32 if name == "auto" else getattr(torch, DTYPES[name])


def quantization_config(*, quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "float32") -> Any:
    """The 4-bit BitsAndBytesConfig of QLoRA: built here only, for training, evaluation and export alike."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch_dtype(compute_dtype))


def scratch_config(base: Any, *, family: str | None = None, layers: int | None = None,
                   hidden_size: int | None = None, heads: int | None = None, kv_heads: int | None = None,
                   head_dim: int | None = None, intermediate_size: int | None = None,
                   context_length: int | None = None, tie_embeddings: bool | None = None,
                   rope_theta: float | None = None) -> Any:
    """The architecture of a model built from scratch: the named model's config with `model.arch`'s
    changes. Another family starts from that family's defaults with the named model's sizes. When
    the width or the number of heads change and head_dim is not given, head_dim = hidden / heads
    (Qwen3's configs state head_dim separately, so it would otherwise keep the old one)."""
    from transformers import AutoConfig

    values = base.to_dict()
    if family and family != base.model_type:
        keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                "eos_token_id", "pad_token_id", "head_dim")
        try:
            config = AutoConfig.for_model(family, **{k: values[k] for k in keep if values.get(k) is not None})
        except ValueError as e:
            raise ConfigError(f"config key 'model.arch.family': {e}") from None
    else:
        config = base.__class__.from_dict(values)
    changes = {"num_hidden_layers": layers, "hidden_size": hidden_size, "num_attention_heads": heads,
               "num_key_value_heads": kv_heads, "intermediate_size": intermediate_size,
               "max_position_embeddings": context_length, "tie_word_embeddings": tie_embeddings}
    for key, value in changes.items():
        if value is not None:
            setattr(config, key, value)
    if layers and isinstance(getattr(config, "layer_types", None), list) and config.layer_types:
        old = config.layer_types  # one entry per layer (full or sliding attention): repeat the pattern
        config.layer_types = [old[i % len(old)] for i in range(layers)]
    if heads and not kv_heads and getattr(config, "num_key_value_heads", None):
        if config.num_attention_heads % config.num_key_value_heads:
            config.num_key_value_heads = heads  # the old KV head count does not divide the new one
    if head_dim is not None:
        config.head_dim = head_dim
    elif (hidden_size or heads) and hasattr(config, "head_dim"):
        config.head_dim = config.hidden_size // config.num_attention_heads
    if rope_theta is not None:
        rope = dict(getattr(config, "rope_parameters", None) or {})
        if rope or not hasattr(config, "rope_theta"):
            config.rope_parameters = {**rope, "rope_theta": rope_theta, "rope_type": rope.get("rope_type", "default")}
        if hasattr(config, "rope_theta"):
            config.rope_theta = rope_theta
    return config


def load_model(
    ref: str | ModelRef,
    *,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
    from_scratch: bool = False,
    arch: dict[str, Any] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> Any:
    """Load a causal LM; a PEFT adapter directory loads its base model, then the adapter (a QLoRA
    adapter on the 4-bit base it was trained on). `dtype="auto"` means fp32 (the CPU default)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    r = resolve(ref) if isinstance(ref, str) else ref
    if r.kind == "local" and not (Path(r.path) / "config.json").is_file() and not rundir.is_adapter(r.path):
        raise ModelNotFoundError(f"{r.path} holds a tokenizer but no model (no config.json): give it as "
                                 "model.tokenizer, and a model as model.name")
    if r.kind == "local" and rundir.is_adapter(r.path):
        return _load_adapter(Path(r.path), dtype=dtype, attn_implementation=attn_implementation,
                             trust_remote_code=trust_remote_code, **kwargs)
    try:
        if from_scratch:
            config = AutoConfig.from_pretrained(r.path, trust_remote_code=trust_remote_code, revision=revision)
            config = scratch_config(config, **(arch or {}))
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
    except Exception as e:
        if "safetensor" in type(e).__name__.lower() or "header" in str(e).lower():
            raise ModelNotFoundError(f"{r.path}: the weights cannot be read ({type(e).__name__}: {e}); the file is "
                                     "damaged or truncated: copy or build the model again") from None
        raise


def fit_vocabulary(model: Any, tokenizer: Any, *, from_scratch: bool, own_tokenizer: bool) -> None:
    """Make the embedding fit the tokenizer: a model built from scratch for another tokenizer gets
    exactly its vocabulary (rounded up to a multiple of 64, as checkpoints pad it, for fast matmuls);
    a pretrained model with fewer rows than the tokenizer has tokens cannot be used with it."""
    rows = model.get_input_embeddings().weight.shape[0]
    need = len(tokenizer)
    if from_scratch and (not own_tokenizer or need > rows):
        model.resize_token_embeddings(need, pad_to_multiple_of=64)
        model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
        # the special ids are the new tokenizer's, None where it has none: the named model's ids (Qwen3's
        # bos 151643) point outside an 8k vocabulary, and generate() reads them from generation_config
        gen = getattr(model, "generation_config", None)
        for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
            value = getattr(tokenizer, attr, None)
            setattr(model.config, attr, value)
            if gen is not None:
                setattr(gen, attr, value)
        return
    if need > rows:
        raise ConfigError(f"the tokenizer has {need:,} tokens but the model's embedding only {rows:,} rows: token ids "
                          f"above {rows - 1} would fail. Use the model's own tokenizer (model.tokenizer: null), or "
                          "train from scratch (model.from_scratch: true), which sizes the embedding to the tokenizer")


def _load_adapter(path: Path, **kwargs: Any) -> Any:
    from peft import PeftModel

    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ModelNotFoundError(f"{path}: the adapter's weights (adapter_model.safetensors) are missing; the run "
                                 "directory is incomplete or damaged")
    base_ref = rundir.adapter_base(path)
    if base_ref is None:
        raise ModelNotFoundError(f"{path}: an adapter whose base model is named neither in {rundir.META} nor in "
                                 f"{rundir.ADAPTER_CONFIG}")
    q = rundir.quantization(path)
    if q and "quantization_config" not in kwargs:  # a QLoRA adapter is used on the 4-bit base it was trained on
        kwargs["quantization_config"] = quantization_config(**q)
    if is_adapter_ref(base_ref):  # trained on another run's adapter (sft -> dpo): that one merged is its base
        return PeftModel.from_pretrained(load_merged(resolve(base_ref).path), str(path))
    base = load_model(base_ref, **kwargs)
    return PeftModel.from_pretrained(base, str(path))


def is_adapter_ref(ref: str) -> bool:
    """A local model directory (or run directory) that holds a PEFT adapter."""
    r = resolve(ref)
    return r.kind == "local" and rundir.is_adapter(r.path)


def load_merged(model_path: str | Path, *, dtype: str = "float32") -> Any:
    """The model of a model directory as one plain transformers model: an adapter merged into its base.

    The merge adds B@A (times its scale) to each base weight in fp32 (in low precision it would lose
    the small update the adapter learned). QLoRA: the adapter learned a correction to the 4-bit
    weights, so it is merged into those weights dequantized, which is exactly what the trained model
    computed with, not into the original full-precision base (off by the quantization error). The
    base is dequantized right after loading: bitsandbytes 0.50 repacks 4-bit weights for its CPU
    kernel on the first inference forward, and `dequantize` reads repacked weights wrongly.
    """
    from peft import PeftModel

    path = Path(model_path)
    if not rundir.is_adapter(path):
        return load_model(str(path), dtype=dtype)
    base_ref = rundir.adapter_base(path)
    if base_ref is None:
        raise ModelNotFoundError(f"{path}: neither {rundir.META} nor {rundir.ADAPTER_CONFIG} names the base model")
    q = rundir.quantization(path)
    if q:
        base = load_model(base_ref, dtype="float32",
                          quantization_config=quantization_config(**{**q, "compute_dtype": "float32"}))
        base = base.dequantize().float()
    elif is_adapter_ref(base_ref):  # an adapter trained on another run's adapter: merged in turn
        base = load_merged(resolve(base_ref).path)
    else:
        base = load_model(base_ref, dtype="float32")
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()

"""Fine-tuning methods: how a loaded causal LM becomes trainable.

    check_supported("qlora", device="cpu", precision="fp32")      # before anything is loaded
    model = load_model(ref, quantization_config=quantization_config())  # qlora only (models/load.py)
    model = apply_method(model, method="qlora", lora_r=16, target_modules=["all-linear"])
    print(describe(model, "qlora"))     # method qlora: trainable 1,234 / total 5,678 (0.02%)

full      every weight trains.
freeze    every weight is frozen except the last `freeze_trainable_layers` decoder layers and the
          modules named in `freeze_trainable_modules` (e.g. lm_head, embed_tokens, norm).
lora      peft LoRA adapters on `target_modules`; the base model is frozen.
lora_plus LoRA here; its B matrices get a higher learning rate in optim.param_groups.
dora      LoRA plus a trained magnitude vector per adapted module (peft `use_dora`).
qlora     LoRA on a model loaded with 4-bit NF4 weights (bitsandbytes), prepared by peft.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import MethodError

METHODS = ("full", "freeze", "lora", "lora_plus", "dora", "qlora")
# Names of the ModuleList holding the decoder blocks: Llama/Qwen/Mistral "layers", GPT-2 "h",
# several others "blocks".
LAYER_LIST_NAMES = ("layers", "h", "blocks")


def check_supported(method: str, *, device: str, precision: str) -> None:
    """Raise MethodError when `method` at `precision` cannot run on `device` (cheap: loads no model)."""
    if method not in METHODS:
        raise MethodError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    if precision == "fp16" and device == "cpu":
        raise MethodError("precision fp16 needs a CUDA GPU: fp16 mixed precision relies on a CUDA gradient "
                          "scaler and CPU kernels have no fast fp16 path; on CPU use precision=fp32 or bf16")
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise MethodError(f"precision bf16 is not supported by this GPU ({torch.cuda.get_device_name()}); "
                          "use precision=fp16 or fp32")
    if method == "qlora":
        try:
            from bitsandbytes.functional import quantize_4bit
        except ImportError as e:
            raise MethodError(f"method qlora needs bitsandbytes ({e}); `pip install bitsandbytes`, "
                              "or use method=lora") from None
        # Importing is not enough: a build without a backend for this device fails only at the first
        # quantization, after minutes of loading. Quantizing one tiny tensor finds out now.
        try:
            quantize_4bit(torch.zeros(64, 64, device=device), quant_type="nf4")
        except Exception as e:  # noqa: BLE001 - any failure here means the same thing to the user
            raise MethodError(f"method qlora: this bitsandbytes build cannot quantize to 4 bits on {device} "
                              f"({type(e).__name__}: {e}); install a bitsandbytes with a {device} backend "
                              "(>= 0.45 for CPU), or use method=lora") from None


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _matches(name: str, key: str) -> bool:
    """peft's rule for a target name: the full module name, or a dotted suffix of it."""
    return name == key or name.endswith("." + key)


def _leaf_names(model: nn.Module) -> list[str]:
    """Distinct non-numeric leaf names of all modules, for error messages."""
    return sorted({_leaf(n) for n, _ in model.named_modules() if n and not _leaf(n).isdigit()})


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the linear layers (bnb Linear4bit subclasses nn.Linear), output head excluded."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({_leaf(n) for n, m in model.named_modules()
                   if isinstance(m, nn.Linear) and m is not head and _leaf(n) != "lm_head"})


def _is_4bit(p: nn.Parameter) -> bool:
    return type(p).__name__ == "Params4bit"


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of weights; tied weights count once.

    A bitsandbytes Params4bit holds packed bytes (two 4-bit values per uint8, so `numel()` is half the
    weight count) plus separate absmax statistics. We count the logical weights instead, the numel of
    the original shape kept in `quant_state.shape`, so a 4-bit model reports the same total as fp32.
    """
    trainable = total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None) if _is_4bit(p) else None
        n = math.prod(state.shape) if state is not None else p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def describe(model: nn.Module, method: str) -> str:
    trainable, total = count_params(model)
    return f"method {method}: trainable {trainable:,} / total {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks, found by name so any architecture works: the longest
    nn.ModuleList whose name ends with one of LAYER_LIST_NAMES."""
    found = [(len(m), n, m) for n, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and _leaf(n) in LAYER_LIST_NAMES]
    if not found:
        raise MethodError(f"method freeze: no list of decoder layers (a ModuleList named one of "
                          f"{', '.join(LAYER_LIST_NAMES)}) in {type(model).__name__}; modules: "
                          f"{', '.join(_leaf_names(model))}")
    return max(found, key=lambda t: t[0])[2]


def _freeze(model: nn.Module, *, trainable_layers: int, trainable_modules: Sequence[str]) -> None:
    layers = decoder_layers(model)
    if not 0 <= trainable_layers <= len(layers):
        raise MethodError(f"method freeze: freeze_trainable_layers={trainable_layers}, but the model has "
                          f"{len(layers)} decoder layers; use 0..{len(layers)}")
    names = [n for n, _ in model.named_modules()]
    missing = [k for k in trainable_modules if not any(_matches(n, k) for n in names)]
    if missing:
        raise MethodError(f"method freeze: freeze_trainable_modules {missing} match no module; "
                          f"module names: {', '.join(_leaf_names(model))}")
    model.requires_grad_(False)
    for layer in list(layers)[len(layers) - trainable_layers:]:
        layer.requires_grad_(True)
    # With tied embeddings (tie_word_embeddings) lm_head.weight IS embed_tokens.weight, one Parameter,
    # so unfreezing either name unfreezes both. That is what tying means, so we let it happen.
    for name, module in model.named_modules():
        if any(_matches(name, k) for k in trainable_modules):
            module.requires_grad_(True)


def _lora(model: nn.Module, *, method: str, r: int, alpha: int, dropout: float, target_modules: Sequence[str],
          use_rslora: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules)
    if "all-linear" in targets:
        if len(targets) > 1:
            raise MethodError(f"target_modules {targets}: 'all-linear' already means every linear layer; "
                              "use it alone or list module names")
        targets = "all-linear"  # peft's shorthand: every linear layer except the output head
    else:
        names = [n for n, _ in model.named_modules()]
        missing = [k for k in targets if not any(_matches(n, k) for n in names)]
        if missing:
            raise MethodError(f"target_modules {missing} match no module of {type(model).__name__}; "
                              f"its linear layers are: {', '.join(linear_module_names(model))} (or 'all-linear')")
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=targets, use_rslora=use_rslora, use_dora=method == "dora")
    return get_peft_model(model, config)


def _enable_checkpointing(model: nn.Module) -> None:
    # use_reentrant=False: the non-reentrant torch.utils.checkpoint computes parameter gradients of a
    # checkpointed block even when none of its inputs requires grad. With the reentrant version a frozen
    # embedding output (LoRA, QLoRA, freeze) cuts the graph ("element 0 of tensors does not require
    # grad"), which is why enable_input_require_grads() exists. transformers and peft still register
    # that hook on their own; it is harmless, and the tests check that we do not depend on it.
    kwargs = {"use_reentrant": False}
    # transformers 5.23 renamed gradient_checkpointing_enable (now a deprecated alias that warns);
    # pyproject allows transformers >= 5.0, which only has the old name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation


def apply_method(model: nn.Module, *, method: str, freeze_trainable_layers: int = 2,
                 freeze_trainable_modules: Sequence[str] = (), lora_r: int = 16, lora_alpha: int = 32,
                 lora_dropout: float = 0.05, target_modules: Sequence[str] = ("all-linear",),
                 use_rslora: bool = False, gradient_checkpointing: bool = False) -> nn.Module:
    """Make `model` trainable for `method`; returns the model to train (a PeftModel for LoRA methods)."""
    if method not in METHODS:
        raise MethodError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    quantized = any(_is_4bit(p) for p in model.parameters())
    if method == "qlora" and not quantized:
        raise MethodError("method qlora needs a model loaded with 4-bit weights: "
                          "load_model(ref, quantization_config=quantization_config()); "
                          "for an unquantized model use method=lora")
    if quantized and method != "qlora":
        raise MethodError(f"method {method}: this model has 4-bit weights, which cannot be trained directly "
                          "(and LoRA on them needs peft's k-bit preparation); use method=qlora")

    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        # Freezes the base, upcasts fp16/bf16 non-4-bit weights (norms, embeddings, lm_head) to fp32 for
        # stable training. Checkpointing is left to _enable_checkpointing below, one place for every method.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        # Enabled on the transformers model before peft wraps it: the wrapper only adds adapters
        # inside the same decoder layers, which are the units being checkpointed.
        _enable_checkpointing(model)

    if method == "full":
        model.requires_grad_(True)
    elif method == "freeze":
        _freeze(model, trainable_layers=freeze_trainable_layers, trainable_modules=freeze_trainable_modules)
    else:
        # lora_plus differs from lora only in the optimizer (optim.param_groups), not in the model.
        model = _lora(model, method=method, r=lora_r, alpha=lora_alpha, dropout=lora_dropout,
                      target_modules=target_modules, use_rslora=use_rslora)
    return model

"""The builder: a tunelab config -> `estimate(...)` with plain arguments. Reads the model's config, never weights.

    est = estimate_from_config(tunelab.config.load("configs/quickstart.yaml"), device="cpu")

What it reads: `config.json` of the resolved model reference (a built-in name, a local directory or
a hub id; a hub id needs network for that one small file), and the tokenizer only for a model built
from scratch for another tokenizer (its embedding takes the tokenizer's size). The prepared data is
not read: the supervised fraction defaults to 1 (every token in the loss, the upper bound) unless
the caller knows it (`tunelab train` does, from the prepared data's statistics).
"""
from __future__ import annotations

from typing import Any

from .core import Estimate, estimate


def load_model_config(name: str, *, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoConfig

    from ..errors import ModelNotFoundError
    from ..models.load import resolve

    from .. import rundir

    ref = resolve(name)
    seen = 0
    while ref.kind == "local" and rundir.is_adapter(ref.path) and seen < 8:  # an adapter run: its base's shape
        base = rundir.adapter_base(ref.path)
        if base is None:
            break
        ref, seen = resolve(base), seen + 1
    try:
        return AutoConfig.from_pretrained(ref.path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"model.name '{name}': cannot read its config.json ({type(e).__name__}: {e}); "
                                 "a hub id needs network for this one small file, or use a local copy") from None


def checkpoint_dtype(config: Any) -> str | None:
    """The dtype the weights are stored in ("float32", "bfloat16", ...), when the config says."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else None


def estimate_from_config(cfg: Any, *, device: Any = "cpu", supervised_fraction: float | None = None,
                         nproc: int = 1, strategy: str = "ddp", model_config: Any = None,
                         seq_len: int | None = None) -> Estimate:
    """Estimate a `tunelab.config.Config`'s training step on `device` (a profile name, `cpu`, `cuda`
    or a DeviceProfile). `model_config`: the transformers config, when the caller has it already.
    `seq_len`: the widest micro-batch's row length when the data is known (a training run passes it);
    else `data.max_length`, the most a row can hold."""
    m, t, d, o = cfg.method, cfg.training, cfg.data, cfg.objective
    vocab = build_vocab = None
    if model_config is None:
        model_config = load_model_config(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                                         revision=cfg.model.revision)
        if cfg.model.from_scratch:
            model_config, vocab = _scratch(cfg, model_config)
            build_vocab = getattr(model_config.get_text_config() if hasattr(model_config, "get_text_config")
                                  else model_config, "vocab_size", None) if vocab else None
    seq_len = seq_len or d.max_length
    grpo = cfg.stage == "grpo"
    row_len, shared = seq_len, None
    if grpo and _shares_prompts(model_config, t.gradient_checkpointing):
        # models/logps.py completion_logps: a prompt's positions run once for its num_generations rows, so
        # a row costs its completion plus 1/G of its prompt (the prompt's keys and values copied to each
        # row are not counted: ~7% of what sharing saves for SmolLM2)
        completion = min(o.max_new_tokens, seq_len - 1)
        seq_len = completion + -(-(seq_len - completion) // o.num_generations)
        shared = (row_len, seq_len)
    if supervised_fraction is None:
        # grpo scores the completions only, at most max_new_tokens of each row
        supervised_fraction = min(1.0, o.max_new_tokens / seq_len) if grpo else 1.0
    # the weights stay a mapped view of the checkpoint file when it is stored in the dtype they are
    # loaded in (fp32 here); QLoRA on CPU then keeps the whole file resident (see overhead.py)
    stored = checkpoint_dtype(model_config)
    load_dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype
    mapped = not cfg.model.from_scratch and stored == load_dtype
    # a unit of the step plan is one example for sft/pt, but two rows for a dpo pair (chosen and
    # rejected, one forward) and num_generations rows for a grpo prompt
    rows_per_unit = {"dpo": 2, "grpo": o.num_generations}.get(cfg.stage, 1)
    # dpo and grpo score tokens by models/logps.py, on rows padded to the micro-batch's widest (a mask); grpo
    # first samples every prompt of the step (generation_batch_size rows at a time, with a key/value cache),
    # and with a KL term full/freeze keep a frozen copy of the weights as the reference
    aligned = cfg.stage in ("dpo", "grpo")
    rollout = min(o.generation_batch_size, t.batch_size * t.grad_accum * o.num_generations) if grpo else 0
    est = estimate(model_config, method=m.name, optimizer=cfg.optimizer.name, batch_size=t.batch_size * rows_per_unit,
                   seq_len=seq_len, supervised_fraction=supervised_fraction, logps=aligned, padded=aligned,
                   rollout_rows=rollout, rollout_len=row_len, build_vocab=build_vocab,
                   reference_copy=grpo and o.kl_coef > 0 and m.name in ("full", "freeze"),
                   rollout_copy_bytes=2 if grpo and o.rollout_dtype != "model" else 0,
                   rollout_packs=_rollout_packs(cfg) if grpo else None,
                   grad_checkpointing=t.gradient_checkpointing, precision=t.precision, device=device,
                   lora_r=m.lora_r, lora_dropout=m.lora_dropout, target_modules=tuple(m.target_modules),
                   quant_type=m.quant_type, double_quant=m.double_quant, momentum=cfg.optimizer.momentum,
                   freeze_trainable_layers=m.freeze_trainable_layers, attention=cfg.model.attn_implementation,
                   weights_dtype=cfg.model.dtype, packing=d.packing and cfg.stage in ("sft", "pt"), grad_accum=t.grad_accum, vocab_size=vocab,
                   nproc=nproc, strategy=strategy, checkpoint_mapped=mapped, trim_heap=t.trim_heap,
                   cpu_allocator=t.cpu_allocator,
                   recompute_elementwise=t.recompute_elementwise)
    if shared:
        est.notes.append(f"grpo: rows of {shared[0]} tokens whose prompts run once for their {o.num_generations} "
                         f"completions count as {shared[1]} tokens each")
    return est


def _shares_prompts(model_config: Any, checkpointing: bool) -> bool:
    """models/logps.py `_shares_prompts` from the config alone: a plain head and no gradient checkpointing."""
    from ..models.loss import plain_head

    return not checkpointing and plain_head(model_config)


def _scratch(cfg: Any, model_config: Any) -> tuple[Any, int | None]:
    """A model built from scratch: `model.arch`'s changes to the named model's config (where this
    tunelab has them), and an embedding sized to another tokenizer (rounded up to 64 rows, as
    `models.load.fit_vocabulary` does). The only time the tokenizer is read."""
    import dataclasses

    from ..models import load

    arch = getattr(cfg.model, "arch", None)
    if arch is not None and hasattr(load, "scratch_config"):
        model_config = load.scratch_config(model_config, **dataclasses.asdict(arch))
    if not cfg.model.tokenizer:
        return model_config, None
    tokens = len(load.load_tokenizer(cfg.model.tokenizer, trust_remote_code=cfg.model.trust_remote_code))
    return model_config, -(-tokens // 64) * 64


def _rollout_packs(cfg: Any) -> str | None:
    """The dtype of the model grpo samples from, where models/decode_step.py makes its tokens (and keeps
    oneDNN-packed weights on a CPU): the bf16 rollout copy, else the policy itself unless its layers are left
    to their own forward (DoRA, 4-bit QLoRA) or a bf16 base carries fp32 adapters (peft's default)."""
    from ..config import DTYPES

    o, method = cfg.objective, cfg.method.name
    if o.rollout_dtype != "model":
        return o.rollout_dtype if o.rollout_dtype == "bfloat16" else None
    if method in ("dora", "qlora"):
        return None
    dtype = DTYPES.get(cfg.model.dtype, "float32")
    return dtype if dtype == "float32" or method in ("full", "freeze") else None

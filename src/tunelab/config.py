"""Typed configuration: the single source of truth for every command.

Resolution order: the defaults below, then a YAML file, then `a.b=value` overrides from the command
line. An unknown key or a value of the wrong type is an error that names the key, the value and what
is allowed. The resolved config is saved (`save`) into every output directory, so a run can be read
back and repeated exactly.

    cfg = load("configs/quickstart.yaml", ["training.epochs=2", "method.name=lora"])

Components never receive this object: builders read it and call functions with plain keyword
arguments (see STYLE.md, principle 5).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError

# The one dtype vocabulary of tunelab (model.dtype, method.compute_dtype, `export --dtype`): each dtype
# by its short and its torch name; `auto` means the default of the place that uses it.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
          "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
DType = Literal["auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"]

@dataclass
class ModelConfig:
    # hub id, local directory, run directory, or a built-in offline name (`tunelab models`)
    name: str = "smollm2-135m-instruct"
    # tokenizer reference when it differs from the model's (e.g. training from scratch)
    tokenizer: str | None = None
    dtype: DType = "auto"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False
    revision: str | None = None
    # build the architecture from the model's config with random weights (pretraining from scratch)
    from_scratch: bool = False


@dataclass
class DataConfig:
    # built-in name (`tunelab data`), file path, saved `datasets` directory, or hub dataset id
    name: str = "arith"
    format: str = "auto"
    # canonical field -> column in the file, e.g. {instruction: prompt, output: response}
    columns: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    limit: int | None = None
    # size of generated data sets (arith) and the seed of generation, split and shuffling
    n: int = 2000
    seed: int = 0
    # validation part: a fraction when < 1, a number of examples when >= 1
    val_size: float = 0.05
    # `auto`: the tokenizer's own chat template, else `chatml`; or `chatml`, `plain`, `alpaca`
    template: str = "auto"
    # Qwen3-style templates: False puts the empty thinking block in the prompt (see render.py)
    enable_thinking: bool = False
    system_prompt: str | None = None
    # appended to math questions; `auto` picks English or Chinese by the question, `` turns it off
    instruction: str = "auto"
    gsm8k_boxed: bool = True
    supervise: Literal["all_turns", "last_turn", "all_tokens"] = "all_turns"
    max_length: int = 1024
    overlong: Literal["drop", "truncate"] = "drop"
    dedup: Literal["none", "exact", "near"] = "near"
    near_dup_threshold: float = 0.9
    packing: bool = True
    # worker processes for tokenization; 0 picks by data size
    num_proc: int = 0


@dataclass
class MethodConfig:
    name: Literal["full", "freeze", "lora", "lora_plus", "dora", "qlora"] = "lora"
    freeze_trainable_layers: int = 2
    freeze_trainable_modules: list[str] = field(default_factory=list)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_rslora: bool = False
    lora_plus_ratio: float = 16.0
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: DType = "auto"


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0


@dataclass
class TrainingConfig:
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    save_every: int = 100
    keep_last: int = 2
    early_stopping_patience: int = 0


@dataclass
class EvaluationConfig:
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    max_new_tokens: int = 512
    batch_size: int = 16
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class OutputConfig:
    dir: str = "runs/quickstart"
    report_to: list[str] = field(default_factory=list)


@dataclass
class Config:
    # `sft`: conversations with masked prompts; `pt`: raw text, every token supervised
    stage: Literal["sft", "pt"] = "sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---------------------------------------------------------------------------------------------
# Validation: written by hand because it is ~60 lines and gives better messages than a schema
# library would (the key path, the value, the allowed values, a "did you mean").


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_tp is str:
            value = [value]  # `target_modules=q_proj` means a list of one
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads `1e-5` as a string (YAML 1.1 needs a dot)
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def build_section(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{prefix}{key}'{hint}; known keys here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_section(tp, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], tp, f"{prefix}{name}")
    return cls(**kwargs)


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{dotted}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`training.lr=1e-4` -> ("training.lr", 1e-4); the value is read as YAML (lists: `[q_proj,v_proj]`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def from_dict(data: dict[str, Any]) -> Config:
    return build_section(Config, data or {}, "")


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        key, value = parse_override(item)
        set_path(tree, key, value)
    try:
        return from_dict(tree)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")

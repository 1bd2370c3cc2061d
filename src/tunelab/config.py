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

# Registry names, spelled here so that a config is checked when it is loaded, before anything heavy is
# imported; tests/test_config.py checks that each list equals its registry (data/formats.py FORMATS,
# data/templates.py TEMPLATES, train/optim.py OPTIMIZERS and SCHEDULES, train/methods.py METHODS).
Format = Literal["auto", "alpaca", "belle_math", "belle_seed", "belle_multiturn", "sharegpt", "openai", "math",
                 "gsm8k", "cmath", "arith", "text", "pairs", "pairs_sharegpt", "pairs_alpaca"]
Template = Literal["auto", "tokenizer", "chatml", "plain", "alpaca"]
Method = Literal["full", "freeze", "lora", "lora_plus", "dora", "qlora"]
Optimizer = Literal["adamw", "sgd", "adamw_8bit", "adafactor"]
Schedule = Literal["constant", "linear", "cosine"]
ReportTo = Literal["wandb", "swanlab"]
Stage = Literal["sft", "pt", "dpo", "grpo"]
# train/objectives.py PREFERENCE_LOSSES and train/rewards.py REWARDS, checked equal by tests/test_config.py
PreferenceLoss = Literal["sigmoid", "ipo", "robust", "orpo", "simpo"]
Reward = Literal["correct", "boxed"]


@dataclass
class ArchConfig:
    family: str | None = None
    """architecture family (a transformers model_type: qwen3, qwen2, llama, ...); null: the named model's"""
    layers: int | None = None
    """decoder layers; null: the named model's"""
    hidden_size: int | None = None
    """width of the residual stream; null: the named model's"""
    heads: int | None = None
    """attention heads; null: the named model's"""
    kv_heads: int | None = None
    """key/value heads (grouped-query attention); null: the named model's, or heads"""
    head_dim: int | None = None
    """width of one head; null: hidden_size / heads when the width or heads change, else the named model's"""
    intermediate_size: int | None = None
    """width of the MLP; null: the named model's"""
    context_length: int | None = None
    """longest sequence (max_position_embeddings); null: the named model's"""
    tie_embeddings: bool | None = None
    """share the input embedding and the output head; null: the named model's"""
    rope_theta: float | None = None
    """RoPE base frequency; null: the named model's"""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """built-in offline name (`tunelab models`), hub id, local model directory or run directory"""
    tokenizer: str | None = None
    """tokenizer reference when it differs from the model's (e.g. training from scratch); null: the model's"""
    dtype: DType = "auto"
    """weights dtype when loading; auto: fp32 (mixed precision is `training.precision`'s job)"""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """attention kernel passed to transformers"""
    trust_remote_code: bool = False
    """allow a hub model's own Python code to run"""
    revision: str | None = None
    """hub revision (branch, tag or commit) of the model"""
    from_scratch: bool = False
    """random weights with the named model's architecture, changed by model.arch (pretraining from scratch)"""
    arch: ArchConfig = field(default_factory=ArchConfig)


@dataclass
class MixSource:
    name: str = ""
    """a data set reference, as data.name"""
    weight: float = 1.0
    """share of the mixture's examples (weights are normalised to sum to 1)"""
    limit: int | None = None
    """read at most this many records of this source"""
    format: Format = "auto"
    """this source's record format"""
    columns: dict[str, str] = field(default_factory=dict)
    """this source's column mapping"""
    split: str | None = None
    """this source's split"""


@dataclass
class DataConfig:
    name: str = "arith"
    """built-in data set (`tunelab data`), file (.json, .jsonl, .csv, .tsv, .parquet), saved `datasets` directory or hub dataset id"""
    format: Format = "auto"
    """record format; auto: the built-in set's, else detected from the first record"""
    columns: dict[str, str] = field(default_factory=dict)
    """the format's field -> the file's column, e.g. {instruction: prompt, output: response}"""
    split: str | None = None
    """split of a saved `datasets` directory or hub data set (default train)"""
    limit: int | None = None
    """read only the first N records (null: all)"""
    n: int = 2000
    """size of generated data sets (arith)"""
    seed: int = 0
    """seed of generation, the train/validation split and packing"""
    val_size: float = 0.05
    """validation part: a fraction when < 1, a number of examples when >= 1, 0 for none"""
    template: Template = "auto"
    """chat template; auto: the tokenizer's own, else chatml"""
    enable_thinking: bool = False
    """Qwen3-style templates: false puts the empty thinking block in the prompt (see data/render.py)"""
    system_prompt: str | None = None
    """system message added to every conversation"""
    instruction: str = "auto"
    """appended to math questions; auto: the English or Chinese step-by-step boxed instruction; "" for none"""
    gsm8k_boxed: bool = True
    """GSM8K answers end in \\boxed{N} (false keeps `#### N`)"""
    supervise: Literal["all_turns", "last_turn", "all_tokens"] = "all_turns"
    """which tokens are trained on: every assistant reply, the last one, or every token"""
    max_length: int = 1024
    """longest example in tokens (and the length of a packed row)"""
    overlong: Literal["drop", "truncate"] = "drop"
    """what happens to a longer example"""
    dedup: Literal["none", "exact", "near"] = "near"
    """duplicate removal before the split: none, exact, or exact + near (MinHash)"""
    near_dup_threshold: float = 0.9
    """Jaccard similarity above which two examples are near duplicates"""
    normalize: Literal["none", "basic", "full"] = "basic"
    """text normalisation: none; basic (NFC, unix newlines, no zero-width characters, no whitespace before a reply); full (also strip spaces, collapse blank lines)"""
    max_chars: int = 1_000_000
    """records with more characters are dropped (counted) before tokenizing and deduplication"""
    packing: bool = True
    """several examples per row (positions restart, attention never crosses examples)"""
    num_proc: int = 0
    """tokenization processes; 0 picks by data size"""
    mix: list[MixSource] = field(default_factory=list)
    """a mixture instead of data.name: [{name, weight, limit, format, columns, split}, ...], sampled by weight with data.seed"""
    mix_size: int | None = None
    """examples drawn from the mixture; null: as many as the sources allow without repeating an example"""


@dataclass
class MethodConfig:
    name: Method = "lora"
    """full, freeze, lora, lora_plus, dora or qlora"""
    freeze_trainable_layers: int = 2
    """freeze: how many of the last decoder layers train"""
    freeze_trainable_modules: list[str] = field(default_factory=list)
    """freeze: modules that also train, e.g. [lm_head, norm]"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA scale numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)"""
    lora_dropout: float = 0.05
    """dropout on the LoRA input"""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """modules that get adapters: [all-linear] or names such as [q_proj, v_proj]"""
    use_rslora: bool = False
    """rank-stabilised LoRA scaling"""
    lora_plus_ratio: float = 16.0
    """lora_plus: learning-rate ratio of the B matrices"""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """qlora: 4-bit data type"""
    double_quant: bool = True
    """qlora: quantize the quantization constants too"""
    compute_dtype: DType = "auto"
    """qlora: dtype of the 4-bit matmuls; auto follows training.precision"""


@dataclass
class OptimizerConfig:
    name: Optimizer = "adamw"
    """adamw, sgd, adamw_8bit or adafactor"""
    lr: float = 2e-4
    """peak learning rate"""
    weight_decay: float = 0.0
    """decoupled weight decay (never on biases, norms or DoRA magnitudes)"""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """adamw: [beta1, beta2]"""
    eps: float = 1e-8
    """adamw: epsilon"""
    momentum: float = 0.9
    """sgd: momentum"""
    nesterov: bool = False
    """sgd: Nesterov momentum"""


@dataclass
class ScheduleConfig:
    name: Schedule = "cosine"
    """constant, linear or cosine, after a linear warmup from 0"""
    warmup_steps: int = 0
    """warmup length in steps (wins over warmup_ratio when > 0)"""
    warmup_ratio: float = 0.0
    """warmup length as a fraction of the steps"""
    min_lr_ratio: float = 0.0
    """the learning rate at the end, as a fraction of the peak"""


@dataclass
class TrainingConfig:
    epochs: float = 1.0
    """passes over the training data (fractions allowed); ignored when max_steps is set"""
    max_steps: int = -1
    """optimizer steps to run; -1: from epochs"""
    batch_size: int = 4
    """rows (packed) or examples (padded) per micro-batch and process"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this; 0: no clipping"""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 (else fp16) autocast on a GPU, fp32 on CPU"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory, more time"""
    recompute_elementwise: bool = True
    """keep fewer activations at no matrix-product cost: the outputs of RMSNorm and of the gated MLP's activation and product are made again in the backward from tensors kept anyway (bit-identical), and on CPU packed rows' attention keeps the grouped key/value heads and the float mask once instead of repeated per head and per layer (gradients equal to rounding; models/recompute.py). SmolLM2-135M, 486 tokens: about half the activations kept, ~3% of a LoRA step (BENCHMARKS.md). No effect with gradient_checkpointing (which recomputes everything)"""
    cpu_allocator: Literal["auto", "torch"] = "auto"
    """CPU runs: auto allocates tensors with plain malloc, aligned by hand (models/cpu_alloc.py, compiled once with the system's C++ compiler; torch's allocator where none is found), so glibc < 2.38 reuses the blocks a forward frees. With recompute_elementwise, SmolLM2-135M peaks at 0.63x (LoRA) / 0.83x (full) what torch's allocator without it gave, at the same or better speed (BENCHMARKS.md); torch: torch's own posix_memalign allocator"""
    trim_heap: bool = False
    """CPU with training.cpu_allocator torch and glibc < 2.38: give the heap's free pages back to the system after every 5th decoder layer's training forward (malloc_trim; models/heap.py), so the holes glibc cannot reuse between saved activations are not resident at the peak. SmolLM2-135M LoRA: peak 2,909 -> 2,172 MB, speed -18% (full fine-tuning: -4% memory, -9% speed); BENCHMARKS.md. No effect on a GPU"""
    max_memory: str | None = None
    """a memory budget per process (e.g. 6GB, 512MiB; 1 GB = 1024 MB): batch_size, grad_accum and gradient_checkpointing are chosen by the estimator to fit it, keeping batch_size x grad_accum (`tunelab estimate --max-memory` shows the plan)"""
    seed: int = 0
    """seed of initialisation, dropout and the order of batches"""
    log_every: int = 10
    """steps between metrics lines"""
    eval_every: int = 50
    """steps between validation losses; 0: only at epoch ends and at the end"""
    save_every: int = 100
    """steps between checkpoints; 0: only the best and the last"""
    keep_last: int = 2
    """checkpoints kept (plus the best)"""
    early_stopping_patience: int = 0
    """stop after this many evaluations without improvement; 0: never"""
    load_best: bool = False
    """put the weights of the best validation loss in model/ (else the last step's)"""


@dataclass
class ObjectiveConfig:
    loss: PreferenceLoss = "sigmoid"
    """dpo: sigmoid (DPO), ipo, robust (label-smoothed / robust DPO), orpo (no reference), simpo (no reference, length-normalised)"""
    beta: float = 0.1
    """dpo: strength of the implicit reward (ipo: its regulariser; orpo: weight of the odds-ratio term; simpo: its beta, ~2)"""
    label_smoothing: float = 0.0
    """dpo robust (and sigmoid): assumed fraction of pairs whose labels are flipped, in [0, 0.5)"""
    simpo_gamma: float = 0.5
    """dpo simpo: target reward margin, as a ratio of beta (TRL's simpo_gamma)"""
    reference: Literal["auto", "adapters_off", "cached"] = "auto"
    """dpo sigmoid/ipo/robust: the reference model. auto = cached: every pair's log-probabilities under the model as loaded (a fresh adapter adds nothing), computed once before training and stored with the prepared data; adapters_off (LoRA family): the base with adapters disabled, one no-grad forward each step. grpo with kl_coef > 0 always uses the base with adapters off (LoRA family) or a frozen copy (full, freeze)"""
    num_generations: int = 8
    """grpo: completions sampled per prompt (the group whose rewards are normalised together)"""
    max_new_tokens: int = 256
    """grpo: longest completion"""
    temperature: float = 1.0
    """grpo: sampling temperature of the rollouts"""
    top_p: float = 1.0
    """grpo: nucleus sampling threshold of the rollouts"""
    rewards: list[Reward] = field(default_factory=lambda: ["correct"])
    """grpo: reward functions (train/rewards.py): correct (the task's grader: 1 right, 0 wrong), boxed (1 when the completion states a \\boxed{} answer)"""
    reward_weights: list[float] = field(default_factory=list)
    """grpo: weight of each reward (and of reward_fn last); empty: 1 each"""
    reward_fn: str | None = None
    """grpo: a reward function of your own, `path/to/file.py:function` (a local file only), called as function(completions, answers, prompts) -> list of numbers"""
    scale_rewards: Literal["group", "none"] = "group"
    """grpo: group: advantages are (reward - group mean) / group std; none: only the mean is subtracted (Dr. GRPO)"""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """grpo: how token losses are averaged: grpo (per completion, then over completions), bnpo/dapo (over all completion tokens of the step), dr_grpo (over completions x max_new_tokens)"""
    epsilon: float = 0.2
    """grpo: clipping range of the probability ratio (lower side)"""
    epsilon_high: float | None = None
    """grpo: upper clipping range (DAPO's clip-higher, e.g. 0.28); null: epsilon"""
    kl_coef: float = 0.0
    """grpo: weight of the KL penalty to the reference model (0: no reference needed)"""
    generation_batch_size: int = 64
    """grpo: completions generated together"""
    rollout_dtype: Literal["model", "bfloat16", "float16"] = "model"
    """grpo: precision the rollouts are sampled in. model: the trained model itself; bfloat16/float16: a copy with the adapters merged, refreshed before each rollout (half the weight bytes to read per token: ~1.6x faster sampling on a CPU), the loss corrected by truncated importance sampling (rollout_is_cap). Methods full, freeze, lora, lora_plus"""
    rollout_is_cap: float = 3.0
    """grpo with rollout_dtype other than model: each completion token's loss is weighted by min(pi(token) / pi_rollout(token), cap), the policy's probability over the copy's (truncated importance sampling, TRL's vllm_importance_sampling_cap); 0: no correction"""
    sample_every: int = 10
    """grpo: steps between completions written to samples.jsonl (the board shows them)"""


@dataclass
class EvaluationConfig:
    tasks: list[str] = field(default_factory=list)
    """tasks to evaluate on (`tunelab tasks`)"""
    limit: int | None = None
    """first N items of each task (null: all)"""
    max_new_tokens: int = 512
    """longest reply generated"""
    batch_size: int = 16
    """prompts generated together"""
    temperature: float = 0.0
    """0: greedy"""
    top_p: float = 1.0
    """nucleus sampling threshold"""


@dataclass
class OutputConfig:
    dir: str = "runs/quickstart"
    """the run directory"""
    report_to: list[ReportTo] = field(default_factory=list)
    """also log to wandb or swanlab (TensorBoard is always written)"""


@dataclass
class Config:
    stage: Stage = "sft"
    """sft: conversations with masked prompts; pt: raw text, every token supervised; dpo: preference pairs (objective.loss); grpo: RL with the task's grader as reward"""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


MEMORY_EXAMPLE = "a size with a unit, e.g. 6GB, 6GiB, 6000MB or 512MiB"
_UNITS = {"k": 2**-10, "m": 1, "g": 2**10, "t": 2**20}


def memory_mb(text: str) -> float | None:
    """A memory size as written in a budget ("6GB", "6 GiB", "6000MB", "512MiB", "1.5G") in MB (MiB);
    binary units whatever the spelling, as the estimator's MB and nvidia-smi's. None when unreadable."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt])(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        return None
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


# Value checks run at load time, so a bad value is one message naming the key before any data or
# model is read: (key, predicate, what is expected).
CHECKS: list[tuple[str, Any, str]] = [
    ("model.name", lambda v: bool(v.strip()), "a model reference"),
    ("data.name", lambda v: bool(v.strip()), "a data set reference"),
    ("data.limit", lambda v: v is None or v >= 1, "at least 1 (or null for all)"),
    ("data.n", lambda v: v >= 1, "at least 1"),
    ("data.val_size", lambda v: v >= 0 and (v < 1 or float(v).is_integer()), "a fraction in [0, 1) or a whole count"),
    ("data.max_length", lambda v: v >= 8, "at least 8"),
    ("data.near_dup_threshold", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("data.num_proc", lambda v: v >= 0, "0 (automatic) or more"),
    ("data.max_chars", lambda v: v >= 1, "at least 1"),
    ("data.mix", lambda v: all(m.name.strip() and m.weight > 0 for m in v), "sources each with a name and a weight above 0"),
    ("data.mix_size", lambda v: v is None or v >= 1, "at least 1 (or null)"),
    ("model.arch.layers", lambda v: v is None or v >= 1, "at least 1"),
    ("model.arch.hidden_size", lambda v: v is None or v >= 8, "at least 8"),
    ("model.arch.heads", lambda v: v is None or v >= 1, "at least 1"),
    ("model.arch.kv_heads", lambda v: v is None or v >= 1, "at least 1"),
    ("model.arch.head_dim", lambda v: v is None or v >= 2, "at least 2"),
    ("model.arch.intermediate_size", lambda v: v is None or v >= 1, "at least 1"),
    ("model.arch.context_length", lambda v: v is None or v >= 8, "at least 8"),
    ("model.arch.rope_theta", lambda v: v is None or v > 0, "above 0"),
    ("method.freeze_trainable_layers", lambda v: v >= 0, "0 or more"),
    ("method.lora_r", lambda v: v >= 1, "at least 1"),
    ("method.lora_alpha", lambda v: v >= 1, "at least 1"),
    ("method.lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("method.target_modules", lambda v: len(v) >= 1, "a non-empty list"),
    ("method.lora_plus_ratio", lambda v: v > 0, "above 0"),
    ("optimizer.lr", lambda v: v > 0, "above 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, "0 or more"),
    ("optimizer.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("optimizer.eps", lambda v: v > 0, "above 0"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("schedule.warmup_steps", lambda v: v >= 0, "0 or more"),
    ("schedule.warmup_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("schedule.min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("training.epochs", lambda v: v > 0, "above 0"),
    ("training.max_steps", lambda v: v == -1 or v >= 1, "-1 (use epochs) or at least 1"),
    ("training.batch_size", lambda v: v >= 1, "at least 1"),
    ("training.grad_accum", lambda v: v >= 1, "at least 1"),
    ("training.max_memory", lambda v: v is None or memory_mb(v) is not None, f"null or {MEMORY_EXAMPLE}"),
    ("training.max_grad_norm", lambda v: v >= 0, "0 (off) or more"),
    ("training.log_every", lambda v: v >= 1, "at least 1"),
    ("training.eval_every", lambda v: v >= 0, "0 (epoch ends only) or more"),
    ("training.save_every", lambda v: v >= 0, "0 (best and last only) or more"),
    ("training.keep_last", lambda v: v >= 1, "at least 1 (the newest checkpoint is what --resume continues)"),
    ("training.early_stopping_patience", lambda v: v >= 0, "0 (off) or more"),
    ("objective.beta", lambda v: v > 0, "above 0"),
    ("objective.label_smoothing", lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    ("objective.simpo_gamma", lambda v: v >= 0, "0 or more"),
    ("objective.num_generations", lambda v: v >= 2, "at least 2 (advantages compare completions of one prompt)"),
    ("objective.max_new_tokens", lambda v: v >= 1, "at least 1"),
    ("objective.temperature", lambda v: v > 0, "above 0 (rollouts are sampled)"),
    ("objective.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("objective.rewards", lambda v: len(set(v)) == len(v), "reward names without repeats"),
    ("objective.epsilon", lambda v: 0 < v < 1, "in (0, 1)"),
    ("objective.epsilon_high", lambda v: v is None or 0 < v < 1, "in (0, 1), or null"),
    ("objective.kl_coef", lambda v: v >= 0, "0 (off) or more"),
    ("objective.generation_batch_size", lambda v: v >= 1, "at least 1"),
    ("objective.rollout_is_cap", lambda v: v == 0 or v >= 1, "0 (no correction) or at least 1"),
    ("objective.sample_every", lambda v: v >= 0, "0 (never) or more"),
    ("evaluation.limit", lambda v: v is None or v >= 1, "at least 1 (or null for all)"),
    ("evaluation.max_new_tokens", lambda v: v >= 1, "at least 1"),
    ("evaluation.batch_size", lambda v: v >= 1, "at least 1"),
    ("evaluation.temperature", lambda v: v >= 0, "0 (greedy) or more"),
    ("evaluation.top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("output.dir", lambda v: bool(v.strip()), "a directory"),
]


def get_path(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_values(cfg: "Config") -> None:
    for key, ok, expected in CHECKS:
        value = get_path(cfg, key)
        if not ok(value):
            raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")
    arch = {k: v for k, v in dataclasses.asdict(cfg.model.arch).items() if v is not None}
    if arch and not cfg.model.from_scratch:
        raise ConfigError(f"config keys {', '.join('model.arch.' + k for k in arch)} change the architecture, which "
                          "only a model built from scratch can have: set model.from_scratch: true")
    if cfg.model.from_scratch and cfg.method.name == "qlora":
        # a from-scratch model is built in fp32 with random weights: there is nothing pretrained to quantize,
        # and the message training would give later ("needs a model loaded with 4-bit weights") misleads
        raise ConfigError("config key 'method.name': qlora adapts a pretrained model quantized to 4 bits; a model "
                          "built from scratch (model.from_scratch: true) has no pretrained weights: use full or lora")
    o = cfg.objective
    if cfg.stage == "dpo" and o.reference == "adapters_off" and cfg.method.name not in ("lora", "lora_plus", "dora",
                                                                                          "qlora"):
        raise ConfigError(f"config key 'objective.reference': adapters_off needs a LoRA-family method, not "
                          f"method.name {cfg.method.name}; use auto (cached)")
    if cfg.stage == "grpo" and o.rollout_dtype != "model" and cfg.method.name not in ("full", "freeze", "lora",
                                                                                         "lora_plus"):
        # models/inference_copy.py merges base + scale * B @ A; DoRA's magnitude and 4-bit bases merge otherwise
        raise ConfigError(f"config key 'objective.rollout_dtype': a {o.rollout_dtype} rollout copy is made for methods "
                          f"full, freeze, lora and lora_plus, not {cfg.method.name}; use rollout_dtype: model")
    n_rewards = len(o.rewards) + (1 if o.reward_fn else 0)
    if cfg.stage == "grpo" and not n_rewards:
        raise ConfigError("config key 'objective.rewards': stage grpo needs at least one reward (e.g. [correct]) or "
                          "objective.reward_fn")
    if o.reward_weights and len(o.reward_weights) != n_rewards:
        raise ConfigError(f"config key 'objective.reward_weights': {len(o.reward_weights)} weight(s) for {n_rewards} "
                          "reward(s) (objective.rewards, then objective.reward_fn); give one each, or none")
    if o.reward_fn is not None:
        check_reward_fn(o.reward_fn)
    a = cfg.model.arch
    if a.heads and a.kv_heads and a.heads % a.kv_heads:
        raise ConfigError(f"config key 'model.arch.kv_heads': {a.kv_heads} must divide model.arch.heads ({a.heads})")
    if a.hidden_size and a.heads and not a.head_dim and a.hidden_size % a.heads:
        raise ConfigError(f"config key 'model.arch.heads': {a.heads} must divide model.arch.hidden_size "
                          f"({a.hidden_size}), or set model.arch.head_dim")


def check_reward_fn(ref: str) -> None:
    """`objective.reward_fn` names a local Python file and a function in it: checked without running it."""
    import ast

    path, _, name = ref.rpartition(":")
    if not path or not name.isidentifier():
        raise ConfigError(f"config key 'objective.reward_fn': expected 'path/to/file.py:function', got {ref!r}")
    file = Path(path)
    if file.suffix != ".py" or not file.is_file():
        raise ConfigError(f"config key 'objective.reward_fn': {path} is not a local .py file (only a file on this "
                          "machine may provide a reward function, never an installed or remote module)")
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except SyntaxError as e:
        raise ConfigError(f"config key 'objective.reward_fn': {path}:{e.lineno}: not valid Python ({e.msg})") from None
    if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body):
        raise ConfigError(f"config key 'objective.reward_fn': {path} defines no function {name!r} at its top level")


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring written under each field of a config dataclass (`tunelab config`)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe() -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every config key, in schema order."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{prefix}{f.name}", _type_name(tp), yaml.safe_dump(default, default_flow_style=True,
                                                                              allow_unicode=True).strip().removesuffix("..."
                                                                              ).strip(), docs.get(f.name, "")))

    walk(Config, "")
    return rows


def markdown_table() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in describe():
        lines.append(f"| `{key}` | {tp.replace('|', '/')} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Validation: written by hand because it is ~60 lines and gives better messages than a schema
# library would (the key path, the value, the allowed values, a "did you mean").


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        return "list of {" + ", ".join(f.name for f in dataclasses.fields(typing.get_args(tp)[0])) + "}"
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
    if origin is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        if not isinstance(value, list):
            raise bad
        return [build_section(typing.get_args(tp)[0], v, f"{key}[{i}].") for i, v in enumerate(value)]
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
    cfg = build_section(Config, data or {}, "")
    check_values(cfg)
    return cfg


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

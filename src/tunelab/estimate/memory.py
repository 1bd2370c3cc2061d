"""Bytes of each thing a training step keeps in memory, as pure functions of the model's shape.

Activations are what autograd saves for the backward pass. The per-layer counts below are exact for
transformers 5.x Llama/Qwen layers with SDPA: they were read off `torch.autograd.graph.
saved_tensors_hooks` on tiny models and are re-checked the same way by tests/estimate. Units are
elements per token per layer; `H` hidden, `Q` = heads x head_dim, `KV` = kv_heads x head_dim, `I`
MLP width, `nh`/`nkv` head counts, `r` the LoRA rank.

  trained base (full):        6H + 2Q + 2KV + 4I + nh + 2                  (fp32)
  frozen base (LoRA, QLoRA):  2H + 2Q + 2KV + 3I + nh + 2                  (fp32)
     + per adapted linear:     r + 2 d_in with LoRA dropout (its mask and output), else r, plus the
                               layer's input once per input it reads (attention H, MLP H, down I)
  Qwen3's q/k norm:           + 2Q + 2KV + nh + nkv (trained), + Q + KV + nh + nkv (frozen)
Under bf16 autocast the residual stream and norms stay fp32 and the rest is bf16:
  trained base:  fp32 4H + nh + 2,  bf16 5H + 2Q + 2KV + 4I;   q/k norm: fp32 Q+KV+nh+nkv, bf16 Q+KV
  frozen base:   fp32 2H + nh + 2,  bf16 2Q + 2KV + 3I;        q/k norm: fp32 Q+KV+nh+nkv
     + per adapted linear: bf16 r + d_in (each adapter casts its input), + fp32 d_in with dropout
and autocast keeps a bf16 copy of every linear weight of the decoder (and of the head in the loss)
from the forward until its backward. With `training.recompute_elementwise` (models/recompute.py) the
MLP's act(gate) and product, the RMSNorms' normalised input and output are made again in the backward:
  trained base:  - 4H - 2I (fp32);  bf16: - fp32 2H - bf16 2I;   q/k norm: - Q - KV (fp32 or bf16)
  frozen base:   - I and the adapters' input groups (fp32, no dropout: those inputs are all remade);
                 bf16: - I (the adapters keep their own casts of their inputs); with dropout they keep
                 the dropout's output instead of the inputs With gradient checkpointing each layer keeps only its fp32
input (H), and the backward recomputes one layer at a time.
"""
from __future__ import annotations

import math

from .shape import ModelShape

FP32, BF16 = 4, 2
# train/loss.py: rows of fp32 logits per chunk = max(64, LOGITS_BUDGET // (4 * vocab))
LOGITS_BUDGET = 256 * 2**20
LSE_ROWS = 32  # models/loss.py: rows whose log-sum-exp the fused head + cross-entropy takes at once


def logits_chunk_rows(vocab: int) -> int:
    """Rows the loss computes at once (train/loss.py's rule: 441 for Qwen's 151,936 tokens)."""
    return max(64, LOGITS_BUDGET // (4 * vocab))


def head_logits_bytes(rows: int, vocab: int, hidden: int, *, path: str, bf16: bool, chunked: bool) -> tuple[float, float]:
    """(forward, loss backward) bytes of one chunk of `rows` logits at their largest, by the head's path:

    `fused`  models/loss.py `_FusedHead` (without autocast: the sft/pt loss, and dpo/grpo's per-token
             log-probabilities): the fp32 logits, kept, become their own gradient in place; the forward
             also takes an exponent of LSE_ROWS rows at a time (the entropy from the same block), and so
             does a chunk's recomputation in the backward
    `ce`     autocast cross-entropy: bf16 logits and the head's bf16 weight copy, fp32 log-softmax (saved),
             its gradient and the logits' gradient (3 fp32 copies in the backward, 2 in the forward)
    `logps`  models/logps.py `_logps_of` under autocast (dpo, grpo): the logits, their log-softmax (saved)
             and, for the entropy (no grad), its exp and the product with the log-softmax: 4 fp32 copies
             while the forward computes the entropy; the backward holds the log-softmax, the gather's
             gradient and the log-softmax's (3), or 4 again while a chunk under checkpointing is
             recomputed. The head's output is bf16 and `.float()` makes the fp32 copy (+ bf16 logits and
             the bf16 weight copy).
    Measured with the allocator's live-byte peak (tests/estimate checks all three against it)."""
    chunk = rows * vocab
    if path == "fused":
        # chunked, the backward recomputes a chunk's forward (its log-sum-exp temporary too) while the
        # gradient of a chunk before it exists
        lse = min(rows, LSE_ROWS) * vocab * FP32
        return chunk * FP32 + lse, chunk * FP32 + (lse if chunked else 0)
    if path == "ce":
        return chunk * (2 * FP32 + BF16), chunk * (3 * FP32 + BF16) + BF16 * vocab * hidden
    if path != "logps":
        raise ValueError(f"unknown head path {path!r}")
    extra = chunk * BF16 + BF16 * vocab * hidden if bf16 else 0
    return 4 * chunk * FP32 + extra, (4 if chunked else 3) * chunk * FP32 + extra


def kv_cache_bytes(shape: ModelShape, *, rows: int, tokens: int, bf16: bool) -> float:
    """Generation's key/value cache (transformers' DynamicCache) for `rows` sequences of `tokens`: keys and
    values of every layer, in the activations' dtype."""
    return 2 * shape.layers * shape.kv_dim * rows * tokens * (BF16 if bf16 else FP32)


def _input_groups(adapted: list[tuple[str, int, int]]) -> int:
    """Elements of the layer inputs LoRA's A matrices read, each input counted once (no dropout, fp32:
    q/k/v share the attention input, gate/up the MLP input; o reads SDPA's output, already saved)."""
    names = {n for n, _, _ in adapted}
    d = {n: i for n, i, _ in adapted}
    total = 0
    for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("down_proj",)):
        hit = [g for g in group if g in names]
        if hit:
            total += d[hit[0]]
    return total


def layer_activations(shape: ModelShape, *, trained: bool, adapted: list[tuple[str, int, int]], r: int,
                      dropout: bool, bf16: bool, attention: str = "sdpa", seq_len: int = 0,
                      recompute: bool = False) -> float:
    """Bytes autograd saves per token in one decoder layer (no checkpointing); `recompute`:
    `training.recompute_elementwise` (tests/estimate checks every case against the saved tensors)."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    nh, nkv = shape.heads, shape.kv_heads
    if trained:
        f32, b16 = 6 * h + 2 * q + 2 * kv + 4 * i + nh + 2, 0
        if bf16:
            f32, b16 = 4 * h + nh + 2, 5 * h + 2 * q + 2 * kv + 4 * i
        if shape.qk_norm:
            f32 += (q + kv + nh + nkv) if bf16 else (2 * q + 2 * kv + nh + nkv)
            b16 += (q + kv) if bf16 else 0
        if recompute:
            if bf16:
                f32, b16 = f32 - 2 * h, b16 - 2 * i - ((q + kv) if shape.qk_norm else 0)
            else:
                f32 -= 4 * h + 2 * i + ((q + kv) if shape.qk_norm else 0)
    else:
        f32, b16 = 2 * h + 2 * q + 2 * kv + 3 * i + nh + 2, 0
        if bf16:
            f32, b16 = 2 * h + nh + 2, 2 * q + 2 * kv + 3 * i
        if shape.qk_norm:
            f32 += q + kv + nh + nkv
        for _, d_in, _ in adapted:
            if bf16:
                b16 += r + d_in
                f32 += d_in if dropout else 0
            else:
                f32 += r + (2 * d_in if dropout else 0)
        if adapted and not bf16 and not dropout and not recompute:
            f32 += _input_groups(adapted)
        if recompute:  # act(gate); under autocast the adapters read their own casts of the product
            if bf16:
                b16 -= i
            else:
                f32 -= i
    if attention == "eager":  # the softmax probabilities (fp32), and their bf16 copy for the matmul
        f32 += nh * seq_len
        b16 += nh * seq_len if bf16 else 0
    return FP32 * f32 + BF16 * b16


def weight_copies(shape: ModelShape, *, adapted: list[tuple[str, int, int]], r: int, quantized: bool) -> int:
    """Bytes of the bf16 weight copies autocast keeps for one layer's backward (0 for a 4-bit base)."""
    base = 0 if quantized else sum(d_in * d_out for _, d_in, d_out, _ in shape.linears())
    return BF16 * (base + sum(r * (d_in + d_out) for _, d_in, d_out in adapted))


def quantized_bytes(n: int, *, double_quant: bool, block: int = 64) -> float:
    """bitsandbytes 4-bit (NF4/FP4): half a byte per weight plus one absmax per `block` weights, fp32,
    or with double quantization 8-bit with one fp32 scale per 256 absmax values."""
    stats = n / block * (1 + 4 / 256) if double_quant else n / block * 4
    return n / 2 + stats


def optimizer_bytes(name: str, shapes: list[tuple[int, ...]], *, momentum: float = 0.9) -> float:
    """State bytes for fp32 parameters of these shapes.

    adamw       exp_avg and exp_avg_sq: 8 bytes per parameter
    sgd         momentum buffer: 4 bytes per parameter (none without momentum)
    adamw_8bit  bitsandbytes: two 1-byte states + an fp32 absmax per 256-value block, for tensors of at
                least 4096 values; smaller tensors keep 32-bit states (8 bytes per parameter)
    adafactor   torch.optim.Adafactor: a factored second moment, one fp32 per row and per column of a
                matrix, a full one for vectors; no first moment
    """
    total = 0.0
    for s in shapes:
        n = math.prod(s)
        if name == "adamw":
            total += 8 * n
        elif name == "sgd":
            total += 4 * n if momentum > 0 else 0
        elif name == "adamw_8bit":
            total += 2 * n + 2 * 4 * math.ceil(n / 256) if n >= 4096 else 8 * n
        elif name == "adafactor":
            total += 4 * (s[-2] + s[-1]) if len(s) >= 2 else 4 * n
        else:
            raise ValueError(f"unknown optimizer {name!r}")
    return total


def optimizer_step_scratch(name: str, shapes: list[tuple[int, ...]], *, cpu: bool) -> float:
    """Temporaries of the optimizer's step beyond its state, for the largest tensor (they are made and
    freed one tensor at a time): torch's fused AdamW and SGD need none; Adafactor squares the
    gradient and builds the update (2 fp32 copies); bitsandbytes' 8-bit AdamW on CPU dequantizes both
    states, copies the gradient and builds the denominator (5 fp32 copies; its CUDA kernel is fused)."""
    largest = max((math.prod(s) for s in shapes), default=0)
    copies = {"adamw": 0, "sgd": 0, "adafactor": 2, "adamw_8bit": 5 if cpu else 0}[name]
    return copies * FP32 * largest

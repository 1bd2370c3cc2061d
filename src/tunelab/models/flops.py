"""Training compute per token and model FLOPs utilisation (MFU), one definition for runs and benchmarks.

FLOPs per token = 6N + 12·L·d·T (Chinchilla/PaLM appendix): 6N for the forward and backward matmuls
over N parameters (tied embeddings counted once), plus attention's score and value products, 12·L·d·T
for L layers, attention width d (heads x head dim) and sequence length T. MFU = tokens/s x FLOPs per
token / the device's peak dense bf16 FLOP/s (NVIDIA's datasheets; without sparsity).
"""
from __future__ import annotations

from typing import Any

# Dense bf16 peak FLOP/s by a substring of torch.cuda.get_device_name().
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12,
             "A10G": 70e12, "A10": 125e12, "V100": 125e12, "T4": 65e12}


def flops_per_token(config: Any, params: int, seq_len: int) -> float:
    """6N + 12·L·d·T for a transformers config (or its dict), N parameters and sequence length T."""
    c = config if isinstance(config, dict) else config.to_dict()
    heads = c["num_attention_heads"]
    d = heads * (c.get("head_dim") or c["hidden_size"] // heads)
    return 6 * params + 12 * c["num_hidden_layers"] * d * seq_len


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a GPU by its name, or None when unknown (CPU included)."""
    return next((v for k, v in BF16_PEAK.items() if k in device_name), None)


def mfu(tokens_per_s: float | None, per_token: float | None, peak: float | None) -> float | None:
    return round(tokens_per_s * per_token / peak, 4) if tokens_per_s and per_token and peak else None

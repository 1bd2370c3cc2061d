"""The shape of a decoder-only LM read from its config: sizes, parameter tensors, linear layers.

    shape = ModelShape.from_config(AutoConfig.from_pretrained(path))
    shape.total_params()            # equals sum(p.numel()) of the model built from that config
    shape.linears()                 # [(name, d_in, d_out, bias), ...] of one decoder layer

Only the config is read, never weights. The families tunelab trains (Llama, SmolLM, Mistral, Qwen2,
Qwen2.5, Qwen3) share one layer layout: RMSNorm, q/k/v/o projections with grouped KV heads, RoPE,
a gated SiLU MLP (gate/up/down), RMSNorm; Qwen3 adds a per-head RMSNorm on q and k, Qwen2 biases on
q/k/v. Any other architecture is refused rather than guessed (a wrong estimate is worse than none).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# model_type -> (bias on q/k/v always, per-head q/k norm)
FAMILIES: dict[str, tuple[bool, bool]] = {
    "llama": (False, False),
    "mistral": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        kind = getattr(cfg, "model_type", "?")
        if kind not in FAMILIES:
            raise ConfigError(f"model.name: tunelab estimate knows the decoder layouts {', '.join(FAMILIES)} "
                              f"(Llama, SmolLM, Mistral, Qwen2/2.5, Qwen3); this model is '{kind}'")
        if getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None):
            raise ConfigError(f"model.name: mixture-of-experts models ('{kind}') are not estimated")
        qkv_bias, qk_norm = FAMILIES[kind]
        heads = cfg.num_attention_heads
        attn_bias = bool(getattr(cfg, "attention_bias", False))
        return cls(model_type=kind, vocab=cfg.vocab_size, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                   heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                   intermediate=cfg.intermediate_size, tied=bool(getattr(cfg, "tie_word_embeddings", False)),
                   qkv_bias=qkv_bias or attn_bias, o_bias=attn_bias,
                   mlp_bias=bool(getattr(cfg, "mlp_bias", False)), qk_norm=qk_norm)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """The linear layers of one decoder layer: (name, in features, out features, has bias)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return [("q_proj", h, q, self.qkv_bias), ("k_proj", h, kv, self.qkv_bias), ("v_proj", h, kv, self.qkv_bias),
                ("o_proj", q, h, self.o_bias), ("gate_proj", h, i, self.mlp_bias), ("up_proj", h, i, self.mlp_bias),
                ("down_proj", i, h, self.mlp_bias)]

    def layer_tensors(self) -> list[tuple[int, ...]]:
        """Shapes of one decoder layer's parameters (what an optimizer keeps state for)."""
        shapes: list[tuple[int, ...]] = []
        for _, d_in, d_out, bias in self.linears():
            shapes.append((d_out, d_in))
            if bias:
                shapes.append((d_out,))
        shapes += [(self.hidden,), (self.hidden,)]  # input and post-attention RMSNorm
        if self.qk_norm:
            shapes += [(self.head_dim,), (self.head_dim,)]
        return shapes

    def other_tensors(self) -> list[tuple[int, ...]]:
        """Embedding, final norm and (untied) output head."""
        shapes = [(self.vocab, self.hidden), (self.hidden,)]
        if not self.tied:
            shapes.append((self.vocab, self.hidden))
        return shapes

    def layer_params(self) -> int:
        return sum(_numel(s) for s in self.layer_tensors())

    def linear_params(self) -> int:
        """Weights of the decoder's linear layers (what 4-bit quantization replaces; not the head)."""
        return self.layers * sum(d_in * d_out for _, d_in, d_out, _ in self.linears())

    def total_params(self) -> int:
        return self.layers * self.layer_params() + sum(_numel(s) for s in self.other_tensors())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def resolve_targets(shape: ModelShape, target_modules: list[str] | tuple[str, ...]) -> list[tuple[str, int, int]]:
    """The LoRA-adapted linears of one layer, as peft picks them: `all-linear` is every linear layer but
    the output head; a name matches a layer's module name (or a dotted suffix of it)."""
    names = list(target_modules)
    if "all-linear" in names:
        return [(n, i, o) for n, i, o, _ in shape.linears()]
    known = {n for n, *_ in shape.linears()}
    unknown = [t for t in names if t.rsplit(".", 1)[-1] not in known]
    if unknown:
        raise ConfigError(f"method.target_modules: {unknown} match no linear layer of this {shape.model_type} "
                          f"model; its linear layers are: {', '.join(sorted(known))} (or 'all-linear')")
    wanted = {t.rsplit(".", 1)[-1] for t in names}
    return [(n, i, o) for n, i, o, _ in shape.linears() if n in wanted]

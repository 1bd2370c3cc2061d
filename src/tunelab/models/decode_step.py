"""The per-token forward of tunelab's decoding loop, written out for Llama-family decoders (Llama, SmolLM2,
Qwen2, Qwen2.5, Qwen3, Mistral).

    step = decode_step(model, capacity)        # None: the model's own forward decodes (capacity: cache positions)
    logits = step(tokens, positions, mask, kv)  # tokens [B], positions [B, 1], mask [B, L] -> next logits [B, V]

`kv` is the cache the prompt's prefill (the model's own forward) wrote: models/generate.py's slab layers,
tensors of a fixed capacity; the step writes its key and value at the next position of each layer.

Why by hand: on a CPU a small model's token costs the matrix products (reading every weight once) plus
the small ops around them. transformers' layer spends ~120 aten calls per decoder layer on one token
(views and transposes, dtype round trips, rotate_half's cat, the cache object, a 4-D mask rebuilt per
token); this spends ~30. And bf16 weights on a CPU go to oneDNN pre-packed in its blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`, what inductor's CPU freezing pass does): for 8 rows a bf16
product reads SmolLM2's weights at ~20 GB/s instead of ~13 with the plain layout (measured on this
project's machine, all its shapes; the same values bit for bit). In fp32 only the head is packed (2.5x
faster there, the other shapes gain little; `_packs`). A packed copy is kept per weight and made again
when the weight changes (its version counter: GRPO's rollout copy is refreshed in place every step); it
costs those weights' bytes once more, so weights are packed only where they take at most 1/8 of the
machine's memory (SmolLM2-135M bf16: 257 MB; a 7B model in bf16 decodes unpacked).

The computation is the modules' own, op for op where rounding depends on it: RMSNorm in fp32 rounded back
before its weight, the rotary embedding from the model's own rotary module as q*cos + rotate_half(q)*sin,
attention by torch's SDPA over the cache with the padding mask. A model is used only if one step on a
small input agrees with its own forward (`_agrees`). peft LoRA layers are computed as peft does, the base
layer plus B(A(x)) * scaling (GRPO's default rollouts sample from the LoRA policy itself); other
architectures, DoRA and other peft methods, quantized layers, soft-capped heads, models in training mode and
sliding windows shorter than the cache decode through the model's forward.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
_checked: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalised in fp32, rounded to x's dtype, then times the weight."""
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _packs(w: torch.Tensor, head: bool) -> bool:
    """Whether this weight goes to oneDNN packed: every bf16 weight on a CPU; in fp32 the head only.
    SmolLM2-135M fp32, 8 rows, ms a token (decode, this machine): plain 76, head packed 67 (its 49k x 576
    product 12.8 -> 5.0 ms), gate/up too 63-66, every weight 64-70 (the narrow k/v products are slower
    packed); +113 MB for the head against +430 MB for the rest."""
    return (w.device.type == "cpu" and (w.dtype == torch.bfloat16 or (w.dtype == torch.float32 and head))
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _packed_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _machine_bytes() -> int:
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _supported(base: Any, capacity: int) -> str | None:
    """Why this model cannot use the step (None: it can)."""
    c = base.config
    if getattr(c, "model_type", None) not in FAMILIES:
        return f"model_type {getattr(c, 'model_type', None)!r}"
    if getattr(c, "hidden_act", "silu") != "silu":
        return f"hidden_act {c.hidden_act!r}"
    if any(t != "full_attention" for t in (getattr(c, "layer_types", None) or [])):
        return "sliding-window layers"
    window = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
    if window is not None and window < capacity:
        return f"a sliding window of {window} positions"
    dec = base.get_decoder()
    if type(dec.embed_tokens) is not torch.nn.Embedding:
        return f"a {type(dec.embed_tokens).__name__} embedding"
    for layer in dec.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if isinstance(parts := _parts(lin), str):
                return parts
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, getattr(a, "q_norm", None),
                     getattr(a, "k_norm", None)):
            if norm is not None and not (hasattr(norm, "weight") and hasattr(norm, "variance_epsilon")):
                return f"a {type(norm).__name__} norm"
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return "its head"
    return None


def _parts(lin: Any) -> tuple[torch.nn.Linear, tuple[tuple[torch.Tensor, torch.Tensor, float], ...]] | str:
    """(the plain linear layer, its active LoRA adapters as (A, B, scaling)) of a projection, or why the
    step cannot compute it. A peft LoRA layer adds B(A(x)) * scaling to the base layer's output, adapter
    by adapter, as its forward does (dropout is off in eval mode); merged or disabled adapters add nothing.
    DoRA and other variants, quantized bases and adapters in another dtype are left to peft."""
    if type(lin) is torch.nn.Linear:
        return lin, ()
    plain = getattr(lin, "base_layer", None)
    if type(lin).__module__ != "peft.tuners.lora.layer" or type(plain) is not torch.nn.Linear:
        return f"{type(lin).__name__} layers"
    if lin.merged and lin.disable_adapters:
        return "merged adapters that are disabled"  # peft unmerges them in its forward
    if lin.merged or lin.disable_adapters:
        return plain, ()
    adapters = []
    for name in lin.active_adapters:
        if name not in lin.lora_A:
            continue
        a, b = lin.lora_A[name], lin.lora_B[name]
        if name in getattr(lin, "lora_variant", {}) or type(a) is not torch.nn.Linear or \
                type(b) is not torch.nn.Linear or a.bias is not None or b.bias is not None or \
                a.weight.dtype != plain.weight.dtype:
            return "LoRA variants (DoRA) or adapters in another dtype"
        adapters.append((a.weight, b.weight, lin.scaling[name]))
    return plain, tuple(adapters)


class DecodeStep:
    def __init__(self, base: Any):
        c = base.config
        # a weak reference: `_checked` maps the model to this step, which must not keep the model alive
        self._base, self.dec = weakref.ref(base), base.get_decoder()
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        # id(weight) -> (what was packed: its storage, dtype and version; the packed copy)
        self._packed: dict[int, tuple[tuple[int, torch.dtype, int], torch.Tensor]] = {}

    def _weight(self, w: torch.Tensor, pack: bool) -> torch.Tensor:
        if not pack:
            return w
        stamp = (w.data_ptr(), w.dtype, w._version)
        have = self._packed.get(id(w))
        if have is None or have[0] != stamp:
            have = (stamp, torch.ops.mkldnn._reorder_linear_weight(w.detach(), 8))
            self._packed[id(w)] = have
        return have[1]

    @property
    def base(self) -> Any:
        return self._base()

    def _linears(self) -> list[torch.nn.Linear]:
        """The plain linear layers (LoRA layers' bases) and the head."""
        return [_parts(lin)[0] for layer in self.dec.layers for lin in
                (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                 layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)] + [self.base.get_output_embeddings()]

    def _apply(self, x: torch.Tensor, spec: tuple) -> torch.Tensor:
        """A projection: the (packed) weight and bias, plus each adapter's B(A(x)) * scaling as peft adds it."""
        linear, w, b, adapters = spec
        y = linear(x, w, b)
        for a, up, scaling in adapters:
            y = y + F.linear(F.linear(x, a), up) * scaling
        return y

    def prepare(self) -> "DecodeStep":
        """The weights as this decode will read them: packed copies made again where a weight changed."""
        head = self.base.get_output_embeddings()
        packs = {id(lin.weight): lin.weight for lin in self._linears() if _packs(lin.weight, lin is head)}
        if 8 * sum(w.numel() * w.element_size() for w in packs.values()) > _machine_bytes():
            packs = {}

        def own(lin: Any) -> tuple:
            plain, adapters = _parts(lin)
            pack = id(plain.weight) in packs
            return (_packed_linear if pack else F.linear), self._weight(plain.weight, pack), plain.bias, adapters

        self.layers = []
        for layer in self.dec.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append((layer.input_layernorm, own(a.q_proj), own(a.k_proj), own(a.v_proj), own(a.o_proj),
                                getattr(a, "q_norm", None), getattr(a, "k_norm", None), a.scaling,
                                layer.post_attention_layernorm, own(m.gate_proj), own(m.up_proj), own(m.down_proj)))
        self.head = own(head)
        self._packed = {k: v for k, v in self._packed.items() if k in packs}
        return self

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, kv: Any) -> torch.Tensor:
        B, D, half = tokens.shape[0], self.head_dim, self.head_dim // 2
        lin = self._apply
        x = self.dec.embed_tokens(tokens)
        cos, sin = self.dec.rotary_emb(x[:, None], positions)
        cos, sin = cos.view(B, 1, D), sin.view(B, 1, D)
        # rotate_half(q) * sin == roll(q, half) * [-sin_1, sin_2]: the same products, one op fewer per use
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        attend = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        gqa = self.heads != self.kv_heads
        for i, (ln1, q_lin, k_lin, v_lin, o_lin, q_norm, k_norm, scale, ln2, g_lin, u_lin, d_lin) in \
                enumerate(self.layers):
            h = _rms(x, ln1.weight, ln1.variance_epsilon)
            q = lin(h, q_lin).view(B, self.heads, D)
            k = lin(h, k_lin).view(B, self.kv_heads, D)
            v = lin(h, v_lin).view(B, self.kv_heads, D)
            if q_norm is not None:  # Qwen3: RMSNorm of each head before the rotation
                q, k = _rms(q, q_norm.weight, q_norm.variance_epsilon), _rms(k, k_norm.weight, k_norm.variance_epsilon)
            q = q * cos + torch.roll(q, half, -1) * sin
            k = k * cos + torch.roll(k, half, -1) * sin
            layer = kv.layers[i]
            end = layer.length + 1
            if end > layer.capacity:
                raise RuntimeError(f"KV cache of {layer.capacity} positions is full ({end} asked)")
            layer.slab_k[:, :, layer.length] = k
            layer.slab_v[:, :, layer.length] = v
            layer.length = end
            o = F.scaled_dot_product_attention(q[:, :, None], layer.slab_k[:, :, :end], layer.slab_v[:, :, :end],
                                               attn_mask=attend, scale=scale, enable_gqa=gqa)
            x = x + lin(o.view(B, self.heads * D), o_lin)
            h = _rms(x, ln2.weight, ln2.variance_epsilon)
            x = x + lin(F.silu(lin(h, g_lin)) * lin(h, u_lin), d_lin)
        norm = self.dec.norm
        return self._apply(_rms(x, norm.weight, norm.variance_epsilon), self.head)


def _agrees(model: Any, step: DecodeStep) -> bool:
    """One step after a small left-padded prompt, from the model's own forward and from `step`: equal to
    1e-3 of the logits' spread in fp32, 0.25 of it in 16-bit (bf16 rounds to 3 significant digits; a
    wrong computation is off by the spread itself)."""
    from .generate import _cache_keyword, _new_cache, _next_logits

    base = step.base
    vocab = base.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    device = base.get_output_embeddings().weight.device
    ids = torch.randint(0, vocab, (2, 6), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    positions = (mask.cumsum(1) - 1).clamp_(min=0)
    token = torch.randint(0, vocab, (2,), generator=g).to(device)
    full = torch.cat([mask, mask.new_ones(2, 1)], 1)
    key = _cache_keyword(model) or "past_key_values"
    out = []
    with torch.no_grad():
        for use_step in (False, True):
            kv = {key: _new_cache(8)}
            _next_logits(model, kv, input_ids=ids, attention_mask=mask, position_ids=positions)
            if use_step:
                out.append(step.prepare()(token, positions[:, -1:] + 1, full, kv[key]).float())
            else:
                out.append(_next_logits(model, kv, input_ids=token[:, None], attention_mask=full,
                                        position_ids=positions[:, -1:] + 1).float())
    theirs, mine = out
    tol = 1e-3 if base.get_output_embeddings().weight.dtype == torch.float32 else 0.25
    return bool(torch.isfinite(mine).all()) and float((mine - theirs).abs().max()) <= tol * float(theirs.std())


def decode_step(model: Any, capacity: int) -> DecodeStep | None:
    """The prepared step for this model (weights packed as they are now), or None where the model's own
    forward must decode (the reason is `_supported`'s, or the check disagreed)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base is not model and getattr(getattr(model, "active_peft_config", None), "peft_type", None) != "LORA":
        return None  # other peft methods (prompt tuning, IA3, ...) decode through the model's forward
    if base.training or _supported(base, capacity) is not None:  # training: dropout, LoRA's included
        return None
    step = _checked.get(base)
    if step is None:
        step = DecodeStep(base)
        step = step if _agrees(model, step) else False
        _checked[base] = step
    return step.prepare() if step else None

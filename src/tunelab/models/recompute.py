"""Keep fewer activations for the backward at no matrix-product cost (`training.recompute_elementwise`).

    patched = recompute_elementwise(model)   # the RMSNorm and gated-MLP modules it patched (0: none)

What a decoder layer keeps for its backward is mostly outputs of elementwise work that are cheap to
make again from tensors it keeps anyway (SmolLM2-135M, 486 tokens, full fine-tuning: 623 MB kept, of
which these are 298 MB):
  gated MLP   down(act(gate) * up): `act(gate)` (kept by the product, for up's gradient) and the product
              (kept by down_proj, for its weight's or adapter's gradient), each intermediate-sized;
              gate and up themselves are kept anyway (by the activation and by the product).
  RMSNorm     y = w * (x * rstd): the normalised x (kept for w's gradient when w is trained) and y
              (kept by the projections it feeds); x and rstd are kept anyway (by the norm itself).
So the patched forwards name those outputs with a recipe, and while a training forward runs through a
decoder layer a saved-tensor hook stores the recipe in place of any of them that an op wants to keep;
the backward makes the tensor again (a few elementwise ops) when it needs it. The same kernels on the
same inputs: the recomputed tensor is bit-identical, so losses and gradients are unchanged (tests).

Attention (`_attention`, routed through transformers' "sdpa" entry, a CPU training forward in a hooked layer
only): with a mask, as packed rows have, transformers repeats the key/value heads to every query head and
torch's kernel keeps those copies and a float copy of the boolean mask in every layer; here the kernel gets
the groups as they are and one float mask made once. Its output is the same; the key/value gradients are
summed over each group inside the kernel instead of by autograd (equal to rounding, tests).

This is gradient checkpointing restricted to elementwise ops: Megatron-LM's "selective recomputation"
(arXiv 2205.05198) picks attention's softmax the same way; torch's checkpoint API would recompute a whole
region including its matrix products, so the few lines here are hand-written. A patch is kept only where
the patched forward reproduces the module's own output bit for bit on a random input (Gemma's 1 + w norm,
other activations or layouts are left alone). Not used with gradient checkpointing (it recomputes
everything already) or in forwards without a graph (generation, validation, reference passes).
"""
from __future__ import annotations

import types
import weakref
from typing import Any, Callable

import torch
from torch import nn

_active: list[dict[int, Any]] = []  # the recipes of the decoder layer whose training forward is running


class _Recipe:
    """How to make a kept tensor again: `make()` gives the whole tensor, then the view that was kept."""
    __slots__ = ("make", "inputs", "versions", "shape", "made", "size", "stride", "offset")

    def __init__(self, make: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...], shape: torch.Size):
        self.make, self.inputs, self.shape = make, inputs, shape
        self.versions = tuple(t._version for t in inputs)
        # made once for all the ops that kept it (a norm's output feeds q, k and v): shared by the views,
        # freed with the last of them, when the backward is done with the layer
        self.made: list[torch.Tensor | None] = [None]

    def whole(self) -> torch.Tensor:
        """The tensor, made now if no op has asked for it yet."""
        if self.made[0] is None:
            if tuple(t._version for t in self.inputs) != self.versions:
                raise RuntimeError("recompute_elementwise: a tensor needed to remake an activation was modified in "
                                   "place after the forward (set training.recompute_elementwise=false)")
            with torch.no_grad():
                self.made[0] = self.make()
            assert self.made[0].shape == self.shape, (self.made[0].shape, self.shape)
        return self.made[0]

    def view_of(self, t: torch.Tensor) -> "_Recipe":
        out = _Recipe.__new__(_Recipe)
        out.make, out.inputs, out.versions, out.shape, out.made = (self.make, self.inputs, self.versions, self.shape,
                                                                   self.made)
        out.size, out.stride, out.offset = t.size(), t.stride(), t.storage_offset()
        return out


def _remember(out: torch.Tensor, make: Callable[[], torch.Tensor], *inputs: torch.Tensor) -> _Recipe | None:
    """Inside a training forward: `out` can be made again by `make()` from `inputs` (kept anyway)."""
    if not _active or not out.is_contiguous():
        return None
    recipe = _Recipe(make, inputs, out.shape)
    _active[-1][out.untyped_storage().data_ptr()] = (weakref.ref(out), recipe)
    return recipe


def _pack(t: torch.Tensor) -> Any:
    entry = _active[-1].get(t.untyped_storage().data_ptr()) if _active and t.untyped_storage().nbytes() else None
    if entry is None:
        return t
    ref, recipe = entry
    original = ref()
    # a live tensor with this storage address is the one remembered (a freed one's address may be reused)
    if original is None or original.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
        return t
    return recipe.view_of(t)


def _unpack(packed: Any) -> torch.Tensor:
    if not isinstance(packed, _Recipe):
        return packed
    return packed.whole().as_strided(packed.size, packed.stride, packed.offset)


def _rms_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers' Llama/Qwen RMSNorm, op for op, naming what can be made again."""
    input_dtype = hidden_states.dtype
    h = hidden_states.to(torch.float32)
    rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    normed = h * rstd  # each named before the op that keeps it runs: the hook looks it up then
    _remember(normed, lambda: h * rstd, h, rstd)
    cast = normed.to(input_dtype)
    if cast is not normed:
        _remember(cast, lambda: (h * rstd).to(input_dtype), h, rstd)
    out = self.weight * cast
    _remember(out, lambda: self.weight * (h * rstd).to(input_dtype), h, rstd, self.weight)
    return out


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """down(act(gate(x)) * up(x)), op for op, naming what can be made again."""
    gate = self.gate_proj(x)
    act = self.act_fn(gate)
    remade = _remember(act, lambda: self.act_fn(gate), gate)
    up = self.up_proj(x)
    product = act * up
    # the backward needs the product first (down_proj), then act(gate) (the product's own backward): the
    # activation is computed once, for both
    _remember(product, lambda: (remade.whole() if remade else self.act_fn(gate)) * up, gate, up)
    return self.down_proj(product)


_sdpa: list[Callable] = []  # transformers' own "sdpa" attention function, once `_install_attention` wrapped it


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' "sdpa" attention, except in a CPU training forward through a hooked decoder layer
    with a mask (packed rows always have one). There transformers' call makes torch's kernel keep two
    things per layer that one copy would do: the key/value heads repeated to every query head (the
    kernel takes the groups as they are, `enable_gqa`, which transformers only asks without a mask;
    SmolLM2: 2 x 384 of the ~7,000 floats a layer keeps per token), and its own float copy of the
    boolean mask (tokens x tokens per row, in every layer): the float mask is made once per mask here,
    as the kernel makes it (0 where attended, -inf elsewhere), and shared by the layers."""
    if (_active and attention_mask is not None and query.device.type == "cpu" and query.shape[2] > 1
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions")):
        mask = attention_mask
        if mask.dtype == torch.bool:  # kept on the mask: made once, freed with it
            made = mask.__dict__.setdefault("_tunelab_float", {})
            # in the dtype the kernel will run in: autocast would make its own copy of any other
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
            if dtype not in made:
                made[dtype] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
            mask = made[dtype]
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                               scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
        return out.transpose(1, 2).contiguous(), None
    return _sdpa[0](module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                    **kwargs)


def _gqa_kernel_agrees() -> bool:
    """Whether this torch's CPU kernel gives, with grouped heads and a mask, the output of the repeated
    heads bit for bit (torch 2.13: yes; the key/value gradients then differ by rounding only, being summed
    over the group inside the kernel instead of by autograd)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 12, 8, generator=g) for n in (4, 2, 2))
    mask = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    try:
        grouped = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        repeated = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=mask)
    except Exception:  # noqa: BLE001  (an older kernel without enable_gqa)
        return False
    return torch.equal(grouped, repeated)


def _install_attention(model: nn.Module) -> bool:
    """Route the process's "sdpa" attention through `_attention` (once) if `model` uses it; only a CPU
    training forward inside a hooked layer sees a difference."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    if not _sdpa:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if not _gqa_kernel_agrees():
            return False
        _sdpa.append(ALL_ATTENTION_FUNCTIONS["sdpa"])
        ALL_ATTENTION_FUNCTIONS["sdpa"] = _attention  # the shared instance's own mapping, read at every call
    return True


def _same_output(module: nn.Module, patched: Callable, width: int) -> bool:
    """Whether the patched forward gives the module's own output, bit for bit, on a random input (in eval
    mode, the global random state untouched: a LoRA dropout must not shift the run's masks)."""
    p = next(module.parameters())
    x = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return torch.equal(module.forward(x), patched(x))
    except Exception:  # noqa: BLE001  (a layout this patch does not know: leave the module alone)
        return False
    finally:
        module.train(was_training)


def _candidates(model: nn.Module) -> list[tuple[nn.Module, Callable, int]]:
    out = []
    for m in model.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm") and hasattr(m, "variance_epsilon") and getattr(m, "weight", None) is not None \
                and m.weight.dim() == 1:
            out.append((m, _rms_forward, m.weight.shape[0]))
        elif name.endswith("MLP") and all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            width = getattr(m, "hidden_size", None) or getattr(m.gate_proj, "in_features", None)
            if width:
                out.append((m, _mlp_forward, int(width)))
    return out


_classes: dict[tuple[type, Any], type] = {}


def _patched_class(cls: type, forward: Callable) -> type:
    """`cls` with the patched forward: a subclass of the same name, so isinstance and name-based lookups
    hold. A class, not an instance attribute: transformers re-"kernelizes" on every train()/eval() when the
    `kernels` package is installed, which drops an instance's own forward."""
    if getattr(cls, "_tunelab_recompute", False):
        return cls
    key = (cls, forward)
    if key not in _classes:
        _classes[key] = type(cls.__name__, (cls,), {"forward": forward, "_tunelab_recompute": True,
                                                    "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _classes[key]


def _enter(module: nn.Module, args: Any) -> None:
    if torch.is_grad_enabled():
        recipes: dict[int, Any] = {}
        hooks = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)
        hooks.__enter__()
        _active.append(recipes)
        module._tunelab_recompute = hooks


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    hooks = module.__dict__.pop("_tunelab_recompute", None)
    if hooks is not None:
        _active.pop()
        hooks.__exit__(None, None, None)


def recompute_elementwise(model: nn.Module) -> int:
    """Patch the model's RMSNorm and gated-MLP modules (where they reproduce the module bit for bit) and
    hook its decoder layers; returns how many modules were patched."""
    from .heap import decoder_layers

    patched = 0
    for module, forward, width in _candidates(model):
        if _same_output(module, types.MethodType(forward, module), width):
            module.__class__ = _patched_class(type(module), forward)
            patched += 1
    if patched:
        _install_attention(model)
        for layer in decoder_layers(model):
            layer.register_forward_pre_hook(_enter)
            layer.register_forward_hook(_exit, always_call=True)
    return patched

"""`estimate(...)`: peak memory and step time of one tunelab training step, from the model's shape.

    est = estimate(AutoConfig.from_pretrained(path), method="lora", optimizer="adamw", batch_size=4,
                   seq_len=1024, device="H100")
    est.peak_bytes, est.components, est.step_time_s

The peak is the largest of the moments a step goes through (live bytes at each):
  forward            weights + optimizer + saved activations + one chunk of logits (+ autocast's
                     cached bf16 weight copies, which with checkpointing all exist until it ends)
  loss backward      weights + optimizer + all saved activations + the loss's logits at their largest
                     (one chunk: its log-softmax, the gradient of that and of the logits) + the head's
                     gradient when the head trains
  decoder backward   weights + optimizer + the larger of (activations not yet freed, gradients
                     already made) + with checkpointing one recomputed layer; at its end a tied
                     embedding's gradient exists twice for a moment (embedding + head, then summed)
  optimizer step     weights + gradients + optimizer state + its scratch (the first step allocates the
                     state while every gradient is alive)
  rollout (grpo)     weights + optimizer state + generation's key/value cache for the rows generated together
  load (from scratch for another tokenizer)   the model as first built: at the named model's vocabulary,
                     with a head of its own until the weights are tied, before the embedding is resized
The dpo and grpo stages score tokens through models/logps.py: the training loss's fused head without autocast,
log-softmax, gather and entropy with it (`logps`; see memory.head_logits_bytes), on padded rows with a mask.
With gradient accumulation every gradient is alive in the later micro-batches' forward and backward.
On CPU the measured number is the process's resident memory, which also holds what the allocator
keeps after freeing and what the libraries load after the model (see `overhead.py`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from . import memory as M
from .devices import DeviceProfile, resolve_device
from .overhead import LOAD_FRAMEWORK, cpu_allocator_slack, framework_overhead, glibc_note
from .shape import ModelShape, resolve_targets

METHODS = ("full", "freeze", "lora", "lora_plus", "dora", "qlora")
OPTIMIZERS = ("adamw", "sgd", "adamw_8bit", "adafactor")
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
ATTENTION = ("sdpa", "eager", "flash_attention_2")


@dataclass
class Estimate:
    peak_bytes: float
    components: dict[str, float]  # what is alive at the peak, bytes; sums to peak_bytes
    peak_phase: str
    phases: dict[str, float]  # live bytes of each moment of the step (before the CPU terms)
    step_time_s: float
    flops_per_step: float
    device: str
    device_flops: float  # achievable FLOP/s assumed for the device
    tokens_per_step: int
    supervised_tokens_per_step: int
    total_params: int
    trainable_params: int
    activations_per_layer_bytes: float  # saved per decoder layer for the micro-batch, no checkpointing
    inputs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_mb"] = round(self.peak_mb, 1)
        d["components_mb"] = {k: round(v / 2**20, 1) for k, v in self.components.items()}
        return d


def _check(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown '{value}'; known: {', '.join(allowed)}")


def _packed_bytes(shape: ModelShape, total: int, dev: DeviceProfile, dtype: str | None) -> float:
    """Bytes of the weights models/decode_step.py packs for oneDNN on a CPU: in bfloat16 the decoder's linear
    weights and the head (all but an untied embedding), in float32 the head (its `_packs`); 0 where it packs
    none (no dtype, a GPU, other families, over 1/8 of the machine's memory)."""
    from ..models.decode_step import FAMILIES

    if dtype == "bfloat16":
        size = M.BF16 * (total - (0 if shape.tied else shape.vocab * shape.hidden))
    elif dtype == "float32":
        size = M.FP32 * shape.vocab * shape.hidden
    else:
        size = 0
    return float(size) if dev.kind == "cpu" and shape.model_type in FAMILIES and 8 * size <= dev.memory_bytes else 0.0


def estimate(model_config: Any, *, method: str = "lora", optimizer: str = "adamw", batch_size: int = 4,
             seq_len: int = 1024, supervised_fraction: float = 1.0, grad_checkpointing: bool = False,
             precision: str = "auto", device: str | DeviceProfile = "cpu", lora_r: int = 16,
             lora_dropout: float = 0.05, target_modules: tuple[str, ...] | list[str] = ("all-linear",),
             quant_type: str = "nf4", double_quant: bool = True, momentum: float = 0.9,
             freeze_trainable_layers: int = 2, attention: str = "sdpa", weights_dtype: str = "auto",
             packing: bool = True, vocab_size: int | None = None, grad_accum: int = 1, nproc: int = 1,
             strategy: str = "ddp", checkpoint_mapped: bool = False, trim_heap: bool = False,
             cpu_allocator: str = "auto", recompute_elementwise: bool = True, logps: bool = False,
             padded: bool = False, build_vocab: int | None = None, rollout_rows: int = 0, rollout_len: int = 0,
             reference_copy: bool = False, rollout_copy_bytes: int = 0, rollout_packs: str | None = None) -> Estimate:
    """Predict the peak memory (bytes) and time of one optimizer step with micro-batches of
    `batch_size` rows x `seq_len` tokens, a `supervised_fraction` of them in the loss. With
    `grad_accum` > 1 the gradients of earlier micro-batches are alive during the later ones.

    `model_config` is a transformers config (or a ModelShape); `device` a profile name (`H100`, `cpu`,
    ...) or a DeviceProfile. Memory is per process; with `nproc` > 1 the `strategy` shards: `ddp`
    nothing (plus DDP's gradient buckets), `zero2` gradients and optimizer state, `fsdp`/`zero3` also
    the weights (plus one gathered layer). `checkpoint_mapped`: the weights are views of the
    checkpoint file (stored in the dtype they are loaded in), which matters on CPU for QLoRA.
    `trim_heap`: `training.trim_heap` (models/heap.py), counted where it applies (CPU, glibc < 2.38, torch's
    allocator). `cpu_allocator`: `training.cpu_allocator` (models/cpu_alloc.py), counted where it will be used.
    `recompute_elementwise`: `training.recompute_elementwise` (models/recompute.py; no effect with checkpointing).
    The other stages (builder.py sets these from `stage`): `logps`, tokens scored by models/logps.py (dpo,
    grpo) instead of the fused loss; `padded`, rows padded to the widest with a mask (counted like packed
    rows' mask); `rollout_rows` x `rollout_len`, the rows grpo generates together (their key/value cache);
    `reference_copy`, grpo's frozen copy of the weights (full/freeze with a KL term); `rollout_copy_bytes`,
    grpo's rollout copy (objective.rollout_dtype) at that many bytes a weight; `rollout_packs`, the dtype
    (bfloat16, float32) of the model grpo samples from through models/decode_step.py, which on a CPU keeps
    oneDNN-packed copies of its weights (bf16: every linear weight; fp32: the head; Llama-family models within
    its 1/8 rule), counted with the rollout copy. `build_vocab`: a model
    built from scratch is first made at this vocabulary (the named model's), then resized to `vocab_size`."""
    _check("method.name", method, METHODS)
    _check("optimizer.name", optimizer, OPTIMIZERS)
    _check("--strategy", strategy, STRATEGIES)
    _check("model.attn_implementation", attention, ATTENTION)
    if batch_size < 1 or seq_len < 1 or nproc < 1:
        raise ConfigError(f"training.batch_size ({batch_size}), data.max_length ({seq_len}) and --nproc ({nproc}) "
                          "must be >= 1")
    if not 0.0 <= supervised_fraction <= 1.0:
        raise ConfigError(f"supervised fraction must be in [0, 1], got {supervised_fraction}")
    shape = model_config if isinstance(model_config, ModelShape) else ModelShape.from_config(model_config)
    if vocab_size and vocab_size != shape.vocab:
        shape = ModelShape(**{**asdict(shape), "vocab": vocab_size})
    dev = device if isinstance(device, DeviceProfile) else resolve_device(device)
    gpu = dev.kind == "cuda"
    if precision == "auto":
        precision = "bf16" if gpu else "fp32"
    if precision == "fp16" and not gpu:
        raise ConfigError("training.precision: fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
    half = precision in ("bf16", "fp16")
    wbytes = M.FP32 if weights_dtype in ("auto", "float32") else M.BF16
    notes: list[str] = []

    lora = method in ("lora", "lora_plus", "dora", "qlora")
    quantized = method == "qlora"
    adapted = resolve_targets(shape, target_modules) if lora else []
    L, H, V = shape.layers, shape.hidden, shape.vocab
    n_tok = batch_size * seq_len
    n_sup = min(round(supervised_fraction * n_tok), n_tok - batch_size)  # a row's first token is never a target

    # --- parameters: weights, what trains, gradients, optimizer state -------------------------------
    total = shape.total_params()
    layer_shapes = shape.layer_tensors()
    if lora:
        lora_shapes = [s for _, d_in, d_out in adapted for s in ((lora_r, d_in), (d_out, lora_r))]
        if method == "dora":
            lora_shapes += [(d_out,) for _, _, d_out in adapted]
        trained_shapes = lora_shapes * L
        adapters = M.FP32 * sum(_numel(s) for s in trained_shapes)  # peft keeps adapters in fp32
        weights = wbytes * total
        if quantized:
            lin = shape.linear_params()
            weights = M.quantized_bytes(lin, double_quant=double_quant) + M.FP32 * (total - lin)
            if not gpu and checkpoint_mapped:
                # transformers maps the checkpoint file and quantizes from it; the unquantized tensors
                # (embedding, norms) stay views of that mapping, so every page it read stays resident
                weights = M.quantized_bytes(lin, double_quant=double_quant) + wbytes * total
                notes.append("qlora on CPU: the checkpoint file stays mapped, and resident once read")
        head_trains = False
    elif method == "freeze":
        k = min(freeze_trainable_layers, L)
        trained_shapes = layer_shapes * k
        weights, adapters, head_trains = wbytes * total, 0.0, False
        notes.append("freeze: modules named in freeze_trainable_modules are not counted as trained")
    else:
        trained_shapes = layer_shapes * L + shape.other_tensors()
        weights, adapters, head_trains = wbytes * total, 0.0, True
    trainable = sum(_numel(s) for s in trained_shapes)
    grad_bytes = (M.FP32 if lora else wbytes) * trainable
    opt_bytes = M.optimizer_bytes(optimizer, trained_shapes, momentum=momentum)
    scratch = M.optimizer_step_scratch(optimizer, trained_shapes, cpu=not gpu)
    head_grad = M.FP32 * V * H if head_trains else 0.0

    # --- activations --------------------------------------------------------------------------------
    # packed rows through SDPA have a mask, and then transformers hands torch's kernel the key/value heads
    # repeated to every query head and the kernel keeps its own float copy of the boolean mask, in every
    # layer; a CPU training forward with recompute_elementwise shares one float mask and passes the groups
    # as they are (models/recompute.py `_attention`; tests/estimate checks both against the saved tensors)
    masked = (packing or padded) and attention == "sdpa"
    shared_attention = masked and not gpu and recompute_elementwise and not grad_checkpointing
    act_size = M.BF16 if half else M.FP32
    mask_copy = batch_size * seq_len * seq_len * act_size if masked else 0
    attn_extra = 0 if shared_attention or not masked else (
        2 * (shape.q_dim - shape.kv_dim) * act_size * n_tok + mask_copy)

    def per_layer(remade: bool) -> float:
        return M.layer_activations(shape, trained=not lora, adapted=adapted, r=lora_r, dropout=lora_dropout > 0,
                                   bf16=half, attention=attention, seq_len=seq_len,
                                   recompute=remade) * n_tok + copies + attn_extra

    copies = M.weight_copies(shape, adapted=adapted, r=lora_r, quantized=quantized) if half else 0
    layer_full = per_layer(recompute_elementwise and not grad_checkpointing)
    layer_allocated = per_layer(False)  # what the forward allocates (remade tensors are made, then freed)
    # freeze: layers below the first trained one need no gradient, so autograd records nothing there
    grad_layers = min(freeze_trainable_layers, L) if method == "freeze" else L
    if grad_checkpointing:
        # each layer keeps its input; the backward recomputes one layer at a time. Autocast's weight
        # copies stay cached until the forward ends, so they all exist once, at the end of the forward
        decoder_acts, recompute = grad_layers * M.FP32 * H * n_tok, layer_full
        forward_copies = grad_layers * copies
    else:
        decoder_acts, recompute, forward_copies = grad_layers * layer_full, 0.0, 0.0
    # rotary cos/sin, the final norm, the supervised hidden states gathered for the head
    fixed = M.FP32 * (2 * shape.head_dim + 2 * H) * n_tok + M.FP32 * H * n_sup
    if (packing or padded) and attention != "flash_attention_2":
        fixed += batch_size * seq_len * seq_len  # the boolean mask: packed rows' block-diagonal, or padding
    if shared_attention:
        fixed += mask_copy  # its float copy, shared by the layers
    acts = decoder_acts + fixed

    # --- the loss: one chunk of logits ------------------------------------------------------------
    rows = min(n_sup, M.logits_chunk_rows(V))
    chunked = n_sup > rows
    # without autocast the head and cross-entropy are fused (models/loss.py `_FusedHead`): the logits are kept
    # and become their own gradient; their log-sum-exp is taken M.LSE_ROWS at a time in the forward. With
    # autocast: log-softmax (saved), its gradient and the logits' gradient in fp32, the bf16 logits and a
    # bf16 copy of the head's weight
    # dpo and grpo (models/logps.py's per-token log-probabilities) take the same fused function without
    # autocast; with it, log-softmax and the entropy's temporaries (memory.head_logits_bytes)
    fused = not half
    forward_logits, logits = M.head_logits_bytes(rows, V, H, path="fused" if fused else "logps" if logps else "ce",
                                                 bf16=half, chunked=chunked)
    # a trained head's gradient from a later chunk or micro-batch: added into the one that exists (fused, one
    # process: `_grad_in_place`), else made whole and then added, so two exist for a moment
    head_grad_twice = chunked and not (fused and nproc == 1)

    # --- several processes ----------------------------------------------------------------------------
    shard_w = shard_g = shard_o = 1
    extra_dist = 0.0
    if nproc > 1:
        if strategy == "ddp":
            extra_dist = grad_bytes  # DDP's gradient buckets: a second copy of the gradients
        elif strategy == "zero2":
            shard_g = shard_o = nproc
        else:  # fsdp / zero3: weights too, plus the gathered parameters of the layer being computed
            shard_w = shard_g = shard_o = nproc
            extra_dist = 2 * wbytes * shape.layer_params()  # this layer and the prefetched next
        notes.append(f"{nproc} processes, {strategy}: per-process memory")
    weights /= shard_w
    adapters /= shard_w
    grad_bytes /= shard_g
    head_grad /= shard_g
    opt_bytes /= shard_o

    # --- the moments of a step: what is alive at each ----------------------------------------------
    tied_emb_grad = M.FP32 * V * H / shard_g if (head_trains and shape.tied) else 0.0
    dec_grads = grad_bytes - head_grad
    accum = grad_accum > 1  # a later micro-batch runs while every gradient of the earlier ones is alive
    if accum or decoder_acts + recompute >= dec_grads + tied_emb_grad:
        mid_acts, mid_grads = fixed + decoder_acts + recompute, (grad_bytes + tied_emb_grad if accum else head_grad)
    else:  # the gradients made outgrow the activations freed
        mid_acts, mid_grads = fixed, grad_bytes + tied_emb_grad
    held = {"weights": weights, "adapters": adapters, "distributed": extra_dist, "optimizer": opt_bytes,
            "reference": weights if reference_copy else 0.0,
            "rollout copy": float(rollout_copy_bytes * total + _packed_bytes(shape, total, dev, rollout_packs))}
    moments = {
        "forward": {**held, "gradients": grad_bytes if accum else 0.0, "activations": acts + forward_copies,
                    "logits": forward_logits},
        "loss backward": {**held, "gradients": (grad_bytes if accum else head_grad)
                          + (head_grad if head_grad_twice else 0), "activations": acts, "logits": logits},
        "decoder backward": {**held, "gradients": mid_grads, "activations": mid_acts},
        "optimizer step": {**held, "gradients": grad_bytes, "optimizer": opt_bytes + scratch},
    }
    if rollout_rows:  # grpo: before the step trains, its prompts are sampled with a key/value cache
        moments["rollout"] = {**held, "kv cache": M.kv_cache_bytes(shape, rows=rollout_rows, tokens=rollout_len,
                                                                  bf16=half)}
    phases = {k: sum(v.values()) for k, v in moments.items()}
    phase = max(phases, key=phases.get)
    components = {k: moments[phase].get(k, 0.0) for k in
                  ("weights", "adapters", "gradients", "optimizer", "activations", "logits", "distributed")}
    components.update({k: moments[phase][k] for k in ("reference", "rollout copy", "kv cache")
                       if moments[phase].get(k)})
    if not gpu:  # resident memory also holds libraries loaded after the baseline and allocator slack
        components["framework"] = framework_overhead(method=method, optimizer=optimizer)
        from ..models.cpu_alloc import expected
        from ..models.heap import EVERY, applies

        aligned = expected(cpu_allocator, "cpu")
        trimmed = EVERY if trim_heap and applies("cpu") and not aligned else 0
        components["allocator"] = cpu_allocator_slack(volume=grad_layers * layer_allocated,
                                                      gradients=0.0 if accum else dec_grads, trained=not lora,
                                                      checkpointing=grad_checkpointing, layers=grad_layers,
                                                      trimmed_every=trimmed, phase=phase, malloc_aligned=aligned)
        if fused and not chunked and phase != "forward":
            # the fused loss's log-sum-exp temporary, freed after the forward: the heap keeps its pages (chunked,
            # the backward's recomputation takes it again, counted in `logits`)
            components["allocator"] += min(rows, M.LSE_ROWS) * V * M.FP32
        note = glibc_note()
        if note:
            notes.append(note)
    if build_vocab and build_vocab != V:
        # from scratch for another tokenizer: built whole in every process at the named model's vocabulary,
        # with a head of its own (made before the weights are tied), then resized to the tokenizer's
        # (models/load.py load_model, fit_vocabulary): a 151,936-row Qwen3 embedding twice for an 8k model.
        # On CPU nothing has been freed yet, and the model's code is being imported (LOAD_FRAMEWORK)
        built = ModelShape(**{**asdict(shape), "vocab": build_vocab, "tied": False}).total_params()
        phases["load"] = wbytes * built
        load = {"weights": wbytes * built, **({} if gpu else {"framework": LOAD_FRAMEWORK})}
        if sum(load.values()) > sum(components.values()):
            phase, components = "load", {k: load.get(k, 0.0) for k in components}
    peak = sum(components.values())

    # --- time: FLOPs over the device's achievable throughput --------------------------------------
    flops = step_flops(shape, n_tok=n_tok, n_sup=n_sup, seq_len=seq_len, lora=lora, adapted=adapted, r=lora_r,
                       grad_checkpointing=grad_checkpointing, chunked=chunked)
    device_flops = dev.achievable_flops(half)
    if quantized:
        notes.append("qlora: the time leaves out dequantizing the 4-bit weights (slow on CPU)")
    return Estimate(
        peak_bytes=peak, components=components, peak_phase=phase, phases=phases,
        step_time_s=flops / device_flops, flops_per_step=flops, device=dev.name, device_flops=device_flops,
        tokens_per_step=n_tok, supervised_tokens_per_step=n_sup, total_params=total,
        trainable_params=trainable,
        activations_per_layer_bytes=layer_full,
        inputs={"method": method, "optimizer": optimizer, "batch_size": batch_size, "seq_len": seq_len,
                "supervised_fraction": supervised_fraction, "grad_checkpointing": grad_checkpointing,
                "precision": precision, "lora_r": lora_r if lora else None, "nproc": nproc, "strategy": strategy,
                "attention": attention, "model_type": shape.model_type},
        notes=notes)


def step_flops(shape: ModelShape, *, n_tok: int, n_sup: int, seq_len: int, lora: bool,
               adapted: list[tuple[str, int, int]], r: int, grad_checkpointing: bool, chunked: bool) -> float:
    """Multiply-adds x 2 of one micro-batch's forward and backward (the usual 2/4 per weight and token:
    a backward computes the input's gradient and, for trained weights, the weight's)."""
    L = shape.layers
    linear = 2 * n_tok * L * sum(d_in * d_out for _, d_in, d_out, _ in shape.linears())
    adapter = 2 * n_tok * L * sum(r * (d_in + d_out) for _, d_in, d_out in adapted)
    attn = 2 * 2 * n_tok * seq_len * shape.q_dim * L / 2  # QK^T and PV, causal: half the pairs
    head = 2 * n_sup * shape.vocab * shape.hidden
    forward = linear + adapter + attn + head
    backward = (linear if lora else 2 * linear) + 2 * adapter + 2 * attn + (head if lora else 2 * head)
    recompute = (linear + adapter + attn if grad_checkpointing else 0) + (head if chunked else 0)
    return forward + backward + recompute


def _numel(s: tuple[int, ...]) -> int:
    n = 1
    for d in s:
        n *= d
    return n

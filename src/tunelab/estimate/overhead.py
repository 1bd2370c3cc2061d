"""What a CPU process holds beyond live tensors: libraries loaded after the model, and allocator slack.

On CPU, tunelab's measured peak is resident memory (RSS) minus the process's resident memory just
before the model loads (torch, transformers, the tokenizer and the data are in that baseline). Two
things then count that a GPU's `max_memory_allocated` would not:

1. Libraries imported after the baseline: peft (LoRA family) pulls in bitsandbytes; `adamw_8bit`
   imports bitsandbytes; QLoRA has imported it before (its capability check), so it does not count.
   Constants measured as RSS growth on tiny-qwen3 runs, where every tensor is small.

2. Memory the allocator keeps. torch allocates CPU tensors with 64-byte-aligned `posix_memalign`;
   glibc before 2.38 cannot give a freed block back to an aligned request of the same size, and its
   heap returns memory to the system only from the top. So the memory a forward pass frees between
   the tensors it keeps for the backward (its temporaries) is mostly not reused: the heap grows past
   the live tensors and stays there (it settles by the second step). Measured on SmolLM2-135M with
   glibc 2.36 (bench/estimate.py), as a share of the activation volume the forward allocates (the
   activations it would save without checkpointing, `volume`):
     frozen base (LoRA, QLoRA)   K_FROZEN of it without checkpointing, K_FROZEN_GC with
     trained base (full)         the freed space is taken by the gradients, but the gradients and
                                 the activations never share it: min(volume, decoder gradients)
   Tensors of 32 MB or more bypass the heap (glibc maps and unmaps them), which is why the logits
   chunks and the vocabulary-sized embedding gradient count only while alive.
   With `training.trim_heap` (models/heap.py) the free pages are handed back after every EVERY-th
   decoder layer, so only EVERY / layers of the frozen-base term is resident at the peak.
"""
from __future__ import annotations

MB = 2**20
FRAMEWORK = 75 * MB  # after the baseline: the loaded model's Python objects, autograd, thread pools
PEFT = 80 * MB  # peft and the bitsandbytes it imports
BITSANDBYTES = 111 * MB
# adamw_8bit imports bitsandbytes after the baseline; less than the import alone since the model's load has
# brought some of what it pulls in. Fitted on the 2 full adamw_8bit rows of bench/estimate.py (2026-12-07:
# tiny-qwen3 45 MB, SmolLM2 74 MB once the rest of this module's terms are subtracted)
ADAMW_8BIT = 60 * MB
K_FROZEN = 0.85
K_FROZEN_GC = 0.7
# trained base, heap trimmed, peak in a backward without checkpointing: fitted on the 3 such SmolLM2 rows
# of bench/estimate.py (2026-12-07; measured 166-221 MB below the untrimmed slack of 405 MB)
K_TRAINED_TRIMMED = 0.5

# tunelab's malloc-aligned allocator (models/cpu_alloc.py, the default), as a share of the same volume:
# fitted on the SmolLM2 rows of bench/estimate.py (2026-12-07): frozen base 0.06 in all 6 rows (0.17 for
# QLoRA without checkpointing).
K_ALIGNED_FROZEN, K_ALIGNED_FROZEN_GC = 0.06, 0.06
# A trained base (full, freeze) holds TRAINED_WORKSPACE whatever its size, plus a smaller share. Probed with
# mallinfo2 on tiny-qwen3 (2026-12-07, third session): the first step leaves ~41 MB of heap in use that is
# no tensor (MKL's buffer cache for the head's and embedding's gradient GEMMs: it goes with
# MKL_DISABLE_FAST_MM=1, though the heap keeps the pages); the 5 tiny-qwen3 full rows whose logits are
# chunked then measure 40 MB over live bytes + FRAMEWORK whatever their activations (the unchunked one 55:
# + the fused loss's log-sum-exp temporary, which core.py counts). The share: fitted on the 4 SmolLM2 full
# rows (122-131 MB of slack at a volume of 652 MB; 157 at 1,458 MB with checkpointing). The from-scratch 8k
# row measures 198 MB (65 over this model, -6% of its peak).
TRAINED_WORKSPACE = 40 * MB
K_ALIGNED_TRAINED, K_ALIGNED_TRAINED_GC = 0.12, 0.075

# at the load of a model built from scratch (core.py's `load` moment, before any training tensor exists): the
# model's transformers module is being imported and its objects made, and nothing freed is there to reuse.
# Measured, not fitted: importing transformers' Qwen3 modeling module after tunelab's tokenizer and data grows
# resident memory by 117 MB (2026-12-07, this machine); the from-scratch 8k row of bench/estimate.py peaks at
# 114 MB over its live bytes while loading (tunelab's allocator's count), a probe of the same load at 124
LOAD_FRAMEWORK = 117 * MB

LORA_FAMILY = ("lora", "lora_plus", "dora", "qlora")


def framework_overhead(*, method: str, optimizer: str) -> float:
    total = FRAMEWORK
    if method in LORA_FAMILY:
        total += PEFT
    if method == "qlora":
        total -= BITSANDBYTES  # already imported before the model loaded (methods.check_supported)
    elif optimizer == "adamw_8bit" and method not in LORA_FAMILY:
        total += ADAMW_8BIT
    return total


def cpu_allocator_slack(*, volume: float, gradients: float, trained: bool, checkpointing: bool,
                        trimmed_every: int = 0, layers: int = 1, phase: str = "loss backward",
                        malloc_aligned: bool = False) -> float:
    """Bytes the heap holds beyond the live tensors at the peak `phase` (see the module docstring).

    `trimmed_every` > 0 (`training.trim_heap`, models/heap.py): the free pages are handed back after every
    that many decoder layers, so a frozen base's holes are resident for those layers only; a trained
    base's, in a backward without checkpointing, half of them (K_TRAINED_TRIMMED).
    `malloc_aligned` (`training.cpu_allocator` auto, models/cpu_alloc.py): freed blocks are reused, so
    only what a heap keeps in any case remains (K_ALIGNED_*, and TRAINED_WORKSPACE for a trained base)."""
    if malloc_aligned:
        if not trained:
            return (K_ALIGNED_FROZEN_GC if checkpointing else K_ALIGNED_FROZEN) * volume
        return TRAINED_WORKSPACE + (K_ALIGNED_TRAINED_GC if checkpointing else K_ALIGNED_TRAINED) * volume
    if trained:
        slack = min(volume, gradients)
        if trimmed_every and not checkpointing and phase != "optimizer step":
            slack *= K_TRAINED_TRIMMED
        return slack
    slack = (K_FROZEN_GC if checkpointing else K_FROZEN) * volume
    return slack * min(1.0, trimmed_every / max(layers, 1)) if trimmed_every else slack


def glibc_note() -> str | None:
    """A caveat when this C library is not the kind the slack was measured with (glibc < 2.38)."""
    import platform

    lib, version = platform.libc_ver()
    try:
        newer = lib == "glibc" and tuple(int(x) for x in version.split(".")[:2]) >= (2, 38)
    except ValueError:
        newer = False
    if lib != "glibc" or newer:
        return (f"the CPU allocator term was measured with glibc 2.36; this process uses {lib or 'another libc'} "
                f"{version}, whose heap may keep less")
    return None

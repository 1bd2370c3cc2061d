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
K_FROZEN = 0.85
K_FROZEN_GC = 0.7
# trained base, heap trimmed, peak in a backward without checkpointing: fitted on the 3 such SmolLM2 rows
# of bench/estimate.py (2026-12-07; measured 166-221 MB below the untrimmed slack of 405 MB)
K_TRAINED_TRIMMED = 0.5

# tunelab's malloc-aligned allocator (models/cpu_alloc.py, the default), as a share of the same volume:
# fitted on the SmolLM2 rows of bench/estimate.py (2026-12-07): frozen base 0.06 in all 6 rows (0.17 for
# QLoRA without checkpointing); trained base 0.14-0.33 (4 rows), 0.33 with checkpointing (1 row)
K_ALIGNED_FROZEN, K_ALIGNED_FROZEN_GC = 0.06, 0.06
K_ALIGNED_TRAINED, K_ALIGNED_TRAINED_GC = 0.25, 0.33

LORA_FAMILY = ("lora", "lora_plus", "dora", "qlora")


def framework_overhead(*, method: str, optimizer: str) -> float:
    total = FRAMEWORK
    if method in LORA_FAMILY:
        total += PEFT
    if method == "qlora":
        total -= BITSANDBYTES  # already imported before the model loaded (methods.check_supported)
    elif optimizer == "adamw_8bit" and method not in LORA_FAMILY:
        total += BITSANDBYTES
    return total


def cpu_allocator_slack(*, volume: float, gradients: float, trained: bool, checkpointing: bool,
                        trimmed_every: int = 0, layers: int = 1, phase: str = "loss backward",
                        malloc_aligned: bool = False) -> float:
    """Bytes the heap holds beyond the live tensors at the peak `phase` (see the module docstring).

    `trimmed_every` > 0 (`training.trim_heap`, models/heap.py): the free pages are handed back after every
    that many decoder layers, so a frozen base's holes are resident for those layers only; a trained
    base's, in a backward without checkpointing, half of them (K_TRAINED_TRIMMED).
    `malloc_aligned` (`training.cpu_allocator` auto, models/cpu_alloc.py): freed blocks are reused, so
    only what a heap keeps in any case remains (K_ALIGNED_*)."""
    if malloc_aligned:
        if checkpointing:
            return (K_ALIGNED_TRAINED_GC if trained else K_ALIGNED_FROZEN_GC) * volume
        return (K_ALIGNED_TRAINED if trained else K_ALIGNED_FROZEN) * volume
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

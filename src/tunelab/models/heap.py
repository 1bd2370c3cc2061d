"""Give the CPU heap's holes back to the system during the forward pass (`training.trim_heap`).

    handles = trim_heap_during_forward(model, every=EVERY)   # [] where it does not apply

Why, measured (BENCHMARKS.md, "Training"; estimate/overhead.py): torch allocates CPU tensors with
64-byte-aligned `posix_memalign`, and glibc before 2.38 cannot give a freed block back to an aligned
request of the same size. So the temporaries a forward pass frees between the activations it keeps for
the backward are holes the heap does not reuse, and resident memory grows past the live tensors by
0.85x the activation volume (LoRA, SmolLM2-135M): a quarter of a CPU run's peak.

`malloc_trim(0)` hands every whole free page of the heap back to the kernel (madvise DONTNEED, also in
the middle of the heap), so calling it after every few decoder layers keeps those holes from being
resident all at once; a hole that is reused later is simply faulted back in. Each call walks the heap
(well under a millisecond here) and the pages it releases cost a page fault when reused, which is why
it runs after every `EVERY`-th layer rather than after each. Measured (bench/train.py, SmolLM2-135M, 2
idle cores of a VM, where a page fault is dear): LoRA peak 0.75x at 0.82x the speed, full fine-tuning
0.96x at 0.91x; hence off by default. Hand-written because no library exposes it: it is glibc's own
call, through ctypes.

Superseded by tunelab's own CPU allocator (`training.cpu_allocator: auto`, the default; models/cpu_alloc.py),
which leaves no such holes without the page faults: the recipe installs these hooks only with
`training.cpu_allocator: torch`. Applies only on CPU (a GPU's activations are not on this heap) with
glibc older than 2.38 (newer glibc reuses the holes itself; other C libraries have no malloc_trim), and only in forwards that build a graph
(no_grad forwards keep nothing for a backward, and generation runs one forward per token).
"""
from __future__ import annotations

import ctypes
import platform
from typing import Any

import torch

EVERY = 5  # decoder layers between two trims. SmolLM2 LoRA, one run each against 2,940 MB at 115 tok/s:
# every 3 layers 2,122 MB at 103, every 5 2,148 MB at 104, every 10 2,269 MB at 109


def applies(device: str) -> bool:
    """CPU training on glibc < 2.38."""
    if device != "cpu":
        return False
    lib, version = platform.libc_ver()
    try:
        return lib == "glibc" and tuple(int(x) for x in version.split(".")[:2]) < (2, 38)
    except ValueError:
        return False


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated blocks, in order (transformers names them `...DecoderLayer` / `...Block`)."""
    return [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]


def _malloc_trim() -> Any:
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_heap_during_forward(model: Any, *, device: str, every: int = EVERY) -> list[Any]:
    """Forward hooks calling malloc_trim(0) after every `every`-th decoder layer; their handles."""
    if not applies(device):
        return []
    trim = _malloc_trim()

    def hook(module: Any, inputs: Any, output: Any) -> None:  # returns None: the output is unchanged
        if torch.is_grad_enabled():  # a training forward; not generation, validation or a reference pass
            trim(0)

    layers = decoder_layers(model)
    return [m.register_forward_hook(hook) for i, m in enumerate(layers) if (i + 1) % every == 0]

"""Peak memory of this process, measured one way for every command (training, evaluation, benchmarks).

On a GPU: `torch.cuda.max_memory_allocated` (tensors only; the caching allocator's reserve and the CUDA
context are not counted). On CPU: the process's peak resident set size, which the kernel keeps for
the whole life of the process and never lowers; so a peak is only a variant's own when the variant
ran in its own process (see experiment/run.py). `peak_mem_kind` in every summary says which.

On Linux the CPU peak is `VmHWM` of /proc/self/status, not `getrusage().ru_maxrss`: a process started
by a large one (a variant started by `tunelab run`, a test started by pytest) inherits its parent's
ru_maxrss at the fork/exec, so every child of a 1.8 GB parent reported at least 1.8 GB; VmHWM belongs
to the process's own address space and starts from zero at exec.

"""
from __future__ import annotations

import resource
import sys
from typing import Any


def peak_memory_mb(device: Any) -> tuple[float, str]:
    """(peak MB, kind) for `device` (a torch.device or a string such as "cpu" or "cuda:0")."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    hwm = _vm_hwm_kb()
    if hwm is not None:
        return hwm / 2**10, "cpu_peak_rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "cpu_peak_rss"


def _vm_hwm_kb() -> int | None:
    """Peak resident memory of this process's own address space (Linux), KiB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak(device: Any) -> None:
    """Start a new peak on a GPU (CPU peak RSS cannot be reset: measure in a fresh process)."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)

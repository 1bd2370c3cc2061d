"""CPU tensors from plain malloc instead of torch's posix_memalign (`training.cpu_allocator`).

    note = install("auto", device)   # what this process allocates CPU tensors with, for the log
    active()                         # whether tunelab's allocator is the one in use now

Why, measured (BENCHMARKS.md, "Training"): torch's CPU allocator asks glibc for 64-byte-aligned blocks
(posix_memalign), and glibc before 2.38 cannot give a freed block back to an aligned request of the
same size. A training forward frees many temporaries between the activations it keeps for the backward;
those holes are never reused, so resident memory grows past the live tensors (SmolLM2-135M LoRA on CPU:
2,907 MB where 2,020 MB suffice). `cpu_alloc.cpp` registers, through c10's own `SetCPUAllocator`, an
allocator that takes `malloc(n + 64)` and aligns the pointer by hand: a freed block is reused by the
next request of its size, the heap stays compact, and no page has to be faulted in again (the cost of
`training.trim_heap`, models/heap.py). Same tensors, same math: losses are bit-identical.

Hand-written because no library provides it: jemalloc or tcmalloc would do the same but must be
preloaded (LD_PRELOAD) before the interpreter starts, and torch exposes no CPU allocator hook to Python.
The 60-line source is compiled once per torch version with the system's C++ compiler straight against
torch's headers and libc10 (under a second; torch.utils.cpp_extension would add pybind11 and Python
headers for nothing) and cached in TUNELAB_HOME/ext. Without a compiler, or on another OS, training runs
on torch's allocator and the log says why. CPU training only: a GPU's tensors are not on this heap.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_alloc.cpp")
NAME = "malloc-aligned"  # how logs and summary.json name tunelab's allocator; torch's is "torch"
_lib: ctypes.CDLL | None = None


def wanted(setting: str, device: str) -> bool:
    """`training.cpu_allocator` auto on a CPU run under Linux."""
    return setting == "auto" and device == "cpu" and sys.platform.startswith("linux")


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _target() -> Path:
    import torch

    from ..paths import home

    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()
                         + str(torch._C._GLIBCXX_USE_CXX11_ABI).encode()).hexdigest()[:16]
    return home() / "ext" / f"cpu_alloc-{key}.so"


def expected(setting: str, device: str) -> bool:
    """Whether a run with this setting will use tunelab's allocator (for the estimate): built already,
    or a compiler to build it is here."""
    return wanted(setting, device) and (_target().exists() or _compiler() is not None)


def build() -> Path:
    """The compiled allocator for this torch, built now if it is not cached (RuntimeError if it cannot be)."""
    import torch

    target = _target()
    if target.exists():
        return target
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ or c++ on PATH, or CXX)")
    root = Path(torch.__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # processes building at once do not clash
    cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           f"-I{root / 'include'}", str(SOURCE), "-o", str(tmp), f"-L{root / 'lib'}", "-lc10",
           f"-Wl,-rpath,{root / 'lib'}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(cxx).name} failed: {(done.stderr or done.stdout).strip()[-400:]}")
        os.replace(tmp, target)  # atomic: a half-written library is never loaded
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        import torch  # noqa: F401  (libc10 must be loaded before the library that links it)

        _lib = ctypes.CDLL(str(build()))
    return _lib


# glibc's heap settings while tunelab's allocator is in use: blocks up to 32 MB from the heap (glibc's
# default moves this threshold up at run time, mapping and unmapping blocks until it settles), and free
# memory at the top of the heap kept rather than handed back after each backward, only to be faulted in
# again by the next forward. SmolLM2 full fine-tuning on 2 cores: kernel time 25% -> 11% of a step, same
# peak (BENCHMARKS.md). Larger blocks (the vocabulary-sized logits and embedding gradient) stay mapped.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30}


def _tune_glibc_heap() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for param, value in HEAP_SETTINGS.items():
        mallopt(param, value)


def install(setting: str, device: str) -> str:
    """Make tunelab's allocator this process's CPU allocator where `setting` and `device` want it.
    Returns what the process allocates with, and why when it is torch's: for the run's log."""
    if not wanted(setting, device):
        uninstall()  # an earlier run in this process (a sweep, tests) may have installed it
        return "torch" + ("" if setting == "torch" else " (not a CPU run on Linux)")
    try:
        if _load().tunelab_alloc_install():
            _tune_glibc_heap()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return f"torch ({NAME} unavailable: {e})"
    return NAME


def allocated() -> tuple[int, int]:
    """Bytes of CPU tensors made by tunelab's allocator alive now, and at most since the last
    `reset_peak()` (the CPU's `torch.cuda.memory_allocated` / `max_memory_allocated`); (0, 0) when off."""
    if _lib is None:
        return 0, 0
    for f in (_lib.tunelab_alloc_live, _lib.tunelab_alloc_peak):
        f.restype = ctypes.c_size_t
    return int(_lib.tunelab_alloc_live()), int(_lib.tunelab_alloc_peak())


def reset_peak() -> None:
    if _lib is not None:
        _lib.tunelab_alloc_reset_peak()


def active() -> bool:
    return _lib is not None and bool(_lib.tunelab_alloc_active())


def uninstall() -> bool:
    """torch's allocator back for tensors made from now on (tests); True if it was switched."""
    return _lib is not None and bool(_lib.tunelab_alloc_uninstall())

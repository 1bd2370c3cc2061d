"""Device profiles for `tunelab estimate`: memory and peak FLOP/s of common GPUs, and this machine.

    resolve_device("H100")   # a named profile (case and punctuation do not matter: h100, a100-40gb)
    resolve_device("cpu")    # this CPU: memory from the OS, throughput measured once with a matmul
    resolve_device("cuda")   # the GPU present, matched to a profile by name, else measured

Peak numbers are the vendors' dense (no sparsity) tensor-core figures; training reaches only a part of
them, `ACHIEVABLE` (an assumption, printed with every estimate). A measured throughput (CPU, or an
unknown GPU) is already achievable for a matmul; the rest of a step (norms, attention, the optimizer)
makes it slower, hence the same kind of fraction.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

GB = 1e9
MiB = 2**20
T = 1e12
ACHIEVABLE_GPU = 0.4  # model FLOPs utilisation of small-model fine-tuning on datacenter GPUs
ACHIEVABLE_CPU = 0.5  # of a large fp32 matmul's measured throughput


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: str  # "cuda" | "cpu"
    memory_bytes: float
    bf16_flops: float  # peak dense FLOP/s
    fp32_flops: float
    achievable: float
    measured: bool = False

    def achievable_flops(self, half: bool) -> float:
        return (self.bf16_flops if half else self.fp32_flops) * self.achievable


# name: (memory MiB as nvidia-smi reports it, bf16 dense TFLOP/s, fp32 TFLOP/s without TF32)
PROFILES: dict[str, tuple[float, float, float]] = {
    "H200": (143771, 989, 67),
    "H100": (81559, 989, 67),
    "A100-80GB": (81920, 312, 19.5),
    "A100-40GB": (40960, 312, 19.5),
    "RTX-4090": (24564, 165, 82.6),
    "L4": (23034, 121, 30.3),
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def profile(name: str) -> DeviceProfile:
    mem, bf16, fp32 = PROFILES[name]
    return DeviceProfile(name, "cuda", mem * MiB, bf16 * T, fp32 * T, ACHIEVABLE_GPU)


# torch.cuda.get_device_name() -> profile, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"
MATCH = ((r"H200", "H200"), (r"H100", "H100"), (r"A100", "A100-80GB"), (r"4090", "RTX-4090"), (r"\bL4\b", "L4"))


def resolve_device(name: str) -> DeviceProfile:
    if name == "cpu":
        return cpu_profile()
    if name == "cuda":
        return cuda_profile()
    aliases = {_key(n): n for n in PROFILES} | {"a100": "A100-80GB", "4090": "RTX-4090", "rtx4090": "RTX-4090"}
    if _key(name) in aliases:
        return profile(aliases[_key(name)])
    raise ConfigError(f"--device: unknown '{name}'; known: cpu, cuda (the GPU present), {', '.join(PROFILES)}")


def _cache_file(key: str) -> Path:
    from ..paths import home

    return home() / "estimate" / f"throughput-{_key(key)}.json"


def _measure(device: str, dtype_name: str, n: int = 1024, repeat: int = 20, budget_s: float = 2.0) -> float:
    """FLOP/s of an n x n matmul: the best of up to `repeat` runs within `budget_s` (on a shared machine
    the best run is the one least disturbed by other work)."""
    import torch

    dtype = getattr(torch, dtype_name)
    # a generator of its own: `tunelab train` estimates after seeding, and drawing from the global one
    # changed the LoRA initialisation of the first run on a machine without a cached measurement
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    best, start = float("inf"), time.perf_counter()
    for i in range(repeat + 1):  # the first run warms up kernels and caches
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        (a @ b).sum().item()
        if i:
            best = min(best, time.perf_counter() - t0)
        if i and time.perf_counter() - start > budget_s:
            break
    return 2 * n**3 / best


BUSY = 0.5  # load average per core above which a CPU measurement is taken to be disturbed


def cpu_load() -> float:
    """The 1-minute load average per core (0 where the OS does not say)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def _measured(key: str, device: str) -> dict[str, float]:
    """Measured fp32 and bf16 throughput, cached per device and thread count (measuring takes a few
    seconds; delete `$TUNELAB_HOME/estimate/throughput-*.json` to measure again, on a quiet machine).

    On a CPU the load at measuring time is kept with the numbers: a cache written while the machine was
    busy is measured again once it is quiet, keeping the faster result (this machine's cache, written
    under a load of 3-6 per core, said 32 GFLOP/s fp32 where a quiet machine does 212, so every CPU step
    time came out 7x too long). `load` > BUSY in the result: the numbers are still from a busy machine."""
    path = _cache_file(key)
    cached = json.loads(path.read_text()) if path.is_file() else None
    now = cpu_load() if device == "cpu" else 0.0
    if cached is not None and not (cached.get("load", 0.0) > BUSY and now <= BUSY):
        return cached
    rates = {"fp32": _measure(device, "float32"), "bf16": _measure(device, "bfloat16")}
    if cached is not None:  # re-measured on a quiet machine: the faster of the two, per dtype
        rates = {k: max(v, cached.get(k, 0.0)) for k, v in rates.items()}
    result = {**rates, "load": round(now, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def cpu_profile() -> DeviceProfile:
    import torch

    cpu = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    m = _measured(f"{cpu}-{torch.get_num_threads()}threads", "cpu")
    busy = f", throughput measured at load {m['load']:.1f} per core: step times too long" if m.get("load", 0) > BUSY else ""
    return DeviceProfile(f"CPU ({cpu}, {torch.get_num_threads()} threads{busy})", "cpu", memory, m["bf16"],
                         m["fp32"], ACHIEVABLE_CPU, measured=True)


def cuda_profile() -> DeviceProfile:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU here; name a profile instead "
                          f"({', '.join(PROFILES)}) or use --device cpu")
    name = torch.cuda.get_device_name(0)
    memory = torch.cuda.get_device_properties(0).total_memory
    for pattern, known in MATCH:
        if re.search(pattern, name, re.IGNORECASE):
            if known == "A100-80GB" and memory < 50 * GB:
                known = "A100-40GB"
            p = profile(known)
            return DeviceProfile(f"{known} ({name})", "cuda", memory, p.bf16_flops, p.fp32_flops, p.achievable)
    m = _measured(name, "cuda")
    return DeviceProfile(name, "cuda", memory, m["bf16"], m["fp32"], ACHIEVABLE_CPU, measured=True)

"""`tunelab estimate`: peak memory and step time of a training config, before loading any weights.

    from tunelab.estimate import estimate, estimate_from_config
    est = estimate_from_config(tunelab.config.load("configs/quickstart.yaml"), device="cpu")
    est.peak_bytes, est.components, est.peak_phase, est.step_time_s

shape.py     the model's sizes and parameter tensors from its config (no weights)
memory.py    bytes per component: activations per layer, 4-bit weights, optimizer states, logits
overhead.py  CPU-only terms: libraries loaded after the baseline, allocator slack
devices.py   GPU profiles and this machine's measured throughput
core.py      `estimate(...)`: the moments of a step, the peak, the step time
builder.py   `estimate_from_config(cfg)`: a tunelab config -> `estimate(...)`
command.py   the `tunelab estimate` command
Importing this package does not import torch.
"""
from .builder import estimate_from_config
from .core import Estimate, estimate

__all__ = ["Estimate", "estimate", "estimate_from_config"]

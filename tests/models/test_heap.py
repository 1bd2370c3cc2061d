"""`training.trim_heap` (models/heap.py): the holes glibc < 2.38 leaves between aligned CPU tensors are
handed back to the system during the forward; nothing a run computes changes."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.train.test_train import assert_same_weights, losses
from tunelab import config as C
from tunelab.models import heap
from tunelab.train.recipe import train

needs_old_glibc = pytest.mark.skipif(not heap.applies("cpu"), reason="trimming applies to glibc < 2.38 only")

# In a fresh interpreter: 64-byte-aligned tensors as a forward makes them (a kept activation, then a freed
# temporary, alternately), then the resident memory before and after one trim.
HOLES = r"""
import ctypes, torch
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
kept, n = [], 120
torch.set_num_threads(1)
# 1 MB blocks from the heap, never mapped: a freed 4 MB block would raise glibc's dynamic mmap threshold
# only in 3 of 4 runs (address randomisation), so it is fixed at 64 MB (M_MMAP_THRESHOLD = -3)
ctypes.CDLL("libc.so.6").mallopt(-3, 64 << 20)
before = rss()
for i in range(n):
    kept.append(torch.ones(256 * 1024))        # 1 MB kept for the backward
    tmp = torch.ones(256 * 1024); del tmp      # a 1 MB temporary, freed: a hole between kept tensors
grown = rss() - before
ctypes.CDLL("libc.so.6").malloc_trim(0)
print(grown, rss() - before)
"""


@needs_old_glibc
def test_a_trim_hands_back_the_holes_between_kept_tensors():
    """The mechanism, measured: without the trim the process holds the 120 MB kept and tens of MB of
    holes (183 MB here); after it, the kept tensors and little else."""
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, timeout=120, check=True)
    grown, trimmed = map(float, out.stdout.split())
    assert grown > 120 + 40 and trimmed < 120 + 15, (grown, trimmed)


def test_hooks_on_every_fifth_decoder_layer_and_only_where_it_applies(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=11, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=4, vocab_size=128))
    assert len(heap.decoder_layers(model)) == 11
    assert heap.trim_heap_during_forward(model, device="cuda") == []
    monkeypatch.setattr(heap, "applies", lambda device: device == "cpu")
    calls = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    handles = heap.trim_heap_during_forward(model, device="cpu")
    assert len(handles) == 2  # after layers 5 and 10
    ids = torch.tensor([[1, 2, 3]])
    out = model(ids).logits
    assert calls == [0, 0]  # a forward that builds a graph trims
    with torch.no_grad():  # generation, validation, a reference pass: no trims
        assert torch.equal(model(ids).logits, out.detach())
    assert calls == [0, 0]


@needs_old_glibc
def test_trimming_changes_no_number(tmp_path):
    """The same run with and without trimming: the same losses and weights, bit for bit."""
    def run(name: str, trim: bool) -> None:
        train(C.load(None, ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=24", "data.val_size=4",
                            "data.max_length=128", "training.max_steps=3", "training.batch_size=2",
                            "training.log_every=1", "training.save_every=0", "training.eval_every=0",
                            f"training.trim_heap={str(trim).lower()}", "training.cpu_allocator=torch",
                            f"output.dir={tmp_path / name}"]))

    run("on", True)  # on torch's allocator: tunelab's (the default) leaves no holes to trim
    run("off", False)
    assert losses(tmp_path / "on") == losses(tmp_path / "off")
    assert_same_weights(tmp_path / "on", tmp_path / "off", 0.0)

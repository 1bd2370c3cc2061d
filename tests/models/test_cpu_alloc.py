"""`training.cpu_allocator` (models/cpu_alloc.py): CPU tensors from malloc aligned by hand, so glibc reuses
the blocks a forward frees; nothing a run computes changes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.train.test_train import assert_same_weights, losses
from tunelab import config as C
from tests.models.test_heap import HOLES as HEAP_HOLES
from tunelab.models import cpu_alloc, heap
from tunelab.train.recipe import train

linux = pytest.mark.skipif(not sys.platform.startswith("linux") or cpu_alloc._compiler() is None,
                           reason="the allocator is built on Linux, with a C++ compiler")

# test_heap's script (a forward's pattern: a kept activation, then a freed temporary, alternately; it prints
# how much the process grew, then what is left after a trim), run on the allocator argv[1] names
HOLES = "import sys\nfrom tunelab.models import cpu_alloc\nprint(cpu_alloc.install(sys.argv[1], 'cpu'))\n" + HEAP_HOLES


def _holes(setting: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", HOLES, setting], capture_output=True, text=True, timeout=180,
                         check=True, env=os.environ)
    used, sizes = out.stdout.split("\n")[:2]
    return used, float(sizes.split()[0])  # grown; the trim's result after it is test_heap's concern


@linux
def test_freed_blocks_are_reused_where_torchs_allocator_leaves_holes():
    """120 MB kept: with tunelab's allocator the process grows by those and little else; with torch's,
    on glibc < 2.38, by tens of MB more (the temporaries' holes)."""
    used, grown = _holes("auto")
    assert used == cpu_alloc.NAME and 115 < grown < 120 + 10, (used, grown)
    if heap.applies("cpu"):  # glibc < 2.38: with torch's allocator the holes are there, in most runs (whether
        # glibc can reuse an aligned block depends on where the heap happens to start: 1 run in 4 it can)
        runs = [_holes("torch") for _ in range(3)]
        assert all(used == "torch" for used, _ in runs)
        assert max(grown for _, grown in runs) > 120 + 40, runs


@linux
def test_tensors_are_aligned_and_switching_back_is_safe():
    assert cpu_alloc.install("auto", "cpu") == cpu_alloc.NAME and cpu_alloc.active()
    try:
        mine = [torch.empty(n, dtype=torch.uint8) for n in (1, 7, 63, 64, 65, 4097, 3 << 20)]
        assert all(t.data_ptr() % 64 == 0 for t in mine)
        assert torch.empty(0).numel() == 0
        a = torch.arange(10_000, dtype=torch.float32)
        assert cpu_alloc.install("torch", "cpu") == "torch" and not cpu_alloc.active()
        b = a.clone() * 2  # torch's allocator; a (ours) is still read and freed correctly
        assert torch.equal(b / 2, a)
        del a, mine
        assert cpu_alloc.install("auto", "cuda").startswith("torch") and not cpu_alloc.active()  # CPU runs only
    finally:
        cpu_alloc.install("auto", "cpu")  # as a CPU training would leave the process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator is built on Linux only")
def test_without_a_compiler_training_runs_on_torchs_allocator_and_says_why(tmp_path):
    env = {**os.environ, "TUNELAB_HOME": str(tmp_path), "CXX": "/nonexistent/g++"}
    code = ("from tunelab.models import cpu_alloc; print(cpu_alloc.install('auto', 'cpu')); "
            "print(cpu_alloc.active())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         check=True).stdout.splitlines()
    assert out[0].startswith("torch (malloc-aligned unavailable:") and out[1] == "False", out
    assert not list(tmp_path.glob("ext/*"))  # nothing half-built is left behind


def _run(tmp_path, name: str, allocator: str) -> dict:
    train(C.load(None, ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=24", "data.val_size=4",
                        "data.max_length=128", "training.max_steps=3", "training.batch_size=2",
                        "training.log_every=1", "training.save_every=0", "training.eval_every=0",
                        f"training.cpu_allocator={allocator}", f"output.dir={tmp_path / name}"]))
    return json.loads((tmp_path / name / "summary.json").read_text())


@linux
def test_the_allocator_changes_no_number(tmp_path):
    """The same run on either allocator: the same losses and weights, bit for bit; summary.json says which."""
    assert _run(tmp_path, "torch", "torch")["cpu_allocator"] == "torch"
    assert _run(tmp_path, "mine", "auto")["cpu_allocator"] == cpu_alloc.NAME
    assert losses(tmp_path / "mine") == losses(tmp_path / "torch")
    assert_same_weights(tmp_path / "mine", tmp_path / "torch", 0.0)

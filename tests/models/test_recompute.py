"""`training.recompute_elementwise` (models/recompute.py): the RMSNorms' and gated MLP's elementwise outputs
are made again in the backward instead of being kept, and packed rows' attention keeps one copy of the
key/value heads and of the mask; nothing a run computes changes beyond rounding."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from tests.estimate.test_estimate import DIMS, build, config
from tests.train.test_train import assert_same_weights, losses
from tunelab import config as C
from tunelab.estimate import memory as M
from tunelab.estimate.shape import ModelShape
from tunelab.models import cpu_alloc
from tunelab.models.recompute import recompute_elementwise
from tunelab.train.recipe import train


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_is_the_same_with_and_without(tmp_path, method):
    def run(name: str, on: bool) -> None:
        train(C.load(None, ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=24", "data.val_size=4",
                            "data.max_length=128", "training.max_steps=3", "training.batch_size=2",
                            "training.grad_accum=2", f"method.name={method}", "training.log_every=1",
                            "training.save_every=0", "training.eval_every=0",
                            f"training.recompute_elementwise={str(on).lower()}", f"output.dir={tmp_path / name}"]))

    run("on", True)
    run("off", False)
    assert losses(tmp_path / "on") == pytest.approx(losses(tmp_path / "off"), rel=1e-6, abs=0)
    # the norms and the MLP are remade bit for bit; with a mask (packed rows), the attention kernel sums the
    # key/value gradients over each group of query heads itself instead of autograd doing it: rounding only
    assert_same_weights(tmp_path / "on", tmp_path / "off", 1e-5)  # as accumulation invariance (test_train)


@pytest.mark.skipif(not sys.platform.startswith("linux") or cpu_alloc._compiler() is None,
                    reason="live bytes come from tunelab's CPU allocator (Linux, a C++ compiler)")
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_forward_keeps_exactly_what_the_estimate_says_less(arch):
    """Live tensor bytes after a training forward (tunelab's allocator counts them): the difference with
    and without is the estimator's per-token difference x tokens x layers, to the byte."""
    assert cpu_alloc.install("auto", "cpu") == cpu_alloc.NAME
    layers, batch, seq = 3, 2, 64
    ids = torch.randint(0, DIMS["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))

    def kept(on: bool) -> int:
        model = build(config(arch, layers))
        if on:
            assert recompute_elementwise(model) == 2 * layers + 1 + (2 * layers if arch == "qwen3" else 0) + layers
        model.train()
        before = cpu_alloc.allocated()[0]
        out = model.model(input_ids=ids, use_cache=False).last_hidden_state
        held = cpu_alloc.allocated()[0] - before
        out.float().pow(2).mean().backward()  # and the backward runs on what was kept
        return held

    shape = ModelShape.from_config(config(arch))
    per_token = [M.layer_activations(shape, trained=True, adapted=[], r=16, dropout=False, bf16=False, recompute=r)
                 for r in (False, True)]
    assert kept(False) - kept(True) == (per_token[0] - per_token[1]) * batch * seq * layers


def test_gradients_equal_and_the_patch_survives_train_and_eval():
    torch.manual_seed(0)
    ids = torch.randint(0, DIMS["vocab_size"], (2, 16))

    def grads(on: bool) -> dict[str, torch.Tensor]:
        model = build(config("qwen3", 2))
        if on:
            recompute_elementwise(model)
            model.eval()
            model.train()  # transformers re-"kernelizes" here when `kernels` is installed
            assert all(getattr(type(m), "_tunelab_recompute", False) for m in model.modules()
                       if type(m).__name__.endswith(("RMSNorm", "MLP")))
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    a, b = grads(True), grads(False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class GemmaLikeRMSNorm(nn.Module):  # scales by 1 + w: the patched forward would differ, so it is left alone
    def __init__(self, width: int):
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(torch.randn(width)), 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 + self.weight) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def test_modules_it_would_compute_differently_are_left_alone():
    model = nn.Sequential(GemmaLikeRMSNorm(8))
    assert recompute_elementwise(model) == 0 and type(model[0]) is GemmaLikeRMSNorm


def test_an_input_changed_in_place_after_the_forward_is_refused():
    model = build(config("llama", 1))
    recompute_elementwise(model)
    model.train()
    hidden = model.model.embed_tokens(torch.randint(0, 100, (1, 8)))
    layer = model.model.layers[0]
    gate = {}
    layer.mlp.gate_proj.register_forward_hook(lambda m, i, o: gate.setdefault("out", o))
    out = layer(hidden, position_embeddings=model.model.rotary_emb(hidden, torch.arange(8)[None]))
    out = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        gate["out"].mul_(2)  # what the product is remade from
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()

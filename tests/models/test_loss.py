"""The chunked, supervised-positions-only loss equals the plain full-logits computation, in value
and in gradients, for padded and packed batches and for chunk sizes that do not divide the count."""
from __future__ import annotations

import random

import pytest
import torch

from tunelab.data.batching import collate_packed, collate_padded
from tunelab.data.render import IGNORE_INDEX
from tunelab.models.loss import CausalLMLoss, chunked_ce, reference_loss


def _examples(n=5, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(10, 151000) for _ in range(rng.randint(6, 30))]
        k = rng.randint(1, len(ids) - 2)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * k + ids[k:]})
    return out


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_chunked_loss_and_grads_equal_plain(tiny_qwen, layout, chunk):
    model = tiny_qwen.train()
    exs = _examples()
    batch = collate_padded(exs, pad_id=0) if layout == "padded" else collate_packed([exs[:3], exs[3:]], pad_id=0)
    model.zero_grad()
    ref, n_ref = reference_loss(model, batch)
    ref.backward()
    g_ref = _grads(model)
    model.zero_grad()
    loss, n = CausalLMLoss(model, chunk_size=chunk)(**batch)
    loss.backward()
    g = _grads(model)
    model.zero_grad()
    model.eval()
    assert int(n) == int(n_ref) > 0
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert g.keys() == g_ref.keys()
    for name in g:
        err = (g[name] - g_ref[name]).abs().max().item()
        assert err <= 1e-4 * g_ref[name].abs().max().item(), (name, err)


def test_chunked_ce_never_builds_full_logits():
    # peak memory check by construction: the head sees at most `chunk` rows at a time
    seen = []

    class Head(torch.nn.Linear):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    head = Head(8, 100)
    h = torch.randn(50, 8, requires_grad=True)
    t = torch.randint(0, 100, (50,))
    loss = chunked_ce(head, h, t, chunk=16)
    loss.backward()
    assert max(seen) == 16 and sum(seen[:4]) == 50  # forward chunks (backward recomputes them)
    ref = torch.nn.functional.cross_entropy(head(h), t, reduction="sum")
    assert torch.allclose(loss, ref, atol=1e-4)


@pytest.mark.parametrize("chunk", [5, 1024])
@pytest.mark.parametrize("watched", [False, True])
def test_fused_head_adds_its_gradient_in_place_and_equals_autograd(chunk, watched):
    """The fused head + cross-entropy (models/loss.py `_FusedHead`) over two micro-batches: loss and gradients
    equal plain autograd's; a later micro-batch adds into the head's existing gradient in place, unless
    something watches the parameter's gradient accumulation (DDP/FSDP hooks), which then still fires."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    weight = head.weight.detach().clone().requires_grad_(True)
    fired = []
    if watched:
        head.weight.register_post_accumulate_grad_hook(lambda p: fired.append(1))
    ptrs = []
    for _ in range(2):
        h = torch.randn(37, 16, generator=g)
        t = torch.randint(0, 300, (37,), generator=g)
        h1, h2 = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
        loss = chunked_ce(head, h1, t, chunk)
        ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h2, weight), t, reduction="sum")
        loss.backward()
        ref.backward()
        assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
        assert torch.allclose(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
        ptrs.append(head.weight.grad.data_ptr())
    assert torch.allclose(head.weight.grad, weight.grad, rtol=1e-5, atol=1e-6)
    if watched:
        assert len(fired) == 2  # through autograd's accumulation, once a backward
    else:
        assert ptrs[0] == ptrs[1]  # added where it was

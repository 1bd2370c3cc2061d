"""`token_logps` (chunked, scored positions only) equals the plain full-logits computation in values,
entropies and gradients, for padded and packed batches and chunk sizes that do not divide the count;
per-sequence sums follow rows (padded) or packed examples. `completion_logps` (prompts run once, their
cache copied to the rows that continue them) equals `token_logps` over the full rows."""
from __future__ import annotations

import pytest
import torch

from tunelab.data.batching import collate_packed, collate_padded
from tunelab.data.render import IGNORE_INDEX
from tunelab.models.logps import completion_logps, counts, per_row, token_logps

from .test_loss import _examples, _grads  # the same random examples as the loss test


def _plain(model, batch, temperature=1.0):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits.float() / temperature
    logp = torch.log_softmax(logits[:, :-1], -1)
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    tok = logp.gather(-1, batch["labels"][:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep]
    # the entropy in float64: an fp32 sum of p log p over the vocabulary is itself off by ~1e-5 at log(V) ~ 12
    logp64 = torch.log_softmax(logits[:, :-1].double(), -1)
    ent = -(logp64.exp() * logp64).sum(-1)[keep].float()
    return tok, ent.detach()


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_token_logps_equal_plain_values_and_grads(tiny_qwen, layout, chunk):
    model = tiny_qwen.train()
    exs = _examples()
    batch = collate_padded(exs, pad_id=0) if layout == "padded" else collate_packed([exs[:3], exs[3:]], pad_id=0)
    try:
        model.zero_grad()
        ref, ref_ent = _plain(model, batch, temperature=0.7)
        weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))  # a non-trivial upstream grad
        (ref * weights).sum().backward()
        g_ref = _grads(model)
        model.zero_grad()
        out = token_logps(model, **batch, chunk_size=chunk, entropy=True, temperature=0.7)
        (out.logps * weights).sum().backward()
        g = _grads(model)
    finally:
        model.zero_grad()
        model.eval()
    assert out.logps.dtype == torch.float32 and out.logps.shape == ref.shape
    assert torch.allclose(out.logps, ref, atol=1e-5, rtol=0)
    assert torch.allclose(out.entropy, ref_ent, atol=1e-5, rtol=0) and not out.entropy.requires_grad
    assert g.keys() == g_ref.keys()
    for name in g:
        assert torch.allclose(g[name], g_ref[name], atol=1e-5, rtol=1e-4), name

    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    assert out.rows.tolist() == keep.nonzero()[:, 0].tolist()
    # per-sequence sums: rows when padded, the packed examples (in row-major order) when packed
    n_sup = [sum(x != IGNORE_INDEX for x in ex["labels"][1:]) for ex in exs]
    if layout == "padded":
        assert out.n_seqs == len(exs) and counts(out.seqs, out.n_seqs).tolist() == n_sup
    else:  # two rows of 3 + 2 examples; the shorter row's padding tail is one more (empty) sequence
        c = counts(out.seqs, out.n_seqs).tolist()
        assert [x for x in c if x] == n_sup and out.n_seqs in (5, 6)
    sums = per_row(out.logps, out.seqs, out.n_seqs)
    assert torch.allclose(sums.sum(), out.logps.sum(), atol=1e-4)


def test_token_logps_without_grad_and_entropy_off(tiny_qwen):
    batch = collate_padded(_examples(3, seed=1), pad_id=0)
    with torch.no_grad():
        out = token_logps(tiny_qwen, **batch, chunk_size=5)
        ref, _ = _plain(tiny_qwen, batch)
    assert out.entropy is None and not out.logps.requires_grad
    assert torch.allclose(out.logps, ref, atol=1e-5, rtol=0)


def test_per_row_and_counts():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    rows = torch.tensor([0, 0, 2, 2])
    s = per_row(v, rows, 3)
    assert s.tolist() == [3.0, 0.0, 7.0] and counts(rows, 3).tolist() == [2, 0, 2]
    s.sum().backward()
    assert v.grad.tolist() == [1.0] * 4


@pytest.mark.parametrize("recompute", [False, True])
def test_completion_logps_with_shared_prompts_equal_full_rows(recompute):
    """Two prompts of different lengths, three completions of each (lengths 1..7, right-padded), as GRPO's
    groups: running each prompt once and copying its cache gives the full rows' log-probabilities,
    entropies and gradients (every weight of the model, the embeddings' included), with the decoder seeing
    2 prompt rows and 6 completion rows; also with models/recompute.py's hooks (tunelab's training default)."""
    from tunelab.models.load import load_model
    from tunelab.models.recompute import recompute_elementwise

    model = load_model("tiny-qwen3").train()
    if recompute:
        assert recompute_elementwise(model) > 0
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (9, 5)]
    lens = [7, 1, 4, 6, 3, 7]
    comps = [torch.randint(3, V, (n,), generator=g).tolist() for n in lens]
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    W, C = max(map(len, prompts)), max(lens)
    prompt_ids = torch.tensor([p + [0] * (W - len(p)) for p in prompts])
    prompt_mask = torch.tensor([[1] * len(p) + [0] * (W - len(p)) for p in prompts])
    completion_ids = torch.tensor([c + [0] * (C - len(c)) for c in comps])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (C - len(c)) for c in comps])
    seen = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda m, a, k: seen.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    weights = torch.randn(sum(lens), generator=g)
    out = {}
    for share in (False, True):
        model.zero_grad()
        seen.clear()
        r = completion_logps(model, prompt_ids, prompt_mask, group, completion_ids, completion_mask, chunk_size=5,
                             entropy=True, temperature=0.7, share=share)
        (r.logps * weights).sum().backward()
        out[share] = (r, _grads(model), list(seen))
    hook.remove()
    (full, g_full, calls_full), (shared, g_shared, calls_shared) = out[False], out[True]
    assert calls_full == [(6, 9 + 7)] and calls_shared == [(2, W), (6, C)]
    assert shared.logps.shape == (sum(lens),) and shared.rows.tolist() == [b for b, n in enumerate(lens) for _ in range(n)]
    assert torch.allclose(shared.logps, full.logps, atol=1e-5, rtol=0)
    assert torch.allclose(shared.entropy, full.entropy, atol=1e-5, rtol=0)
    assert shared.seqs.tolist() == full.seqs.tolist() and shared.n_seqs == full.n_seqs == 6
    assert g_shared.keys() == g_full.keys() and len(g_full) == len(list(model.parameters()))
    for name in g_full:
        assert torch.allclose(g_shared[name], g_full[name], atol=1e-5, rtol=1e-4), name


def test_completion_logps_run_full_rows_under_gradient_checkpointing():
    """transformers' checkpointed layers drop the key/value cache in training, so with checkpointing the
    prompts cannot be shared: the full rows run (one decoder call), with the same values."""
    from tunelab.models.load import load_model
    from tunelab.models.logps import _shares_prompts

    model = load_model("tiny-qwen3").train()
    assert _shares_prompts(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not _shares_prompts(model)
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, 1000, (2, 6), generator=g)
    prompt_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    completion_ids = torch.randint(3, 1000, (4, 5), generator=g)
    completion_mask = torch.tensor([[1] * 3 + [0] * 2] + [[1] * 5] * 3)
    group = torch.tensor([0, 0, 1, 1])
    seen = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda m, a, k: seen.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    try:
        out = completion_logps(model, prompt_ids, prompt_mask, group, completion_ids, completion_mask)
    finally:
        hook.remove()
    assert seen == [(4, 11)]
    model.gradient_checkpointing_disable()
    ref = completion_logps(model, prompt_ids, prompt_mask, group, completion_ids, completion_mask)
    assert torch.allclose(out.logps, ref.logps, atol=1e-5) and out.logps.shape == (18,)

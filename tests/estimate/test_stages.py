"""tunelab estimate for the other stages and for models built from scratch: the per-token log-probabilities'
logits (dpo, grpo), generation's key/value cache (grpo), the model as first built for another tokenizer, and
the settings the builder reads from `stage`. Each term against what the real code allocates, counted by
tunelab's CPU allocator (live bytes), on tiny shapes."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.estimate.test_estimate import CPU, DIMS, GPU, build, config
from tunelab.estimate import estimate
from tunelab.estimate import memory as M
from tunelab.estimate.shape import ModelShape
from tunelab.models import cpu_alloc

needs_allocator = pytest.mark.skipif(not sys.platform.startswith("linux") or cpu_alloc._compiler() is None,
                                     reason="live bytes come from tunelab's CPU allocator (Linux, a C++ compiler)")


class _Projection(torch.nn.Linear):
    """A head that is not a plain nn.Linear: models/logps.py takes the unfused path (as under autocast)."""


@needs_allocator
@pytest.mark.parametrize("chunk", [None, 32])
@pytest.mark.parametrize("path", ["fused", "logps"])
def test_logps_logits_equal_the_live_peak_of_the_per_token_log_probabilities(chunk, path):
    """models/logps.py, entropy included: fused (a plain fp32 projection), the logits and one block of LSE_ROWS
    rows in the forward, the logits in the backward (+ the block while a checkpointed chunk is recomputed);
    unfused, 4 logits-sized tensors while the forward takes the entropy, 3 in the backward (4 while a
    checkpointed chunk is recomputed)."""
    from tunelab.models.logps import chunked_logps

    assert cpu_alloc.install("auto", "cpu") == cpu_alloc.NAME
    V, H, n = 1024, 16, 96
    torch.manual_seed(0)
    head = (torch.nn.Linear if path == "fused" else _Projection)(H, V, bias=False).requires_grad_(False)  # frozen (LoRA)
    hidden = torch.randn(n, H, requires_grad=True)
    targets = torch.randint(0, V, (n,))
    rows = chunk or n
    forward, backward = M.head_logits_bytes(rows, V, H, path=path, bf16=False, chunked=chunk is not None)

    before = cpu_alloc.allocated()[0]
    cpu_alloc.reset_peak()
    logps, ent = chunked_logps(head, hidden, targets, chunk or n, entropy=True)
    measured_forward = cpu_alloc.allocated()[1] - before
    cpu_alloc.reset_peak()
    logps.sum().backward()
    measured_backward = cpu_alloc.allocated()[1] - before
    # beyond the logits: a few vectors of n values, the hidden states' gradient (n x H) and, per checkpointed
    # chunk, the CPU random state torch's checkpoint keeps (5 KB): all in n x (6 x 4 + 4 H) + 6 KB a chunk
    small = 4 * n * (6 + H) + (n // chunk * 6000 if chunk else 0)
    assert 0 <= measured_forward - forward <= small
    assert 0 <= measured_backward - backward <= small
    block = min(rows, M.LSE_ROWS) * V * 4
    if path == "fused":
        assert forward == rows * V * 4 + block and backward == rows * V * 4 + (block if chunk else 0)
    else:
        assert forward == 4 * rows * V * 4 and backward == (4 if chunk else 3) * rows * V * 4


def test_logps_count_the_fused_logits_and_more_under_autocast():
    shape = config("qwen3")
    sft = estimate(shape, method="lora", batch_size=2, seq_len=64, device=CPU)
    dpo = estimate(shape, method="lora", batch_size=2, seq_len=64, device=CPU, logps=True)
    assert sft.phases["forward"] == dpo.phases["forward"]  # fp32: the same fused function
    rows = sft.supervised_tokens_per_step
    sft, dpo = (estimate(shape, method="lora", batch_size=2, seq_len=64, device=GPU, precision="bf16", logps=lp)
                for lp in (False, True))
    # autocast, forward: 4 fp32 copies + the bf16 logits + the head's bf16 copy against the loss's 2 fp32 + bf16
    V, H = shape.vocab_size, shape.hidden_size
    assert sft.phases["forward"] + 2 * rows * V * 4 + 2 * V * H == dpo.phases["forward"]


def test_kv_cache_bytes_equal_the_cache_of_a_forward():
    model = build(config("qwen3", 3)).eval()
    rows, tokens = 3, 20
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, DIMS["vocab_size"], (rows, tokens)), use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert M.kv_cache_bytes(ModelShape.from_config(config("qwen3", 3)), rows=rows, tokens=tokens, bf16=False) == held


@needs_allocator
def test_a_model_from_scratch_for_another_tokenizer_is_built_at_the_named_vocabulary_first(tmp_path):
    """models/load.py builds the named model's vocabulary with a head of its own before tying and resizing: the
    live peak of the build is that untied model, which the estimate's `load` moment counts."""
    from tunelab.models.load import load_model

    assert cpu_alloc.install("auto", "cpu") == cpu_alloc.NAME
    named = config("qwen3", 2, vocab_size=8000)
    named.save_pretrained(tmp_path)
    before = cpu_alloc.allocated()[0]
    cpu_alloc.reset_peak()
    model = load_model(str(tmp_path), from_scratch=True)
    built = cpu_alloc.allocated()[1] - before
    del model
    est = estimate(config("qwen3", 2, vocab_size=512), method="full", batch_size=1, seq_len=16, device=CPU,
                   build_vocab=8000)
    assert est.phases["load"] == pytest.approx(built, rel=0.002)  # + RoPE's inverse frequencies
    untied = ModelShape.from_config(config("qwen3", 2, vocab_size=8000, tie_word_embeddings=False)).total_params()
    assert est.phases["load"] == 4 * untied
    # where the named vocabulary dwarfs the training (Qwen3's 151,936 tokens for an 8k tokenizer), the load is
    # the peak and its weights are the weights the estimate shows
    est = estimate(config("qwen3", 2, vocab_size=512), method="full", batch_size=1, seq_len=16, device=CPU,
                   build_vocab=151_936)
    assert est.peak_phase == "load" and est.phases["load"] == est.components["weights"]
    assert "load" not in estimate(config("qwen3", 2), method="full", device=CPU).phases


def test_the_builder_reads_the_stage(monkeypatch):
    from tunelab import config as C
    from tunelab.estimate import estimate_from_config

    shape = config("qwen3")
    grpo = C.load(None, ["stage=grpo", "data.name=arith_en", "objective.num_generations=4",
                         "objective.max_new_tokens=16", "training.batch_size=2", "objective.kl_coef=0.1",
                         "method.name=full"])
    est = estimate_from_config(grpo, device=CPU, model_config=shape, seq_len=64)
    # 8 rows of 64 tokens, 16 of them completion: each prompt runs once for its 4 rows (models/logps.py
    # completion_logps), so a row costs 16 + 48 / 4 positions; with gradient checkpointing the full rows
    assert est.inputs["batch_size"] == 8 and est.tokens_per_step == 8 * (16 + 48 // 4)
    assert est.supervised_tokens_per_step == 8 * 16  # completions only: max_new_tokens of each row
    assert any("prompts run once for their 4 completions" in n for n in est.notes)
    ckpt = C.load(None, ["stage=grpo", "data.name=arith_en", "objective.num_generations=4",
                         "objective.max_new_tokens=16", "training.batch_size=2", "training.gradient_checkpointing=true"])
    assert estimate_from_config(ckpt, device=CPU, model_config=shape, seq_len=64).tokens_per_step == 8 * 64
    assert est.phases["rollout"] == pytest.approx(
        est.components["weights"] * 2 + est.components["optimizer"]
        + M.kv_cache_bytes(ModelShape.from_config(shape), rows=8, tokens=64, bf16=False)
        + M.FP32 * shape.vocab_size * shape.hidden_size)  # the head, packed by models/decode_step.py
    assert est.components["reference"] == est.components["weights"]  # full with a KL term: a frozen copy
    dpo = C.load(None, ["stage=dpo", "data.name=arith_pairs", "training.batch_size=2"])
    est = estimate_from_config(dpo, device=CPU, model_config=shape, seq_len=64, supervised_fraction=0.5)
    assert est.tokens_per_step == 4 * 64 and "rollout" not in est.phases and "reference" not in est.components
    assert est.phases["forward"] == pytest.approx(
        estimate(shape, method="lora", batch_size=4, seq_len=64, supervised_fraction=0.5, device=CPU, logps=True,
                 padded=True).phases["forward"])
    assert json.dumps(est.to_dict())  # the new components serialise


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_rollout_copy_counts_the_packed_weights_the_decoding_step_keeps(tied, dtype):
    """GRPO samples through models/decode_step.py, which on a CPU keeps oneDNN-packed copies of weights (bf16:
    the decoder's linear weights and the head; fp32: the head), counted with the rollout copy as oneDNN
    sized them (they are not allocated by torch's allocator); none on a GPU."""
    from tunelab.models.decode_step import DecodeStep

    # widths that are multiples of 64, as real models' are (oneDNN pads its blocks: DIMS' 24-wide heads
    # would take 7% more than the weights)
    cfg = config("qwen3", 2, tie_word_embeddings=tied, head_dim=32, intermediate_size=192, vocab_size=1024)
    model = build(cfg).to(getattr(torch, dtype)).eval()
    step = DecodeStep(model).prepare()
    packed = sum(torch.ops.mkldnn._nbytes(p) for _, p in step._packed.values())
    assert len(step._packed) == (2 * 7 + 1 if dtype == "bfloat16" else 1)
    total = ModelShape.from_config(cfg).total_params()
    copy = 2 if dtype == "bfloat16" else 0  # a bf16 rollout copy, or the fp32 policy itself
    kw = dict(method="lora", batch_size=8, seq_len=64, logps=True, padded=True, rollout_rows=8, rollout_len=64,
              rollout_copy_bytes=copy)
    cpu = estimate(cfg, device=CPU, rollout_packs=dtype, **kw).components.get("rollout copy", 0)
    assert cpu - copy * total == pytest.approx(packed, rel=0.01)  # the norms' weights are not packed
    assert estimate(cfg, device=CPU, **kw).components.get("rollout copy", 0) == copy * total
    assert estimate(cfg, device=GPU, rollout_packs=dtype, **kw).components.get("rollout copy", 0) == copy * total


def test_the_builder_names_the_dtype_grpo_samples_in():
    from tunelab import config as C
    from tunelab.estimate.builder import _rollout_packs

    grpo = ["stage=grpo", "data.name=arith_en"]
    assert _rollout_packs(C.load(None, grpo)) == "float32"  # the fp32 LoRA policy: its head packed
    assert _rollout_packs(C.load(None, grpo + ["objective.rollout_dtype=bfloat16"])) == "bfloat16"
    assert _rollout_packs(C.load(None, grpo + ["objective.rollout_dtype=float16"])) is None
    assert _rollout_packs(C.load(None, grpo + ["model.dtype=bf16", "method.name=full"])) == "bfloat16"
    assert _rollout_packs(C.load(None, grpo + ["model.dtype=bf16"])) is None  # fp32 adapters on a bf16 base
    assert _rollout_packs(C.load(None, grpo + ["method.name=dora"])) is None

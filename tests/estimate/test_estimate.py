"""tunelab estimate: each component's arithmetic against the real thing (a model built from a tiny
config, peft's trainable count, torch's and bitsandbytes' optimizer state, the tensors autograd saves),
the loss's chunk rule, monotonicity, and the command's table and JSON. No weights are downloaded;
models are built from tiny configs."""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from tunelab.errors import ConfigError
from tunelab.estimate import estimate
from tunelab.estimate import memory as M
from tunelab.estimate.devices import DeviceProfile, resolve_device
from tunelab.estimate.shape import ModelShape, resolve_targets
from tunelab.models import recompute as recompute_module
from tunelab.models.loss import LSE_ROWS
from tunelab.models.recompute import recompute_elementwise

GPU = DeviceProfile("test-gpu", "cuda", 80e9, 1e15, 6e13, 0.4)
CPU = DeviceProfile("test-cpu", "cpu", 16e9, 2e11, 1e11, 0.5)
DIMS = dict(vocab_size=1000, hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
            head_dim=24)  # q width 96 != hidden, so a formula that confuses them fails


def config(arch: str = "llama", layers: int = 2, **kw):
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    return cls(**{**DIMS, "num_hidden_layers": layers, "tie_word_embeddings": True, **kw})


def build(cfg):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,kw", [("llama", {}), ("llama", {"tie_word_embeddings": False, "attention_bias": True,
                                                               "mlp_bias": True}),
                                     ("mistral", {}), ("qwen2", {}), ("qwen3", {})])
def test_param_count_equals_the_model_built_from_the_config(arch, kw):
    cfg = config(arch, **kw)
    assert ModelShape.from_config(cfg).total_params() == sum(p.numel() for p in build(cfg).parameters())


@pytest.mark.parametrize("method,targets", [("lora", ["all-linear"]), ("lora", ["q_proj", "v_proj"]),
                                            ("dora", ["all-linear"])])
def test_lora_trainable_count_equals_peft(method, targets):
    from peft import LoraConfig, get_peft_model

    cfg = config("qwen3")
    peft_targets = "all-linear" if targets == ["all-linear"] else targets
    model = get_peft_model(build(cfg), LoraConfig(r=8, lora_alpha=16, target_modules=peft_targets,
                                                  use_dora=method == "dora"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    est = estimate(cfg, method=method, lora_r=8, target_modules=targets, device=GPU)
    assert est.trainable_params == trainable
    assert est.components["adapters"] == 4 * trainable  # fp32 adapters


class _Gpt2Config:  # an architecture estimate does not model
    model_type = "gpt2"


def test_unknown_architecture_and_target_are_errors_naming_the_key():
    with pytest.raises(ConfigError, match="model.name.*gpt2"):
        ModelShape.from_config(_Gpt2Config())
    with pytest.raises(ConfigError, match="method.target_modules.*q_proj"):
        resolve_targets(ModelShape.from_config(config()), ["qkv"])


# --- 4-bit weights and optimizer state ----------------------------------------------------------------


def test_four_bit_bytes():
    n = 64 * 256 * 10
    assert M.quantized_bytes(n, double_quant=False) == n / 2 + n / 64 * 4  # an fp32 absmax per 64 weights
    assert M.quantized_bytes(n, double_quant=True) == n / 2 + n / 64 + n / 64 / 256 * 4
    lora = estimate(config(), method="lora", device=GPU).components["weights"]
    qlora = estimate(config(), method="qlora", device=GPU).components["weights"]
    single = estimate(config(), method="qlora", double_quant=False, device=GPU).components["weights"]
    assert qlora < single < lora


def _state_bytes(opt) -> int:
    seen: dict[int, int] = {}
    for state in opt.state.values():
        for key, v in state.items():
            # step counters are scalars; bitsandbytes' two 256-entry code tables are shared by all tensors
            if torch.is_tensor(v) and key != "step" and not key.startswith("qmap"):
                seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("name", ["adamw", "sgd", "adafactor", "adamw_8bit"])
def test_optimizer_bytes_equal_the_real_state(name):
    shapes = [(96, 64), (64, 96), (176, 64), (64,), (20, 30)]  # (20, 30) < 4096: 32-bit in bitsandbytes
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    if name == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-3)
    elif name == "sgd":
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    elif name == "adafactor":
        opt = torch.optim.Adafactor(params, lr=1e-3)
    else:
        bnb = pytest.importorskip("bitsandbytes")
        opt = bnb.optim.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert M.optimizer_bytes(name, shapes) == _state_bytes(opt)


def test_optimizer_bytes_per_parameter():
    big = [(4096, 4096)]
    n = 4096 * 4096
    assert M.optimizer_bytes("adamw", big) / n == 8
    assert M.optimizer_bytes("sgd", big) / n == 4 and M.optimizer_bytes("sgd", big, momentum=0) == 0
    assert M.optimizer_bytes("adamw_8bit", big) / n == pytest.approx(2 + 8 / 256)
    assert M.optimizer_bytes("adafactor", big) == 4 * (4096 + 4096)


# --- the loss's logits ---------------------------------------------------------------------------------


def test_logits_chunk_rule_equals_the_loss():
    try:  # train/loss.py is moving to models/loss.py; either is the rule's owner
        loss = importlib.import_module("tunelab.models.loss")
    except ImportError:
        loss = importlib.import_module("tunelab.train.loss")
    for vocab in (1000, 49152, 151936):
        cfg = LlamaConfig(**{**DIMS, "vocab_size": vocab}, num_hidden_layers=1)
        assert loss.CausalLMLoss(build(cfg)).chunk_size == M.logits_chunk_rows(vocab)
    assert M.logits_chunk_rows(151936) == 441


def test_logits_stop_growing_past_one_chunk():
    cfg = config(vocab_size=151936)
    rows = M.logits_chunk_rows(151936)
    small, at_chunk, big = (estimate(cfg, method="lora", batch_size=1, seq_len=n, device=GPU, precision="fp32")
                            for n in (rows // 2 + 1, rows + 1, 8 * rows))
    assert small.components["logits"] < at_chunk.components["logits"] == big.components["logits"]
    # fp32, no autocast: the fused head + cross-entropy (models/loss.py) peaks in the forward, with the chunk's
    # logits and the slice of them its log-sum-exp is taken over
    assert M.LSE_ROWS == LSE_ROWS
    assert at_chunk.peak_phase == "forward" and at_chunk.components["logits"] == (rows + LSE_ROWS) * 151936 * 4
    bf16 = estimate(cfg, method="lora", batch_size=1, seq_len=rows + 1, device=GPU, precision="bf16")
    assert bf16.phases["loss backward"] > bf16.phases["forward"]  # log-softmax, its gradient, the logits' gradient
    assert bf16.components["logits"] == rows * 151936 * (3 * 4 + 2) + 2 * 151936 * DIMS["hidden_size"]


# --- activations: the formula against the tensors autograd saves ------------------------------------


def _saved_per_layer(arch: str, *, lora: bool, dropout: float, bf16: bool, gc: bool, targets, r: int = 16,
                     batch: int = 3, seq: int = 40, freeze_below_last: bool = False,
                     recompute: bool = False, packed: bool = False) -> tuple[float, float]:
    """(activation bytes, autocast weight-copy bytes) saved per decoder layer: the difference between a
    3-layer and a 2-layer model, so embeddings, final norm and rotary tables cancel. `packed`: two
    sequences per row (position ids restart), so transformers builds a block-causal mask."""

    def saved(layers: int) -> tuple[int, int]:
        from peft import LoraConfig, get_peft_model

        model = build(config(arch, layers))
        if gc:  # as tunelab: on the transformers model, before peft, non-reentrant
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if freeze_below_last:  # method freeze with freeze_trainable_layers=1
            model.requires_grad_(False)
            model.model.layers[-1].requires_grad_(True)
        if lora:
            peft_targets = "all-linear" if targets == ["all-linear"] else targets
            model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout,
                                                     target_modules=peft_targets))
        if recompute:  # training.recompute_elementwise, as tunelab applies it (after peft)
            assert recompute_elementwise(model) > 0
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
        acts: dict[int, int] = {}
        copies: dict[int, int] = {}

        def pack(t):
            key = t.untyped_storage().data_ptr()
            if key not in params:
                (copies if tuple(t.shape) in shapes else acts)[key] = t.untyped_storage().nbytes()
            return t

        def layer_pack(t):  # inside a decoder layer recompute's hook is the innermost: count what it keeps
            out = real_pack(t)
            return pack(out) if isinstance(out, torch.Tensor) else out

        ids = torch.randint(0, DIMS["vocab_size"], (batch, seq))
        decoder = model.get_base_model().model if lora else model.model
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
        real_pack = recompute_module._pack
        recompute_module._pack = layer_pack
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
                positions = (torch.cat([torch.arange(seq // 2), torch.arange(seq - seq // 2)]) if packed
                             else torch.arange(seq))
                decoder(input_ids=ids, position_ids=positions.repeat(batch, 1), use_cache=False)
        finally:
            recompute_module._pack = real_pack
        return sum(acts.values()), sum(copies.values())

    (a2, c2), (a3, c3) = saved(2), saved(3)
    return (a3 - a2) / (batch * seq), c3 - c2


CASES = [  # arch, lora, dropout, bf16, targets
    ("llama", False, 0.0, False, None),
    ("qwen3", False, 0.0, False, None),
    ("llama", True, 0.05, False, ["all-linear"]),
    ("llama", True, 0.0, False, ["all-linear"]),
    ("llama", True, 0.0, False, ["q_proj", "v_proj"]),
    ("qwen3", True, 0.1, False, ["o_proj", "down_proj"]),
    ("llama", False, 0.0, True, None),
    ("qwen3", False, 0.0, True, None),
    ("llama", True, 0.05, True, ["all-linear"]),
    ("qwen3", True, 0.0, True, ["q_proj", "gate_proj"]),
]


@pytest.mark.parametrize("arch,lora,dropout,bf16,targets", CASES)
def test_layer_activations_equal_the_saved_tensors(arch, lora, dropout, bf16, targets):
    shape = ModelShape.from_config(config(arch))
    adapted = resolve_targets(shape, targets) if lora else []
    per_token, copies = _saved_per_layer(arch, lora=lora, dropout=dropout, bf16=bf16, gc=False, targets=targets)
    assert per_token == M.layer_activations(shape, trained=not lora, adapted=adapted, r=16, dropout=dropout > 0,
                                            bf16=bf16)
    expected_copies = M.weight_copies(shape, adapted=adapted, r=16, quantized=False) if bf16 else 0
    assert copies == expected_copies


@pytest.mark.parametrize("arch,lora,dropout,bf16,targets", CASES + [("llama", True, 0.0, True, ["all-linear"])])
def test_layer_activations_with_elementwise_recompute_equal_the_saved_tensors(arch, lora, dropout, bf16, targets):
    """training.recompute_elementwise (models/recompute.py): what the decoder layers still keep."""
    shape = ModelShape.from_config(config(arch))
    adapted = resolve_targets(shape, targets) if lora else []
    per_token, _ = _saved_per_layer(arch, lora=lora, dropout=dropout, bf16=bf16, gc=False, targets=targets,
                                    recompute=True)
    assert per_token == M.layer_activations(shape, trained=not lora, adapted=adapted, r=16, dropout=dropout > 0,
                                            bf16=bf16, recompute=True)
    assert per_token < M.layer_activations(shape, trained=not lora, adapted=adapted, r=16, dropout=dropout > 0,
                                           bf16=bf16)


@pytest.mark.parametrize("arch,lora,dropout,bf16,targets", [CASES[1], CASES[3], CASES[7]])
def test_packed_rows_keep_grouped_heads_once_with_elementwise_recompute(arch, lora, dropout, bf16, targets):
    """With a mask (packed rows) transformers repeats the key/value heads to every query head before the
    kernel, which keeps the copies; recompute_elementwise's attention (models/recompute.py) hands the kernel
    the groups as they are, so a packed row keeps what the formula says, as an unpacked one does."""
    shape = ModelShape.from_config(config(arch))
    adapted = resolve_targets(shape, targets) if lora else []
    kw = dict(lora=lora, dropout=dropout, bf16=bf16, gc=False, targets=targets, packed=True)
    formula = M.layer_activations(shape, trained=not lora, adapted=adapted, r=16, dropout=dropout > 0, bf16=bf16,
                                  recompute=True)
    assert _saved_per_layer(arch, recompute=True, **kw)[0] == formula
    # without it: the repeated key/value heads, and the kernel's own float copy of the boolean mask (40 x 40
    # per row of 40 tokens: 40 floats per token, in every layer)
    size = M.BF16 if bf16 else M.FP32
    assert _saved_per_layer(arch, **kw)[0] == M.layer_activations(
        shape, trained=not lora, adapted=adapted, r=16, dropout=dropout > 0, bf16=bf16) + (
        2 * (shape.q_dim - shape.kv_dim) + 40) * size


@pytest.mark.parametrize("lora,bf16", [(False, False), (True, False), (False, True)])
def test_checkpointing_keeps_only_each_layer_input(lora, bf16):
    per_token, _ = _saved_per_layer("llama", lora=lora, dropout=0.05, bf16=bf16, gc=True, targets=["all-linear"])
    assert per_token == 4 * DIMS["hidden_size"]  # the fp32 residual stream entering the layer


def test_frozen_layers_below_the_trained_ones_save_nothing():
    per_token, copies = _saved_per_layer("llama", lora=False, dropout=0.0, bf16=True, gc=False, targets=None,
                                         freeze_below_last=True)
    assert per_token == 0 and copies == 0
    cfg = config("llama", layers=6)
    full = estimate(cfg, method="full", device=GPU, batch_size=4, seq_len=256)
    freeze = estimate(cfg, method="freeze", freeze_trainable_layers=2, device=GPU, batch_size=4, seq_len=256)
    assert freeze.activations_per_layer_bytes == full.activations_per_layer_bytes
    assert freeze.components["activations"] < full.components["activations"] / 2


# --- the whole estimate ------------------------------------------------------------------------------


def test_more_tokens_more_activations_and_checkpointing_reduces_them():
    cfg = config("qwen3", layers=4)
    acts = [estimate(cfg, method="full", batch_size=b, seq_len=n, device=GPU, precision="fp32",
                     supervised_fraction=0.5).activations_per_layer_bytes for b, n in ((1, 128), (2, 128), (2, 256))]
    assert acts[0] < acts[1] < acts[2] and acts[1] == 2 * acts[0]
    for method in ("full", "lora", "qlora"):
        off = estimate(cfg, method=method, batch_size=8, seq_len=1024, device=GPU)
        on = estimate(cfg, method=method, batch_size=8, seq_len=1024, device=GPU, grad_checkpointing=True)
        assert on.peak_bytes < off.peak_bytes, method
    assert estimate(cfg, device=GPU, seq_len=256).step_time_s < estimate(cfg, device=GPU, seq_len=512).step_time_s
    # accumulation: the second micro-batch's backward runs beside the first one's gradients
    one = estimate(cfg, method="full", device=GPU, batch_size=8, seq_len=512)
    two = estimate(cfg, method="full", device=GPU, batch_size=8, seq_len=512, grad_accum=2)
    assert two.peak_bytes > one.peak_bytes and two.components["gradients"] == 4 * two.total_params


def test_components_sum_to_the_peak_and_cpu_adds_its_own_terms():
    cfg = config("llama")
    gpu = estimate(cfg, method="full", device=GPU)
    cpu = estimate(cfg, method="full", device=CPU)
    assert sum(gpu.components.values()) == pytest.approx(gpu.peak_bytes)
    assert sum(cpu.components.values()) == pytest.approx(cpu.peak_bytes)
    assert "framework" not in gpu.components and cpu.components["framework"] > 0
    assert gpu.inputs["precision"] == "bf16" and cpu.inputs["precision"] == "fp32"
    # full fine-tuning with AdamW: fp32 weights, gradients and two states are 16 bytes per parameter
    n = ModelShape.from_config(cfg).total_params()
    opt_phase = estimate(cfg, method="full", device=GPU, batch_size=1, seq_len=8).phases["optimizer step"]
    assert opt_phase == 16 * n


def test_sharding_divides_per_process_memory():
    cfg = config("qwen3", layers=4)
    one = estimate(cfg, method="full", device=GPU)
    zero2 = estimate(cfg, method="full", device=GPU, nproc=4, strategy="zero2")
    zero3 = estimate(cfg, method="full", device=GPU, nproc=4, strategy="zero3")
    ddp = estimate(cfg, method="full", device=GPU, nproc=4, strategy="ddp")
    assert zero2.components["optimizer"] == one.components["optimizer"] / 4
    assert zero3.components["weights"] == one.components["weights"] / 4
    assert ddp.peak_bytes > one.peak_bytes > zero2.peak_bytes > zero3.peak_bytes


def test_device_profiles():
    assert resolve_device("h100").memory_bytes == 81559 * 2**20  # MiB as nvidia-smi reports them
    assert resolve_device("A100-40GB").memory_bytes == 40 * 2**30
    assert resolve_device("rtx 4090").name == "RTX-4090"
    h100, l4 = resolve_device("H100"), resolve_device("L4")
    assert h100.achievable_flops(True) > l4.achievable_flops(True)
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu-v9")


# --- from a tunelab config, and the command -------------------------------------------------------------


def _write_config(tmp_path, **extra):
    text = ("model:\n  name: tiny-qwen3\nmethod:\n  name: full\noptimizer:\n  name: adamw\n"
            "data:\n  max_length: 256\ntraining:\n  batch_size: 2\n")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_estimate_from_config_reads_the_models_config(tmp_path, tiny_qwen):
    from tunelab import config as C
    from tunelab.estimate import estimate_from_config

    cfg = C.load(_write_config(tmp_path), ["method.name=lora", "method.lora_r=8"])
    est = estimate_from_config(cfg, device="H100")
    assert est.total_params == sum(p.numel() for p in tiny_qwen.parameters())
    assert est.inputs["batch_size"] == 2 and est.inputs["seq_len"] == 256 and est.inputs["lora_r"] == 8
    assert est.tokens_per_step == 512 and est.supervised_tokens_per_step == 510  # a row's first token: never


def _run(argv):
    from tunelab.estimate import command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    return command.run(parser.parse_args(["estimate", *argv]))


def test_command_prints_a_table_and_json(tmp_path, capsys):
    path = str(_write_config(tmp_path))
    assert _run([path, "training.batch_size=4", "--device", "H100"]) == 0
    out = capsys.readouterr().out
    for word in ("weights", "gradients", "optimizer", "activations", "logits", "peak", "step time", "fits"):
        assert word in out, word
    assert _run([path, "--device", "cpu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs"]["batch_size"] == 2 and doc["device"].startswith("CPU")
    assert sum(doc["components"].values()) == pytest.approx(doc["peak_bytes"])
    assert doc["fits"] is True and doc["step_time_s"] > 0 and math.isfinite(doc["device_flops"])
    with pytest.raises(ConfigError, match="--device"):
        _run([path, "--device", "abacus"])


def test_summary_entry_records_estimate_measured_and_error():
    from tunelab.estimate.check import baseline_mb, current_rss_mb, summary_entry

    est = estimate(config(), method="lora", device=CPU)
    base = baseline_mb("cpu")
    assert base > 0 and baseline_mb("cuda:0") == 0 and abs(current_rss_mb() - base) < 200
    entry = summary_entry(est, peak_mb=base + est.peak_mb / 2, baseline_mb=base, kind="cpu_peak_rss")
    assert entry["error"] == pytest.approx(1.0, abs=1e-3)
    assert entry["measured_mb"] == pytest.approx(est.peak_mb / 2, abs=0.1)
    assert entry["peak_phase"] == est.peak_phase and set(entry["components_mb"]) == set(est.components)
    # a CPU peak reached before the model loaded (data preparation) hides the training's own peak
    hidden = summary_entry(est, peak_mb=base + 500, baseline_mb=base, kind="cpu_peak_rss", peak_before_mb=base + 500)
    assert hidden["measured_mb"] is None and hidden["error"] is None and hidden["estimate_mb"] == entry["estimate_mb"]
    # the report's resource table shows both, with the error in percent
    from tunelab.experiment.report import RESOURCE_COLS, _estimate_cell

    assert "estimate vs measured MB (error)" in RESOURCE_COLS
    assert _estimate_cell(entry) == f"{entry['estimate_mb']:,.0f} vs {entry['measured_mb']:,.0f} (+100.0%)"
    assert _estimate_cell(hidden).endswith("(measured: n/a)") and _estimate_cell(None) == "-"


def test_a_cpu_throughput_measured_on_a_busy_machine_is_measured_again_once_it_is_quiet(monkeypatch, tmp_path):
    """This machine's cache was written under a load of 3-6 per core and said 32 GFLOP/s where a quiet
    measurement gives 212: every CPU step time was 7x too long, and nothing ever measured it again."""
    from tunelab.estimate import devices as D

    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    rates = {"float32": 30e9, "bfloat16": 90e9}
    monkeypatch.setattr(D, "_measure", lambda device, dtype: rates[dtype])
    monkeypatch.setattr(D, "cpu_load", lambda: 3.0)
    busy = D.cpu_profile()
    assert busy.fp32_flops == 30e9 and "measured at load 3.0 per core" in busy.name
    rates.update(float32=210e9, bfloat16=80e9)
    assert D.cpu_profile().fp32_flops == 30e9  # still busy: the cache is used, nothing measured again
    monkeypatch.setattr(D, "cpu_load", lambda: 0.2)
    quiet = D.cpu_profile()
    assert (quiet.fp32_flops, quiet.bf16_flops) == (210e9, 90e9)  # the faster of the two, per dtype
    assert "load" not in quiet.name
    rates.update(float32=1e9)
    assert D.cpu_profile().fp32_flops == 210e9  # a quiet measurement is kept: nothing measured again


def test_measuring_the_cpu_leaves_the_global_random_state_alone(monkeypatch, tmp_path):
    """`tunelab train` seeds, then estimates, then initialises LoRA: a first estimate on a machine (no
    cached throughput) drew its matmul operands from the global generator and changed the run's LoRA
    weights (the quickstart's LoRA final loss 0.1057 became 0.1095)."""
    import torch

    from tunelab.estimate import devices as D

    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    monkeypatch.setattr(D, "_measure", functools.partial(D._measure, n=64, repeat=1))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    D.cpu_profile()
    assert (tmp_path / "estimate").is_dir()  # it measured
    assert torch.equal(torch.rand(3), expected)

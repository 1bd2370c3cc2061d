"""Pretraining from scratch end to end: a custom size and another tokenizer from the config, a data
mixture, the parameter count and FLOPs in the summary, and a model that reloads with plain transformers."""
from __future__ import annotations

import json

import torch

from tunelab import config as C
from tunelab.train.recipe import train


def test_from_scratch_with_a_custom_size_a_tokenizer_and_a_mixture(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    (corpus / "b.md").write_text("小明有三个苹果，又买了两个。现在他有五个苹果。" * 30)
    run = tmp_path / "run"
    cfg = C.load(None, [
        "stage=pt", "model.name=tiny-qwen3", "model.tokenizer=smollm2-135m-instruct", "model.from_scratch=true",
        "model.arch.layers=2", "model.arch.hidden_size=48", "model.arch.heads=4", "model.arch.kv_heads=2",
        "model.arch.intermediate_size=96", "model.arch.context_length=256",
        f"data.mix=[{{name: {corpus}, weight: 1}}, {{name: arith_en, weight: 1, format: text, columns: {{text: solution}}}}]",
        "data.n=40", "data.max_length=64", "data.val_size=2", "data.dedup=none", "method.name=full",
        "training.max_steps=2", "training.batch_size=2", f"output.dir={run}"])
    summary = train(cfg)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_key_value_heads, c.max_position_embeddings) == (2, 48, 2, 256)
    assert c.vocab_size == 49152  # SmolLM2's tokenizer, not Qwen3's 151,936 rows
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "model")
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the tokenizer's, none of Qwen3's 151k ids
        assert getattr(c, attr) == getattr(tok, attr) == getattr(model.generation_config, attr), attr
    assert summary["total_params"] == sum(p.numel() for p in model.parameters())
    assert summary["flops_per_token"] == 6 * summary["total_params"] + 12 * 2 * 48 * 64
    sources = summary["data_sources"]
    assert set(sources) == {str(corpus), "arith_en"} and sources[str(corpus)]["drawn"] == sources["arith_en"]["drawn"]
    with torch.no_grad():
        out = model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 49152)
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["tokens_in"] == stats["tokens"]


def test_every_run_records_its_estimate_next_to_the_measured_peak(tmp_path, capsys):
    cfg = C.load(None, ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=24", "data.val_size=4",
                        "data.max_length=256", "data.dedup=exact", "data.packing=false", "method.lora_r=4",
                        "training.max_steps=2",
                        "training.batch_size=2", f"output.dir={tmp_path / 'run'}"])
    summary = train(cfg)
    assert "estimate before training" in capsys.readouterr().out  # printed before the model loads
    e = summary["estimate"]
    assert e["estimate_mb"] > 0 and e["kind"] == "cpu_peak_rss" and e["peak_phase"]
    if e["measured_mb"] is not None:  # None when tokenizing peaked higher than this tiny training
        assert abs(e["measured_mb"] - (summary["peak_mem_mb"] - e["baseline_mb"])) <= 0.2
        assert abs(e["error"] - (e["estimate_mb"] - e["measured_mb"]) / e["measured_mb"]) <= 1e-3  # rounding
        assert abs(e["error"]) < 0.5  # the bench measures the real error; this only catches a broken wiring
    assert set(e["components_mb"]) >= {"weights", "adapters", "optimizer", "activations", "logits"}

    # made for the rows this run trains on, not for data.max_length: unpacked, the widest row is the longest
    # training example (the quickstart study over-estimated its LoRA run by 23% at 256 tokens per row where
    # its rows held at most 195)
    from tunelab.data.prepare import prepare_from_config
    from tunelab.estimate import estimate_from_config
    from tunelab.models.load import load_tokenizer

    lengths = [len(x) for x in prepare_from_config(cfg, load_tokenizer("tiny-qwen3")).load("train")["input_ids"]]
    assert max(lengths) < 256
    at = {n: round(estimate_from_config(cfg, device="cpu", supervised_fraction=summary_fraction(tmp_path),
                                        seq_len=n).peak_mb, 1) for n in (max(lengths), 256)}
    assert e["estimate_mb"] == at[max(lengths)] < at[256]

    # `tunelab estimate --data` prepares the same data and says the same before any training
    import yaml

    from tunelab.cli import main

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(C.to_dict(cfg)))
    capsys.readouterr()
    assert main(["estimate", str(tmp_path / "cfg.yaml"), "--data", "--device", "cpu", "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert round(said["peak_bytes"] / 2**20, 1) == e["estimate_mb"] and said["inputs"]["seq_len"] == max(lengths)


def summary_fraction(tmp_path) -> float:
    return json.loads((tmp_path / "run" / "data_stats.json").read_text())["supervised_fraction"]

"""The typed config: defaults, YAML, overrides, strict errors, round trip, and every shipped YAML parses."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunelab import config as C

REPO = Path(__file__).resolve().parents[1]


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: tiny-qwen3\ntraining:\n  batch_size: 2\noptimizer:\n  lr: 1e-5\n")
    cfg = C.load(path, ["training.batch_size=8", "method.target_modules=[q_proj,v_proj]", "data.columns={a: b}",
                        "method.name=qlora", "data.limit=null"])
    assert cfg.model.name == "tiny-qwen3"
    assert cfg.training.batch_size == 8
    assert cfg.optimizer.lr == 1e-5 and isinstance(cfg.optimizer.lr, float)  # YAML 1.1 reads 1e-5 as a string
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.method.name == "qlora" and cfg.data.columns == {"a": "b"} and cfg.data.limit is None
    assert cfg.training.epochs == 1.0 and cfg.data.name == "arith"  # defaults


def test_single_string_becomes_list_and_int_becomes_float():
    cfg = C.load(None, ["method.target_modules=q_proj", "training.epochs=3"])
    assert cfg.method.target_modules == ["q_proj"]
    assert cfg.training.epochs == 3.0 and isinstance(cfg.training.epochs, float)


@pytest.mark.parametrize("override,message", [
    ("training.batchsize=3", "unknown config key 'training.batchsize' (did you mean 'training.batch_size'?)"),
    ("training.batch_size=abc", "config key 'training.batch_size': expected int, got 'abc' (str)"),
    ("method.name=ia3", "config key 'method.name': expected one of 'full', 'freeze', 'lora'"),
    ("training.gradient_checkpointing=3", "expected bool, got 3"),
    ("nosection.x=1", "unknown config key 'nosection'"),
    ("training=3", "config key 'training': expected a mapping"),
    ("novalue", "must look like key.sub=value"),
])
def test_errors_name_the_key_value_and_allowed(override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load(None, [override])
    assert message in str(e.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: 1\n")
    with pytest.raises(C.ConfigError, match=r"bad.yaml: unknown config key 'training.lr'"):
        C.load(bad)
    with pytest.raises(C.ConfigError, match="config file not found"):
        C.load(tmp_path / "missing.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = C.load(None, ["data.name=gsm8k", "optimizer.betas=[0.9,0.95]", "data.system_prompt=你好"])
    C.save(cfg, tmp_path / "config.yaml")
    assert C.load(tmp_path / "config.yaml") == cfg


SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_parses_and_is_headed_by_its_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# tunelab "), f"{path} must start with the command that runs it"
    C.load(path)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    import yaml

    text = path.read_text()
    assert text.startswith("# accelerate launch") or text.startswith("# On every machine")
    cfg = yaml.safe_load(text)
    assert cfg["distributed_type"] in ("FSDP", "DEEPSPEED", "MULTI_GPU")
    assert cfg["num_processes"] >= cfg["num_machines"] >= 1


def test_registry_names_in_the_schema_equal_the_registries():
    """The config checks names at load time without importing torch; the lists must stay the registries'."""
    import typing

    from tunelab.data.formats import FORMATS
    from tunelab.data.templates import TEMPLATES
    from tunelab.train.methods import METHODS
    from tunelab.train.optim import OPTIMIZERS, SCHEDULES

    assert set(typing.get_args(C.Format)) == {"auto", *FORMATS}
    assert set(typing.get_args(C.Template)) == {"auto", "tokenizer", *TEMPLATES}
    assert set(typing.get_args(C.Method)) == set(METHODS)
    assert set(typing.get_args(C.Optimizer)) == set(OPTIMIZERS)
    assert set(typing.get_args(C.Schedule)) == set(SCHEDULES)


@pytest.mark.parametrize("override,message", [
    ("training.batch_size=0", "'training.batch_size': expected at least 1, got 0"),
    ("training.grad_accum=0", "'training.grad_accum': expected at least 1, got 0"),
    ("optimizer.lr=-1e-3", "'optimizer.lr': expected above 0, got -0.001"),
    ("schedule.warmup_ratio=3", "'schedule.warmup_ratio': expected in [0, 1], got 3.0"),
    ("method.lora_r=0", "'method.lora_r': expected at least 1, got 0"),
    ("optimizer.betas=[0.9]", "'optimizer.betas': expected two numbers in [0, 1)"),
    ("training.keep_last=0", "'training.keep_last': expected at least 1"),
    ("optimizer.name=adam", "'optimizer.name': expected one of 'adamw', 'sgd'"),
    ("schedule.name=step", "'schedule.name': expected one of 'constant', 'linear', 'cosine'"),
    ("data.format=csv", "'data.format': expected one of 'auto', 'alpaca'"),
    ("output.report_to=[tensorboard]", "'output.report_to[0]': expected one of 'wandb', 'swanlab'"),
    ("data.val_size=1.5", "'data.val_size': expected a fraction in [0, 1) or a whole count"),
    ("evaluation.top_p=0", "'evaluation.top_p': expected in (0, 1]"),
])
def test_bad_values_are_refused_at_load_time(override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load(REPO / "configs/quickstart.yaml", [override])
    assert message in str(e.value) and "quickstart.yaml" in str(e.value)


def test_bad_value_exits_2_before_anything_loads(tmp_path, capsys):
    from tunelab.cli import main

    assert main(["train", str(REPO / "configs/quickstart.yaml"), "training.batch_size=0",
                 f"output.dir={tmp_path / 'run'}"]) == 2
    assert "config key 'training.batch_size': expected at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_every_key_is_documented_and_the_docs_page_is_generated():
    rows = C.describe()
    assert len(rows) > 60 and all(doc for _, _, _, doc in rows), [k for k, _, _, d in rows if not d]
    # docs/config.md is filled with C.markdown_table() when the site is built (docs/hooks.py), never by hand
    assert "<!-- config-table -->" in (REPO / "docs" / "config.md").read_text(encoding="utf-8")

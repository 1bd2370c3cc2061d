"""The launch form is the CLI: its fields are `tunelab config`'s keys, its errors are the CLI's messages,
and the command it shows resolves to the config it checked.

    .venv/bin/python -m pytest tests/ui/test_launch.py -q
"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from tests.ui.conftest import fake_run


@pytest.fixture
def roots(tmp_path):
    from tunelab.ui.roots import Roots

    (tmp_path / "runs").mkdir()
    return Roots([tmp_path / "runs"])


def test_fields_are_the_config_keys():
    from tunelab import config as C
    from tunelab.ui.launch import fields

    got = fields()
    assert [f["key"] for f in got] == [row[0] for row in C.describe()]
    by_key = {f["key"]: f for f in got}
    assert by_key["method.name"]["choices"] == ["full", "freeze", "lora", "lora_plus", "dora", "qlora"]
    assert by_key["training.gradient_checkpointing"]["input"] == "bool"
    assert by_key["optimizer.lr"]["input"] == "text"


@pytest.mark.parametrize("bad", ["training.batch_size=abc", "training.batchsize=4", "optimizer.lr=-1",
                                 "method.name=lorra", "optimizer.betas=[0.9]"])
def test_errors_are_the_cli_messages(roots, tmp_path, bad):
    from tunelab import config as C
    from tunelab.errors import ConfigError
    from tunelab.ui.launch import check_train

    key, value = bad.split("=", 1)
    with pytest.raises(ConfigError) as cli:
        C.load(None, [bad])
    with pytest.raises(ConfigError) as ui:
        check_train(roots, tmp_path, None, {key: value, "output.dir": "runs/x"})
    assert str(ui.value) == str(cli.value)


def test_the_command_shown_resolves_to_the_checked_config(roots, tmp_path):
    from tunelab import config as C
    from tunelab.cli import build_parser
    from tunelab.ui.launch import check_train

    values = {"model.name": "tiny-qwen3", "method.target_modules": "[q_proj, v_proj]", "optimizer.lr": "2e-4",
              "data.system_prompt": "You are terse.", "output.dir": "runs/new"}
    c = check_train(roots, tmp_path, None, values)
    # no base: the changed keys as launch.yaml, then `tunelab train launch.yaml`
    assert c["command"].endswith("\ntunelab train launch.yaml")
    (tmp_path / "launch.yaml").write_text(c["launch_yaml"])
    args = build_parser().parse_args(c["argv"])
    assert C.to_dict(C.load(tmp_path / args.config, args.overrides)) == yaml.safe_load(c["resolved"])
    # from an earlier run's config: `tunelab train BASE key=value ...`
    fake_run(tmp_path / "runs" / "old")
    c = check_train(roots, tmp_path, "0/old", {"optimizer.lr": "3e-4", "output.dir": "runs/new2"})
    assert c["command"] == "tunelab train runs/old/config.yaml optimizer.lr=3e-4 output.dir=runs/new2"
    args = build_parser().parse_args(shlex.split(c["command"])[1:])
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        resolved = C.to_dict(C.load(args.config, args.overrides))
    finally:
        os.chdir(here)
    assert resolved == yaml.safe_load(c["resolved"]) and resolved["model"]["name"] == "tiny-qwen3"


def test_outputs_and_inputs_stay_under_the_roots(roots, tmp_path):
    from tunelab.errors import OutputExistsError, UserError
    from tunelab.ui.launch import check_eval, check_train

    fake_run(tmp_path / "runs" / "old")
    with pytest.raises(OutputExistsError, match="exists and is not empty"):
        check_train(roots, tmp_path, None, {"output.dir": "runs/old"})
    with pytest.raises(UserError, match="outside the directories"):
        check_train(roots, tmp_path, None, {"output.dir": "elsewhere"})
    (tmp_path / "data.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(UserError, match="outside the directories"):
        check_train(roots, tmp_path, None, {"output.dir": "runs/n", "data.name": "data.jsonl"})
    check_train(roots, tmp_path, None, {"output.dir": "runs/n", "data.name": "gsm8k"})  # a built-in name
    with pytest.raises(UserError, match="unknown task"):
        check_eval(roots, tmp_path, "tiny-qwen3", "no_task", 5, None, "runs/e")
    c = check_eval(roots, tmp_path, "0/old", "arith_en", "5", "", "runs/e")
    assert c["command"] == "tunelab eval --model runs/old --task arith_en --output runs/e --limit 5"


def test_experiment_form_is_checked_by_the_experiment_loader(roots, tmp_path):
    from tunelab.errors import ConfigError
    from tunelab.ui.launch import check_experiment

    ok = check_experiment(roots, tmp_path, None, {"model.name": "tiny-qwen3"}, "lora: {}\nfull: {method.name: full}",
                          {"tasks": ["arith_en"], "limit": 4}, "runs/study")
    spec = yaml.safe_load(ok["spec_yaml"])
    assert spec["variants"] == {"lora": {}, "full": {"method.name": "full"}}
    assert Path(spec["output"]) == (tmp_path / "runs" / "study").resolve()
    with pytest.raises(ConfigError, match="variant 'full'.*method.nam"):
        check_experiment(roots, tmp_path, None, {}, "full: {method.nam: full}", {}, "runs/study")


def test_resume_and_export_commands_parse_as_the_cli(roots, tmp_path):
    from tunelab.cli import build_parser
    from tunelab.ui.launch import export_argv, resume_argv

    run = fake_run(tmp_path / "runs" / "a", finished=False, checkpoint=2)
    args = build_parser().parse_args(resume_argv(run, tmp_path))
    assert (args.command, args.config, args.overrides, args.resume) == \
        ("train", "runs/a/config.yaml", ["output.dir=runs/a"], True)
    argv, out = export_argv(roots, run, "runs/a-export", "bf16", tmp_path)
    args = build_parser().parse_args(argv)
    assert (args.run_dir, args.output, args.dtype) == ("runs/a", "runs/a-export", "bf16")

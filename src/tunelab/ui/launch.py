"""The launch form: the typed config as fields, checked as the CLI checks it, turned into the CLI command.

- The fields are `config.describe()` (key, type, default, meaning), the table `tunelab config` prints.
- A form is checked by `config.load(base, ["key=value", ...])`, the function `tunelab train` calls on
  its arguments, so the form shows the CLI's own ConfigError message, word for word.
- The command shown is the command run: `tunelab train BASE key=value ...` (BASE a config under the
  roots, e.g. an earlier run's config.yaml), or, with no base, the changed keys written as a YAML file
  (`launch.yaml`, shown with the command, copyable as one shell snippet).
- With training.max_memory set, the check also returns the memory plan `tunelab train --max-memory`
  would start from (estimate/plan.py, for rows of data.max_length: train plans again for its data's
  widest row), and the command passes the budget as `--max-memory`.
- Every path in the form (output.dir, a data file, a local model, an eval's output) must lie inside
  the roots: the board never makes tunelab read or write elsewhere. Names that are not paths (built-in
  models and data sets, hub ids) pass.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UserError
from .jobs import command_line
from .roots import Roots

PATH_KEYS = ("model.name", "model.tokenizer", "data.name")


def fields() -> list[dict[str, Any]]:
    """The form's fields: every config key with its type, default, meaning and, for a closed set of
    values, the choices."""
    from .. import config as C

    out = []
    for key, tp, default, doc in C.describe():
        choices = None
        if tp.startswith("one of ") and " or " not in tp:
            choices = [str(c) for c in ast.literal_eval("(" + tp[len("one of "):] + ",)")]
        kind = "bool" if tp == "bool" else ("choice" if choices else "text")
        out.append({"key": key, "type": tp, "default": default, "doc": doc, "choices": choices, "input": kind})
    return out


def tasks() -> list[dict[str, str]]:
    from ..evaluate.tasks import TASKS

    return [{"name": t.name, "description": t.description} for t in TASKS.values()]


def shown_path(path: Path, cwd: Path) -> str:
    """A path as the command shows it: relative to the board's working directory when inside it."""
    rel = os.path.relpath(path, cwd)
    return path.as_posix() if rel.startswith("..") else rel


def _inside(roots: Roots, value: str, cwd: Path, what: str) -> Path:
    p = Path(value).expanduser()
    p = (p if p.is_absolute() else cwd / p).resolve()
    if not roots.contains(p):
        raise ConfigError(f"{what} {value!r} is outside the directories given to tunelab ui "
                          f"({', '.join(roots.given)}); the board writes only there")
    return p


def _base(roots: Roots, base_id: str | None) -> Path | None:
    if not base_id:
        return None
    p = roots.path(base_id)
    if p.is_dir():
        p = p / "config.yaml"
    if roots.file(p.parent, p.name) is None:
        raise ConfigError(f"{roots.label(p)}: no config file there")
    return p


def flat_values(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved config as {key: value written as `tunelab config` writes defaults}, to fill the form."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and f"{prefix}{k}" != "data.columns":
            out.update(flat_values(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = yaml.safe_dump(v, default_flow_style=True, allow_unicode=True
                                                 ).strip().removesuffix("...").strip()
    return out


def overrides_of(values: dict[str, Any]) -> list[str]:
    """{key: text as typed} -> ["key=text", ...], as the command line takes them (YAML values)."""
    return [f"{k}={'' if v is None else v}" for k, v in values.items()]


def check_train(roots: Roots, cwd: Path, base_id: str | None, values: dict[str, str]) -> dict[str, Any]:
    """The resolved config and the command, or a ConfigError/UserError with the CLI's message."""
    from .. import config as C
    from ..paths import check_writable

    base = _base(roots, base_id)
    overrides = overrides_of(values)
    cfg = C.load(base, overrides)  # exactly what `tunelab train BASE key=value ...` does first
    for key in PATH_KEYS:
        v = C.get_path(cfg, key)
        if v:
            roots.resolve_user_path(str(v), cwd)
    for m in cfg.data.mix:
        roots.resolve_user_path(m.name, cwd)
    out = _inside(roots, cfg.output.dir, cwd, "output.dir")
    check_writable(out, False, kind="run")  # a non-empty run directory is refused before launching
    budget = cfg.training.max_memory
    if budget:  # shown as the flag it is (the same key): `tunelab train ... --max-memory 6GB`
        overrides = [o for o in overrides if C.parse_override(o)[0] != "training.max_memory"]
    tree: dict[str, Any] = {}
    for o in overrides:
        k, v = C.parse_override(o)
        C.set_path(tree, k, v)
    if base is not None:
        argv = ["train", shown_path(base, cwd), *overrides]
        launch_yaml = None
    else:
        launch_yaml = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
        argv = ["train", "launch.yaml"]
    if budget:
        argv += ["--max-memory", budget]
    shell = command_line(argv) if base is not None else f"cat > launch.yaml <<'EOF'\n{launch_yaml}EOF\n{command_line(argv)}"
    return {"ok": True, "argv": argv, "command": shell, "launch_yaml": launch_yaml, "target": str(out),
            "resolved": yaml.safe_dump(C.to_dict(cfg), sort_keys=False, allow_unicode=True),
            "flat": flat_values(C.to_dict(cfg)), **(memory_plan(cfg) if budget else {})}


def memory_plan(cfg: Any) -> dict[str, Any]:
    """{"plan": ...} for the form: the plan of training.max_memory on this machine's device (the GPU
    present, else the CPU) for rows of data.max_length, with the CPU's resident baseline as `tunelab
    estimate` takes it; or {"plan_error": message} (an impossible budget at that length, a model whose
    config cannot be read). Not a refusal: train plans again for its data's widest row, which is shorter."""
    from ..estimate.command import default_device, process_baseline_mb
    from ..estimate.devices import resolve_device
    from ..estimate.plan import parse_budget, plan_for_budget

    try:
        device = resolve_device(default_device())
        plan = plan_for_budget(cfg, parse_budget(cfg.training.max_memory), device=device,
                               baseline_mb=process_baseline_mb(device))
    except UserError as e:
        return {"plan_error": str(e)}
    return {"plan": {**plan.to_dict(), "line": plan.line(cfg.training.max_memory), "device": device.name,
                     "rows": cfg.data.max_length}}


def check_experiment(roots: Roots, cwd: Path, base_id: str | None, values: dict[str, str], variants: str,
                     evaluation: dict[str, Any], output: str, name: str | None = None) -> dict[str, Any]:
    """An experiment spec from the form (base config + common overrides, variants, evaluation, output),
    checked by `experiment.spec.load`, the loader `tunelab run` uses."""
    from .. import config as C
    from ..experiment import spec as S

    base = _base(roots, base_id)
    common = {}
    for o in overrides_of(values):
        k, v = C.parse_override(o)
        common[k] = v
    try:
        var = yaml.safe_load(variants or "") or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"variants: not valid YAML: {e}") from None
    if not isinstance(var, dict):
        raise ConfigError("variants: a mapping of variant names to overrides, e.g. `lora: {}` and "
                          "`full: {method.name: full, optimizer.lr: 1.0e-5}`")
    out = _inside(roots, output, cwd, "output")
    spec = {"name": name or out.name, "base": str(base) if base else {}, "overrides": common, "variants": var,
            "evaluation": {k: v for k, v in evaluation.items() if v not in (None, "", [])}, "output": str(out)}
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "experiment.yaml").write_text(text, encoding="utf-8")
        exp = S.load(Path(tmp) / "experiment.yaml")  # every variant's config checked, as `tunelab run` does
    for cfg in exp.variants.values():
        for key in PATH_KEYS:
            v = C.get_path(cfg, key)
            if v:
                roots.resolve_user_path(str(v), cwd)
    argv = ["run", "experiment.yaml"]
    return {"ok": True, "argv": argv, "spec_yaml": text, "target": str(out),
            "command": f"cat > experiment.yaml <<'EOF'\n{text}EOF\n{command_line(argv)}"}


def check_eval(roots: Roots, cwd: Path, model: str, task: str, limit: Any, max_new_tokens: Any,
               output: str) -> dict[str, Any]:
    from ..evaluate.tasks import TASKS

    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; known: {', '.join(TASKS)}")
    m = model_ref(roots, model, cwd)
    out = _inside(roots, output, cwd, "output")
    argv = ["eval", "--model", m, "--task", task, "--output", shown_path(out, cwd)]
    for flag, v in (("--limit", limit), ("--max-new-tokens", max_new_tokens)):
        if v not in (None, ""):
            try:
                n = int(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{flag}: expected a whole number, got {v!r}") from None
            if n < 1:
                raise ConfigError(f"{flag}: expected at least 1, got {n}")
            argv += [flag, str(n)]
    return {"ok": True, "argv": argv, "command": command_line(argv), "target": str(out)}


def model_ref(roots: Roots, value: str, cwd: Path) -> str:
    """A model for chat, eval or export: a path id under the roots, or a built-in model name."""
    from ..models.builtin import BUILTINS

    if value in BUILTINS:
        return value
    try:
        p = roots.path(value)
    except UserError:
        p = roots.resolve_user_path(value, cwd)
        if p is None:
            raise ConfigError(f"model {value!r}: not a built-in model ({', '.join(BUILTINS)}) and not a "
                              "directory under the roots") from None
    if not p.is_dir():
        raise ConfigError(f"model {roots.label(p)}: not a directory")
    return shown_path(p, cwd)


def resume_argv(run: Path, cwd: Path) -> list[str]:
    return ["train", shown_path(run / "config.yaml", cwd), f"output.dir={shown_path(run, cwd)}", "--resume"]


def export_argv(roots: Roots, run: Path, output: str, dtype: str, cwd: Path) -> tuple[list[str], Path]:
    from ..config import DTYPES
    from ..paths import check_writable

    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not one of auto, {', '.join(DTYPES)}")
    out = _inside(roots, output, cwd, "export output")
    check_writable(out, False, kind="export", inputs=[run])
    return ["export", shown_path(run, cwd), "--output", shown_path(out, cwd), "--dtype", dtype], out


"""An experiment: a base config plus named variants (each a set of overrides) plus evaluation tasks.

    # experiments/quickstart.yaml
    base: ../configs/quickstart.yaml          # a config file (relative to this file) or an inline mapping
    overrides: {data.n: 200}                  # applied to every variant
    variants:
      lora: {}
      full_adamw: {method.name: full, optimizer.lr: 1.0e-5}
    evaluation: {tasks: [arith], limit: 50, max_new_tokens: 256, batch_size: 16}
    output: runs/quickstart_study

n-shot per task and per model: `evaluation.n_shot` is a number for every task or a mapping
(`{gsm8k: 8, default: 0}`), and `evaluation.models` overrides any evaluation setting for one model
label (`base` or a variant name), e.g. the base model few-shot in plain text, the tuned ones zero-shot
in their chat template:

    evaluation:
      tasks: [cn_middle_school, gsm8k]
      n_shot: 0
      models: {base: {n_shot: {cn_middle_school: 5, gsm8k: 8}, chat_template: false}}

The report's "How each model was asked" table says which each model got.

Every variant's overrides are checked against the config schema before anything runs: a key that
is not a config key is an error naming the key and the variant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from ..evaluate.run import EvalSettings


@dataclass
class EvalSpec:
    tasks: list[str] = field(default_factory=list)
    base_model: bool = True  # evaluate the untuned base model once, as the reference row
    # how every model is evaluated: limit, max_new_tokens, batch_size, temperature, n, seed, n_shot, ...
    settings: EvalSettings = field(default_factory=EvalSettings)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)  # label (base | variant) -> overrides

    def settings_for(self, label: str) -> EvalSettings:
        """The settings one model label is evaluated with: the common ones plus its own overrides."""
        import dataclasses

        return dataclasses.replace(self.settings, **self.per_model.get(label, {}))


def eval_spec(data: dict[str, Any], where: str) -> EvalSpec:
    """`evaluation:` of an experiment or sweep: tasks, base_model, and any `EvalSettings` key."""
    if not isinstance(data, dict):
        raise C.ConfigError(f"{where}: 'evaluation' must be a mapping")
    data = dict(data)
    tasks = data.pop("tasks", []) or []
    base_model = data.pop("base_model", True)
    per_model = data.pop("models", None) or {}
    if not isinstance(per_model, dict) or not all(isinstance(v, dict) for v in per_model.values()):
        raise C.ConfigError(f"{where}: evaluation.models must map a model label (base or a variant) to settings")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise C.ConfigError(f"{where}: evaluation.tasks must be a list of task names")
    from ..evaluate.tasks import TASKS

    unknown = [t for t in tasks if t not in TASKS and t != "heldout" and not t.endswith((".yaml", ".yml"))]
    if unknown:
        raise C.ConfigError(f"{where}: evaluation.tasks: unknown task(s) {unknown}; known: heldout, "
                            f"{', '.join(TASKS)} (or a task .yaml file)")
    try:
        settings = EvalSettings.from_dict(data, where=f"{where}: evaluation")
        for label, over in per_model.items():  # each model's settings checked now, before anything runs
            EvalSettings.from_dict({**data, **over}, where=f"{where}: evaluation.models.{label}")
    except TypeError as e:
        raise C.ConfigError(f"{where}: evaluation: {e}") from None
    return EvalSpec(tasks=tasks, base_model=bool(base_model), settings=settings, per_model=per_model)


@dataclass
class Experiment:
    name: str
    path: Path | None
    output: Path
    variants: dict[str, C.Config]
    overrides: dict[str, dict[str, Any]]  # variant -> its own overrides (for the report)
    evaluation: EvalSpec
    base_model: str


def load(path: str | Path) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise C.ConfigError(f"experiment file not found: {path}")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {"base", "overrides", "variants", "evaluation", "output", "name"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise C.ConfigError(f"{path}: unknown experiment key(s) {unknown}; known: {', '.join(sorted(known))}")
    base = spec.get("base") or {}
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise C.ConfigError(f"{path}: base config not found: {base_path}")
        base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
    common = spec.get("overrides") or {}
    variants_spec = spec.get("variants") or {}
    if not variants_spec:
        raise C.ConfigError(f"{path}: an experiment needs at least one variant under 'variants'")
    output = Path(spec.get("output") or f"runs/{path.stem}")
    variants: dict[str, C.Config] = {}
    for name, over in variants_spec.items():
        over = over or {}
        if not isinstance(over, dict):
            raise C.ConfigError(f"{path}: variant '{name}' must be a mapping of config keys to values")
        tree = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
        try:
            for key, value in {**common, **over}.items():
                C.set_path(tree, str(key), value)
            cfg = C.from_dict(tree)
        except C.ConfigError as e:
            raise C.ConfigError(f"{path}: variant '{name}': {e}") from None
        cfg.output.dir = str(output / "runs" / name)
        variants[name] = cfg
    evaluation = eval_spec(spec.get("evaluation") or {}, str(path))
    unknown_labels = sorted(set(evaluation.per_model) - set(variants) - {"base"})
    if unknown_labels:
        raise C.ConfigError(f"{path}: evaluation.models: no model labelled {unknown_labels}; labels: base, "
                            f"{', '.join(variants)}")
    first = next(iter(variants.values()))
    return Experiment(name=spec.get("name") or path.stem, path=path, output=output, variants=variants,
                      overrides={k: dict(v or {}) for k, v in variants_spec.items()}, evaluation=evaluation,
                      base_model=first.model.name)

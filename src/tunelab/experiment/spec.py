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

With and without retrieval: `evaluation.retrieval` evaluates every model (base and variants) a second
time on the rollout tasks with the passages of an index (`tunelab rag index`; the path is relative to
the working directory, like `output`) in its chat prompt, exactly as `tunelab eval --rag` does. Those
results go to `eval/<label>+rag/`, so the report shows `lora` and `lora+rag` side by side. The
retrieved passages are the worked examples, so these evaluations are zero-shot in the chat template
whatever `n_shot` says; multiple-choice, perplexity and efficiency tasks are not repeated.

    evaluation:
      tasks: [gsm8k]
      retrieval: {index: runs/kb/gsm8k_train, k: 3, mode: bm25, placement: system}   # k, mode, ... optional

Every variant's overrides are checked against the config schema before anything runs: a key that
is not a config key is an error naming the key and the variant.

A variant may start from another's trained model (`from: NAME`, an earlier variant): its
`model.name` is that variant's run directory, and it trains after it. This is how alignment is
compared with the SFT it starts from (an SFT LoRA is merged into the base before the next stage's
adapter goes on; with DPO that merged model is also the reference):

    variants:
      sft: {stage: sft}
      sft+dpo: {from: sft, stage: dpo, data.name: arith_pairs}
      sft+grpo: {from: sft, stage: grpo, data.name: arith_en}
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from ..evaluate.run import EvalSettings


RAG_SUFFIX = "+rag"  # eval/<label>+rag/: the same model evaluated with retrieval


@dataclass(frozen=True)
class Retrieval:
    """`evaluation.retrieval`: every model is also evaluated with passages from `index` (see the docstring)."""

    index: str
    k: int = 3
    mode: str | None = None  # bm25 | dense | hybrid; None: hybrid when the index has an encoder, else bm25
    placement: str = "system"  # system | before_question
    encoder: str | None = None  # refuse the index unless it was built with this encoder

    def settings(self, common: EvalSettings) -> EvalSettings:
        return dataclasses.replace(common, n_shot=0, chat_template=None, rag=self.index, rag_k=self.k,
                                   rag_mode=self.mode, rag_placement=self.placement, rag_encoder=self.encoder)


def retrieval_spec(data: Any, where: str) -> Retrieval:
    """`evaluation.retrieval` checked at load: keys, types, values (by the check chat, serve and eval
    --rag use, naming the YAML keys), and the index itself (no model loads)."""
    from ..errors import UserError
    from ..rag.context import FLAGS, check_settings

    key = f"{where}: evaluation.retrieval"
    if not isinstance(data, dict):
        raise C.ConfigError(f"{key} must be a mapping with 'index' (a `tunelab rag index` folder), got {data!r}")
    known = [f.name for f in dataclasses.fields(Retrieval)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise C.ConfigError(f"{key}: unknown key(s) {unknown}; known: {', '.join(known)}")
    if not isinstance(data.get("index"), str) or not data["index"]:
        raise C.ConfigError(f"{key}.index must be the path of a `tunelab rag index` folder, got {data.get('index')!r}")
    try:
        check_settings(**{name: data[name] for name in FLAGS if name in data}, names={n: f"{key}.{n}" for n in FLAGS})
    except UserError as e:
        raise C.ConfigError(str(e)) from None
    spec = Retrieval(**data)
    _check_index(spec.settings(EvalSettings()), key)
    return spec


def _check_index(settings: EvalSettings, key: str) -> None:
    """The index exists, was built with the encoder asked for and can run the mode: else one ConfigError."""
    from ..errors import UserError
    from ..evaluate.run import check_retrieval

    try:
        check_retrieval(settings)
    except UserError as e:
        raise C.ConfigError(f"{key}: {e}") from None


@dataclass
class EvalSpec:
    tasks: list[str] = field(default_factory=list)
    base_model: bool = True  # evaluate the untuned base model once, as the reference row
    # how every model is evaluated: limit, max_new_tokens, batch_size, temperature, n, seed, n_shot, ...
    settings: EvalSettings = field(default_factory=EvalSettings)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)  # label (base | variant) -> overrides
    retrieval: Retrieval | None = None  # also evaluate every model with retrieval, as <label>+rag

    def settings_for(self, label: str) -> EvalSettings:
        """The settings one model label is evaluated with: the common ones plus its own overrides."""
        return dataclasses.replace(self.settings, **self.per_model.get(label, {}))

    def evaluations(self, label: str) -> list[tuple[str, EvalSettings, list[str]]]:
        """(output label, settings, tasks) of every evaluation of one model: as configured, then, with
        `retrieval`, `<label>+rag` on the rollout tasks."""
        own = self.settings_for(label)
        out = [(label, own, self.tasks)]
        if self.retrieval is not None:
            from ..evaluate.tasks import get_task

            rollouts = [t for t in self.tasks if t == "heldout" or get_task(t).kind == "generate"]
            out.append((label + RAG_SUFFIX, self.retrieval.settings(own), rollouts))
        return out


def eval_spec(data: dict[str, Any], where: str) -> EvalSpec:
    """`evaluation:` of an experiment or sweep: tasks, base_model, and any `EvalSettings` key."""
    if not isinstance(data, dict):
        raise C.ConfigError(f"{where}: 'evaluation' must be a mapping")
    data = dict(data)
    tasks = data.pop("tasks", []) or []
    base_model = data.pop("base_model", True)
    retrieval = retrieval_spec(data.pop("retrieval"), where) if "retrieval" in data else None
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
    if retrieval is not None:
        rag_keys = sorted(k for over in [data, *per_model.values()] for k in over if k.startswith("rag"))
        if rag_keys:
            raise C.ConfigError(f"{where}: evaluation: {rag_keys} and evaluation.retrieval both set; retrieval "
                                "already evaluates every model with and without the index")
    elif settings.rag:
        _check_index(settings, f"{where}: evaluation.rag")
    return EvalSpec(tasks=tasks, base_model=bool(base_model), settings=settings, per_model=per_model,
                    retrieval=retrieval)


@dataclass
class Experiment:
    name: str
    path: Path | None
    output: Path
    variants: dict[str, C.Config]
    overrides: dict[str, dict[str, Any]]  # variant -> its own overrides (for the report)
    evaluation: EvalSpec
    base_model: str
    parents: dict[str, str] = field(default_factory=dict)  # variant -> the variant whose model it starts from


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
    parents: dict[str, str] = {}
    for name, over in variants_spec.items():
        over = over or {}
        if not isinstance(over, dict):
            raise C.ConfigError(f"{path}: variant '{name}' must be a mapping of config keys to values")
        over = dict(over)
        if "from" in over:
            parent = over.pop("from")
            if parent not in variants:
                raise C.ConfigError(f"{path}: variant '{name}': from: {parent!r} must name a variant listed before "
                                    f"it (listed before: {', '.join(variants) or 'none'})")
            if "model.name" in over:
                raise C.ConfigError(f"{path}: variant '{name}': 'from' and 'model.name' both say which model it "
                                    "starts from; keep one")
            parents[name] = parent
            over["model.name"] = str(output / "runs" / parent)
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
                      base_model=first.model.name, parents=parents)

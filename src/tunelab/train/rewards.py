"""Rewards of `stage: grpo`: plain functions, one registry (`REWARDS`), and a user's own from a local file.

    fn = build_rewards(["correct", "boxed"], weights=[1.0, 0.2], reward_fn="my_rewards.py:short")
    per_fn = fn.score(completions, answers, prompts)   # {name: [float, ...]}, checked
    total = fn.total(per_fn)                             # weighted sum per completion

Every reward is `reward(completions, answers, prompts) -> list of numbers`, one per completion.
`correct` is the evaluation grader itself (data/grading.py `grade`: `\\boxed{}`, "The answer is",
`#### N`, "答案：", the last number, compared by mathematical equality), so the reward a model is
trained on is the accuracy it is evaluated on. `boxed` rewards the format alone: a final answer in
`\\boxed{}`. A user's function is loaded only from a local `.py` file named in the config
(`objective.reward_fn: path/file.py:function`): never an installed module or a remote one. A reward
that raises, or returns anything but one finite number per completion, stops training with one
message naming it (exit 2); nothing already saved is touched.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError

Reward = Callable[[list[str], list[str], list[str]], list[float]]


def correct(completions: list[str], answers: list[str], prompts: list[str]) -> list[float]:
    """1 when the task's grader finds the completion's final answer equal to the reference, else 0."""
    from ..data.grading import grade

    return [1.0 if grade(c, a).correct else 0.0 for c, a in zip(completions, answers)]


def boxed(completions: list[str], answers: list[str], prompts: list[str]) -> list[float]:
    """1 when the completion states a final answer in \\boxed{} (the format the math instruction asks for)."""
    from ..data.answers import last_boxed

    return [1.0 if last_boxed(c) is not None else 0.0 for c in completions]


REWARDS: dict[str, Reward] = {"correct": correct, "boxed": boxed}


def load_reward_fn(ref: str) -> Reward:
    """`path/to/file.py:function` from a local file (config.check_reward_fn checked it at load)."""
    path, _, name = ref.rpartition(":")
    spec = importlib.util.spec_from_file_location(f"tunelab_reward_{Path(path).stem}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"objective.reward_fn: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"objective.reward_fn: importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"objective.reward_fn: {path} has no function {name!r}")
    return fn


@dataclass
class Rewards:
    names: list[str]
    fns: list[Reward]
    weights: list[float]

    def score(self, completions: list[str], answers: list[str], prompts: list[str]) -> dict[str, list[float]]:
        out = {}
        for name, fn in zip(self.names, self.fns):
            try:
                values = fn(completions, answers, prompts)
            except Exception as e:
                raise UserError(f"reward {name!r} raised {type(e).__name__}: {e} (on {len(completions)} "
                                f"completions; first: {completions[0][:80]!r})") from None
            values = list(values) if isinstance(values, (list, tuple)) or hasattr(values, "tolist") else values
            if not isinstance(values, list) or len(values) != len(completions):
                raise UserError(f"reward {name!r} must return one number per completion ({len(completions)}), "
                                f"got {type(values).__name__} {str(values)[:80]}")
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
                   or not math.isfinite(float(v))]
            if bad:
                raise UserError(f"reward {name!r} returned {bad[0]!r} ({type(bad[0]).__name__}); expected a finite "
                                "number for every completion")
            out[name] = [float(v) for v in values]
        return out

    def total(self, per_fn: dict[str, list[float]]) -> list[float]:
        cols = [per_fn[n] for n in self.names]
        return [sum(w * c[i] for w, c in zip(self.weights, cols)) for i in range(len(cols[0]))]


def build_rewards(names: list[str], *, weights: list[float] = (), reward_fn: str | None = None) -> Rewards:
    fns: list[Any] = []
    for n in names:
        if n not in REWARDS:
            from ..errors import ConfigError

            raise ConfigError(f"config key 'objective.rewards': unknown '{n}'; known: {', '.join(REWARDS)}")
        fns.append(REWARDS[n])
    all_names = list(names)
    if reward_fn:
        fns.append(load_reward_fn(reward_fn))
        all_names.append(reward_fn.rpartition(":")[2])
    return Rewards(all_names, fns, list(weights) or [1.0] * len(fns))

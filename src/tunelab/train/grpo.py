"""`stage: grpo`: RL with verifiable rewards (GRPO, DAPO, Dr. GRPO) behind the objective seam.

    objective = GRPO(tokenizer=tok, pad_id=..., stop_ids=..., rewards=build_rewards(["correct"]), ...)
    module = objective.wrap(model)   # forward(**batch) -> (summed token losses, normaliser)

A step's units are prompts. Before the step trains, `collate_step` samples `num_generations`
completions of every prompt of the step (all its micro-batches together, `generation_batch_size`
completions per generation batch) with the one batched generation engine evaluation uses (models/generate.py
`Generator`, the same prompts as `tunelab eval` renders, the same stop tokens), scores them with the
reward functions (train/rewards.py; `correct` is the evaluation grader), and turns the rewards into
group-normalised advantages (train/grpo_math.py). A batch holds the distinct prompts of its rows once
and each row's completion, with one advantage per row. The loss module scores the completion tokens
(models/logps.py `completion_logps`, at the sampling temperature: each prompt through the decoder once,
its cache copied to its G rows, not G forwards over the same prompt as TRL runs) and applies the
clipped surrogate and optional KL to the reference (grpo_math.py, equal to TRL 1.16's on the same tensors).

On-policy, one optimisation pass per generation (TRL's default `num_iterations=1`): the old policy
is the current one, so the ratio is 1 with its gradient, and the clipped fraction is 0 by construction.

Normalisation by `loss_type` (the loop divides the step's summed loss by the step's first count):
`grpo` each completion's token mean, over completions; `bnpo`/`dapo` all completion tokens of the
step (every micro-batch and process); `dr_grpo` completions x max_new_tokens.

Repeatable: the rollouts of step s are sampled with a seed of (training.seed, s, process), so a resumed run samples exactly what the uninterrupted one did.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..models.loss import LossModule
from .objectives import Metrics, Objective

COMPLETION_STATS = ("reward", "reward_std", "completion_length", "truncated", "rollout_s")
TOKEN_STATS = ("kl", "entropy", "clip_ratio/low", "clip_ratio/high", "clip_ratio/region")
IS_STATS = ("rollout_is_ratio", "rollout_is_truncated")  # rollouts from a lower-precision copy


class GRPO(Objective):
    packing = False

    def __init__(self, *, tokenizer: Any, pad_id: int, stop_ids: list[int], rewards: Any, num_generations: int = 8,
                 max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0,
                 scale_rewards: str = "group", loss_type: str = "dapo", epsilon: float = 0.2,
                 epsilon_high: float | None = None, kl_coef: float = 0.0, reference: str = "adapters_off",
                 seed: int = 0, generation_batch_size: int = 64, samples_path: Path | None = None,
                 sample_every: int = 10, rollout_dtype: str = "model", rollout_is_cap: float = 3.0, **_: Any):
        self.tokenizer, self.pad_id, self.stop_ids, self.rewards = tokenizer, pad_id, stop_ids, rewards
        self.G, self.max_new_tokens, self.temperature, self.top_p = num_generations, max_new_tokens, temperature, top_p
        self.scale_rewards, self.loss_type = scale_rewards, loss_type
        self.epsilon, self.epsilon_high, self.kl_coef = epsilon, epsilon_high or epsilon, kl_coef
        self.reference, self.seed, self.generation_batch_size = reference, seed, generation_batch_size
        self.samples_path, self.sample_every = samples_path, sample_every
        self.rollout_dtype, self.rollout_is_cap = rollout_dtype, rollout_is_cap
        self.inference_copy: Any = None  # models/inference_copy.py, made at the first rollout
        self.model: torch.nn.Module | None = None
        self.ref_model: torch.nn.Module | None = None  # full/freeze with kl_coef > 0: a frozen copy (recipe)
        self.stats = Metrics()
        self.step = 0

    def lengths(self, ds: Any) -> list[int]:
        return [len(p) + self.max_new_tokens for p in ds["prompt_ids"]]

    def prepare_step(self, step: int) -> None:
        self.step = step

    def _seed(self) -> int:
        rank = int(os.environ.get("RANK", "0"))
        return (self.seed * 1_000_003 + self.step * 1_009 + rank) % 2**31

    def rollout(self, prompts: list[list[int]]) -> list[tuple[str, int, list[int]]]:
        """`num_generations` sampled completions of each prompt, grouped: prompt i's are i*G .. i*G+G-1."""
        from ..models.generate import GenerationSettings, Generator

        expanded = [p for p in prompts for _ in range(self.G)]
        model = self.model
        if self.rollout_dtype != "model":
            from ..models.inference_copy import InferenceCopy

            if self.inference_copy is None:
                self.inference_copy = InferenceCopy(self.model, self.rollout_dtype)
            model = self.inference_copy.refresh()
        gen = Generator(model, self.tokenizer, self.stop_ids)
        settings = GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                      top_p=self.top_p, n=1, seed=self._seed(), batch_size=self.generation_batch_size)
        out = gen.generate(expanded, settings, progress=False, with_ids=True)
        return [out[(i, 0)] for i in range(len(expanded))]

    def collate(self, ds: Any, units: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.collate_step(ds, [units])[0]

    def collate_step(self, ds: Any, micro: list[list[list[int]]]) -> list[dict[str, torch.Tensor]]:
        """The step's micro-batches. Every prompt of the step is rolled out in one batched generation
        (`generation_batch_size` completions at a time, whatever the training micro-batch), scored and
        given its group's advantages, then cut into the micro-batches the loop trains on."""
        from .grpo_math import group_advantages

        rows = ds[[i for units in micro for u in units for i in u]]
        t0 = time.perf_counter()
        done = self.rollout(rows["prompt_ids"])
        seconds = time.perf_counter() - t0
        texts = [text for text, _, _, _ in done]
        answers = [a for a in rows["answer"] for _ in range(self.G)]
        prompts = [p for p in rows["prompt"] for _ in range(self.G)]
        per_fn = self.rewards.score(texts, answers, prompts)
        total = torch.tensor(self.rewards.total(per_fn), dtype=torch.float32)
        advantages = group_advantages(total, self.G, self.scale_rewards)

        n = len(done)
        group_std = total.view(-1, self.G).std(dim=1).mean().item() if self.G > 1 else 0.0
        truncated = sum(1 for _, _, ids, _ in done if not ids or ids[-1] not in self.stop_ids)
        sums = {"reward": total.sum().item(), "reward_std": group_std * n,
                "completion_length": float(sum(len(ids) for _, _, ids, _ in done)), "truncated": float(truncated),
                "rollout_s": seconds * n}
        for name, values in per_fn.items():
            sums[f"rewards/{name}"] = sum(values)
        self.stats.add("train", n, **sums)
        self._write_samples(rows, texts, total.tolist(), per_fn)

        seqs = [(p, ids) for p, (_, _, ids, _) in zip((p for p in rows["prompt_ids"] for _ in range(self.G)), done)]
        batches, start = [], 0
        for units in micro:
            k = sum(len(u) for u in units) * self.G
            batch = self._batch(seqs[start:start + k], advantages[start:start + k])
            if self.rollout_dtype != "model" and self.rollout_is_cap:
                batch["rollout_logps"] = self._rollout_logps(batch["completion_mask"],
                                                             [r[3] for r in done[start:start + k]])
            batches.append(batch)
            start += k
        return batches

    def _batch(self, seqs: list[tuple[list[int], list[int]]], advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distinct prompts [U, W] and the completions [B, C], each right-padded with its mask, and the
        prompt each row continues (`group`): models/logps.py `completion_logps`'s layout."""
        distinct: dict[tuple[int, ...], int] = {}
        group = [distinct.setdefault(tuple(p), len(distinct)) for p, _ in seqs]
        prompts, comps = list(distinct), [c for _, c in seqs]

        def padded(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
            width = max(len(r) for r in rows)
            return (torch.tensor([list(r) + [self.pad_id] * (width - len(r)) for r in rows]),
                    torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]))

        prompt_ids, prompt_mask = padded(prompts)
        completion_ids, completion_mask = padded(comps)
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "group": torch.tensor(group),
                "completion_ids": completion_ids, "completion_mask": completion_mask, "advantages": advantages}

    @staticmethod
    def _rollout_logps(completion_mask: torch.Tensor, logps: list[list[float]]) -> torch.Tensor:
        """The sampler's log-probability of each completion token [B, C] (0 at padding)."""
        out = torch.zeros(completion_mask.shape, dtype=torch.float32)
        for row, values in enumerate(logps):
            n = int(completion_mask[row].sum())
            if len(values) != n:
                raise RuntimeError(f"rollout row {row}: {len(values)} sampling log-probabilities for {n} "
                                   "completion tokens")
            out[row, :n] = torch.tensor(values, dtype=torch.float32)
        return out

    def _write_samples(self, rows: dict[str, list], texts: list[str], total: list[float],
                       per_fn: dict[str, list[float]]) -> None:
        """The first prompt's group every `sample_every` steps, to samples.jsonl (main process only)."""
        if not (self.samples_path and self.sample_every and self.step % self.sample_every == 0):
            return
        if int(os.environ.get("RANK", "0")) != 0:
            return
        row = {"step": self.step + 1, "prompt": rows["prompt"][0], "answer": rows["answer"][0],
               "completions": [{"text": texts[j], "reward": total[j], **{k: v[j] for k, v in per_fn.items()}}
                               for j in range(self.G)]}
        with Path(self.samples_path).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def count(self, batch: dict[str, torch.Tensor]) -> tuple[int, ...]:
        """(loss normaliser, input tokens, completion tokens): the normaliser by loss_type."""
        n = batch["completion_ids"].shape[0]
        tokens = int(batch["completion_mask"].sum())
        norm = {"grpo": n, "bnpo": tokens, "dapo": tokens, "dr_grpo": n * self.max_new_tokens}[self.loss_type]
        # input tokens as the rows prompt + completion count them (throughput is comparable with TRL's)
        return norm, int(batch["prompt_mask"].sum(1)[batch["group"]].sum()) + tokens, tokens

    def metrics(self, split: str, accelerator: Any) -> dict[str, float]:
        keys = COMPLETION_STATS + tuple(f"rewards/{n}" for n in self.rewards.names)
        out = self.stats.read(split, accelerator, keys)
        corrected = self.rollout_dtype != "model" and self.rollout_is_cap
        out.update(self.stats.read(split + "_tokens", accelerator, TOKEN_STATS + (IS_STATS if corrected else ())))
        if "rewards/correct" in out:
            out["accuracy"] = out["rewards/correct"]
        return out

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        self.model = model
        return GRPOLoss(model, self)


class GRPOLoss(LossModule):
    """The completions' token losses, summed, and the normaliser of the loss type."""

    def __init__(self, model: torch.nn.Module, objective: GRPO):
        super().__init__(model)
        self.objective = objective

    def _reference(self, **rows: torch.Tensor) -> torch.Tensor:
        from ..models.logps import completion_logps

        o = self.objective
        with torch.no_grad():
            if o.ref_model is not None:
                return completion_logps(o.ref_model, **rows, temperature=o.temperature).logps
            with self.model.disable_adapter():
                return completion_logps(self.model, **rows, temperature=o.temperature).logps

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group: torch.Tensor,
                completion_ids: torch.Tensor, completion_mask: torch.Tensor, advantages: torch.Tensor,
                rollout_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from ..models.logps import completion_logps
        from .grpo_math import grpo_sum_and_count, grpo_token_loss, truncated_is

        o = self.objective
        n = completion_ids.shape[0]
        rows = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, group=group, completion_ids=completion_ids,
                    completion_mask=completion_mask)
        t = completion_logps(self.model, **rows, entropy=True, temperature=o.temperature)
        ref = self._reference(**rows) if o.kl_coef > 0 else None
        per_token, stats = grpo_token_loss(t.logps, t.logps.detach(), advantages.to(t.logps)[t.rows],
                                           epsilon_low=o.epsilon, epsilon_high=o.epsilon_high, ref_logps=ref,
                                           kl_coef=o.kl_coef)
        extra = {}
        if rollout_logps is not None:  # truncated importance sampling: the rollouts came from another precision
            per_token, extra = truncated_is(per_token, t.logps.detach(), rollout_logps[completion_mask.bool()],
                                            o.rollout_is_cap)
        loss, norm = grpo_sum_and_count(per_token, t.seqs, n, o.loss_type, o.max_new_tokens)
        with torch.no_grad():
            k = float(t.logps.numel())
            o.stats.add("train_tokens", k, kl=float(stats.get("kl", 0.0)) * k, entropy=t.entropy.sum().item(),
                        **{name: float(stats[f"{name}_mean"]) * k for name in TOKEN_STATS[2:]},
                        **{name: v * k for name, v in extra.items()})
        return loss, torch.tensor(norm, device=loss.device)


class PromptSet:
    """The prompts of a GRPO run with their reference answers, shaped like data/prepare.py's `Prepared`
    (`stats`, `load(split)`), so the recipe reads both alike."""

    def __init__(self, splits: dict[str, Any], stats: dict[str, Any]):
        self.splits, self.stats, self.cached = splits, stats, False

    def load(self, split: str) -> Any:
        return self.splits[split]


def prepare_prompts(cfg: Any, tokenizer: Any) -> PromptSet:
    """Read `data` as for SFT (the same readers, system prompt, math instruction, normalisation and
    deduplication; data.val_size is not used), keep each conversation's prompt (everything before its last reply) and
    reference answer, and render the prompt as evaluation does (`Renderer.render_prompt`). A record
    without a reference answer has nothing to grade: one message naming it, before any model loads."""
    from datasets import Dataset

    from ..data.clean import content_key
    from ..data.prepare import _tokenizer_key, clean_and_split, read_examples
    from ..data.render import build_renderer
    from ..errors import DataError

    d = cfg.data
    if d.mix:
        raise DataError("stage grpo reads its prompts from data.name (one data set with reference answers); "
                        "data.mix is for sft/pt")
    examples, n_in, drops, _ = read_examples(
        d.name, stage="sft", fmt=d.format, columns=d.columns, split_name=d.split, limit=d.limit, n=d.n, seed=d.seed,
        gsm8k_boxed=d.gsm8k_boxed, system_prompt=d.system_prompt, instruction=d.instruction, max_chars=d.max_chars)
    for ex in examples:
        if not str(ex.get("answer") or "").strip():
            raise DataError(f"{ex.get('where') or d.name}: stage grpo needs a reference answer for every prompt (the "
                            "grader's gold), and this record has none; use math data (arith, gsm8k, math500, cmath, "
                            "belle_math) or map a column to the answer (data.columns)")
    train, val, drops = clean_and_split(examples, source=d.name, n_in=n_in, drops=drops, normalize=d.normalize,
                                        dedup_mode=d.dedup, near_dup_threshold=d.near_dup_threshold,
                                        val_size=0, seed=d.seed, max_chars=d.max_chars)
    # no validation split: a held-out check of a policy is an evaluation (`tunelab eval`, or an
    # experiment's evaluation), graded as the rewards are, not a loss
    renderer = build_renderer(tokenizer, template=d.template, enable_thinking=d.enable_thinking)
    splits, too_long = {}, 0
    for name, part in (("train", train), ("validation", val)):
        cols: dict[str, list] = {"prompt_ids": [], "prompt": [], "answer": []}
        for ex in part:
            msgs = ex["messages"]
            last = max(k for k, m in enumerate(msgs) if m["role"] == "assistant")
            ids = renderer.render_prompt(msgs[:last])
            if len(ids) + cfg.objective.max_new_tokens > d.max_length:
                too_long += 1
                continue
            cols["prompt_ids"].append(ids)
            cols["prompt"].append(msgs[last - 1]["content"])
            cols["answer"].append(str(ex["answer"]))
        splits[name] = Dataset.from_dict(cols)
    if not len(splits["train"]):
        raise DataError(f"{d.name}: no prompt fits data.max_length={d.max_length} with objective.max_new_tokens="
                        f"{cfg.objective.max_new_tokens} ({too_long} too long)")
    train_cols = splits["train"].to_dict()
    key = content_key([content_key(train_cols["prompt_ids"]), content_key(train_cols["answer"]),
                       _tokenizer_key(tokenizer)])[:24]
    lengths = [len(p) for p in train_cols["prompt_ids"]]
    stats = {"source": d.name, "template": renderer.template, "end_of_turn": renderer.eot,
             "examples_in": n_in, "examples_out": {k: len(v) for k, v in splits.items()},
             "dropped": {**{k: v for k, v in drops.items() if v}, **({"too_long": too_long} if too_long else {})},
             "prompt_tokens": sum(lengths), "prompt_length": {"min": min(lengths), "max": max(lengths)},
             "data_fingerprint": key, "supervised_fraction": None}
    return PromptSet(splits, stats)

"""Alignment stages through the one loop on tiny-qwen3: `stage: dpo` (accumulation invariance, the
cached reference equals the live one, exact resume, metrics) and `stage: grpo` (exact resume with
the sampling RNG, KL to the reference, rewards and their errors, samples). The losses themselves
equal TRL's: test_alignment_parity.py; two processes equal one: test_distributed.py."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.train.test_train import assert_same_weights, losses
from tunelab import config as C
from tunelab.errors import ConfigError, DataError, UserError
from tunelab.train.recipe import train


def metrics(run: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """24 arithmetic pairs in TRL's conversational layout: a worked answer preferred to a wrong one."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    with path.open("w") as f:
        for _ in range(24):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                                "chosen": [{"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is "
                                                                           f"{a + b}."}],
                                "rejected": [{"role": "assistant", "content": f"The answer is "
                                                                             f"{a + b + rng.randint(1, 9)}."}]}) + "\n")
    return path


def dpo(tmp_path: Path, pairs: Path, name: str, *over: str) -> C.Config:
    return C.load(None, ["model.name=tiny-qwen3", "stage=dpo", f"data.name={pairs}", "data.val_size=4",
                         "data.max_length=128", "method.name=lora", "method.lora_r=4", "method.lora_dropout=0",
                         "optimizer.name=adamw", "optimizer.lr=1e-2", "schedule.name=constant",
                         "training.batch_size=4", "training.max_steps=3", "training.log_every=1",
                         "training.eval_every=3", "training.save_every=0", "training.max_grad_norm=0",
                         f"output.dir={tmp_path / name}", *over])


@pytest.mark.parametrize("loss", ["sigmoid", "orpo"])
def test_dpo_accumulation_invariance(tmp_path, pairs, loss):
    """4 pairs x 1 micro-batch == 1 pair x 4 (orpo: its NLL term is normalised by the step's chosen tokens).
    SGD, as test_train's invariance tests: Adam would magnify float rounding where a gradient is ~0 (and
    orpo's NLL gradients are ~20x dpo's at this loss: a smaller step keeps the rounding below 1e-5)."""
    sgd = ["optimizer.name=sgd", f"optimizer.lr={0.5 if loss == 'sigmoid' else 0.05}", "optimizer.momentum=0"]
    train(dpo(tmp_path, pairs, "a", f"objective.loss={loss}", *sgd))
    train(dpo(tmp_path, pairs, "b", f"objective.loss={loss}", *sgd, "training.batch_size=1", "training.grad_accum=4"))
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(la) == 3 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5, (la, lb)
    ma, mb = metrics(tmp_path / "a")[-1], metrics(tmp_path / "b")[-1]
    for key in ("rewards/margins", "rewards/accuracy", "logps/chosen"):
        assert abs(ma[key] - mb[key]) < 1e-4, key
    assert_same_weights(tmp_path / "a", tmp_path / "b", 1e-5)


def test_dpo_learns_the_preference_and_logs_its_metrics(tmp_path, pairs):
    train(dpo(tmp_path, pairs, "run", "training.max_steps=6", "training.eval_every=3"))
    rows, val = metrics(tmp_path / "run"), metrics(tmp_path / "run", "val")
    assert rows[0]["loss"] == pytest.approx(0.6931472, abs=1e-6)  # policy == reference: log 2
    assert rows[0]["rewards/margins"] == 0.0
    assert rows[-1]["loss"] < 0.5 and rows[-1]["rewards/margins"] > 0 and rows[-1]["rewards/accuracy"] >= 0.75
    assert rows[-1]["rewards/margins"] == pytest.approx(rows[-1]["rewards/chosen"] - rows[-1]["rewards/rejected"],
                                                        abs=1e-5)
    assert [r["step"] for r in val] == [3, 5, 6]  # every 3 steps, the epoch's end (5 steps), the end
    assert val[-1]["loss"] < val[0]["loss"] and val[-1]["rewards/accuracy"] >= 0.75
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stage"] == "dpo" and summary["final_train_loss"] == pytest.approx(rows[-1]["loss"])


def test_dpo_cached_reference_equals_adapters_off(tmp_path, pairs):
    """LoRA starts as its base, so the log-probabilities cached before training are the reference the
    adapters-off pass computes at every step: the same losses and rewards, step by step."""
    train(dpo(tmp_path, pairs, "live", "objective.reference=adapters_off"))
    train(dpo(tmp_path, pairs, "cached", "objective.reference=cached"))
    a, b = metrics(tmp_path / "live"), metrics(tmp_path / "cached")
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["rewards/margins"] - y["rewards/margins"]) < 1e-5


def test_dpo_full_resume_is_exact_and_reuses_the_cached_reference(tmp_path, pairs, tunelab_home, monkeypatch):
    over = ["method.name=full", "optimizer.lr=1e-3", "training.max_steps=4", "training.save_every=2",
            "data.max_length=120"]  # a data setting of this test alone: its own prepared data and reference
    before = set((tunelab_home / "prepared").glob("*/reference-*.json"))  # other tests' caches
    train(dpo(tmp_path, pairs, "whole", *over))
    caches = sorted(set((tunelab_home / "prepared").glob("*/reference-*.json")) - before)
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns

    def crash(step, state):
        if step == 2:
            raise KeyboardInterrupt("simulated crash")

    part = dpo(tmp_path, pairs, "part", *over)
    with pytest.raises(KeyboardInterrupt):
        train(part, callbacks=(crash,))
    train(part, resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "whole")
    timeless = lambda run: [{k: v for k, v in r.items() if k not in ("elapsed_s", "peak_mem_mb")}  # noqa: E731
                            for r in metrics(run, "val")]
    assert timeless(tmp_path / "part") == timeless(tmp_path / "whole")
    assert_same_weights(tmp_path / "part", tmp_path / "whole", 0.0)
    # read back, not recomputed (a resumed policy would give other values); one file per data + model
    assert sorted(set((tunelab_home / "prepared").glob("*/reference-*.json")) - before) == caches
    assert caches[0].stat().st_mtime_ns == stamp
    # values another version of the code computed are not read: a new file, the old one left as it was
    from tunelab.train import dpo as D

    monkeypatch.setattr(D, "_code_version", lambda: "another tunelab")
    train(dpo(tmp_path, pairs, "newer", *over, "training.max_steps=1"))
    assert len(set((tunelab_home / "prepared").glob("*/reference-*.json")) - before) == 2
    assert caches[0].stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------------------
# GRPO

REWARDS = '''
def short(completions, answers, prompts):
    """Prefers short completions: a reward a tiny random model can move."""
    return [1.0 / (1 + len(c)) for c in completions]

def boom(completions, answers, prompts):
    raise ValueError("no reward today")

def words(completions, answers, prompts):
    return ["high" for _ in completions]
'''


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rewards") / "my_rewards.py"
    path.write_text(REWARDS)
    return path


def grpo(tmp_path: Path, reward_file: Path, name: str, *over: str) -> C.Config:
    return C.load(None, ["model.name=tiny-qwen3", "stage=grpo", "data.name=arith_en", "data.n=16",
                         "data.max_length=128", "method.name=lora", "method.lora_r=4", "method.lora_dropout=0.1",
                         "optimizer.lr=1e-2", "objective.num_generations=4", "objective.max_new_tokens=12",
                         f"objective.reward_fn={reward_file}:short", "objective.sample_every=1",
                         "training.batch_size=2", "training.max_steps=3", "training.log_every=1",
                         "training.save_every=1", f"output.dir={tmp_path / name}", *over])


@pytest.mark.parametrize("rollout", ["model", "bfloat16"])
def test_grpo_resume_is_exact_including_the_sampled_completions(tmp_path, reward_file, rollout):
    """A resumed run samples and trains exactly as the whole one, with rollouts from the policy itself or
    from its merged bf16 copy (objective.rollout_dtype=bfloat16: the copy is rebuilt from the restored
    policy). With the copy, the policy's probability of each sampled token over the copy's is logged near
    1 (a misaligned token would be off by orders of magnitude); without it, no ratio is logged."""
    over = [f"objective.rollout_dtype={rollout}"]
    train(grpo(tmp_path, reward_file, "whole", *over))

    def crash(step, state):
        if step == 2:
            raise KeyboardInterrupt("simulated crash")

    part = grpo(tmp_path, reward_file, "part", *over)
    with pytest.raises(KeyboardInterrupt):
        train(part, callbacks=(crash,))
    train(part, resume=True)
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "part")
    keys = ("loss", "grad_norm", "reward", "completion_length", "entropy")
    if rollout != "model":
        keys += ("rollout_is_ratio", "rollout_is_truncated")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    samples = lambda run: (run / "samples.jsonl").read_text()  # noqa: E731
    assert samples(tmp_path / "part") == samples(tmp_path / "whole")
    assert_same_weights(tmp_path / "part", tmp_path / "whole", 0.0)
    if rollout == "model":
        assert all("rollout_is_ratio" not in r for r in a)
    else:
        assert all(0.97 < r["rollout_is_ratio"] < 1.03 and r["rollout_is_truncated"] < 0.05 for r in a), a


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_grpo_accumulation_invariance(tmp_path, reward_file, loss_type):
    """A step's prompts are rolled out together whatever the micro-batches, and the loss is normalised
    over the whole step: 2 prompts x 1 micro-batch == 1 prompt x 2 (same samples, losses, weights)."""
    over = [f"objective.loss_type={loss_type}", "method.lora_dropout=0", "optimizer.name=sgd", "optimizer.lr=0.5",
            "optimizer.momentum=0", "training.max_grad_norm=0", "training.save_every=0"]
    train(grpo(tmp_path, reward_file, "a", *over))
    train(grpo(tmp_path, reward_file, "b", *over, "training.batch_size=1", "training.grad_accum=2"))
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["reward"] for r in a] == [r["reward"] for r in b]
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) < 1e-6
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
    assert_same_weights(tmp_path / "a", tmp_path / "b", 1e-5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_grpo_metrics_samples_and_kl_to_the_reference(tmp_path, reward_file, method):
    """KL is 0 at step 1 (the policy is the reference: adapters off, or the frozen copy of full
    fine-tuning) and positive after an update; rewards, accuracy and lengths are logged per step."""
    train(grpo(tmp_path, reward_file, "run", f"method.name={method}", "objective.kl_coef=0.1",
               "objective.rewards=[correct, boxed]", "objective.reward_weights=[1.0, 0.5, 2.0]",
               "training.max_steps=2", *(["optimizer.lr=1e-3"] if method == "full" else [])))
    rows = metrics(tmp_path / "run")
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 0
    for r in rows:
        assert {"reward", "reward_std", "rewards/correct", "rewards/boxed", "rewards/short", "accuracy",
                "completion_length", "truncated", "rollout_s", "entropy", "clip_ratio/region"} <= set(r)
        assert r["reward"] == pytest.approx(r["rewards/correct"] + 0.5 * r["rewards/boxed"] + 2 * r["rewards/short"],
                                            abs=1e-5)
        assert 0 < r["completion_length"] <= 12 and r["clip_ratio/region"] == 0.0  # on-policy: ratio 1
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 2]
    assert all(len(s["completions"]) == 4 and s["answer"] for s in samples)
    c = samples[0]["completions"][0]
    assert c["reward"] == pytest.approx(c["correct"] + 0.5 * c["boxed"] + 2 * c["short"], abs=1e-6)


@pytest.mark.parametrize("over,strategy,message", [
    (["method.name=full", "objective.reference=adapters_off"], "", r"objective.reference': adapters_off needs a "
     r"LoRA-family method, not method.name full"),
    (["objective.reference=adapters_off"], "fsdp", r"adapters_off under strategy fsdp is not supported"),
    (["stage=grpo"], "zero3", r"stage grpo under strategy zero3 is not supported yet"),
    (["stage=grpo", "method.name=dora", "objective.rollout_dtype=bfloat16"], "", r"objective.rollout_dtype': a "
     r"bfloat16 rollout copy is made for methods full, freeze, lora and lora_plus, not dora"),
])
def test_what_a_reference_or_strategy_cannot_do_is_one_message(tmp_path, pairs, capsys, over, strategy, message):
    """Refused with exit 2 before any process is launched or any weight loads, nothing written."""
    from tunelab.cli import main

    cfg = dpo(tmp_path, pairs, "run")
    C.save(cfg, tmp_path / "cfg.yaml")
    flags = ["--nproc", "2", "--strategy", strategy] if strategy else []
    assert main(["train", str(tmp_path / "cfg.yaml"), *over, *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("error:") == 1, err
    assert not (tmp_path / "run").exists()


def test_grpo_reward_errors_are_one_message(tmp_path, reward_file):
    with pytest.raises(UserError, match=r"reward 'boom' raised ValueError: no reward today"):
        train(grpo(tmp_path, reward_file, "a", f"objective.reward_fn={reward_file}:boom"))
    with pytest.raises(UserError, match=r"reward 'words' returned 'high' \(str\); expected a finite number"):
        train(grpo(tmp_path, reward_file, "b", f"objective.reward_fn={reward_file}:words"))
    with pytest.raises(ConfigError, match=r"objective.reward_fn': .*defines no function 'nope'"):
        grpo(tmp_path, reward_file, "c", f"objective.reward_fn={reward_file}:nope")
    with pytest.raises(ConfigError, match=r"not a local .py file"):
        grpo(tmp_path, reward_file, "d", "objective.reward_fn=os.path:join")
    with pytest.raises(ConfigError, match=r"3 weight\(s\) for 2 reward"):
        grpo(tmp_path, reward_file, "e", "objective.reward_weights=[1,2,3]")


def test_grpo_refuses_prompts_without_an_answer_before_loading_a_model(tmp_path, reward_file, monkeypatch):
    import tunelab.train.recipe as recipe

    monkeypatch.setattr(recipe, "load_trainable", lambda *a, **k: pytest.fail("the model was loaded"))
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi", "input": "", "output": "Hi"}) + "\n")
    with pytest.raises(DataError, match=r"chat.jsonl:1: stage grpo needs a reference answer"):
        train(grpo(tmp_path, reward_file, "run", f"data.name={data}"))
    assert not (tmp_path / "run").exists()


def test_rewards_are_the_evaluation_grader():
    from tunelab.train.rewards import REWARDS

    completions = ["So 3 + 4 = 7. \\boxed{7}", "The answer is 7.", "\\boxed{8}", "I don't know"]
    assert REWARDS["correct"](completions, ["7"] * 4, [""] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert REWARDS["boxed"](completions, ["7"] * 4, [""] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert REWARDS["correct"](["\\boxed{\\frac{1}{2}}", "答案：0.5"], ["0.5", "1/2"], ["", ""]) == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------
# experiments: sft -> sft+dpo -> sft+grpo, evaluated alike, one report

@pytest.mark.slow
def test_experiment_sft_then_dpo_and_grpo(tmp_path, pairs, reward_file):
    import yaml

    from tunelab.cli import main
    from tunelab.experiment import spec as S
    from tunelab.experiment.run import run
    from tunelab.models.load import identity

    common = {"model.name": "tiny-qwen3", "data.name": "arith_en", "data.n": 16, "data.val_size": 4,
              "data.max_length": 128, "method.lora_r": 4, "training.max_steps": 2, "training.batch_size": 2,
              "training.log_every": 1, "training.eval_every": 1, "training.save_every": 0}
    variants = {"sft": {},
                "sft+dpo": {"from": "sft", "stage": "dpo", "data.name": str(pairs)},
                "sft+grpo": {"from": "sft", "stage": "grpo", "objective.num_generations": 2,
                             "objective.max_new_tokens": 8, "objective.reward_fn": f"{reward_file}:short"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"base": {}, "overrides": common, "variants": variants,
                                    "output": str(tmp_path / "study"),
                                    "evaluation": {"tasks": ["arith_en"], "limit": 2, "max_new_tokens": 4,
                                                   "batch_size": 2}}, sort_keys=False))
    exp = S.load(path)
    study = tmp_path / "study"
    assert exp.parents == {"sft+dpo": "sft", "sft+grpo": "sft"}
    assert exp.variants["sft+dpo"].model.name == str(study / "runs" / "sft") and exp.base_model == "tiny-qwen3"
    with pytest.raises(C.ConfigError, match=r"variant 'x': from: 'later' must name a variant listed before it"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"base": {}, "overrides": common, "variants": {"x": {"from": "later"},
                                                                                    "later": {}}}, sort_keys=False))
        S.load(bad)

    status = run(exp)
    assert status == {"sft": "trained", "sft+dpo": "trained", "sft+grpo": "trained"}, status
    # each alignment run starts from the SFT run (its adapter merged), and says so in its fingerprint
    for name in ("sft+dpo", "sft+grpo"):
        fp = json.loads((study / "runs" / name / "fingerprint.json").read_text())
        assert fp["model"] == identity(str(study / "runs" / "sft"))
        res = json.loads((study / "eval" / name / "arith_en" / "results.json").read_text())
        assert res["n"] == 2
    assert run(exp) == {"sft": "done earlier", "sft+dpo": "done earlier", "sft+grpo": "done earlier"}

    assert main(["report", str(study)]) == 0
    md = (study / "report.md").read_text()
    assert "## Preference tuning" in md and "## GRPO" in md and "![GRPO rollouts](grpo.png)" in md
    assert (study / "dpo.png").stat().st_size > 1000 and (study / "grpo.png").stat().st_size > 1000
    dpo_row = next(line for line in md.splitlines() if line.startswith("| sft+dpo |") and "->" in line)
    first = json.loads((study / "runs/sft+dpo/metrics.jsonl").read_text().splitlines()[0])
    assert f"{first['loss']:.3f} ->" in dpo_row


def needs_deepspeed(strategy: str) -> list:
    from tests.train.test_distributed import needs_deepspeed as mark

    return [mark] if strategy.startswith("zero") else []


@pytest.mark.slow
@pytest.mark.parametrize("method,strategy", [pytest.param(m, s, marks=needs_deepspeed(s))
                                             for m, s in (("lora", "ddp"), ("full", "fsdp"), ("full", "zero3"))])
def test_dpo_two_processes_equal_one(tmp_path, pairs, method, strategy):
    """`--nproc 2 --strategy S` (batch 2 each) == one process (batch 2 x 2 accumulation): per-step
    losses, preference metrics and validation within 1e-4. The reference cache is written by the first
    process from whole weights, before they are sharded (fsdp, zero3), and read by the second."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.train.test_train import weights

    over = [f"method.name={method}", f"optimizer.lr={1e-3 if method == 'full' else 1e-2}", "training.batch_size=2",
            "training.eval_every=2"]
    train(dpo(tmp_path, pairs, "one", *over, "training.grad_accum=2"))
    C.save(dpo(tmp_path, pairs, "two", *over), tmp_path / "two.yaml")
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(tmp_path / "two.yaml"), "--nproc", "2",
                           "--strategy", strategy],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for split in ("train", "val"):
        a, b = metrics(tmp_path / "one", split), metrics(tmp_path / "two", split)
        assert len(a) == len(b) == {"train": 3, "val": 2}[split]
        for x, y in zip(a, b):
            for key in ("loss", "rewards/margins", "rewards/accuracy", "logps/chosen"):
                assert abs(x[key] - y[key]) <= 1e-4 * max(1.0, abs(x[key])), (split, key, x[key], y[key])
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-4
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["num_processes"] == 2

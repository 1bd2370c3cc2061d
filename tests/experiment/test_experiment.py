"""Experiments on tiny-qwen3: variant expansion and its errors, skip and resume of variants, a
failed variant reported while the others run, the report rebuilt from saved runs alone (with its
charts and tables), the warning for evaluations run with different settings, and evaluation with and
without retrieval side by side (`evaluation.retrieval`) with its errors at load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tunelab import config as C
from tunelab.cli import main
from tunelab.experiment import spec as S
from tunelab.experiment.run import run

COMMON = {"model.name": "tiny-qwen3", "data.name": "arith_en", "data.n": 24, "data.val_size": 4,
          "data.max_length": 256, "data.dedup": "exact", "training.max_steps": 2, "training.batch_size": 2,
          "training.log_every": 1, "training.eval_every": 1, "training.save_every": 1, "method.lora_r": 4}


def write_exp(tmp_path: Path, variants: dict, evaluation: dict | None = None) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"base": str(REPO / "configs/quickstart.yaml"), "overrides": COMMON,
                                    "variants": variants, "output": str(tmp_path / "study"),
                                    "evaluation": evaluation or {}}, sort_keys=False))
    return path


def test_variant_expansion(tmp_path):
    exp = S.load(write_exp(tmp_path, {"lora": {}, "full_sgd": {"method.name": "full", "optimizer.name": "sgd"}}))
    assert list(exp.variants) == ["lora", "full_sgd"]
    lora, sgd = exp.variants["lora"], exp.variants["full_sgd"]
    assert lora.method.name == "lora" and sgd.method.name == "full" and sgd.optimizer.name == "sgd"
    assert lora.data.n == sgd.data.n == 24 and lora.model.name == "tiny-qwen3"
    assert sgd.output.dir == str(tmp_path / "study" / "runs" / "full_sgd")
    assert exp.base_model == "tiny-qwen3"


def test_bad_variant_key_names_key_and_variant(tmp_path):
    with pytest.raises(C.ConfigError, match=r"variant 'bad': unknown config key 'training.batchsize'"):
        S.load(write_exp(tmp_path, {"ok": {}, "bad": {"training.batchsize": 3}}))
    with pytest.raises(C.ConfigError, match=r"variant 'bad2': config key 'method.name': expected one of"):
        S.load(write_exp(tmp_path, {"bad2": {"method.name": "ia3"}}))


def test_shipped_experiments_parse():
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        assert path.read_text().startswith("# tunelab "), path
        if "sweep" in path.name:
            from tunelab.experiment.sweep import load_spec

            load_spec(path)
        else:
            assert S.load(path).variants


def test_run_skip_resume_fail_and_report(tmp_path):
    variants = {"lora": {}, "full": {"method.name": "full", "optimizer.name": "sgd", "optimizer.lr": 0.05},
                "broken": {"method.target_modules": ["no_such_proj"]}}
    path = write_exp(tmp_path, variants, {"tasks": ["arith_en", "heldout"], "limit": 2, "max_new_tokens": 3,
                                          "batch_size": 2})
    exp = S.load(path)
    study = tmp_path / "study"

    # an interrupted variant: 'full' crashed after its first checkpoint
    from tunelab.train.recipe import train

    def crash(step, state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(exp.variants["full"], callbacks=(crash,))
    assert (study / "runs" / "full" / "checkpoints" / "step-000001").is_dir()

    status = run(exp)
    assert status["lora"] == "trained" and status["full"] == "resumed"
    assert status["broken"].startswith("failed: MethodError") and "no_such_proj" in status["broken"]
    full_metrics = [json.loads(l) for l in (study / "runs/full/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in full_metrics if m["split"] == "train"] == [1, 2]  # resumed, not restarted
    assert (study / "runs/broken/error.txt").read_text().startswith("MethodError")
    for label in ("base", "lora", "full"):
        res = json.loads((study / "eval" / label / "arith_en" / "results.json").read_text())
        assert res["n"] == 2 and res["generation"]["max_new_tokens"] == 3
    assert not (study / "eval" / "broken").exists()
    # `heldout` rolls out on the validation split of the training data: never a training question
    from tunelab.data.prepare import clean_and_split
    from tunelab.data.prompts import apply_prompts
    from tunelab.data.sources import load_conversations

    cfg = exp.variants["lora"]
    convs = [apply_prompts(c) for c in load_conversations("arith_en", n=cfg.data.n, seed=cfg.data.seed)]
    train_part, val_part, _ = clean_and_split(convs, dedup_mode="exact", near_dup_threshold=0.9,
                                              val_size=cfg.data.val_size, seed=cfg.data.seed)
    train_q = {c["messages"][0]["content"] for c in train_part}
    held = [json.loads(l) for l in (study / "eval/lora/heldout/predictions.jsonl").read_text().splitlines()]
    assert len(held) == 2 and {r["id"] for r in held} <= {c["meta"]["id"] for c in val_part}
    assert not any(q in r["prompt"] for r in held for q in train_q)

    stamp = (study / "runs/lora/summary.json").stat().st_mtime_ns
    again = run(exp)
    assert again["lora"] == again["full"] == "done earlier"
    assert (study / "runs/lora/summary.json").stat().st_mtime_ns == stamp

    # the report from saved runs alone
    for f in ("report.md", "report.html", "loss_train.png", "loss_val.png"):
        (study / f).unlink(missing_ok=True)
    assert main(["report", str(study)]) == 0
    md = (study / "report.md").read_text()
    assert "## Resources" in md and "## Scores" in md and "| base |" in md and "| lora |" in md
    assert "failed: MethodError" in md
    assert (study / "loss_train.png").stat().st_size > 1000 and (study / "loss_val.png").stat().st_size > 1000
    html = (study / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Warning" not in html
    lora_row = next(l for l in md.splitlines() if l.startswith("| lora |"))
    summary = json.loads((study / "runs/lora/summary.json").read_text())
    assert f"{summary['trainable_params']:,}" in lora_row

    # evaluations with different settings are flagged, not compared silently
    res_path = study / "eval/lora/arith_en/results.json"
    res = json.loads(res_path.read_text())
    res["generation"]["max_new_tokens"] = 99
    res_path.write_text(json.dumps(res))
    assert main(["report", str(study)]) == 0
    assert "evaluated with different settings" in (study / "report.md").read_text()


def test_data_scale_chart(tmp_path):
    variants = {"n12": {"data.n": 12}, "n24": {"data.n": 24}}
    exp = S.load(write_exp(tmp_path, variants))
    run(exp)
    from tunelab.experiment.report import build

    build([tmp_path / "study"])
    md = (tmp_path / "study" / "report.md").read_text()
    assert "against data size" in md and (tmp_path / "study" / "data_scale.png").stat().st_size > 1000


@pytest.mark.slow
def test_each_variant_has_its_own_peak_memory(tmp_path):
    """Variants train in processes of their own: a small variant run after a big one reports its own
    peak, equal (within 10%) to the same run trained alone."""
    import subprocess
    import sys

    variants = {"big": {"training.batch_size": 8, "data.max_length": 512, "method.name": "full"},
                "small": {"training.batch_size": 1, "data.max_length": 128}}
    path = write_exp(tmp_path, variants)
    status = run(S.load(path))
    assert status == {"big": "trained", "small": "trained"}
    peaks = {n: json.loads((tmp_path / "study/runs" / n / "summary.json").read_text())["peak_mem_mb"] for n in variants}
    exp = S.load(path)
    for name in variants:
        alone = tmp_path / f"alone_{name}"
        cfg = exp.variants[name]
        cfg.output.dir = str(alone)
        C.save(cfg, tmp_path / f"{name}.yaml")
        subprocess.run([sys.executable, "-m", "tunelab", "train", str(tmp_path / f"{name}.yaml")], check=True,
                       capture_output=True)
        own = json.loads((alone / "summary.json").read_text())["peak_mem_mb"]
        assert abs(peaks[name] - own) <= 0.1 * own, (name, peaks[name], own)
    assert peaks["big"] > 1.2 * peaks["small"]  # different enough that carrying over would show


def test_changed_variant_or_eval_settings_are_refused_until_rerun(tmp_path):
    path = write_exp(tmp_path, {"a": {}}, {"tasks": ["arith_en"], "limit": 2, "max_new_tokens": 2, "base_model": False})
    assert run(S.load(path)) == {"a": "trained"}
    before = (tmp_path / "study/runs/a/summary.json").read_bytes()
    # the variant's learning rate edited: the old run must not be reported as the new one
    spec = yaml.safe_load(path.read_text())
    spec["variants"]["a"] = {"optimizer.lr": 0.05}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(C.ConfigError, match=r"(?s)variant a: optimizer.lr: 0.0002 -> 0.05.*--rerun"):
        run(S.load(path))
    # the eval limit edited
    spec["variants"]["a"] = {}
    spec["evaluation"]["limit"] = 3
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(C.ConfigError, match=r"eval of a on arith_en: limit: 2 -> 3"):
        run(S.load(path))
    assert (tmp_path / "study/runs/a/summary.json").read_bytes() == before
    assert run(S.load(path), rerun=["a"]) == {"a": "trained"}
    res = json.loads((tmp_path / "study/eval/a/arith_en/results.json").read_text())
    assert res["n"] == 3


def test_run_never_deletes_a_users_file_in_a_variant_directory(tmp_path):
    path = write_exp(tmp_path, {"a": {}})
    mine = tmp_path / "study/runs/a/notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep")
    with pytest.raises(C.ConfigError, match="holds files tunelab did not write"):
        run(S.load(path))
    assert mine.read_text() == "keep"


def _arith_index(tmp_path: Path) -> str:
    """A BM25 index of three worked arithmetic examples (a knowledge base for the +rag evaluations)."""
    from tunelab.rag.command import main as rag_main

    src = tmp_path / "worked.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in [
        ("Tom has 12 apples and gives away 5. How many apples are left?", "12 - 5 = 7. The answer is \\boxed{7}."),
        ("A box holds 6 pens. How many pens are in 4 boxes?", "6 * 4 = 24. The answer is \\boxed{24}."),
        ("Sara reads 9 pages a day for 3 days. How many pages does she read?", "9 * 3 = 27. \\boxed{27}")]))
    assert rag_main(["index", str(src), "--output", str(tmp_path / "kb")]) == 0
    return str(tmp_path / "kb")


def test_retrieval_adds_a_rag_row_for_every_model(tmp_path):
    index = _arith_index(tmp_path)
    path = write_exp(tmp_path, {"lora": {}}, {"tasks": ["arith_en"], "limit": 2, "max_new_tokens": 2,
                                              "batch_size": 2, "retrieval": {"index": index, "k": 2}})
    exp = S.load(path)
    assert exp.evaluation.retrieval == S.Retrieval(index=index, k=2)
    assert main(["run", str(path)]) == 0
    study = tmp_path / "study"
    for label in ("base", "base+rag", "lora", "lora+rag"):
        res = json.loads((study / "eval" / label / "arith_en" / "results.json").read_text())
        assert res["n"] == 2 and ("retrieval" in res) == label.endswith("+rag")
    rag = json.loads((study / "eval/lora+rag/arith_en/results.json").read_text())["retrieval"]
    assert rag["index"] == index and rag["k"] == 2 and rag["mode"] == "bm25" and rag["passages"] == 4
    rows = [json.loads(l) for l in (study / "eval/lora+rag/arith_en/predictions.jsonl").read_text().splitlines()]
    assert all("Use the numbered passages below" in r["prompt"] for r in rows)
    plain = (study / "eval/lora/arith_en/predictions.jsonl").read_text()
    assert "Use the numbered passages below" not in plain
    report = (study / "report.md").read_text()
    scores = report.split("## Scores")[1]
    order = [line.split("|")[1].strip() for line in scores.splitlines() if line.startswith("| ")][1:5]
    assert order == ["base", "base+rag", "lora", "lora+rag"]  # each model beside its row with retrieval
    assert f"| lora+rag | 0-shot, chat, 2 passages retrieved (bm25) from {index} |" in report
    assert "| lora | 0-shot, chat |" in report
    # run again: everything is done, nothing is refused as changed
    assert run(S.load(path)) == {"lora": "done earlier"}
    # another k: the +rag evaluations are stale, the plain ones are not
    spec = yaml.safe_load(path.read_text())
    spec["evaluation"]["retrieval"]["k"] = 1
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(C.ConfigError, match=r"eval of lora\+rag on arith_en: rag_k: 2 -> 1") as e:
        run(S.load(path))
    assert "eval of lora on" not in str(e.value)


@pytest.mark.parametrize("retrieval, message", [
    ("kb", "evaluation.retrieval must be a mapping with 'index'"),
    ({"k": 2}, "evaluation.retrieval.index must be the path of a `tunelab rag index` folder"),
    ({"index": "KB", "top_k": 2}, r"evaluation.retrieval: unknown key\(s\) \['top_k'\]; known: index, k, mode"),
    ({"index": "KB", "k": 0}, "evaluation.retrieval.k must be a whole number >= 1, got 0"),
    ({"index": "KB", "mode": "sparse"}, "evaluation.retrieval.mode must be bm25, dense or hybrid, got 'sparse'"),
    ({"index": "KB", "mode": "dense"}, "evaluation.retrieval: .*has no dense vectors"),
    ({"index": "MISSING"}, "evaluation.retrieval: .*missing: not a tunelab rag index \\(does not exist\\)"),
    ({"index": "KB", "encoder": "ENC"}, "evaluation.retrieval: .*was built without an encoder"),
])
def test_bad_retrieval_is_refused_at_load_naming_the_key(tmp_path, retrieval, message):
    index = _arith_index(tmp_path)
    encoder = tmp_path / "encoder"  # a model folder is enough: the index is refused before any encoder loads
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    subst = {"KB": index, "MISSING": str(tmp_path / "missing"), "ENC": str(encoder)}
    if isinstance(retrieval, dict):
        retrieval = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in retrieval.items()}
    path = write_exp(tmp_path, {"lora": {}}, {"tasks": ["arith_en"], "retrieval": retrieval})
    with pytest.raises(C.ConfigError, match=message):
        S.load(path)
    assert main(["run", str(path)]) == 2  # one message, exit status 2, nothing trained
    assert not (tmp_path / "study").exists()


def test_retrieval_and_rag_settings_together_are_refused(tmp_path):
    index = _arith_index(tmp_path)
    path = write_exp(tmp_path, {"lora": {}}, {"tasks": ["arith_en"], "rag_k": 2, "retrieval": {"index": index}})
    with pytest.raises(C.ConfigError, match=r"evaluation: \['rag_k'\] and evaluation.retrieval both set"):
        S.load(path)


def test_report_config_differences_stay_on_one_line():
    """A long value (a data mixture) is one cell: a newline would end the markdown table's row."""
    from tunelab.experiment.report import config_differences

    mix = [{"name": f"source_{i}", "weight": 1.0, "format": "text", "columns": {"text": "answer"}} for i in range(4)]
    runs = {"a": {"config": {"data": {"mix": mix}}}, "b": {"config": {"data": {"mix": []}}}}
    cols, rows = config_differences(runs)
    assert cols == ["variant", "data.mix"]
    assert "\n" not in rows[0][1] and len(rows[0][1]) > 200 and "source_3" in rows[0][1]

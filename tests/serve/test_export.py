"""`tunelab export`: LoRA, DoRA and QLoRA adapters merged into plain transformers models whose logits
equal the unmerged adapter model's; full runs copied (and cast); the files and metadata written;
refusals (non-empty output, bad run directory, exporting over the run); an export chats as the run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import REPO
from tests.serve.conftest import env, tiny_run
from tunelab.cli import main
from tunelab.models.load import load_model, resolve

IDS = torch.tensor([[151644, 872, 198, 16, 10, 16, 30, 151645, 198, 151644, 77091, 198]])
IM_END, ENDOFTEXT = 151645, 151643


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def unmerged(run) -> torch.Tensor:
    """The adapter as trained: PeftModel on the fp32 (never quantized) base, not merged."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(resolve("tiny-qwen3").path, dtype=torch.float32)
    return logits(PeftModel.from_pretrained(base, str(run / "model")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"lora": tiny_run(root / "lora", "lora", "data.system_prompt=You are a calculator."),
            "dora": tiny_run(root / "dora", "dora"),
            "full": tiny_run(root / "full", "full")}


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_adapter_equals_the_adapter_model(runs, tmp_path, method, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(runs[method]), "--output", str(out)]) == 0
    assert "adapter merged into 'tiny-qwen3'" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    assert not hasattr(exported, "peft_config") and exported.dtype == torch.float32
    a, b = logits(exported), unmerged(runs[method])
    assert (a - b).abs().max().item() <= 1e-4
    assert (a - logits(load_model("tiny-qwen3"))).abs().max().item() > 1e-3  # the adapter changed something
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tunelab.json",
            "config.yaml"} <= files and "adapter_config.json" not in files
    # Qwen3's tokenizer eos is already its end-of-turn token, so there is just one stop id
    assert exported.generation_config.eos_token_id == IM_END
    assert exported.generation_config.pad_token_id == ENDOFTEXT
    meta = json.loads((out / "tunelab.json").read_text())
    assert meta["exported_from"] == str(runs[method].resolve()) and meta["method"] == method
    assert meta["export"]["merged"] is True and meta["quantization"] is None
    from transformers import AutoTokenizer

    tok, trained = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(runs[method] / "model")
    assert tok.chat_template == trained.chat_template and tok.chat_template


def test_full_run_exports_as_is_and_casts(runs, tmp_path):
    out = tmp_path / "full32"
    assert main(["export", str(runs["full"]), "--output", str(out)]) == 0
    a = logits(AutoModelForCausalLM.from_pretrained(out))
    assert torch.equal(a, logits(AutoModelForCausalLM.from_pretrained(runs["full"] / "model")))
    assert json.loads((out / "tunelab.json").read_text())["export"]["merged"] is False
    assert main(["export", str(runs["full"]), "--output", str(tmp_path / "full16"), "--dtype", "bf16"]) == 0
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "full16")
    assert half.dtype == torch.bfloat16
    assert (logits(half.float()) - a).abs().max().item() < 0.1  # rounding only


def rundir_meta(path):
    from tunelab import rundir

    return rundir.read_metadata(path)


def test_refusals(runs, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(runs["lora"]), "--output", str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"
    assert main(["export", str(runs["lora"]), "--output", str(out), "--overwrite"]) == 2  # a user's folder
    assert "tunelab did not write" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
    mine = tmp_path / "exported"
    assert main(["export", str(runs["lora"]), "--output", str(mine)]) == 0
    assert main(["export", str(runs["full"]), "--output", str(mine), "--overwrite"]) == 0  # its own: replaced
    assert (mine / "model.safetensors").is_file() and (mine / ".tunelab").is_file()
    assert rundir_meta(mine)["method"] == "full"
    assert main(["export", str(tmp_path / "nope"), "--output", str(tmp_path / "x")]) == 2
    assert "is not a directory; give a run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--output", str(tmp_path / "x")]) == 2
    assert "is not a tunelab run directory" in capsys.readouterr().err
    assert main(["export", str(runs["full"]), "--output", str(runs["full"] / "model"), "--overwrite"]) == 2
    assert "would replace the run it exports from" in capsys.readouterr().err
    assert (runs["full"] / "model" / "config.json").is_file()
    assert not list(tmp_path.glob(".*tmp-*"))  # nothing half-written left behind


def test_qlora_exports_the_dequantized_base_with_the_adapter_merged(tmp_path, capsys):
    run = tiny_run(tmp_path / "qlora", "qlora")
    out = tmp_path / "exported"
    assert main(["export", str(run), "--output", str(out)]) == 0
    assert "nf4 base dequantized to float32" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert not any(type(p).__name__ == "Params4bit" for p in exported.parameters())
    qlora = load_model(str(run))  # the model as trained: the 4-bit base + the adapter, unmerged
    assert any(type(p).__name__ == "Params4bit" for p in qlora.parameters())
    # in train mode, bitsandbytes computes in fp32; in eval mode on CPUs with AVX512-BF16 it switches to a
    # bf16 kernel (~5e-3 off). Dropout stays off.
    qlora.train()
    for m in qlora.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.no_grad():
        trained = qlora(IDS).logits
    assert (logits(exported) - trained).abs().max().item() <= 1e-4
    # merging into the original fp32 base instead would be off by the quantization error
    assert (unmerged(run) - trained).abs().max().item() > 1e-2
    meta = json.loads((out / "tunelab.json").read_text())
    assert meta["quantization"] is None and meta["export"]["trained_quantization"]["quant_type"] == "nf4"


def test_an_export_chats_like_its_run(runs, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(runs["lora"]), "--output", str(out)]) == 0

    def chat(model: str, save: str) -> subprocess.CompletedProcess:
        # sampled: tiny-qwen3's greedy replies are empty (see conftest), samples are not
        return subprocess.run([sys.executable, "-m", "tunelab", "chat", model, "--max-new-tokens", "6",
                               "--temperature", "1", "--seed", "3"], input=f"1+1?\n/save {tmp_path / save}\n",
                              capture_output=True, text=True, env=env(), cwd=REPO, timeout=180)

    a, b = chat(str(runs["lora"]), "run.json"), chat(str(out), "export.json")
    assert a.returncode == b.returncode == 0, a.stderr[-2000:] + b.stderr[-2000:]
    assert a.stdout == b.stdout and a.stdout.strip()
    saved = [json.loads((tmp_path / name).read_text()) for name in ("run.json", "export.json")]
    # the run's trained system prompt comes along (config.yaml is copied into the export)
    assert saved[0] == saved[1] and saved[0]["messages"][0] == {"role": "system", "content": "You are a calculator."}

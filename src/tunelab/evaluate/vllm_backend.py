"""`tunelab eval --backend vllm`: the same rollouts through vLLM's offline engine, for CUDA machines.

    tunelab eval --model runs/math500_lora --task math500 --backend vllm

vLLM receives the token ids tunelab's renderer built (never its own chat templating), the same stop
tokens (the template's end-of-turn, then eos), `max_new_tokens`, temperature and top-p, so its
predictions are graded exactly like the transformers backend's. A run directory with a LoRA adapter
is served as base + adapter (`enable_lora`, a `LoRARequest`); a DoRA or QLoRA run is refused with the
way out (`tunelab export` it first, then evaluate the export), because vLLM's LoRA path does not
apply DoRA's magnitude vectors, and merging into a 4-bit base is the export's job.

Greedy vLLM and transformers rollouts agree up to kernel numerics; sampled rollouts use vLLM's
per-request seed (`seed + sample index`), so they are reproducible but not the same samples as the
transformers backend's. Not tested in this repository's CI (no CUDA there); the argument checks are.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import rundir
from ..errors import DataError


def check_available() -> None:
    """A clear error, before any model loads, when vLLM cannot run here."""
    if importlib.util.find_spec("vllm") is None:
        raise DataError("--backend vllm needs the vllm package (`pip install vllm`, CUDA machines only); "
                        "use --backend hf (the default) otherwise")
    import torch

    if not torch.cuda.is_available():
        raise DataError("--backend vllm needs a CUDA GPU and none is visible; use --backend hf (the default)")


def engine_args(model_dir: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(LLM(...) keyword arguments, the LoRA adapter to apply or None) for a resolved model directory."""
    if not rundir.is_adapter(model_dir):
        return {"model": str(model_dir), "tokenizer": str(model_dir)}, None
    cfg = rundir.read_json(model_dir / rundir.ADAPTER_CONFIG)
    method = meta.get("method", "lora")
    if meta.get("quantization") or cfg.get("use_dora") or method in ("dora", "qlora"):
        raise DataError(f"{model_dir}: a {method} adapter cannot be evaluated with --backend vllm; run "
                        f"`tunelab export {model_dir.parent} --output DIR` and evaluate DIR, or use --backend hf")
    from ..models.load import resolve

    base = resolve(rundir.adapter_base(model_dir))
    rank = int(cfg.get("r", 8))
    return ({"model": base.path, "tokenizer": str(model_dir), "enable_lora": True,
             "max_lora_rank": max(8, 1 << (rank - 1).bit_length())},  # vLLM wants a power of two >= 8
            {"name": "tunelab-adapter", "path": str(model_dir)})


class VllmGenerator:
    """Same interface as `generate.Generator`: `generate(prompts, settings, on_batch, skip)`."""

    def __init__(self, model_dir: Path, meta: dict[str, Any], tokenizer: Any, stop_ids: list[int],
                 dtype: str = "auto"):
        check_available()
        from vllm import LLM

        kwargs, self.adapter = engine_args(model_dir, meta)
        self.llm = LLM(**kwargs, dtype=dtype if dtype != "auto" else "auto", seed=0)
        self.tokenizer, self.stop_ids = tokenizer, stop_ids

    def generate(self, prompts: list[list[int]], s: Any,
                 on_batch: Callable[[list[int], int, list[tuple[str, int]]], None] | None = None,
                 skip: Iterable[tuple[int, int]] = (), progress: bool = True) -> dict[tuple[int, int], tuple[str, int]]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(self.adapter["name"], 1, self.adapter["path"]) if self.adapter else None
        done = set(skip)
        out: dict[tuple[int, int], tuple[str, int]] = {}
        for j in range(s.n):
            todo = [i for i in range(len(prompts)) if (i, j) not in done]
            if not todo:
                continue
            params = SamplingParams(max_tokens=s.max_new_tokens, stop_token_ids=self.stop_ids,
                                    temperature=s.temperature, top_p=s.top_p if s.temperature > 0 else 1.0,
                                    seed=s.seed + j if s.temperature > 0 else None, skip_special_tokens=True)
            # vLLM schedules all prompts itself (continuous batching): one call per sample index
            results = self.llm.generate([{"prompt_token_ids": prompts[i]} for i in todo], params,
                                        use_tqdm=progress, lora_request=lora)
            res = []
            for r in results:
                o = r.outputs[0]
                res.append((o.text.strip(), len(o.token_ids)))
            for i, r in zip(todo, res):
                out[(i, j)] = r
            if on_batch is not None:
                on_batch(todo, j, res)
        return out

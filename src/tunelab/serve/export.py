"""`tunelab export`: a run directory -> a plain transformers model directory anyone can load.

    tunelab export runs/quickstart --output exported/quickstart [--dtype bf16|fp16|fp32] [--overwrite]
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('exported/quickstart')"

LoRA/DoRA runs: the adapter is merged into the base weights (`merge_and_unload`, in fp32, then cast).
Full/freeze runs: the model is copied (cast when `--dtype` asks). QLoRA runs: the base is loaded
in 4 bits as in training, dequantized to fp32, and the adapter merged into it, so the export computes
what the trained QLoRA model computed (not the original base plus the adapter).

The output holds safetensors weights, the tokenizer with the chat template used in training, a
generation config whose eos is the template's end-of-turn token (then the tokenizer's eos), the run's
`tunelab.json` with `exported_from` and `export` added, and the run's `config.yaml` (so `tunelab
chat/serve/eval` on the export use the trained system prompt and thinking setting). It is written to a
temporary sibling and renamed when complete (`paths.atomic_dir`); a non-empty output needs --overwrite.

Tests: `.venv/bin/python -m pytest tests/serve/test_export.py -q`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from .. import rundir
from ..config import DTYPES
from ..errors import ServeError


def find_model_dir(run_dir: str | Path) -> Path:
    """The run's `model/` (or a model directory given directly), or a message saying what is missing."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ServeError(f"{run} is not a directory; give a run directory written by `tunelab train`")
    model = rundir.model_dir(run)
    if not (rundir.is_adapter(model) or (model / "config.json").is_file()):
        raise ServeError(f"{run} is not a tunelab run directory: expected {run / rundir.MODEL} holding a transformers "
                         f"model (config.json) or a PEFT adapter ({rundir.ADAPTER_CONFIG}), as `tunelab train` writes")
    return model


def _saved_dtype(model_dir: Path) -> str:
    """The dtype a model directory's config.json records (float32 when it records none)."""
    data = rundir.read_json(model_dir / "config.json") or {}
    name = str(data.get("dtype") or data.get("torch_dtype") or "float32")
    return DTYPES.get(name, "float32")


def export(run_dir: str | Path, output: str | Path, *, dtype: str = "auto", overwrite: bool = False,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from ..data.templates import end_of_turn
    from ..models.generation import stop_token_ids
    from ..models.load import load_merged, load_tokenizer, resolve
    from ..paths import atomic_dir, check_writable

    if dtype != "auto" and dtype not in DTYPES:
        raise ServeError(f"--dtype '{dtype}' is not one of auto, {', '.join(DTYPES)}")
    model_dir = find_model_dir(run_dir)
    run = model_dir.parent if model_dir.name == rundir.MODEL else model_dir
    out = Path(output).expanduser()
    o, r = out.resolve(), run.resolve()
    if o == r or o == model_dir.resolve() or o in r.parents:
        raise ServeError(f"--output {out} would replace the run it exports from ({run}); choose another directory")
    check_writable(out, overwrite, kind="export", inputs=[run])  # before the (slow) loading

    meta = rundir.read_metadata(model_dir)
    adapter = rundir.is_adapter(model_dir)
    tokenizer = load_tokenizer(str(model_dir))  # carries the chat template used in training
    eot = end_of_turn(tokenizer, {"enable_thinking": bool(meta.get("enable_thinking", False))})
    quant = rundir.quantization(model_dir)
    model = load_merged(model_dir)  # an adapter merged into its base (a QLoRA base dequantized first), fp32
    if adapter:
        base_ref = rundir.adapter_base(model_dir)
        base_dir = resolve(base_ref)
        saved = _saved_dtype(Path(base_dir.path)) if base_dir.kind != "hub" else "float32"
        how = f"{meta.get('method', 'adapter')} adapter merged into '{base_ref}'"
        if quant:
            how += (f" (QLoRA: the {quant.get('quant_type', '4-bit')} base dequantized to float32, then the adapter "
                    "merged into it: the export computes what the trained QLoRA model computed)")
    else:
        saved = _saved_dtype(model_dir)
        how = f"{meta.get('method', 'full')} model copied"
    target = saved if dtype == "auto" else DTYPES[dtype]
    model = model.to(getattr(torch, target)).eval()
    stops = stop_token_ids(tokenizer, eot)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    new_meta = {**meta, "quantization": None, "exported_from": str(run.resolve()),
                "export": {"merged": adapter, "dtype": target, "end_of_turn": eot or None,
                           "trained_quantization": quant, "base_model": meta.get("base_model")}}
    with atomic_dir(out, kind="export", overwrite=overwrite, inputs=[run]) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        rundir.write_metadata(tmp, new_meta)
        if (run / rundir.CONFIG).is_file():
            shutil.copy2(run / rundir.CONFIG, tmp / rundir.CONFIG)
    log(f"[tunelab] exported {run} -> {out}: {how}; dtype {target}; eos {stops} "
        f"({eot or tokenizer.eos_token}); load it with AutoModelForCausalLM.from_pretrained('{out}')")
    return {"output": str(out), "merged": adapter, "dtype": target, "method": meta.get("method"),
            "dequantized_base": bool(adapter and quant), "eos_token_id": stops}


def export_command(args: Any) -> int:
    export(args.run_dir, args.output, dtype=args.dtype, overwrite=args.overwrite)
    return 0

"""Several processes: DDP, FSDP2 and DeepSpeed ZeRO-2/3, all run by accelerate around the one loop.

    tunelab train CONFIG --nproc 2 --strategy fsdp      # writes accelerate_config(...) and runs `accelerate launch`
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m tunelab train CONFIG   # your own file

| strategy | each process holds                                                 | accelerate `distributed_type` |
|---|---|---|
| `ddp`    | the whole model, its gradients and optimizer state                 | MULTI_GPU (MULTI_CPU on CPU)  |
| `fsdp`   | 1/N of the weights, gradients and optimizer state (FSDP2, `fully_shard` per decoder layer) | FSDP |
| `zero2`  | the whole model; 1/N of the gradients and optimizer state (with the fp32 master weights) | DEEPSPEED |
| `zero3`  | 1/N of everything                                                  | DEEPSPEED                     |

What differs between strategies lives here, so that loop.py reads the same for all of them:

- `make_accelerator`: the Accelerator for the environment `accelerate launch` set up. accelerate 1.15
  builds FSDP only for accelerator devices (on CPU it silently trains plain DDP) and DeepSpeed only
  with `cpu=False`; both gaps are bridged here, so a CPU run goes through the same accelerate code as a
  GPU run (which is how the equality tests in tests/train/test_distributed.py run in CI).
- `configure_deepspeed`: the micro-batch, accumulation and clipping values DeepSpeed needs come from
  tunelab's config (`training.*`); an accelerate or DeepSpeed config that says otherwise is refused.
- `full` / `set_full`: a parameter as one whole tensor, gathered from (or written into) its shards.
  Under FSDP and ZeRO-3 they are collective: every process calls them, in the same order.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..errors import ConfigError

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
DEEPSPEED_EXTRA = "pip install 'tunelab[deepspeed]'"


def check_deepspeed(what: str) -> None:
    """Before anything starts: DeepSpeed is an optional extra."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"{what} runs on DeepSpeed, which is not installed: {DEEPSPEED_EXTRA} "
                          "(or use DDP or FSDP: --strategy ddp|fsdp)")


def accelerate_config(strategy: str, nproc: int) -> dict[str, Any]:
    """The accelerate config (`accelerate launch --config_file`) of `strategy` with `nproc` processes on
    this machine; configs/accelerate/*.yaml are the same settings for 8 GPUs. Precision, batch,
    accumulation and clipping are left out: tunelab's config decides them (training.*)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    config: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "machine_rank": 0,
                              "num_processes": nproc, "main_process_port": 0,  # 0: a free port
                              "mixed_precision": "no", "use_cpu": False}
    if strategy == "ddp":
        # accelerate launch starts processes with torchrun for the GPU types only (MULTI_CPU means MPI);
        # without a GPU the same processes train on the CPU with gloo
        config["distributed_type"] = "MULTI_GPU"
    elif strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                 "fsdp_reshard_after_forward": True,
                                 "fsdp_cpu_ram_efficient_loading": False, "fsdp_offload_params": False,
                                 "fsdp_activation_checkpointing": False}
    else:
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {"zero_stage": int(strategy[-1]), "offload_optimizer_device": "none",
                                      "offload_param_device": "none", "zero3_init_flag": False}
    return config


def launch(train_args: list[str], *, nproc: int, strategy: str) -> int:
    """Run `tunelab train TRAIN_ARGS` as `nproc` processes of `strategy` on this machine: the accelerate
    config of the strategy is written to a temporary file and handed to `accelerate launch`."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import yaml

    if strategy.startswith("zero"):
        check_deepspeed(f"--strategy {strategy}")
    with tempfile.TemporaryDirectory(prefix="tunelab-launch-") as tmp:
        path = Path(tmp) / f"accelerate_{strategy}.yaml"
        path.write_text(yaml.safe_dump(accelerate_config(strategy, nproc), sort_keys=False))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path),
               "-m", "tunelab", "train", *train_args]
        print(f"[tunelab] {strategy} x {nproc}: " + " ".join(cmd), flush=True)
        return subprocess.call(cmd)


def warn_stale_op_lock(name: str = "deepspeed_shm_comm", older_than_s: float = 600) -> str | None:
    """DeepSpeed on CPU JIT-builds `deepspeed_shm_comm` (~30 s) under torch's file lock, which holds no
    process id: a build killed mid-way leaves the lock and every later launch waits on it silently,
    forever. Name it once (rank 0), so a hang has an explanation; the lock is torch's, so it stays."""
    import glob
    import sys
    import time

    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    locks = glob.glob(os.path.join(root, name, "lock")) if root else \
        glob.glob(os.path.join(get_default_build_root(), "*", name, "lock"))
    stale = [p for p in locks if time.time() - os.path.getmtime(p) > older_than_s]
    if not stale or os.environ.get("RANK", "0") != "0":
        return None
    message = (f"tunelab: {stale[0]} is {(time.time() - os.path.getmtime(stale[0])) / 60:.0f} minutes old: DeepSpeed "
               f"waits for it before building its CPU op. If no build is running it was left by a killed one: "
               f"delete it, or set TORCH_EXTENSIONS_DIR to another directory")
    print(message, file=sys.stderr, flush=True)
    return message


def make_accelerator(*, mixed_precision: str, cpu: bool, grad_accum: int) -> Any:
    """The Accelerator of this process, for the strategy that `accelerate launch` (or torchrun) chose.

    `gradient_accumulation_steps` is training.grad_accum under every strategy: accelerate (DDP, FSDP)
    and DeepSpeed's engine divide each micro-batch's loss by it, and DeepSpeed steps its optimizer
    only at the end of an accumulated step."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    kwargs: dict[str, Any] = {}
    if deepspeed:
        check_deepspeed("the accelerate config (distributed_type: DEEPSPEED)")
        if cpu:  # accelerate turns DeepSpeed off when asked for the CPU: ask for the default device with gloo
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # (before deepspeed is imported; it builds a small op)
            warn_stale_op_lock()
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    if fsdp and os.environ.get("FSDP_VERSION", "2") != "2":
        raise ConfigError("tunelab trains with FSDP version 2 (`fsdp_version: 2` in the accelerate config); "
                          f"the config asks for version {os.environ['FSDP_VERSION']}")
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu and not deepspeed,
                              gradient_accumulation_steps=grad_accum, **kwargs)
    if deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3:
        if accelerator.state.deepspeed_plugin.zero3_init_flag:
            raise ConfigError("zero3_init_flag: true (weights partitioned while the model loads) is not supported: "
                              "tunelab's loading, vocabulary check and parameter groups read whole weights; set "
                              "zero3_init_flag: false (each process loads the model, DeepSpeed partitions it)")
        # accelerate 1.15 announces ZeRO-3 to transformers even with zero3_init_flag false, and from_pretrained
        # would then load every weight partitioned (an embedding of 0 rows): withdraw it
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    if fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # accelerate ignores the FSDP plugin on CPU (its FSDP branch lists accelerator devices only);
        # FSDP2 itself runs on CPU with gloo, so make this the FSDP run the config asked for
        plugin = FullyShardedDataParallelPlugin()
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def check_strategy(cfg: Any, strategy: str) -> None:
    """What a sharding strategy cannot run, refused in one message: by the CLI before it launches the
    processes, and by each process (a run under `accelerate launch` never passed the CLI's check)."""
    if strategy not in ("fsdp", "zero2", "zero3"):
        return
    if cfg.method.name == "qlora":
        raise ConfigError(f"method qlora under strategy {strategy} is not supported (4-bit weights cannot be "
                          "sharded or partitioned here); use --strategy ddp, or method lora")
    # DPO's cached reference is computed before the weights are sharded, so its step is one forward and
    # backward like SFT's; an adapters-off reference pass inside the wrapped step, and GRPO's rollouts
    # (each process generates a different number of tokens, so sharded weights would be gathered out of
    # step), need whole weights on every process
    if cfg.stage == "grpo":
        raise ConfigError(f"stage grpo under strategy {strategy} is not supported yet; use one process or "
                          "--strategy ddp")
    if cfg.stage == "dpo" and cfg.objective.reference == "adapters_off":
        raise ConfigError(f"config key 'objective.reference': adapters_off under strategy {strategy} is not "
                          "supported; use auto (cached), or --strategy ddp")


def strategy_of(accelerator: Any) -> str:
    """`single`, `ddp`, `fsdp`, `zero2` or `zero3`: recorded in the summary and in every checkpoint."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return f"zero{accelerator.state.deepspeed_plugin.zero_stage}"
    return "ddp" if accelerator.num_processes > 1 else "single"


def configure_deepspeed(accelerator: Any, *, batch_size: int, grad_accum: int, max_grad_norm: float) -> None:
    """Put tunelab's batch, accumulation and clipping into the DeepSpeed config before `prepare`.

    `prepare` needs the micro-batch size (it would read it from a DataLoader; tunelab's loop has its
    own step plan), and the engine clips and accumulates itself, so these values must be the ones of
    training.*; a config that sets them otherwise is an error, not silently overridden. The optimizer
    and schedule are tunelab's too (optimizer.*, schedule.*)."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ours = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": grad_accum,
            "train_batch_size": batch_size * grad_accum * accelerator.num_processes,
            "gradient_clipping": float(max_grad_norm)}
    training_key = {"train_micro_batch_size_per_gpu": "training.batch_size",
                    "gradient_accumulation_steps": "training.grad_accum", "train_batch_size": "training.batch_size "
                    "x training.grad_accum x processes", "gradient_clipping": "training.max_grad_norm"}
    clash = [f"{k}: {ds[k]} (tunelab's {training_key[k]}: {v})" for k, v in ours.items()
             if ds.get(k, "auto") != "auto" and float(ds[k]) != float(v)]
    clash += [f"{k} (tunelab builds it from {k}.*)" for k in ("optimizer", "scheduler") if k in ds]
    if clash:
        raise ConfigError("the DeepSpeed config sets what tunelab's config decides: " + "; ".join(clash) +
                          ". Remove these keys (or set them to auto) in the accelerate/DeepSpeed config")
    ds.update(ours)


def full(tensor: Any) -> Any:
    """`tensor` whole. Collective for a sharded parameter: FSDP's DTensor, or a ZeRO-3 parameter, of which
    each process holds 1/N; every process must call this for the same tensors in the same order."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    if hasattr(tensor, "ds_id"):  # a DeepSpeed ZeRO-3 parameter
        import deepspeed

        with deepspeed.zero.GatheredParameters([tensor]):
            return tensor.data.clone()
    return tensor


def set_full(param: Any, value: Any) -> None:
    """Write the whole tensor `value` into `param`, whichever shard of it this process holds
    (collective under ZeRO-3; every process passes the same value)."""
    import torch
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(param, DTensor):  # each process cuts its own shard: no communication
            param.copy_(distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements,
                                          src_data_rank=None))
        elif hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value)
        else:
            param.copy_(value)

"""Scale-out presets: ``training.strategy`` -> the HF Trainer's own DeepSpeed / FSDP arguments.

hfray writes no distributed code of its own here: a preset is a DeepSpeed config dict (``"auto"``
values, filled in by transformers' DeepSpeed integration from the other TrainingArguments) or FSDP
arguments for accelerate's FSDP plugin. Ray Train starts the worker processes and the process group;
the HF Trainer / accelerate wrap the model in DeepSpeed or FSDP inside it.

- ``ddp``: each worker holds a full replica (the default; gloo on CPU, NCCL on GPU).
- ``zero2``: DeepSpeed ZeRO stage 2 (optimizer state and gradients sharded). GPU.
- ``zero3``: ZeRO stage 3 (parameters sharded too); the 16-bit weights are gathered at saves, so
  artifacts are plain ``save_pretrained`` folders. GPU.
- ``zero3-offload``: ZeRO-3 with optimizer state and parameters offloaded to CPU memory. GPU.
- ``fsdp``: PyTorch FSDP, full sharding, sharded checkpoints, full state dict gathered for export. GPU
  (accelerate applies FSDP on accelerators only; on CPU it would quietly run as DDP).

Checkpoints of sharded strategies hold one shard per rank; ``hfray.artifacts.checkpoints.files_for_rank`` has
each rank upload its own shards, so a restart on other nodes restores all of them.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from hfray.errors import Problem

DEEPSPEED_STRATEGIES = ("zero2", "zero3", "zero3-offload")
SHARDED_STRATEGIES = ("zero3", "zero3-offload", "fsdp")  # the model's weights live on several ranks


def _deepspeed_base() -> dict[str, Any]:
    # "auto": transformers' HfTrainerDeepSpeedConfig fills these from TrainingArguments, so the job's
    # batch size, accumulation, clipping and precision stay the single source of truth.
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "steps_per_print": 1_000_000,  # hfray's callback prints progress; DeepSpeed's own lines are noise
        "wall_clock_breakdown": False,
    }


def deepspeed_config(strategy: str) -> dict[str, Any]:
    """The DeepSpeed config dict of a ZeRO preset (HF's documented templates, ``auto`` everywhere)."""
    config = _deepspeed_base()
    if strategy == "zero2":
        config["zero_optimization"] = {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_bucket_size": 2e8,
            "reduce_bucket_size": "auto",
        }
        return config
    zero3: dict[str, Any] = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "sub_group_size": 1e9,
        # Gather the full 16-bit weights when the Trainer saves: artifacts load with plain from_pretrained.
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    if strategy == "zero3-offload":
        zero3["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero3["offload_param"] = {"device": "cpu", "pin_memory": True}
        # The HF Trainer builds a torch AdamW; DeepSpeed refuses it under offload unless told the
        # client optimizer is intended (DeepSpeedCPUAdam needs a compiled op that may be missing).
        config["zero_force_ds_cpu_optimizer"] = False
    config["zero_optimization"] = zero3
    return config


def fsdp_arguments() -> dict[str, Any]:
    """TrainingArguments for accelerate's FSDP plugin: full sharding, sharded checkpoints."""
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            # Sharded checkpoints (each rank its own shard files); the export gathers a full state dict.
            "state_dict_type": "SHARDED_STATE_DICT",
            "use_orig_params": True,  # PEFT: frozen and trainable params may share a flat parameter
            "sync_module_states": True,
            "cpu_ram_efficient_loading": False,
        },
    }


def strategy_arguments(strategy: str) -> dict[str, Any]:
    """Extra ``TrainingArguments`` of a strategy (none for ddp)."""
    if strategy in DEEPSPEED_STRATEGIES:
        return {"deepspeed": deepspeed_config(strategy)}
    if strategy == "fsdp":
        return fsdp_arguments()
    return {}


def is_sharded(strategy: str) -> bool:
    """Whether the model's weights are spread over ranks (export must then run on every rank)."""
    return strategy in SHARDED_STRATEGIES


def strategy_problems(strategy: str, gpus_per_worker: float, num_workers: int) -> list[Problem]:
    """Mistakes found before any worker starts: DeepSpeed missing or no GPU where it needs one."""
    problems = []
    if strategy in DEEPSPEED_STRATEGIES:
        if importlib.util.find_spec("deepspeed") is None:
            problems.append(
                Problem(
                    "training.strategy",
                    f"{strategy!r} runs DeepSpeed, which is not installed here (pip install deepspeed; "
                    "it needs a CUDA toolchain): use 'ddp' or 'fsdp'",
                )
            )
        if gpus_per_worker < 1:
            problems.append(
                Problem(
                    "training.strategy",
                    f"{strategy!r} (DeepSpeed ZeRO) needs one whole GPU per worker: set resources.gpus_per_worker: 1",
                )
            )
    if strategy == "fsdp" and gpus_per_worker <= 0:
        # accelerate applies its FSDP plugin on accelerators only: on CPU the run would silently be DDP.
        problems.append(
            Problem("training.strategy", "'fsdp' needs GPUs (resources.gpus_per_worker > 0); use 'ddp' on CPU")
        )
    if strategy != "ddp" and num_workers < 2:
        print(f"[hfray] note: training.strategy {strategy!r} with one worker shards nothing", flush=True)
    return problems

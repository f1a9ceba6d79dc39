"""The artifact export every task shares, called on **every** rank after training.

Under DDP rank 0 holds the whole model, but under ZeRO-3 and FSDP each rank holds a shard: the HF
Trainer's own ``save_model`` gathers them (a collective, so all ranks must call it) and writes on rank 0
only. A PEFT model saves as an adapter; rank 0 then adds the tokenizer, the adapter's ``base/`` and
optional ``merged/`` (:mod:`hfray.adapters`) and the manifest, and uploads the folder to storage.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from hfray import adapters, checkpoints


def export_artifact_per_worker(
    trainer: Any,
    tokenizer: Any,
    dest: str,
    manifest: dict[str, Any],
    stage: str,
    rank: int,
    base_copy_dir: str | None = None,
) -> None:
    """Write the slim artifact (weights or adapter + tokenizer + manifest) to ``dest``; all ranks call this."""
    import torch.distributed as dist

    if rank == 0:
        shutil.rmtree(stage, ignore_errors=True)
    trainer.save_model(stage)  # gathers ZeRO-3/FSDP shards; PEFT models write their adapter only
    if dist.is_initialized():
        dist.barrier()  # rank 0 reads what the gather wrote
    if rank != 0:
        return
    for leftover in ("training_args.bin",):  # a served model does not need the training arguments
        path = os.path.join(stage, leftover)
        if os.path.exists(path):
            os.remove(path)
    tokenizer.save_pretrained(stage)
    peft_info = manifest.get("peft")
    if peft_info is not None:
        job = trainer_job(manifest)
        model = trainer.accelerator.unwrap_model(trainer.model)
        adapters.write_adapter_extras(model, stage, job, peft_info, base_copy_dir)
        checkpoints.write_manifest(stage, manifest)
        if job.peft.merge:
            adapters.write_merged(stage, tokenizer, manifest)
    checkpoints.write_manifest(stage, manifest)
    checkpoints.upload_dir(stage, dest)
    print(f"[hfray] artifact written to {dest}", flush=True)


def trainer_job(manifest: dict[str, Any]) -> Any:
    from hfray.config import JobConfig

    return JobConfig.from_dict(manifest["job"], source="manifest")

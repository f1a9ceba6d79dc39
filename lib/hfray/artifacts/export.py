"""Exporting a run's model as a slim artifact: weights (or adapter) + tokenizer + manifest, nothing to resume.

Two ways in:

- :func:`export_artifact`, called on **every** Ray Train worker after training. Under DDP rank 0 holds the whole
  model, but under ZeRO-3 and FSDP each rank holds a shard: the HF Trainer's own ``save_model`` gathers them (a
  collective, so all ranks must call it) and writes on rank 0 only. A PEFT model saves as an adapter; rank 0
  then adds the tokenizer, the adapter's ``base/`` and optional ``merged/`` (:mod:`hfray.artifacts.adapters`)
  and the manifest, and uploads the folder to storage.
- :func:`export_from_checkpoint`, on the driver: a sweep's best checkpoint, wherever it lives, copied file by
  file (no model load, so any task and size).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

import pyarrow.fs as pafs

from hfray.artifacts import adapters
from hfray.artifacts.manifest import write_manifest
from hfray.config import JobConfig
from hfray.storage import fs

# Trainer state that a served model does not need: optimizer, scheduler, RNG, loop state, DeepSpeed shards.
_TRAINING_ONLY = re.compile(
    r"^(optimizer|scheduler|scaler)\.pt$|^rng_state(_\d+)?\.pth$|^trainer_state\.json$"
    r"|^training_args\.bin$|^global_step\d+$|^latest$|^zero_to_fp32\.py$"
)


def export_artifact(
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
        job = JobConfig.from_dict(manifest["job"], source="manifest")
        model = trainer.accelerator.unwrap_model(trainer.model)
        adapters.write_adapter_extras(model, stage, job, peft_info, base_copy_dir)
        write_manifest(stage, manifest)
        if job.peft is not None and job.peft.merge:
            adapters.write_merged(stage, tokenizer, manifest)
    write_manifest(stage, manifest)
    fs.upload_dir(stage, dest)
    print(f"[hfray] artifact written to {dest}", flush=True)


def export_from_checkpoint(checkpoint: str, dest: str, manifest: dict[str, Any]) -> None:
    """An artifact from an HF checkpoint folder (local or URI): its model and tokenizer files and ``manifest``."""
    filesystem, path = fs.filesystem(checkpoint)
    selector = pafs.FileSelector(path, recursive=False)
    with tempfile.TemporaryDirectory(prefix="hfray-export-") as stage:
        for info in filesystem.get_file_info(selector):
            if info.type == pafs.FileType.File and not _TRAINING_ONLY.match(info.base_name):
                pafs.copy_files(
                    info.path,
                    os.path.join(stage, info.base_name),
                    source_filesystem=filesystem,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
        write_manifest(stage, manifest)
        fs.upload_dir(stage, dest)

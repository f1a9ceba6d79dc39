"""Checkpoints and artifacts: what each rank uploads, where runs live, the slim export.

Layout under ``storage.path`` (a local dir or a URI such as ``s3://bucket/prefix``)::

    <run_name>/checkpoint_<time>/     Ray Train checkpoints = HF Trainer checkpoint folders (resumable)
    <run_name>/hfray_metrics.jsonl    every report of the run (rank 0's metrics), one JSON per line
    <run_name>/artifact/              the best model: save_pretrained model + tokenizer + manifest
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from hfray.errors import ArtifactError

ARTIFACT_DIR = "artifact"
MANIFEST = "hfray_manifest.json"
METRICS_LOG = "hfray_metrics.jsonl"
# A sweep folder: its summary (written last, so it marks a finished sweep) and its trials' Train runs.
SWEEP_SUMMARY = "hfray_sweep.json"
TRIALS_DIR = "trials"
# Files one rank writes into a shared HF checkpoint folder: its RNG state and, under DeepSpeed ZeRO or
# FSDP sharded checkpoints, its shards (group 1 = the writing rank). Everything else is rank 0's.
_RANK_FILES = (
    re.compile(r"^rng_state_(\d+)\.pth$"),
    re.compile(r"^(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:model|optim)_states\.pt$"),
    re.compile(r"^__(\d+)_\d+\.distcp$"),
)


# ----------------------------------------------------------------------------- storage paths


def normalize_storage(path: str) -> str:
    """Ray wants an absolute local path or a URI."""
    if "://" in path:
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_text(uri: str, text: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def remove_tree(uri: str) -> None:
    """Delete a folder (local or URI) and everything in it; a missing one is fine."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def upload_dir(local: str, uri: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(uri: str, local: str) -> str:
    fs, path = _fs(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    os.makedirs(local, exist_ok=True)
    pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


# ----------------------------------------------------------------------------- rank-aware staging


def files_for_rank(checkpoint_dir: str, rank: int, world_size: int) -> list[str]:
    """Relative paths that ``rank`` uploads from an HF checkpoint folder.

    Ray merges the uploads of all ranks into one folder, last writer wins. Under DDP rank 0 owns the
    model, optimizer and trainer state, and each rank owns its ``rng_state_<rank>.pth``; under ZeRO and
    FSDP each rank also owns its shards (which live on its own node). Every file has exactly one
    uploader, so no file is written twice or read while another rank writes it.
    """
    owned = []
    for root, _, names in os.walk(checkpoint_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), checkpoint_dir)
            owner = file_owner(name)
            if world_size == 1 or owner == rank:
                owned.append(rel)
    return sorted(owned)


def file_owner(name: str) -> int:
    """The rank that writes (and so uploads) a checkpoint file of this name."""
    for pattern in _RANK_FILES:
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    return 0


def stage_for_rank(checkpoint_dir: str, rank: int, world_size: int, staging_root: str) -> str:
    """A folder holding (hard links to) the files this rank uploads."""
    stage = tempfile.mkdtemp(prefix=f"rank{rank}-", dir=staging_root)
    for rel in files_for_rank(checkpoint_dir, rank, world_size):
        dest = os.path.join(stage, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            os.link(os.path.join(checkpoint_dir, rel), dest)
        except OSError:  # another filesystem: copy instead
            shutil.copy2(os.path.join(checkpoint_dir, rel), dest)
    return stage


# ----------------------------------------------------------------------------- artifacts


def artifact_uri(storage: str, run_name: str) -> str:
    return join(storage, run_name, ARTIFACT_DIR)


def write_manifest(local_dir: str, manifest: dict[str, Any]) -> None:
    Path(local_dir, MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))


def read_manifest(artifact: str) -> dict[str, Any]:
    uri = join(artifact, MANIFEST)
    if not exists(uri):
        raise ArtifactError(f"{artifact}: not an hfray artifact (no {MANIFEST})")
    return json.loads(read_text(uri))


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "hfray",
        "ray",
        "torch",
        "transformers",
        "datasets",
        "tokenizers",
        "accelerate",
        "evaluate",
        "peft",
    ]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def load_artifact_pipeline(artifact: str, device: int | str | None = None) -> Any:
    """A ``transformers.pipeline`` over an artifact (a local dir or URI) for its task."""
    from transformers import pipeline

    from hfray.adapters import is_adapter, load_model

    manifest = read_manifest(artifact)
    if manifest["task"].startswith("hfray-"):
        import hfray.tasks.pipelines  # noqa: F401  registers hfray's QA and seq2seq pipelines

    local = download_dir(artifact, tempfile.mkdtemp(prefix="hfray-artifact-"))
    # A PEFT adapter artifact: its base plus the adapter (merged in where it can be), else the folder itself.
    model = load_model(local, manifest, merge=True) if is_adapter(local) else local
    # Task settings the job chose (token aggregation, QA windows, seq2seq source prefix).
    kwargs = manifest.get("pipeline_kwargs", {})
    return pipeline(manifest["task"], model=model, tokenizer=local, device=device, **kwargs)


# Trainer state that a served model does not need: optimizer, scheduler, RNG, loop state, DeepSpeed shards.
_TRAINING_ONLY = re.compile(
    r"^(optimizer|scheduler|scaler)\.pt$|^rng_state(_\d+)?\.pth$|^trainer_state\.json$"
    r"|^training_args\.bin$|^global_step\d+$|^latest$|^zero_to_fp32\.py$"
)


def export_slim_from_checkpoint(checkpoint: str, dest: str, manifest: dict[str, Any]) -> None:
    """An artifact from an HF checkpoint folder: its model and tokenizer files, nothing to resume training.

    Copies files instead of loading the model, so it works for any task and model size.
    """
    fs, path = _fs(checkpoint)
    selector = pafs.FileSelector(path, recursive=False)
    with tempfile.TemporaryDirectory(prefix="hfray-export-") as stage:
        for info in fs.get_file_info(selector):
            if info.type == pafs.FileType.File and not _TRAINING_ONLY.match(info.base_name):
                pafs.copy_files(
                    info.path,
                    os.path.join(stage, info.base_name),
                    source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
        write_manifest(stage, manifest)
        upload_dir(stage, dest)

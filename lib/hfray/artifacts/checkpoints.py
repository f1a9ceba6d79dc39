"""Checkpoints on the workers: which rank uploads which file of an HF checkpoint folder.

Ray merges the uploads of all ranks of a report into one checkpoint folder in storage. Each rank stages (hard
links to) the files it owns and reports that folder, so no file is written twice or read while another rank
writes it. Runs on the Ray Train workers (:mod:`hfray.train.callbacks.report` calls it at every save).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

# Files one rank writes into a shared HF checkpoint folder: its RNG state and, under DeepSpeed ZeRO or
# FSDP sharded checkpoints, its shards (group 1 = the writing rank). Everything else is rank 0's.
_RANK_FILES = (
    re.compile(r"^rng_state_(\d+)\.pth$"),
    re.compile(r"^(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:model|optim)_states\.pt$"),
    re.compile(r"^__(\d+)_\d+\.distcp$"),
)


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

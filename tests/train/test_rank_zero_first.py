"""Two DDP ranks on one node tokenize once: rank 0 fills the tokenized-data cache first, rank 1 reads its entry.

Real ``torch.distributed`` (gloo, two spawned processes) and the real cache (:mod:`hfray.data.cache`); no Ray.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch.multiprocessing as mp


def _rank(rank: int, root: str, enabled: bool) -> None:
    import datasets
    import torch.distributed as dist

    from hfray.data import cache
    from hfray.train.worker import rank_zero_first

    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=2)
    built = Path(root) / f"built-{rank}"

    def build() -> datasets.DatasetDict:
        time.sleep(2 if rank == 0 else 0)  # unordered, rank 1 would surely miss and tokenize too
        built.write_text("tokenized here")
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]})})

    with rank_zero_first(rank, 2, enabled=enabled):
        encoded, hit = cache.cached(os.path.join(root, "cache"), f"key-{enabled}", build, announce=False)
    (Path(root) / f"result-{enabled}-{rank}.json").write_text(json.dumps([hit, list(encoded["train"]["input_ids"])]))
    dist.destroy_process_group()


def test_rank_one_reads_what_rank_zero_cached_and_tokenizes_nothing(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path), True), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob("built-*")) == ["built-0"]  # one tokenization, by rank 0
    hit0, ids0 = json.loads((tmp_path / "result-True-0.json").read_text())
    hit1, ids1 = json.loads((tmp_path / "result-True-1.json").read_text())
    assert (hit0, hit1) == (False, True) and ids0 == ids1 == [[1, 2, 3], [4, 5]]

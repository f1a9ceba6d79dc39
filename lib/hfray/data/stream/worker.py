"""Each Ray Train worker's side of the stream: its shard of the training blocks, and the held-out blocks.

See :mod:`hfray.data.stream` for the whole pipeline.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from hfray import timeline
from hfray.data import lm as lm_data
from hfray.data.lm import IDS
from hfray.data.stream import quiet_progress
from hfray.storage import fs


class ShardStream:
    """This worker's share of the training blocks as an endless stream of collated batches.

    One Ray Data epoch follows another (``streaming_split`` starts each epoch on all workers
    together), so HF sees a single unending epoch and ``training.max_steps`` ends the run. Handed to
    the Trainer as a torch ``IterableDataset`` by :func:`torch_stream`.

    :meth:`start` begins epoch 0 at once, before the worker imports torch and builds its model: the
    split coordinator, the read and tokenize tasks (fresh processes) then start while the worker
    does the rest of its set-up, not after ``Trainer.train`` first asks for a batch (15 s of the
    H200 start-up, ``bench/results/overhead_gpu.md``). Batches wait for :meth:`set_collate`.
    """

    def __init__(self, shard: Any, batch_size: int, shuffle_buffer: int, seed: int, prefetch: int = 1) -> None:
        self.shard, self.batch_size, self.prefetch = shard, batch_size, prefetch
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.collate: Any = None
        self._collate_ready = threading.Event()
        self._warm: tuple[threading.Thread, dict[str, Any]] | None = None
        self.epoch = 0
        self.blocks_seen: dict[int, list[str]] | None = None  # epoch -> block digests, when auditing

    def set_collate(self, collate: Any) -> None:
        self.collate = collate
        self._collate_ready.set()

    def collate_numpy(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        # Runs in Ray Data's prefetch thread: masking overlaps the training step.
        self._collate_ready.wait()
        if self.blocks_seen is not None:
            self.blocks_seen.setdefault(self.epoch, []).extend(lm_data.block_digest(b) for b in batch[IDS])
        return self.collate(batch[IDS])

    def _epoch_batches(self) -> Iterator[dict[str, Any]]:
        return iter(
            self.shard.iter_torch_batches(
                batch_size=self.batch_size,
                prefetch_batches=self.prefetch,
                collate_fn=_collate_class()(self),
                drop_last=True,  # equal shares and equal batch shapes keep DDP ranks in step
                local_shuffle_buffer_size=self.shuffle_buffer or None,
                local_shuffle_seed=self.seed + self.epoch if self.shuffle_buffer else None,
            )
        )

    def start(self) -> None:
        """Pull epoch 0's first batch in a thread (daemon: a worker that fails first must not hang on it)."""
        box: dict[str, Any] = {}

        def pull() -> None:
            try:
                box["batches"] = self._epoch_batches()
                box["first"] = next(box["batches"])
            except StopIteration:
                pass
            except BaseException as exc:  # noqa: BLE001  (re-raised where the Trainer iterates)
                box["error"] = exc

        thread = threading.Thread(target=pull, name="hfray-stream-start", daemon=True)
        thread.start()
        self._warm = (thread, box)

    def _first_epoch_batches(self) -> Iterator[dict[str, Any]]:
        if self._warm is None:
            return self._epoch_batches()
        thread, box = self._warm
        self._warm = None
        thread.join()
        if "error" in box:
            raise box["error"]
        return itertools.chain([box["first"]], box["batches"]) if "first" in box else iter(())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            batches = self._first_epoch_batches() if self.epoch == 0 else self._epoch_batches()
            produced = 0
            for batch in batches:
                produced += 1
                if produced == 1 and self.epoch == 0:
                    timeline.mark("worker_first_stream_batch")
                yield batch
            if produced == 0:
                return  # an empty shard: HF stops with its "no sample in epoch_iterator" warning
            self.epoch += 1


def _collate_class() -> type:
    """A ``NumpyBatchCollateFn`` (Ray >= 2.47 wants a class there, not a function) calling the stream."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class StreamCollate(NumpyBatchCollateFn):
        def __init__(self, stream: ShardStream) -> None:
            self.stream = stream

        def __call__(self, batch: dict[str, np.ndarray]) -> Any:
            return self.stream.collate_numpy(batch)

    return StreamCollate


def start_shard_stream(batch_size: int, shuffle_buffer: int, seed: int, record: bool, prefetch: int = 1) -> ShardStream:
    """``ShardStream`` over ``get_dataset_shard("train")``, started (see :class:`ShardStream`)."""
    import ray.train

    quiet_progress()
    stream = ShardStream(ray.train.get_dataset_shard("train"), batch_size, shuffle_buffer, seed, prefetch)
    if record:
        stream.blocks_seen = {}
    stream.start()
    return stream


def torch_stream(stream: ShardStream) -> Any:
    """``stream`` as the torch ``IterableDataset`` the HF Trainer's DataLoader needs."""
    import torch.utils.data

    class _Stream(torch.utils.data.IterableDataset):
        def __init__(self, inner: ShardStream) -> None:
            self.inner = inner

        def __iter__(self) -> Iterator[dict[str, Any]]:
            return iter(self.inner)

    return _Stream(stream)


def validation_blocks() -> np.ndarray:
    """The whole (unsplit) held-out set, read into memory: all ranks need the same blocks.

    Only where the driver materialized it with Ray Data; a bounded set arrives packed in the loop config.
    """
    import ray.train

    rows = [b[IDS] for b in ray.train.get_dataset_shard("validation").iter_batches(batch_format="numpy")]
    return np.concatenate(rows) if rows else np.zeros((0, 1), dtype=np.int32)


def write_shard_record(stream: ShardStream, run_dir: str, rank: int) -> None:
    """``<run>/shards/rank-<r>.json``: the digest of every block this worker received, per Ray Data epoch."""
    import json

    if stream.blocks_seen is None:
        return
    record = {"rank": rank, "epochs": {str(e): d for e, d in sorted(stream.blocks_seen.items())}}
    fs.write_text(fs.join(run_dir, "shards", f"rank-{rank}.json"), json.dumps(record))

"""The Ray Data pipeline of pre-training jobs: corpus -> tokenized, packed blocks -> a stream per worker.

On the driver, ``build_datasets_driver`` describes the pipeline lazily: read (``read_text``,
``read_parquet``, ``read_csv``, ``read_json``; ``builtin:``/Hub corpora via ``from_huggingface``), split
off held-out text by hash, tokenize and pack in ``map_batches`` tasks on CPU workers. Nothing runs
until training starts, except the held-out set, which is small and materialized once so every
worker evaluates on the same blocks.

On each worker, ``ShardStream`` wraps ``ray.train.get_dataset_shard("train")``: Ray Train splits the
stream across workers (``streaming_split``, equal shares), so each worker trains on its own disjoint
part and the corpus never has to fit in one worker's memory. Tokenization runs on CPU tasks,
scaled separately from the training workers.
"""

from __future__ import annotations

import glob
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from hfray import checkpoints, lm_data, timeline
from hfray.config import DataConfig, JobConfig
from hfray.errors import DataError
from hfray.lm_data import IDS, TEXT

# ----------------------------------------------------------------------------- reading (driver)


def local_files(path: str, field: str) -> list[str]:
    """The files a local source names: one file, a glob, or every visible file of a directory."""
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path))
    elif os.path.isdir(path):
        files = sorted(str(f) for f in Path(path).iterdir() if f.is_file() and not f.name.startswith("."))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"{field}: file or directory not found: {path}")
    if not files:
        raise DataError(f"{field}: no file matches {path!r}")
    return files


def _check_column(names: list[str], cfg: DataConfig, field: str) -> None:
    if cfg.text_column not in names:
        raise DataError(f"{field}: no column data.text_column {cfg.text_column!r}; the data has columns {names}")


def check_source_driver(spec: str, cfg: DataConfig, field: str) -> str:
    """Cheap checks before Ray starts (files exist, format known, text column present); returns the format."""
    # Imported here: hfray.data loads ``datasets`` (pandas...), which Ray Data's tokenize tasks, unpickling
    # this module's functions in fresh processes, never need.
    from hfray.assets import PREFIX
    from hfray.data import _files_format, load_source, looks_local

    if spec.startswith(PREFIX) or not looks_local(spec):
        _check_column(load_source(spec, cfg, field).column_names, cfg, field)
        return "memory"
    files = local_files(spec, field)
    fmt = _files_format(files, cfg.format, field)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        _check_column(pq.read_schema(files[0]).names, cfg, field)
    elif fmt == "arrow":
        raise DataError(f"{field}: Ray Data reads text, parquet, csv and json; use lm.pipeline 'datasets' for arrow")
    return fmt


def read_corpus_driver(spec: str, cfg: DataConfig, field: str, num_cpus: float) -> Any:
    """A lazy Ray Dataset with one column, ``text``."""
    import ray.data

    fmt = check_source_driver(spec, cfg, field)
    if fmt == "memory":  # builtin: and Hub corpora: hfray's loaders read them, Ray Data takes them over
        from hfray.data import load_source

        ds = ray.data.from_huggingface(load_source(spec, cfg, field).select_columns([cfg.text_column]))
    elif fmt == "text":
        ds = ray.data.read_text(local_files(spec, field), num_cpus=num_cpus)  # one row per line, column "text"
    else:
        files = local_files(spec, field)
        kwargs: dict[str, Any] = {"num_cpus": num_cpus}
        if fmt == "parquet":
            kwargs["columns"] = [cfg.text_column]
        if fmt == "csv" and all(f.endswith((".tsv", ".tsv.gz")) for f in files):
            import pyarrow.csv

            kwargs["parse_options"] = pyarrow.csv.ParseOptions(delimiter="\t")
        readers = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}
        ds = readers[fmt](files, **kwargs).select_columns([cfg.text_column])
    column = TEXT if fmt == "text" else cfg.text_column
    return ds.rename_columns({column: TEXT}) if column != TEXT else ds


# ----------------------------------------------------------------------------- map_batches (CPU tasks)

_TOKENIZERS: dict[str, Any] = {}


def _tokenizer_in_task(path: str, backend: Any = None) -> Any:
    """One tokenizer per Ray worker process: tasks reuse processes, loading is not free.

    ``backend`` (an ObjectRef of :func:`lm_data.backend_tokenizer_spec`, which the driver verified) gives the Rust
    tokenizer without importing transformers; None loads the HF tokenizer from ``path``.
    """
    if path not in _TOKENIZERS:
        timeline.mark_process_start("data_task")
        timeline.mark("data_task_start", "data_task")
        if backend is not None:
            _TOKENIZERS[path] = lm_data.BackendTokenizer(**ray.get(backend))
        else:
            from transformers import AutoTokenizer

            _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
        timeline.mark("data_task_tokenizer_loaded", "data_task")
    return _TOKENIZERS[path]


def keep_split_batch(batch: Any, held_out: bool, fraction: float, seed: int) -> Any:
    """pyarrow batch -> the rows of one side of the hash split."""
    import pyarrow as pa

    mask = lm_data.in_validation(batch.column(TEXT).to_pylist(), fraction, seed)
    return batch.filter(pa.array(mask if held_out else ~mask))


def pack_batch(
    batch: Any, tokenizer_path: str, task: str, block_size: int, backend: Any = None
) -> dict[str, np.ndarray]:
    """pyarrow batch of texts -> packed blocks (fewer rows; the batch's tail shorter than a block is dropped)."""
    tokenizer = _tokenizer_in_task(tokenizer_path, backend)
    return {IDS: lm_data.pack_texts(batch.column(TEXT).to_pylist(), tokenizer, task, block_size)}


def build_datasets_driver(job: JobConfig, tokenizer: Any = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """``TorchTrainer(datasets=...)``'s lazy train blocks, and the held-out blocks, checked not to be empty.

    A bounded held-out set (``data.max_eval_samples``) is read and packed here, with the driver's ``tokenizer``,
    and comes back as an array (the datasets then hold ``train`` only). Why: Ray Data read and tokenize tasks
    for it start fresh processes that import transformers and load the tokenizer once more, ~4 s on the
    critical path (2 CPUs, ``bench/overhead_bench.py``), for a few dozen texts. Unbounded held-out sets (a share
    of a large corpus) keep the parallel Ray Data path and come back materialized under ``validation``.
    """
    lm, cfg = job.lm, job.data
    assert lm is not None
    quiet_progress()
    corpus = read_corpus_driver(cfg.train, cfg, "data.train", lm.tokenize_num_cpus)
    split = {"fraction": cfg.validation_fraction, "seed": cfg.split_seed}
    opts = {"batch_format": "pyarrow", "num_cpus": lm.tokenize_num_cpus}
    train = corpus
    if not cfg.validation:
        train = corpus.map_batches(keep_split_batch, fn_kwargs={"held_out": False, **split}, **opts)
    if cfg.max_train_samples:
        train = train.limit(cfg.max_train_samples)
    fn_kwargs = {"tokenizer_path": job.model.tokenizer_source, "task": job.task, "block_size": lm.block_size}
    spec = lm_data.backend_tokenizer_spec(tokenizer, job.task) if tokenizer is not None else None
    if spec is not None:  # one copy in the object store, not one per task
        fn_kwargs["backend"] = ray.put(spec)
    pack = {"fn_kwargs": fn_kwargs, "batch_size": lm.tokenize_batch_size, **opts}
    datasets: dict[str, Any] = {"train": train.map_batches(pack_batch, **pack)}
    texts = held_out_texts_here_driver(job) if tokenizer is not None and cfg.max_eval_samples else None
    blocks = None
    if texts is not None:
        blocks = pack_here_driver(texts, tokenizer, job.task, lm.block_size, lm.tokenize_batch_size)
        count = len(blocks)
    else:
        if cfg.validation:
            held = read_corpus_driver(cfg.validation, cfg, "data.validation", lm.tokenize_num_cpus)
        else:  # the other side of the training corpus's hash split
            held = corpus.map_batches(keep_split_batch, fn_kwargs={"held_out": True, **split}, **opts)
        if cfg.max_eval_samples:
            held = held.limit(cfg.max_eval_samples)
        datasets["validation"] = held.map_batches(pack_batch, **pack).materialize()
        count = datasets["validation"].count()
    timeline.mark("driver_validation_materialized", "driver")
    if count == 0:
        raise DataError(
            f"data.validation: the held-out text makes no complete block of lm.block_size {lm.block_size} tokens; "
            "give more held-out text (data.validation_fraction, data.max_eval_samples) or a smaller block"
        )
    return datasets, blocks


def held_out_texts_here_driver(job: JobConfig) -> list[str | None] | None:
    """The bounded held-out texts read in this process (local files), or None: Ray Data reads them."""
    from hfray import text_files

    cfg = job.data
    assert cfg.max_eval_samples
    source, field = (cfg.validation, "data.validation") if cfg.validation else (cfg.train, "data.train")
    fmt = check_source_driver(source, cfg, field)
    if fmt not in ("text", "parquet", "csv", "json"):
        return None
    keep = None
    if not cfg.validation:  # the held-out side of the hash split of the training files

        def keep(texts: list[str]) -> np.ndarray:
            return lm_data.in_validation(texts, cfg.validation_fraction, cfg.split_seed)

    column = TEXT if fmt == "text" else cfg.text_column
    try:
        return text_files.first_texts(local_files(source, field), fmt, column, cfg.max_eval_samples, keep)
    except (OSError, ValueError) as exc:  # pyarrow's parse errors are ValueErrors (ArrowInvalid)
        raise DataError(f"{field}: could not read {source} as {fmt}: {exc}") from None


def pack_here_driver(
    texts: list[str | None], tokenizer: Any, task: str, block_size: int, batch_size: int
) -> np.ndarray:
    """Texts packed in this process, batch by batch as ``map_batches(pack_batch)`` packs them."""
    parts = [
        lm_data.pack_texts(texts[i : i + batch_size], tokenizer, task, block_size)
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, block_size), dtype=np.int32)


# ----------------------------------------------------------------------------- per worker


def quiet_progress() -> None:
    """Ray Data's progress bars redraw through Ray's log forwarding: one line per refresh per worker."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


class ShardStream:
    """This worker's share of the training blocks as an endless stream of collated batches.

    One Ray Data epoch follows another (``streaming_split`` starts each epoch on all workers
    together), so HF sees a single unending epoch and ``training.max_steps`` ends the run. Handed to
    the Trainer as a torch ``IterableDataset`` by :func:`torch_stream_per_worker`.

    :meth:`start` begins epoch 0 at once, before the worker imports torch and builds its model: the
    split coordinator, the read and tokenize tasks (fresh processes) then start while the worker
    does the rest of its set-up, not after ``Trainer.train`` first asks for a batch (15 s of the
    H200 start-up, ``bench/results/overhead_gpu.md``). Batches wait for :meth:`set_collate`.
    """

    def __init__(self, shard: Any, batch_size: int, shuffle_buffer: int, seed: int) -> None:
        self.shard, self.batch_size = shard, batch_size
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


def start_shard_stream_per_worker(batch_size: int, shuffle_buffer: int, seed: int, record: bool) -> ShardStream:
    """``ShardStream`` over ``get_dataset_shard("train")``, started (see :class:`ShardStream`)."""
    import ray.train

    quiet_progress()
    stream = ShardStream(ray.train.get_dataset_shard("train"), batch_size, shuffle_buffer, seed)
    if record:
        stream.blocks_seen = {}
    stream.start()
    return stream


def torch_stream_per_worker(stream: ShardStream) -> Any:
    """``stream`` as the torch ``IterableDataset`` the HF Trainer's DataLoader needs."""
    import torch.utils.data

    class _Stream(torch.utils.data.IterableDataset):
        def __init__(self, inner: ShardStream) -> None:
            self.inner = inner

        def __iter__(self) -> Iterator[dict[str, Any]]:
            return iter(self.inner)

    return _Stream(stream)


def validation_blocks_per_worker() -> np.ndarray:
    """The whole (unsplit) held-out set, read into memory: all ranks need the same blocks.

    Only where the driver materialized it with Ray Data; a bounded set arrives packed in the loop config.
    """
    import ray.train

    rows = [b[IDS] for b in ray.train.get_dataset_shard("validation").iter_batches(batch_format="numpy")]
    return np.concatenate(rows) if rows else np.zeros((0, 1), dtype=np.int32)


def write_shard_record_per_worker(stream: ShardStream, run_dir: str, rank: int) -> None:
    """``<run>/shards/rank-<r>.json``: the digest of every block this worker received, per Ray Data epoch."""
    import json

    if stream.blocks_seen is None:
        return
    record = {"rank": rank, "epochs": {str(e): d for e, d in sorted(stream.blocks_seen.items())}}
    checkpoints.write_text(checkpoints.join(run_dir, "shards", f"rank-{rank}.json"), json.dumps(record))

"""The driver's side of the stream: cheap checks of the corpus, and the lazy Ray Datasets handed to Ray Train.

See :mod:`hfray.data.stream` for the whole pipeline.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np
import ray

from hfray import timeline
from hfray.assets import PREFIX
from hfray.config import DataConfig, JobConfig
from hfray.data import lm as lm_data
from hfray.data.lm import TEXT
from hfray.data.stream import quiet_progress
from hfray.data.stream.ray_tasks import keep_split_batch, pack_batch
from hfray.errors import DataError


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


def check_source(spec: str, cfg: DataConfig, field: str) -> str:
    """Cheap checks before Ray starts (files exist, format known, text column present); returns the format."""
    # Imported here: hfray.data.sources loads ``datasets`` (pandas...), which a driver streaming local files
    # never needs.
    from hfray.data.sources import files_format, load_source, looks_local

    if spec.startswith(PREFIX) or not looks_local(spec):
        _check_column(load_source(spec, cfg, field).column_names, cfg, field)
        return "memory"
    files = local_files(spec, field)
    fmt = files_format(files, cfg.format, field)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        _check_column(pq.read_schema(files[0]).names, cfg, field)
    elif fmt == "arrow":
        raise DataError(f"{field}: Ray Data reads text, parquet, csv and json; use lm.pipeline 'datasets' for arrow")
    return fmt


def read_corpus(spec: str, cfg: DataConfig, field: str, num_cpus: float) -> Any:
    """A lazy Ray Dataset with one column, ``text``."""
    import ray.data

    fmt = check_source(spec, cfg, field)
    if fmt == "memory":  # builtin: and Hub corpora: hfray's loaders read them, Ray Data takes them over
        from hfray.data.sources import load_source

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


def build_datasets(job: JobConfig, tokenizer: Any = None) -> tuple[dict[str, Any], np.ndarray | None]:
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
    corpus = read_corpus(cfg.train, cfg, "data.train", lm.tokenize_num_cpus)
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
    datasets: dict[str, Any] = {"train": materialized(train.map_batches(pack_batch, **pack), job)}
    texts = held_out_texts_here(job) if tokenizer is not None and cfg.max_eval_samples else None
    blocks = None
    if texts is not None:
        blocks = pack_here(texts, tokenizer, job.task, lm.block_size, lm.tokenize_batch_size)
        count = len(blocks)
    else:
        if cfg.validation:
            held = read_corpus(cfg.validation, cfg, "data.validation", lm.tokenize_num_cpus)
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


# Share of the cluster's object store the tokenized corpus may take under lm.materialize "auto". Packed int32
# blocks take about as many bytes as the text: ~4 characters per token (English, BPE/WordPiece), 4 bytes per id.
_STORE_SHARE = 0.25
_BYTES_PER_TOKEN = 4.0


def materialized(train: Any, job: JobConfig) -> Any:
    """``train`` computed once and kept in the object store, where ``lm.materialize`` says so.

    "auto" materializes when the corpus fits a quarter of the object store and the run reads it more than once.

    A lazy stream reads and tokenizes the corpus again at every epoch, and ``streaming_split`` restarts the
    pipeline between them: on a corpus of a few epochs' worth of steps the H200 waited 44 ms of a 130 ms
    BERT-base step for data (``bench/results/throughput_gpu_dec04_feed.md``); from the object store it waits ~7.
    """
    lm = job.lm
    assert lm is not None
    if lm.materialize == "never":
        return train
    if lm.materialize == "auto":
        size = corpus_bytes(job.data.train)
        budget = _STORE_SHARE * ray.cluster_resources().get("object_store_memory", 0.0)
        if size > budget or not reads_more_than_once(job, size):
            return train
    train = train.materialize()
    timeline.mark("driver_train_materialized", "driver")
    return train


def reads_more_than_once(job: JobConfig, size: float) -> bool:
    """Whether the run's steps take more tokens than the corpus holds (estimated): else one lazy pass is cheaper."""
    t, lm = job.training, job.lm
    assert lm is not None
    if t.max_steps <= 0 or size <= 0:
        return True
    samples = t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * job.resources.num_workers
    return samples * lm.block_size * _BYTES_PER_TOKEN > size


def corpus_bytes(spec: str) -> float:
    """Bytes of text a training source holds (compressed files counted x5)."""
    from hfray.data.sources import looks_local

    if spec.startswith(PREFIX) or not looks_local(spec):
        return 0.0  # hfray's loaders read these into this process's memory already (check_source's "memory")
    files = local_files(spec, "data.train")
    return float(sum(os.path.getsize(f) * (5 if f.endswith((".gz", ".bz2", ".zst", ".xz")) else 1) for f in files))


def held_out_texts_here(job: JobConfig) -> list[str | None] | None:
    """The bounded held-out texts read in this process (local files), or None: Ray Data reads them."""
    from hfray.data import text_files

    cfg = job.data
    assert cfg.max_eval_samples
    source, field = (cfg.validation, "data.validation") if cfg.validation else (cfg.train, "data.train")
    fmt = check_source(source, cfg, field)
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


def pack_here(texts: list[str | None], tokenizer: Any, task: str, block_size: int, batch_size: int) -> np.ndarray:
    """Texts packed in this process, batch by batch as ``map_batches(pack_batch)`` packs them."""
    parts = [
        lm_data.pack_texts(texts[i : i + batch_size], tokenizer, task, block_size)
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, block_size), dtype=np.int32)

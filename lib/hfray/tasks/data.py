"""Loading and checking a fine-tuning task's data: the columns its section names, row by row.

The same sources as text classification (``hfray.data.load_source``: files, ``builtin:``, Hub ids) and
the same seeded validation split and subsampling; what differs is that each task names its own
columns (``token_classification.tokens_column`` ...) and checks the shape of every row on the driver
(tags per word, SQuAD answers inside their context, ...), so a malformed row fails before Ray starts.
"""

from __future__ import annotations

from typing import Any

import datasets

from hfray.config import JobConfig
from hfray.data import PreparedData, _fingerprint, _subsample, load_source
from hfray.errors import DataError

_SPLITS = ("train", "validation", "test")


def check_task_columns(ds: datasets.Dataset, columns: dict[str, str], field: str) -> None:
    missing = [f"{key} {col!r}" for key, col in columns.items() if col not in ds.column_names]
    if missing:
        raise DataError(f"{field}: no column for {', '.join(missing)}; the data has columns {ds.column_names}")
    if len(ds) == 0:
        raise DataError(f"{field}: the dataset is empty")


def _split_validation(loaded: dict[str, datasets.Dataset], job: JobConfig) -> None:
    if "validation" in loaded:
        return
    if len(loaded["train"]) < 2:
        raise DataError("data.train: need at least 2 rows to split off a validation set")
    parts = loaded["train"].train_test_split(test_size=job.data.validation_fraction, seed=job.data.split_seed)
    loaded["train"], loaded["validation"] = parts["train"], parts["test"]


def prepare_task_data(job: JobConfig, spec: Any) -> PreparedData:
    """Load every split, check columns and rows, split off validation if none is given, find labels."""
    cfg, columns = job.data, spec.columns(job)
    loaded: dict[str, datasets.Dataset] = {}
    for name in _SPLITS:
        source = getattr(cfg, name)
        if source is not None:
            ds = load_source(source, cfg, f"data.{name}")
            check_task_columns(ds, columns, f"data.{name}")
            loaded[name] = ds.select_columns(list(dict.fromkeys(columns.values())))
    _split_validation(loaded, job)
    loaded["train"] = _subsample(loaded["train"], cfg.max_train_samples, cfg.split_seed)
    for name in ("validation", "test"):
        if name in loaded:
            loaded[name] = _subsample(loaded[name], cfg.max_eval_samples, cfg.split_seed)
    for name, ds in loaded.items():
        spec.check_rows(ds, job, f"data.{name}")
    splits = datasets.DatasetDict(loaded)
    labels = spec.labels(splits, job)
    return PreparedData(splits, labels, _fingerprint(splits, list(dict.fromkeys(columns.values()))))


def row_error(field: str, index: int, key: str, column: str, message: str) -> DataError:
    """A row-level problem naming the split, the row, the job key and its column."""
    return DataError(f"{field} row {index}: {key} {column!r} {message}")

"""Loading and checking a fine-tuning task's data: the columns its section names, row by row.

The same sources as text classification (:func:`hfray.data.sources.load_source`: files, ``builtin:``, Hub ids) and
the same seeded validation split and subsampling; what differs is that each task names its own
columns (``token_classification.tokens_column`` ...) and checks the shape of every row on the driver
(tags per word, SQuAD answers inside their context, ...), so a malformed row fails before Ray starts.
"""

from __future__ import annotations

import datasets

from hfray.config import JobConfig
from hfray.data.splits import PreparedData, fingerprint, load_splits
from hfray.errors import DataError
from hfray.train.recipes.tasks.base import TaskSpec


def check_task_columns(ds: datasets.Dataset, columns: dict[str, str], field: str) -> None:
    missing = [f"{key} {col!r}" for key, col in columns.items() if col not in ds.column_names]
    if missing:
        raise DataError(f"{field}: no column for {', '.join(missing)}; the data has columns {ds.column_names}")
    if len(ds) == 0:
        raise DataError(f"{field}: the dataset is empty")


def prepare_task_data(job: JobConfig, spec: TaskSpec) -> PreparedData:
    """Load every split, check columns and rows, split off validation if none is given, find labels."""
    columns = spec.columns(job)
    kept = list(dict.fromkeys(columns.values()))

    def on_load(ds: datasets.Dataset, field: str) -> datasets.Dataset:
        check_task_columns(ds, columns, field)
        return spec.on_load(ds.select_columns(kept), job, field)

    loaded = load_splits(job.data, on_load)
    for name, ds in loaded.items():
        spec.check_rows(ds, job, f"data.{name}")
    splits = datasets.DatasetDict(loaded)
    return PreparedData(splits, spec.labels(splits, job), fingerprint(splits, kept))


def row_error(field: str, index: int, key: str, column: str, message: str) -> DataError:
    """A row-level problem naming the split, the row, the job key and its column."""
    return DataError(f"{field} row {index}: {key} {column!r} {message}")

"""Text classification data: columns and labels checked, class weights, tokenized features.

The driver prepares and checks the data before Ray starts (a missing file, column or label fails in seconds);
each worker prepares the same data again (:mod:`hfray.data.splits`) and tokenizes it.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

from hfray.config import DataConfig
from hfray.data import cache
from hfray.data.splits import PreparedData, fingerprint, load_splits
from hfray.errors import DataError

if TYPE_CHECKING:
    import datasets  # imported where data is loaded: the recipe's driver module is on the driver's start-up path


def check_columns(ds: datasets.Dataset, cfg: DataConfig, field: str, need_label: bool = True) -> None:
    wanted = {"data.text_column": cfg.text_column}
    if cfg.text_pair_column:
        wanted["data.text_pair_column"] = cfg.text_pair_column
    if need_label:
        wanted["data.label_column"] = cfg.label_column
    missing = [f"{key} {col!r}" for key, col in wanted.items() if col not in ds.column_names]
    if missing:
        raise DataError(f"{field}: no column for {', '.join(missing)}; the data has columns {ds.column_names}")
    if len(ds) == 0:
        raise DataError(f"{field}: the dataset is empty")
    if need_label:
        check_labels_present(ds, cfg.label_column, field)


def is_missing(value: Any) -> bool:
    """An empty cell: None (CSV/JSON), NaN (a numeric column), or a string of blanks."""
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and not value.strip())


def check_labels_present(ds: datasets.Dataset, column: str, field: str) -> None:
    """Every row has a label; else the rows without one (1-based data rows: a CSV's line is the row + 1)."""
    rows = [i + 1 for i, value in enumerate(ds[column]) if is_missing(value)]
    if rows:
        shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        raise DataError(
            f"{field}: {len(rows)} row{'s' if len(rows) != 1 else ''} without a value in label column "
            f"{column!r} (data.label_column): row {shown} (rows count from 1 after the header line); "
            f"fill them in or drop them"
        )


def label_names(train: datasets.Dataset, cfg: DataConfig) -> list[str]:
    found = sorted({str(v) for v in train[cfg.label_column] if v is not None})
    if cfg.labels is None:
        if len(found) < 2:
            raise DataError(f"data.label_column {cfg.label_column!r}: need at least 2 labels, found {found}")
        return found
    unknown = sorted(set(found) - set(cfg.labels))
    if unknown:
        raise DataError(f"data.labels: the training data has labels {unknown} that data.labels does not list")
    return list(cfg.labels)


def check_labels(ds: datasets.Dataset, cfg: DataConfig, labels: list[str], field: str) -> None:
    unknown = sorted({str(v) for v in ds[cfg.label_column]} - set(labels))
    if unknown:
        raise DataError(f"{field}: labels {unknown[:10]} do not occur in the training data ({labels})")


def prepare(cfg: DataConfig, need_label: bool = True) -> PreparedData:
    """Load every split, check columns and labels, split off validation if none is given."""
    import datasets

    def on_load(ds: datasets.Dataset, field: str) -> datasets.Dataset:
        check_columns(ds, cfg, field, need_label)
        return ds

    loaded = load_splits(cfg, on_load)
    columns = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    labels: list[str] = []
    if need_label:
        columns.append(cfg.label_column)
        labels = label_names(loaded["train"], cfg)
        for name in ("validation", "test"):
            if name in loaded:
                check_labels(loaded[name], cfg, labels, f"data.{name}")
    splits = datasets.DatasetDict({k: v.select_columns(columns) for k, v in loaded.items()})
    return PreparedData(splits, labels, fingerprint(splits, columns))


def class_weights(train: datasets.Dataset, cfg: DataConfig, labels: list[str]) -> list[float]:
    """'balanced' weights as scikit-learn defines them: n_samples / (n_classes * count)."""
    counts = {label: 0 for label in labels}
    for value in train[cfg.label_column]:
        counts[str(value)] += 1
    total = sum(counts.values())
    return [total / (len(labels) * max(counts[label], 1)) for label in labels]


def mean_token_length(ds: datasets.Dataset, column: str = "input_ids") -> float:
    """Mean length of a tokenized column, computed in Arrow.

    Reading the column through Python (``ds[column]``) builds a list per row: ~0.4 s per 50k rows before the
    first training step, for one number the throughput record needs.
    """
    import pyarrow.compute as pc

    if len(ds) == 0:
        return 0.0
    table = ds.with_format("arrow")[:]  # honours select/shuffle index mappings
    return float(pc.mean(pc.list_value_length(table.column(column))).as_py())


def tokenize_cached(
    prepared: PreparedData, tokenizer: Any, cfg: DataConfig, labels: list[str], storage_path: str
) -> datasets.DatasetDict:
    """:func:`tokenize_for_classification` through the tokenized-data cache (:mod:`hfray.data.cache`)."""
    root = cache.cache_root(storage_path) if cfg.cache_tokenized else None
    settings = {"max_length": cfg.max_length, "pair": cfg.text_pair_column, "labels": labels}
    key = cache.cache_key("classification", prepared.fingerprint, tokenizer, **settings)
    encoded, _ = cache.cached(root, key, lambda: tokenize_for_classification(prepared.splits, tokenizer, cfg, labels))
    return encoded


def tokenize_for_classification(
    splits: datasets.DatasetDict, tokenizer: Any, cfg: DataConfig, labels: list[str]
) -> datasets.DatasetDict:
    import datasets

    label2id = {label: i for i, label in enumerate(labels)}

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pair = batch[cfg.text_pair_column] if cfg.text_pair_column else None
        texts = [t if t is not None else "" for t in batch[cfg.text_column]]
        out = tokenizer(texts, pair, truncation=True, max_length=cfg.max_length)
        out["labels"] = [label2id[str(v)] for v in batch[cfg.label_column]]
        return out

    # An explicit fingerprint: hashing the closure with dill is slow and floods Ray logs with bytecode.
    key = f"{getattr(tokenizer, 'name_or_path', '')}|{cfg.max_length}|{cfg.text_pair_column}|{labels}"
    return datasets.DatasetDict(
        {
            name: ds.map(
                encode,
                batched=True,
                remove_columns=ds.column_names,
                new_fingerprint=hashlib.sha256(f"{ds._fingerprint}|{key}".encode()).hexdigest()[:16],
                desc=f"tokenize {name}",
            )
            for name, ds in splits.items()
        }
    )


class UnpaddedMaskDropped:
    """A padding collator whose batches without padding go to the model without their attention mask.

    A mask of all ones attends as no mask does, but transformers checks it on the device before attention
    (``padding_mask.all()`` in its sdpa mask path: a host sync each forward). Checked here on the host's copy, free.
    An eager BERT-base step of 64 x 128 tokens on an H100 ran 35.1 ms without the mask against 42.3 ms with it
    (``bench/cls_step_probe.py``). Rows truncated at ``data.max_length`` (long texts) batch without padding."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.collator(features)
        mask = batch.get("attention_mask")
        if mask is not None and bool(mask.all()):  # a CPU tensor: no device to wait for
            del batch["attention_mask"]
        return batch


IGNORED_LABEL = -100  # the label index cross-entropy ignores (transformers' and torch's default ``ignore_index``)


class FullBatches:
    """A padding collator whose short batches (an epoch's last) are filled up to ``rows`` rows with copies of their own
    rows, labelled :data:`IGNORED_LABEL`: the loss ignores them (the mean is over the real rows, so it is the short
    batch's loss) and the metrics drop them (:func:`hfray.train.recipes.classification.metrics`).

    For compiled models: every training batch then has one of a few shapes (rows x padded length), where a short
    batch is a new shape that Dynamo compiles the whole model for again, dynamic in the batch size, as long as the
    first compile: a 4-layer BERT classifier, Inductor on one CPU thread, a cold cache: first step 24.8-25.0 s, the
    short last batch 21.7-24.1 s, every other step 0.05 s (``bench/compile_traces_cpu.py``). Copies, not empty rows:
    a row with no attended token makes NaN attention in some kernels, and NaN times a zero gradient is NaN. Not for
    models with batch norm (copies would count in its statistics): text encoders have none."""

    def __init__(self, collator: Any, rows: int) -> None:
        self.collator, self.rows = collator, rows

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        import torch

        batch = self.collator(features)
        labels = batch.get("labels")
        n = len(features)
        if labels is None or n >= self.rows or n == 0:
            return batch
        fill = torch.arange(self.rows - n) % n  # the batch's own rows again, cycled
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                batch[key] = torch.cat([value, value[fill]])
        batch["labels"][n:] = IGNORED_LABEL
        return batch

"""Loading, checking and preparing data for a job.

Sources (``data.train`` / ``data.validation`` / ``data.test``): a local file, glob or directory
(CSV, JSON/JSONL, Parquet, text, Arrow, or a ``datasets.save_to_disk`` folder), ``builtin:NAME``
(data that a pip package ships), or a Hugging Face Hub dataset id.

The driver loads and checks everything once before Ray starts any worker (so a missing file or
column fails in seconds), then each worker loads the same data again and compares fingerprints:
a node that sees different files fails loudly instead of training on something else.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from hfray.assets import PREFIX, load_builtin_dataset
from hfray.config import DataConfig
from hfray.errors import DataError

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}
_SPLIT_FIELDS = ("train", "validation", "test")


def _strip_compression(path: str) -> str:
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def looks_local(spec: str) -> bool:
    """Paths are recognised by their shape, so a typo in a path never turns into a Hub request."""
    stripped = _strip_compression(spec)
    return (
        spec.startswith(("/", "./", "../", "~"))
        or Path(stripped).suffix.lower() in _EXTENSIONS
        or any(ch in spec for ch in "*?[")
        or os.path.exists(os.path.expanduser(spec))
    )


def absolute_source(spec: str | None) -> str | None:
    """Make local paths absolute on the driver: Ray workers run in another working directory."""
    if spec is None or spec.startswith(PREFIX) or not looks_local(spec):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def _files_format(files: list[str], fmt: str, field: str) -> str:
    if fmt != "auto":
        return fmt
    kinds = {_EXTENSIONS.get(Path(_strip_compression(f)).suffix.lower()) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(
            f"{field}: cannot tell the file format of {files[:3]}; set data.format to one of "
            f"csv, json, parquet, text, arrow"
        )
    return kinds.pop()  # type: ignore[return-value]


def _load_files(files: list[str], fmt: str, field: str) -> datasets.Dataset:
    fmt = _files_format(files, fmt, field)
    kwargs: dict[str, Any] = {}
    if fmt == "csv" and all(_strip_compression(f).endswith(".tsv") for f in files):
        kwargs["delimiter"] = "\t"
    try:
        return datasets.load_dataset(fmt, data_files=files, split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for malformed files
        raise DataError(f"{field}: could not read {files[0]} as {fmt}: {exc}") from None


def _load_local(path: str, fmt: str, field: str) -> datasets.Dataset:
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path))
        if not files:
            raise DataError(f"{field}: no file matches {path!r}")
        return _load_files(files, fmt, field)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{field}: file or directory not found: {path}")
    if p.is_file():
        return _load_files([str(p)], fmt, field)
    if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        loaded = datasets.load_from_disk(str(p))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise DataError(f"{field}: dataset folder {path} has splits {list(loaded)}; point at one split")
            return loaded["train"]
        return loaded
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise DataError(f"{field}: directory {path} holds no data files")
    return _load_files(files, fmt, field)


def _load_hub(spec: str, cfg: DataConfig, field: str) -> datasets.Dataset:
    split = field.rsplit(".", 1)[-1]
    try:
        return datasets.load_dataset(spec, cfg.hub_config, split=split)
    except Exception as exc:
        offline = " (this machine may be offline: use a local file or a builtin: dataset)"
        raise DataError(
            f"{field}: {spec!r} is not a local path and loading it from the Hugging Face Hub failed{offline}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None


def load_source(spec: str, cfg: DataConfig, field: str) -> datasets.Dataset:
    if spec.startswith(PREFIX):
        return load_builtin_dataset(spec, field)
    if looks_local(spec):
        return _load_local(os.path.abspath(os.path.expanduser(spec)), cfg.format, field)
    return _load_hub(spec, cfg, field)


# ----------------------------------------------------------------------------- checking


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


# ----------------------------------------------------------------------------- preparing


@dataclass
class PreparedData:
    splits: datasets.DatasetDict  # train, validation and maybe test; labels as strings still
    labels: list[str]
    fingerprint: str

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self.splits.items()}


def _subsample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))


def _fingerprint(splits: datasets.DatasetDict, columns: list[str]) -> str:
    """A hash of the values in order, independent of file format, chunking and Arrow string width."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(name.encode())
        for batch in splits[name].select_columns(columns).iter(batch_size=10_000):
            digest.update(json.dumps([batch[c] for c in columns], default=str).encode())
    return digest.hexdigest()[:16]


def prepare(cfg: DataConfig, need_label: bool = True) -> PreparedData:
    """Load every split, check columns and labels, split off validation if none is given."""
    loaded = {}
    for name in _SPLIT_FIELDS:
        spec = getattr(cfg, name)
        if spec is not None:
            ds = load_source(spec, cfg, f"data.{name}")
            check_columns(ds, cfg, f"data.{name}", need_label)
            loaded[name] = ds
    if "validation" not in loaded:
        if len(loaded["train"]) < 2:
            raise DataError("data.train: need at least 2 rows to split off a validation set")
        parts = loaded["train"].train_test_split(test_size=cfg.validation_fraction, seed=cfg.split_seed)
        loaded["train"], loaded["validation"] = parts["train"], parts["test"]
    loaded["train"] = _subsample(loaded["train"], cfg.max_train_samples, cfg.split_seed)
    for name in ("validation", "test"):
        if name in loaded:
            loaded[name] = _subsample(loaded[name], cfg.max_eval_samples, cfg.split_seed)
    columns = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    labels: list[str] = []
    if need_label:
        columns.append(cfg.label_column)
        labels = label_names(loaded["train"], cfg)
        for name in ("validation", "test"):
            if name in loaded:
                check_labels(loaded[name], cfg, labels, f"data.{name}")
    splits = datasets.DatasetDict({k: v.select_columns(columns) for k, v in loaded.items()})
    return PreparedData(splits, labels, _fingerprint(splits, columns))


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


def tokenize_for_classification(
    splits: datasets.DatasetDict, tokenizer: Any, cfg: DataConfig, labels: list[str]
) -> datasets.DatasetDict:
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

"""Data sources: a local file, glob or directory (CSV, JSON/JSONL, Parquet, text, Arrow, a
``datasets.save_to_disk`` folder, or an image folder of class folders), ``builtin:NAME`` (data that a pip
package ships), or a Hub dataset id.

Paths are recognised by their shape, so a typo in a path fails as "file not found" and never turns into a
Hub request. Driver and workers load the same way (the workers load again and compare fingerprints).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfray.assets import PREFIX
from hfray.config import DataConfig
from hfray.data.file_checks import diagnose, quiet_datasets
from hfray.errors import DataError

if TYPE_CHECKING:
    import datasets

# ``datasets`` (and the builtin and image loaders, which import it) are imported where data is loaded, not here:
# the training driver imports this module for its path checks before it connects to Ray, and loads data only in
# its checks thread, beside the connect. Isolated, that takes 0.28 s off the driver's imports on 2 CPUs; on a GPU
# host, where the run's task process starts only once the driver has connected, those imports are on the start-up
# path (issue 19; bench/results/overhead_cpu_dec05_lazy_datasets.md: no change measured on CPU).

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}


def strip_compression(path: str) -> str:
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def looks_local(spec: str) -> bool:
    """Paths are recognised by their shape, so a typo in a path never turns into a Hub request."""
    stripped = strip_compression(spec)
    return (
        spec.startswith(("/", "./", "../", "~"))
        or Path(stripped).suffix.lower() in EXTENSIONS
        or any(ch in spec for ch in "*?[")
        or os.path.exists(os.path.expanduser(spec))
    )


def check_exists(spec: str | None, field: str) -> None:
    """A local file or folder named without wildcards exists, or the same error as the full check: the typo'd path
    is reported in a blink, before Ray starts beside the checks (hfray.train.driver.run_gated)."""
    if spec is None or spec.startswith(PREFIX) or "://" in spec or not looks_local(spec):
        return
    path = os.path.abspath(os.path.expanduser(spec))
    if not any(ch in spec for ch in "*?[") and not os.path.exists(path):
        raise DataError(f"{field}: file or directory not found: {path}")


def absolute_source(spec: str | None) -> str | None:
    """Make local paths absolute on the driver: Ray workers run in another working directory."""
    if spec is None or spec.startswith(PREFIX) or not looks_local(spec):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def files_format(files: list[str], fmt: str, field: str) -> str:
    """``data.format``, or the one format the files' extensions name (compression suffixes ignored)."""
    if fmt != "auto":
        return fmt
    kinds = {EXTENSIONS.get(Path(strip_compression(f)).suffix.lower()) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(
            f"{field}: cannot tell the file format of {files[:3]}; set data.format to one of "
            f"csv, json, parquet, text, arrow"
        )
    return kinds.pop()  # type: ignore[return-value]


def _load_files(files: list[str], fmt: str, field: str) -> datasets.Dataset:
    fmt = files_format(files, fmt, field)
    kwargs: dict[str, Any] = {}
    if fmt == "csv" and all(strip_compression(f).endswith(".tsv") for f in files):
        kwargs["delimiter"] = "\t"
    import datasets

    try:
        with quiet_datasets():  # its "Failed to read file" line would come above hfray's message
            return datasets.load_dataset(fmt, data_files=files, split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for malformed files
        for path in files:
            problem = diagnose(path, fmt)
            if problem is not None:
                raise DataError(f"{field}: {path}: {problem}") from None
        raise DataError(f"{field}: could not read {files[0]} as {fmt}: {exc}") from None


def _load_local(path: str, fmt: str, field: str) -> datasets.Dataset:
    import datasets

    from hfray.data.images import is_image_folder, load_image_folder

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
    if is_image_folder(p):  # class folders of images: columns image, label
        return load_image_folder(p, field)
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise DataError(f"{field}: directory {path} holds no data files")
    return _load_files(files, fmt, field)


def _load_hub(spec: str, cfg: DataConfig, field: str) -> datasets.Dataset:
    import datasets

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
        from hfray.data.builtin import load_builtin_dataset

        return load_builtin_dataset(spec, field)
    if looks_local(spec):
        return _load_local(os.path.abspath(os.path.expanduser(spec)), cfg.format, field)
    return _load_hub(spec, cfg, field)

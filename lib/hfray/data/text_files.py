"""The first texts of local corpus files, read in this process: bounded held-out sets of pre-training jobs.

Why not Ray Data: reading a few dozen held-out texts through ``ray.data.read_*`` starts read tasks in fresh
worker processes, 2.5 s of the start-up on 2 CPUs and 5.9 s on the H200 machine
(``bench/results/overhead_gpu.md``), before any worker exists. The rows are the ones Ray Data's readers give,
in file order: ``read_text``'s lines (``str.splitlines``, blank lines dropped), a parquet/csv/json column.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np

Keep = Callable[[list[str]], np.ndarray]  # texts -> mask of the ones to keep (the held-out side of a split)
_CHUNK = 1024


def _stream(path: str) -> object:
    import pyarrow as pa

    return pa.input_stream(path, compression="detect")  # .gz, .bz2, .zst by extension, as Ray Data's readers


def _text_lines(path: str, column: str, tsv: bool) -> Iterator[list[str]]:
    chunk: list[str] = []
    with io.TextIOWrapper(_stream(path), encoding="utf-8") as lines:
        for line in lines:
            chunk.extend(part for part in line.splitlines() if part.strip())
            if len(chunk) >= _CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _parquet_column(path: str, column: str, tsv: bool) -> Iterator[list[str]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=_CHUNK, columns=[column]):
        yield batch.column(0).to_pylist()


def _csv_column(path: str, column: str, tsv: bool) -> Iterator[list[str]]:
    import pyarrow.csv as csv

    parse = csv.ParseOptions(delimiter="\t") if tsv else csv.ParseOptions()
    convert = csv.ConvertOptions(include_columns=[column], column_types={column: "string"})
    for batch in csv.open_csv(_stream(path), parse_options=parse, convert_options=convert):
        yield batch.column(0).to_pylist()


def _json_column(path: str, column: str, tsv: bool) -> Iterator[list[str]]:
    import pyarrow.json as pj

    for batch in pj.open_json(_stream(path)):
        yield batch.column(batch.schema.get_field_index(column)).to_pylist()


_READERS = {"text": _text_lines, "parquet": _parquet_column, "csv": _csv_column, "json": _json_column}


def first_texts(files: list[str], fmt: str, column: str, limit: int, keep: Keep | None = None) -> list[str | None]:
    """Up to ``limit`` rows of ``column`` (text files: lines) from ``files`` in order, those ``keep`` selects."""
    tsv = all(f.endswith((".tsv", ".tsv.gz")) for f in files)
    texts: list[str | None] = []
    for path in files:
        for chunk in _READERS[fmt](path, column, tsv):
            if keep is not None:
                chunk = [t for t, k in zip(chunk, keep(chunk), strict=True) if k]
            texts.extend(chunk[: limit - len(texts)])
            if len(texts) >= limit:
                return texts
    return texts

"""What is wrong with a data file that ``datasets`` could not read: the byte, the line, or the missing rows.

``datasets`` ends every malformed CSV/JSON file in "An error occurred while generating the dataset" and logs the
cause on its own logger. :func:`diagnose` reads the file again, in this process and without ``datasets``, to name
the byte offset of a bad encoding (with a hint), the line of malformed JSON, an empty or header-only file.
:func:`quiet_datasets` keeps ``datasets``' own error line off the console while hfray reports the cause.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
from collections.abc import Iterator

_BLOCK = 1 << 20
ENCODING_HINT = (
    "hfray reads data files as UTF-8; convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8.csv, "
    "or save it as 'CSV UTF-8' in your spreadsheet program"
)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """``datasets``' error log lines ("Failed to read file ...") off while a file is read; hfray reports the cause."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _blocks(path: str) -> Iterator[bytes]:
    import pyarrow as pa

    with pa.input_stream(path, compression="detect") as stream:  # .gz, .bz2, .zst as datasets reads them
        while block := stream.read(_BLOCK):
            yield block


def encoding_problem(path: str) -> str | None:
    """Where the file stops being UTF-8: the byte offset (of the uncompressed text), the line, the bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    for block in _blocks(path):
        try:
            decoder.decode(block)
        except UnicodeDecodeError as exc:
            at = offset + exc.start
            line = lines + block[: exc.start].count(b"\n")
            bad = block[exc.start : exc.start + 1]
            return f"not UTF-8: byte {at} (line {line}) is {bad!r}, {exc.reason}; {ENCODING_HINT}"
        offset += len(block)
        lines += block.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return f"not UTF-8: the file ends inside a character at byte {offset}: {exc.reason}; {ENCODING_HINT}"
    return None


def _lines(path: str) -> Iterator[str]:
    import io

    import pyarrow as pa

    with io.TextIOWrapper(pa.input_stream(path, compression="detect"), encoding="utf-8") as text:
        yield from text


def json_problem(path: str) -> str | None:
    """The first line of a JSON Lines file that is not a JSON object (a ``.json`` array file is parsed whole)."""
    lines = _lines(path)
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("["):
        try:
            json.loads(first + "".join(lines))
        except json.JSONDecodeError as exc:
            return f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        return None
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"malformed JSON at line {number}, column {exc.colno}: {exc.msg}: {line.strip()[:80]!r}"
        if not isinstance(value, dict):
            return f"line {number} is not a JSON object (one object per line): {line.strip()[:80]!r}"
    return None


def rows_problem(path: str, fmt: str) -> str | None:
    """An empty file, or a CSV with a header line and no rows."""
    if os.path.getsize(path) == 0:
        return "the file is empty (0 bytes)"
    filled = 0
    for line in _lines(path):
        filled += bool(line.strip())
        if filled > 1:
            return None
    if filled == 0:
        return "the file holds only blank lines"
    return "the file has a header line and no rows" if fmt == "csv" else None


def diagnose(path: str, fmt: str) -> str | None:
    """The first thing wrong with a local ``csv``/``json``/``text`` file, or None when none of these is found."""
    if fmt not in ("csv", "json", "text") or not os.path.isfile(path):
        return None
    problem = encoding_problem(path) or rows_problem(path, fmt)
    if problem is None and fmt == "json":
        problem = json_problem(path)
    return problem

"""Reading a job file: YAML, ``section.key=value`` overrides, validation with every problem reported at once.

``load_job(path, overrides)`` reads the YAML, applies the overrides and validates the result; a failure raises
:class:`~hfray.errors.ConfigError` listing each bad key with its value and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hfray.config.job import JobConfig
from hfray.errors import ConfigError, Problem


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    parsed = []
    bad = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            bad.append(Problem(item, "an override must look like section.key=value, e.g. training.learning_rate=3e-5"))
            continue
        try:
            parsed.append((key.split("."), yaml.safe_load(value) if value != "" else None))
        except yaml.YAMLError as exc:
            bad.append(Problem(key, f"value is not valid YAML: {exc}", value, has_value=True))
    if bad:
        raise ConfigError(bad, "overrides")
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for path, value in parse_overrides(overrides):
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem(str(path), "job file not found")], "job file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(where, f"not valid YAML: {reason}")], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError([Problem("(top level)", "a job file must be a YAML mapping of sections")], str(path))
    return raw


def load_job(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return JobConfig.from_dict(raw, source=str(path))

"""Application builder for ``serve run`` / ``serve deploy`` (the import_path of serve/*.yaml).

Thin on purpose: all logic lives in ``hfray.serving``, which must be installed wherever replicas run.
The YAML's ``args`` are a ``hfray.serving.config.ServeConfig`` dict; unknown keys fail at deploy time.
"""

from __future__ import annotations

from typing import Any

from hfray.serving import build_app


def build(args: dict[str, Any]) -> Any:
    return build_app(args)

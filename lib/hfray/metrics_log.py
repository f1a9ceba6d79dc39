"""The metrics log of a run, ``<storage>/<run>/hfray_metrics.jsonl``: written by the Train controller, read by hfray.

Its own module, free of transformers: Ray unpickles ``MetricsLogDriver`` in the Train controller's process,
which then imports this module, not the Hugging Face Trainer stack (torch, peft: seconds per run).
"""

from __future__ import annotations

import json
from typing import Any

import ray.train

from hfray import checkpoints
from hfray.storage import uri_of


class MetricsLogDriver(ray.train.UserCallback):
    """Appends rank 0's metrics of every report to ``<storage>/<run>/hfray_metrics.jsonl``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.lines: list[str] | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if self.lines is None:  # a restarted driver continues the same log
            self.lines = checkpoints.read_text(self.uri).splitlines() if checkpoints.exists(self.uri) else []
        record = dict(metrics[0]) if metrics else {}
        # A URI (s3://...), not Ray's scheme-less path, so hfray's helpers can open it again.
        record["checkpoint_path"] = uri_of(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else None
        self.lines.append(json.dumps(record, sort_keys=True))
        checkpoints.write_text(self.uri, "\n".join(self.lines) + "\n")


def read_metrics_log(uri: str) -> list[dict[str, Any]]:
    if not checkpoints.exists(uri):
        return []
    return [json.loads(line) for line in checkpoints.read_text(uri).splitlines() if line.strip()]

"""Reading a run's metrics log, ``<run>/hfray_metrics.jsonl``: rank 0's metrics of every report, one JSON a line.

Ray's ``Result`` keeps only reports that came with a checkpoint; the log keeps them all. The Train controller
writes it (:class:`hfray.train.controller.MetricsLogCallback`); ``hfray runs``, the learning curve and MLflow
read it. Import-light (no Ray): ``hfray runs`` lists runs without starting anything.
"""

from __future__ import annotations

import json
from typing import Any

from hfray.storage import fs


def read_metrics_log(uri: str) -> list[dict[str, Any]]:
    """Every record of a metrics log (local path or URI); ``[]`` when there is none yet."""
    if not fs.exists(uri):
        return []
    return [json.loads(line) for line in fs.read_text(uri).splitlines() if line.strip()]

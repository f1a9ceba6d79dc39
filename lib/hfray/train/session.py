"""The train function's calls into Ray Train, in a Train worker or in an in-process run (:mod:`hfray.train.local`).

Ray 2.60 refuses ``ray.train.get_context``, ``report``, ``get_checkpoint`` and ``get_all_reported_checkpoints`` in a
process that hosts a Tune trial (``requires_train_worker(raise_in_tune_session=True)`` in
``ray/train/v2/_internal/util.py``; ``_in_tune_session`` reads the process-wide Tune session), and a sweep trial
that trains in process runs exactly there. So hfray's worker code calls them through here: the in-process run's
utilities while one runs in this process, Ray's own API otherwise (every Train worker).
"""

from __future__ import annotations

from typing import Any

import ray.train

_ACTIVE: list[Any] = []  # the in-process run's train-function utilities (hfray.train.local.InProcessFnUtils)


def activate(utils: Any | None) -> None:
    """Route this process's calls to ``utils`` (an in-process run starts), or back to Ray's API (``None``)."""
    _ACTIVE[:] = [utils] if utils is not None else []


def get_context() -> Any:
    return _ACTIVE[0].get_context() if _ACTIVE else ray.train.get_context()


def report(metrics: dict[str, Any], **kwargs: Any) -> None:
    if _ACTIVE:
        _ACTIVE[0].report(metrics, **kwargs)
    else:
        ray.train.report(metrics, **kwargs)


def get_checkpoint() -> Any:
    return _ACTIVE[0].get_checkpoint() if _ACTIVE else ray.train.get_checkpoint()


def get_all_reported_checkpoints() -> list[Any]:
    return _ACTIVE[0].get_all_reported_checkpoints() if _ACTIVE else ray.train.get_all_reported_checkpoints()

"""Storage that is down for a while: retries with exponential backoff, within a time budget (``storage.retry_s``).

Checkpoint uploads (:mod:`hfray.train.callbacks.report`), the metrics log and TensorBoard files
(:mod:`hfray.train.controller`) go through :func:`retrying`. While retries last, training goes on (uploads run in
Ray's background thread with ``storage.async_upload``) or waits; a report reaches Ray only once its checkpoint is
fully uploaded, so no reported checkpoint is missing or partial. Past the budget the run stops with one message
and its last good checkpoint stays as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hfray.errors import HfrayError

T = TypeVar("T")
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 30.0


class StorageUnavailable(HfrayError):
    """Storage stayed unreachable for longer than ``storage.retry_s``."""


def retrying(action: Callable[[], T], what: str, budget_s: float, log: Callable[[str], None] = print) -> T:
    """``action()``, retried on ``OSError`` (pyarrow's S3/GCS errors, a dropped connection) with exponential backoff
    (1 s, 2 s, 4 s, ... at most 30 s) until it succeeds or ``budget_s`` has passed; a missing local file is not
    retried (nothing comes back by waiting)."""
    started, delay = time.monotonic(), FIRST_DELAY_S
    while True:
        try:
            return action()
        except FileNotFoundError:
            raise
        except OSError as exc:
            waited = time.monotonic() - started
            if waited + delay > budget_s:
                # Not Ray's retryable wording ("AWS Error ..."): Ray's own 3 upload attempts would start over.
                last = str(exc).strip().splitlines()[0][:300].replace("AWS Error", "S3 error")
                raise StorageUnavailable(
                    f"storage: {what} failed for {waited:.0f} s, past storage.retry_s={budget_s:g} "
                    f"(last error: {last}); the run stops here, and its last "
                    "committed checkpoint is intact: run the job again once storage is back to resume from it"
                ) from None
            log(f"[hfray] storage: {what} failed ({type(exc).__name__}), retrying in {delay:g} s")
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)

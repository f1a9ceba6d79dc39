"""hfray's user-facing errors.

Everything a user can cause (a bad job file, a missing data file, an impossible resource request)
raises a subclass of :class:`HfrayError`. The CLI prints its message and exits with status 2, no
traceback, before any expensive work starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class HfrayError(Exception):
    """Base class for errors caused by user input; the message is meant for the user."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem in a job file: where it is, what was found, what was expected."""

    location: str  # dotted key, e.g. "training.learning_rate"
    message: str  # what was expected
    value: object = None
    has_value: bool = False

    def render(self) -> str:
        got = f" (got {self.value!r})" if self.has_value else ""
        return f"  - {self.location}: {self.message}{got}"


class ConfigError(HfrayError):
    """A job file failed validation; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[Problem], source: str = "job file") -> None:
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        lines = [f"{source}: {n} problem{'s' if n != 1 else ''}:"]
        lines += [p.render() for p in self.problems]
        super().__init__("\n".join(lines))


class DataError(HfrayError):
    """Data files, columns or labels do not match what the job file says."""


class ModelError(HfrayError):
    """A model or tokenizer cannot be found or built as the job file says."""


class ResourceError(HfrayError):
    """The job asks for more than the Ray cluster has."""


class ArtifactError(HfrayError):
    """An exported artifact is missing or unreadable."""


class SweepInterrupted(HfrayError):
    """A sweep stopped (Ctrl-C, SIGINT, job stop) before every trial ended; its state is saved."""

    exit_code = 130


def user_error_in(exc: BaseException) -> HfrayError | None:
    """The HfrayError a worker raised, inside Ray Train's ``WorkerGroupError`` (``worker_failures``) or a chain of
    causes, or the Train controller's (``controller_failure``: e.g. storage down past ``storage.retry_s`` while it
    writes the log); None when the failure is not the user's (a lost node, an out-of-memory kill, a bug)."""
    failures = list((getattr(exc, "worker_failures", None) or {0: exc}).values())
    failures += [failure] if (failure := getattr(exc, "controller_failure", None)) is not None else []
    for err in failures:
        cause: BaseException | None = err
        seen: set[int] = set()
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, HfrayError):
                inner = getattr(cause, "cause", None)  # Ray's RayTaskError(HfrayError) is both: the user's is inside
                return inner if isinstance(inner, HfrayError) else cause
            seen.add(id(cause))
            cause = cause.__cause__ or getattr(cause, "cause", None)
    return None

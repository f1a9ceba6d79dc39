"""Ray Train's failure policy, except for the user's errors: a worker's ``HfrayError`` (bad data, a bad config) fails
the same way on every attempt, so it ends the run at once instead of being retried ``storage.max_failures`` times.

Lost nodes, killed workers and other infrastructure failures keep Ray's policy (``FailureConfig``). The policy
runs in the Train controller: this module stays free of torch and transformers.
"""

from __future__ import annotations

from typing import Any

from ray.train.v2._internal.execution.failure_handling import FailureDecision, FailurePolicy
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from hfray.errors import user_error_in


class UserErrorsNotRetried(FailurePolicy):
    """Ray's policy (``inner``) for everything but a worker's ``HfrayError``, which is raised on its first attempt."""

    def __init__(self, inner: FailurePolicy) -> None:
        super().__init__(inner.failure_config)
        self.inner = inner

    def make_decision(self, training_failed_error: Any) -> FailureDecision:
        if user_error_in(training_failed_error) is not None:
            return FailureDecision.RAISE
        return self.inner.make_decision(training_failed_error)


class Trainer(DataParallelTrainer):
    """Ray Train V2's ``DataParallelTrainer`` whose controller does not retry the user's errors."""

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        policy = controller_init_kwargs["failure_policy"]
        controller_init_kwargs["failure_policy"] = UserErrorsNotRetried(policy)
        return super()._initialize_and_run_controller(**controller_init_kwargs)

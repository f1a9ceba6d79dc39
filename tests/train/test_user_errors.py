"""A worker's user error (``HfrayError``: bad data, a bad config) ends the run after one attempt with its message;
any other worker failure is still retried as ``storage.max_failures`` says.

Real Ray Train runs on the session's local cluster, with the text-classification recipe whose worker function is
replaced by one that counts its attempts in a file and fails.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
from ray import cloudpickle

from conftest import tiny_job
from hfray.config import JobConfig
from hfray.errors import DataError

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests folder

MESSAGE = "data.train: row 7 has no label (raised on the worker)"


def failing_loop(loop_config: dict[str, Any]) -> None:
    """Counts this attempt, then fails as the job's ``failure`` key says: a user error or a crash."""
    job = loop_config["job"]
    with open(Path(job["storage"]["path"]).parent / "attempts.txt", "a") as f:
        f.write("attempt\n")
    if "user" in job["name"]:
        raise DataError(MESSAGE)
    raise RuntimeError("a crash that is not the user's")


def run_failing(tmp_path: Path, data_files: dict[str, Path], name: str, launch: str = "train") -> int:
    from hfray.train.driver import run
    from hfray.train.recipes import recipe_for

    job = JobConfig.from_dict(
        tiny_job(
            tmp_path, data_files, name=name, resources={"num_workers": 1, "launch": launch}, storage={"max_failures": 2}
        )
    )
    recipe = dataclasses.replace(recipe_for(job.task), train_loop_per_worker=failing_loop)
    with pytest.raises(Exception) as raised:
        run(job, recipe)
    attempts = (tmp_path / "attempts.txt").read_text().count("attempt")
    if "user" in name:
        assert type(raised.value) is DataError and str(raised.value) == MESSAGE, raised.value
    else:
        assert "a crash that is not the user's" in str(raised.value)
    return attempts


@pytest.mark.parametrize("launch", ["train", "task"])  # task: one Ray task, hfray's in-process runner
def test_a_worker_data_error_ends_the_run_after_one_attempt(ray_cluster, tmp_path, data_files, launch):
    assert run_failing(tmp_path, data_files, "user-error", launch) == 1


@pytest.mark.slow  # 74 s on 2 loaded cores: three worker-group starts
@pytest.mark.parametrize("launch", ["train", "task"])
def test_other_worker_failures_are_still_retried(ray_cluster, tmp_path, data_files, launch):
    assert run_failing(tmp_path, data_files, "crash", launch) == 3  # max_failures=2: three attempts

"""What hfray hands to a job's Ray processes when it connects (no cluster needed)."""

from __future__ import annotations

import pytest

from hfray.cluster.connect import TRAIN_POLL_ENV, TRAIN_POLL_S, job_env


def test_job_processes_get_the_address_and_a_short_train_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRAIN_POLL_ENV, raising=False)
    env = job_env("10.0.0.1:6379")
    assert env["RAY_ADDRESS"] == "10.0.0.1:6379"
    assert float(env[TRAIN_POLL_ENV]) == float(TRAIN_POLL_S) < 2.0  # Ray's default: 2 s per report
    monkeypatch.setenv(TRAIN_POLL_ENV, "1.5")
    assert job_env("10.0.0.1:6379")[TRAIN_POLL_ENV] == "1.5"  # the user's own value wins


def test_inside_ray_job_submit_the_jobs_runtime_env_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HFRAY_TIMELINE", raising=False)
    assert job_env("auto") == {}

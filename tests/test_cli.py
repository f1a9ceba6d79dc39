"""Bad job files through the real `hfray` command: one clear message, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_job

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_ADDRESS": ""}


def hfray(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hfray", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def assert_one_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hfray: error:")]
    assert len(errors) == 1, proc.stderr
    message = proc.stderr[proc.stderr.index("hfray: error:") :]
    for needle in needles:
        assert needle in message, message
    return message


def job_file(tmp_path: Path, data_files, **sections) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, data_files, **sections)))
    return path


def test_unknown_key(tmp_path, data_files):
    path = job_file(tmp_path, data_files, trainig={"learning_rate": 1e-3})
    assert_one_clear_error(hfray("validate", str(path)), "trainig: unknown key; did you mean 'training'?")


def test_wrong_type(tmp_path, data_files):
    path = job_file(tmp_path, data_files)
    assert_one_clear_error(
        hfray("train", str(path), "training.max_steps=many"), "training.max_steps", "valid integer", "'many'"
    )


def test_missing_data_file(tmp_path, data_files):
    path = job_file(tmp_path, data_files, data={"train": str(tmp_path / "absent.csv")})
    assert_one_clear_error(hfray("train", str(path)), "data.train: file or directory not found", "absent.csv")


def test_missing_column(tmp_path, data_files):
    path = job_file(tmp_path, data_files, data={"label_column": "sentiment"})
    assert_one_clear_error(
        hfray("validate", str(path)), "data.label_column 'sentiment'", "the data has columns ['text', 'label']"
    )


def test_missing_model_dir(tmp_path, data_files):
    path = job_file(tmp_path, data_files, model={"architecture": None, "name_or_path": str(tmp_path / "no-model")})
    assert_one_clear_error(hfray("validate", str(path)), "model.name_or_path: directory not found")


def test_more_gpus_than_the_cluster_has(tmp_path, data_files):
    path = job_file(tmp_path, data_files, cluster={"num_cpus": 2})
    proc = hfray("train", str(path), "resources.gpus_per_worker=1")
    assert_one_clear_error(proc, "resources:", "need 2 GPU in all, the cluster has 0")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_validate_accepts_the_default_job():
    proc = hfray("validate")
    assert proc.returncode == 0, proc.stderr
    assert "is a valid text-classification job" in proc.stdout and "labels ['business'" in proc.stdout


@pytest.mark.parametrize("bad_override", ["training.learning_rate", "=3"])
def test_malformed_override(bad_override):
    from hfray.cli import default_job_path

    proc = hfray("validate", "--schema-only", str(default_job_path()), bad_override)
    assert_one_clear_error(proc, "section.key=value")

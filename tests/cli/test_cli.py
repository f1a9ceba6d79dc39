"""Bad job files through the `hfray` command: one clear message, exit status 2, no traceback.

The command runs in this process (``hfray.cli.main``, what the console script calls) where it starts no Ray; the
one that starts a local cluster runs as a child process, as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import lm_job, tiny_job

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_ADDRESS": ""}


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def hfray(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``hfray ARGS`` in this process: exit status and output. An escaping exception fails the test (a traceback)."""
    from hfray.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "")

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def hfray_process(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hfray", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def assert_one_clear_error(proc: Ran | subprocess.CompletedProcess, *needles: str) -> str:
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


def test_unknown_key(hfray, tmp_path, data_files):
    path = job_file(tmp_path, data_files, trainig={"learning_rate": 1e-3})
    assert_one_clear_error(hfray("validate", str(path)), "trainig: unknown key; did you mean 'training'?")


def test_wrong_type(hfray, tmp_path, data_files):
    path = job_file(tmp_path, data_files)
    assert_one_clear_error(
        hfray("train", str(path), "training.max_steps=many"), "training.max_steps", "valid integer", "'many'"
    )


def test_missing_data_file(hfray, tmp_path, data_files):
    # As on a machine with no cluster running: the checks come before Ray (this test process may hold one).
    path = job_file(tmp_path, data_files, data={"train": str(tmp_path / "absent.csv")})
    proc = hfray("train", str(path), "cluster.overlap_checks=false")
    assert_one_clear_error(proc, "data.train: file or directory not found", "absent.csv")


def test_missing_data_file_is_reported_before_ray_starts_beside_the_checks(hfray, tmp_path, data_files):
    # With cluster.overlap_checks (the default) Ray starts while the driver checks; a typo'd path comes first.
    path = job_file(tmp_path, data_files, data={"validation": str(tmp_path / "absent.csv")})
    assert_one_clear_error(hfray("train", str(path)), "data.validation: file or directory not found", "absent.csv")


@pytest.mark.ray  # 18 s alone on 2 quiet CPUs: it boots a local Ray cluster of its own
def test_a_check_that_fails_while_the_local_cluster_boots_is_reported_and_nothing_trains(tmp_path, data_files):
    # Issue 19: hfray's own local cluster boots beside the driver's checks; the failed check is the error.
    path = job_file(tmp_path, data_files, data={"label_column": "sentiment"}, cluster={"num_cpus": 2})
    proc = hfray_process("train", str(path))
    assert_one_clear_error(proc, "data.label_column 'sentiment'")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_column(hfray, tmp_path, data_files):
    path = job_file(tmp_path, data_files, data={"label_column": "sentiment"})
    assert_one_clear_error(
        hfray("validate", str(path)), "data.label_column 'sentiment'", "the data has columns ['text', 'label']"
    )


def test_missing_model_dir(hfray, tmp_path, data_files):
    path = job_file(tmp_path, data_files, model={"architecture": None, "name_or_path": str(tmp_path / "no-model")})
    assert_one_clear_error(hfray("validate", str(path)), "model.name_or_path: directory not found")


@pytest.mark.ray
def test_more_gpus_than_the_cluster_has(tmp_path, data_files):
    path = job_file(tmp_path, data_files, cluster={"num_cpus": 2})
    proc = hfray_process("train", str(path), "resources.gpus_per_worker=1")  # starts its own local cluster
    assert_one_clear_error(proc, "resources:", "need 2 GPU in all, the cluster has 0")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_validate_accepts_the_default_job(hfray):
    proc = hfray("validate")
    assert proc.returncode == 0, proc.stderr
    assert "is a valid text-classification job" in proc.stdout and "labels ['business'" in proc.stdout


@pytest.mark.parametrize("bad_override", ["training.learning_rate", "=3"])
def test_malformed_override(hfray, bad_override):
    from hfray.cli.jobs import default_job_path

    proc = hfray("validate", "--schema-only", str(default_job_path()), bad_override)
    assert_one_clear_error(proc, "section.key=value")


def test_cli_trains_the_tokenizer_and_validates_the_job(hfray, tmp_path, news):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(lm_job(tmp_path, "masked-lm", news["txt"], tokenizer={"max_texts": 50})))
    before = hfray("validate", str(path))
    assert before.returncode == 0 and "not trained yet" in before.stdout, before.stderr

    trained = hfray("tokenizer", str(path))
    assert trained.returncode == 0 and "tokenizer trained: wordpiece, 2000 tokens, 50 texts" in trained.stdout
    after = hfray("validate", str(path))
    assert after.returncode == 0 and "vocab_size 2000" in after.stdout and "model_type bert" in after.stdout

    # A clear error, no traceback: a block longer than the model's positions.
    bad = hfray("validate", str(path), "lm.block_size=128")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "max_position_embeddings 64 is too small for lm.block_size 128" in bad.stderr

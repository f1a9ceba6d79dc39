"""Every shipped job file: documented header, valid schema, data and model found (torchtune-style)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from conftest import check_manifest
from hfray.cli.jobs import default_job_path
from hfray.config import LM_TASKS, TRL_TASKS, load_job
from hfray.data.builtin import bible_missing
from hfray.train.run import preflight

ROOT = Path(__file__).resolve().parents[2]
JOB_FILES = sorted([*ROOT.glob("jobs/*.yaml"), default_job_path()])


def test_there_are_shipped_jobs():
    assert len(JOB_FILES) >= 3 and default_job_path().is_file()


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_header_gives_purpose_and_exact_command(path):
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2, "a job file starts with comments: its purpose, then how to run it"
    assert any(re.search(r"\bhfray (train|sweep|tokenizer) jobs/|\bhfray train\b", line) for line in header)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_validates_and_its_data_and_model_resolve(path):
    job = load_job(path)
    if job.task in LM_TASKS:  # pre-training: no labels; the tokenizer may not be trained yet
        resolved, info = preflight(job, full=False)
        assert info.facts["formats"]["data.train"] and resolved.storage.path.startswith("/")
        return
    if job.task in TRL_TASKS:  # data columns only: the SmolLM2 conversion (~1 min) is the slow tests' business
        from hfray.train.recipes.grpo.data import load_grpo_splits
        from hfray.train.recipes.trl.data import load_trl_splits

        splits = load_grpo_splits(job, check=True) if job.task == "grpo" else load_trl_splits(job)
        assert len(splits["train"]) > len(splits["validation"]) > 0
        return
    if job.data.train == "builtin:bible_en_es":  # its data needs Debian packages: test_bible_job_data_resolves (slow)
        from hfray.model.builtin import resolve_model

        assert job.task == "seq2seq" and Path(resolve_model(job.model.name_or_path), "config.json").is_file()
        return
    _check_prepared(job)


def _check_prepared(job: Any) -> None:
    resolved, prepared = preflight(job)
    assert prepared.sizes["train"] > prepared.sizes["validation"] > 0
    assert len(prepared.labels) >= 2 or job.task in ("question-answering", "seq2seq")
    assert resolved.storage.path.startswith("/")
    if job.sweep is not None:
        from hfray.tune.plan import sweep_metric
        from hfray.tune.space import check_space

        check_space(job)
        sweep_metric(job)


def _require_bible() -> None:
    """The slow tests need the Bible job's assets: a machine without them fails here, it does not skip."""
    if bible_missing():
        pytest.fail(str(bible_missing()))


@pytest.mark.slow
def test_bible_job_data_resolves():
    _require_bible()
    _check_prepared(load_job(ROOT / "jobs" / "bible_en_es_translation.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_trains_a_few_steps(ray_cluster, tmp_path, path):
    """Every shipped job trains through the task -> recipe table and exports an artifact of the manifest schema."""
    from hfray.train.run import run_training

    overrides = [
        "training.max_steps=4",
        "training.eval_strategy=steps",
        "training.eval_steps=2",
        "training.early_stopping_patience=null",
        "data.max_train_samples=64",
        "data.max_eval_samples=32",
        f"storage.path={tmp_path}",
    ]
    job = load_job(path)
    if job.data.train == "builtin:bible_en_es":
        _require_bible()
    if job.task == "seq2seq":
        overrides.append("seq2seq.generation.max_new_tokens=16")  # an untrained model generates to the limit
    if job.task in LM_TASKS:
        overrides += [
            f"model.tokenizer={tmp_path}/tokenizer",
            "tokenizer.max_texts=200",
            "resources.cpus_per_worker=0.5",
        ]
    summary = run_training(load_job(path, overrides))
    assert summary.manifest["global_step"] == 4
    check_manifest(summary.manifest)
    weights = "adapter_config.json" if job.peft is not None else "config.json"  # a PEFT artifact is an adapter
    assert Path(summary.artifact, weights).is_file()

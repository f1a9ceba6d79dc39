"""The artifact manifest: one schema with a version for every task, built in one place, old manifests upgraded.

The end-to-end runs check the manifests they write with ``conftest.check_manifest`` (classification, token
classification, masked and causal LM, SFT and the sweep's export in the default suite; QA, seq2seq and DPO in
the slow one). Here: every recipe's artifact fields make a manifest of exactly the schema's keys.
"""

from __future__ import annotations

import json

import pytest

from conftest import check_manifest, tiny_job
from hfray.artifacts.manifest import FORMAT, KEYS, build_manifest, read_manifest, write_manifest
from hfray.config import TASKS, JobConfig
from hfray.train.recipes import RECIPES, recipe_for

SECTIONS = {
    "masked-lm": {"lm": {"pipeline": "datasets"}},
    "causal-lm": {"lm": {"pipeline": "datasets"}},
    "grpo": {"trl": {"rewards": [{"kind": "length", "target": 32}]}},  # grpo needs a reward
}


def job_of(task: str, tmp_path, data_files) -> JobConfig:
    raw = tiny_job(tmp_path, data_files, task=task)
    raw.pop("evaluation")  # each task's own defaults
    raw.update(SECTIONS.get(task, {}))
    return JobConfig.from_dict(raw)


def test_the_table_has_a_recipe_for_every_task_the_schema_allows():
    assert set(RECIPES) == set(TASKS)
    assert all(task in recipe_for(task).tasks for task in TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_recipe_builds_a_manifest_of_the_schemas_keys(task, tmp_path, data_files):
    job = job_of(task, tmp_path, data_files)
    fields = recipe_for(task).artifact_fields(job)
    manifest = build_manifest(**fields, job=job.to_dict(), run_name="r", metrics={"eval_loss": 1.0}, best={})
    check_manifest(manifest)
    assert manifest["training_task"] == task and isinstance(manifest["task"], str)
    json.dumps(manifest)  # written as JSON


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="not manifest keys"):
        build_manifest(task="t", job={"task": "t", "name": "n"}, run_name="r", metrics={}, best={}, strategy="ddp")


@pytest.mark.parametrize(
    ("old", "training_task"),
    [
        ({"task": "text-classification", "labels": ["a", "b"]}, "text-classification"),  # classification wrote no key
        ({"task": "fill-mask", "hfray_task": "masked-lm"}, "masked-lm"),
        ({"task": "text-generation", "training_task": "sft", "world_size": 2}, "sft"),
    ],
)
def test_format_1_manifests_are_read_in_the_current_schema(tmp_path, old, training_task):
    write_manifest(str(tmp_path), {"format": 1, "name": "n", "run_name": "r", "metrics": {}, **old})
    manifest = read_manifest(str(tmp_path))
    assert sorted(manifest) == sorted(KEYS) and manifest["format"] == 1 and manifest["training_task"] == training_task
    assert manifest["pipeline_kwargs"] == {} and manifest["peft"] is None
    assert FORMAT == 2

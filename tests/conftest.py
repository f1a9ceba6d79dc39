"""Shared fixtures: a real local Ray cluster, small learnable jobs with a tiny BERT built from a config, and a real
news corpus with tiny language models for pre-training."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The GPU tests (tests/gpu) reuse the CPU tests' helpers: tiny models, job builders, artifacts.
sys.path[:0] = [str(Path(__file__).parent / folder) for folder in ("train", "serving")]

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# hfray train's per-run console logs (hfray.cli.console): a folder of the test session's, not ~/.hfray/logs.
os.environ.setdefault("HFRAY_LOG_DIR", tempfile.mkdtemp(prefix="hfray-test-logs-"))
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


RAY_FIXTURES = {"ray_cluster", "two_nodes"}


OPT_IN = ("slow", "gpu")  # run only when the -m expression names them: pytest -m slow, -m gpu


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a Ray cluster are marked ``ray`` (``pytest -m "not ray"`` runs the in-process rest fast);
    slow and GPU tests run only when the -m expression names them, so ``-m "not ray"`` leaves them out too."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
    named = config.getoption("markexpr") or ""
    left_out = [marker for marker in OPT_IN if marker not in named]
    dropped = [item for item in items if any(item.get_closest_marker(m) for m in left_out)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """With ``HFRAY_TEST_TRACE=<file>`` (CI sets it), each test's id is appended there as it starts: a run that
    dies without pytest's summary (a process exit in C code) still says which test was running."""
    trace = os.environ.get("HFRAY_TEST_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(nodeid + "\n")


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster (2 CPUs) for the whole session: starting Ray costs ~10 s."""
    import ray

    from hfray.cluster.connect import start_local_cluster

    with session_s3_env():  # tests/storage/test_s3_run.py: S3 storage on this cluster
        start_local_cluster(2, None, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_csv(tmp_path / "train.csv", synthetic_rows(256, seed=1)),
        "validation": write_csv(tmp_path / "validation.csv", synthetic_rows(64, seed=2)),
    }


def check_manifest(manifest: dict[str, Any]) -> None:
    """An artifact manifest of the current schema: every key, none else (hfray.artifacts.manifest)."""
    from hfray.artifacts.manifest import FORMAT, KEYS

    assert sorted(manifest) == sorted(KEYS), set(manifest) ^ set(KEYS)
    assert manifest["format"] == FORMAT and manifest["training_task"] == manifest["job"]["task"]


def merge_sections(job: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """``job`` with ``sections`` over it: a dict merges into the section of that name (one level deep), anything
    else replaces it. The test job builders' keyword arguments."""
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(job.get(section), dict):
            job[section] = {**job[section], **values}
        else:
            job[section] = values
    return job


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
    return merge_sections(job, sections)


# ----------------------------------------------------------------------------- pre-training

TINY_LM = {
    "masked-lm": {
        "model_type": "bert",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
    },
    "causal-lm": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64},
}
VOCAB = 2000


@pytest.fixture(scope="session")
def news(tmp_path_factory) -> dict[str, Any]:
    """The first 300 distinct news articles as a text file (one per line) and a parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hfray.data.builtin import load_builtin_dataset

    seen, texts = set(), []
    for text in load_builtin_dataset("builtin:news_articles", "data.train")["text"]:
        key = text.split("\n", 1)[-1][:300]  # a few articles share their body: their blocks would collide
        if key not in seen and len(text) > 500:
            seen.add(key)
            texts.append(" ".join(text.split()))
        if len(texts) == 300:
            break
    root = tmp_path_factory.mktemp("news")
    (root / "news.txt").write_text("\n".join(texts) + "\n")
    pq.write_table(pa.table({"body": texts}), root / "news.parquet")
    return {"texts": texts, "txt": root / "news.txt", "parquet": root / "news.parquet"}


def lm_job(tmp_path: Path, task: str, train: Path, **sections: Any) -> dict[str, Any]:
    """A pre-training job that runs in about a minute on 2 CPU cores; ``sections`` merge over the defaults."""
    job: dict[str, Any] = {
        "name": f"tiny-{task}",
        "task": task,
        "model": {"architecture": dict(TINY_LM[task]), "tokenizer": str(tmp_path / "tokenizer")},
        "tokenizer": {"algorithm": "wordpiece" if task == "masked-lm" else "bpe", "vocab_size": VOCAB},
        "data": {"train": str(train), "validation_fraction": 0.1, "max_eval_samples": 16},
        "lm": {"block_size": 64, "tokenize_batch_size": 32, "record_shards": True},
        "training": {
            "learning_rate": 3e-3,
            "max_steps": 40,
            "per_device_train_batch_size": 16,
            "warmup_steps": 0.1,
            "eval_strategy": "steps",
            "eval_steps": 10,
            "logging_steps": 5,
            # The untrained model's score is the baseline that held-out perplexity must fall from.
            "extra_args": {"eval_on_start": True},
        },
        # Half a CPU per worker leaves the 2-CPU test cluster one CPU for Ray Data's tokenize tasks.
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
        "storage": {"path": str(tmp_path / "runs"), "num_to_keep": 1, "max_failures": 0},
    }
    return merge_sections(job, sections)


# ----------------------------------------------------------------------------- resumed runs


def resumed_start(log: list[dict[str, Any]], interval: int) -> int:
    """The step a killed or stopped run resumed from, checked against where training went on, not hfray's record.

    ``hfray_resumed_from_step`` only tells the resumed worker group's reports apart. The step it names must be a
    checkpoint the first group reported, and the resumed group's reports must continue from it: with
    ``resume_from_checkpoint`` dropped, training restarts at step 0 and its first reports say so.
    """
    resumed = [r for r in log if r["hfray_resumed_from_step"] > 0]
    assert resumed, "no report came from a resumed worker group"
    start = resumed[0]["hfray_resumed_from_step"]
    saved = {r["step"] for r in log if r.get("checkpoint_path") and r["hfray_resumed_from_step"] == 0}
    assert start in saved, (start, saved)
    steps = [r["step"] for r in resumed]
    assert steps[0] == start + interval, (start, steps)  # (HF's eval_on_start does not evaluate on a resume)
    return start


@contextlib.contextmanager
def worker_killed_after_checkpoint(metrics_log: str, min_step: int, poll_s: float = 0.05) -> Iterator[dict[str, Any]]:
    """Around a run: SIGKILL the training worker that reported the latest checkpoint at ``min_step`` or later, once
    the run's metrics log (a path or URI) lists one. Yields what it killed: ``after_step`` and ``pid``."""
    from hfray.artifacts.metrics_log import read_metrics_log

    killed: dict[str, Any] = {}
    done = threading.Event()

    def kill() -> None:
        while not done.is_set():
            records = read_metrics_log(metrics_log)
            ckpts = [r for r in records if r.get("checkpoint_path") and r["step"] >= min_step]
            if ckpts:
                killed["after_step"], killed["pid"] = ckpts[-1]["step"], ckpts[-1]["worker_pid"]
                os.kill(killed["pid"], signal.SIGKILL)
                return
            done.wait(poll_s)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        yield killed
    finally:
        done.set()
        killer.join(timeout=10)


# ----------------------------------------------------------------------------- S3 storage (moto)

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# The session cluster's S3 endpoint: a port chosen now, served by moto_s3(port=S3_SESSION_PORT) in the tests that
# use it (nothing listens there otherwise, and nothing else on the cluster reads S3).
S3_SESSION_PORT = 0


def boto_creds() -> dict[str, str]:
    """boto3 keyword arguments for moto's dummy credentials (the same as ``S3_ENV``)."""
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


@contextlib.contextmanager
def moto_s3(bucket: str, port: int = 0) -> Iterator[str]:
    """A moto S3 server (real HTTP on loopback) with one bucket, on ``port`` (0: a free one); yields its URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    from hfray.cluster.local import free_port

    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, **boto_creds()).create_bucket(Bucket=bucket)
        yield url
    finally:
        server.stop()


def session_s3_url() -> str:
    """The S3 endpoint the session cluster's processes use (its port is chosen once, on first use)."""
    global S3_SESSION_PORT
    if not S3_SESSION_PORT:
        from hfray.cluster.local import free_port

        S3_SESSION_PORT = free_port()
    return f"http://127.0.0.1:{S3_SESSION_PORT}"


@contextlib.contextmanager
def session_s3_env() -> Iterator[None]:
    """Around the session cluster's start: its processes get moto's dummy credentials from their environment, as a
    real cluster's nodes get theirs, and the session's S3 endpoint, which hfray forwards in the runtime env (as
    ``storage.endpoint_url`` does on a cluster hfray starts). This process's own environment is restored after."""
    keys = (*S3_ENV, "AWS_ENDPOINT_URL_S3")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=session_s3_url())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

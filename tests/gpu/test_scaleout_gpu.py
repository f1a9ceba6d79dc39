"""Scale-out presets on 2 GPUs: DeepSpeed ZeRO-2/3/3-offload and FSDP through the HF Trainer, on Ray Train.

Each preset trains a tiny llama (sft, 2 workers x 1 GPU) for a few steps, saves sharded checkpoints from both
ranks, is killed after its first checkpoint and resumes from it (Ray restarts the worker group), and exports an
artifact that loads and generates. Run on the GPU machine: ``python -m pytest -m gpu tests/gpu/test_scaleout_gpu.py``
(about 1 minute per preset on 2 H200s). Also: CUDA graphs under DDP (compiled causal-LM, 2 workers), which hfray
defaults to one training process only until this has passed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_trl import chat_tokenizer, sft_rows, trl_job, write_jsonl  # noqa: F401 (fixture)

from conftest import lm_job, resumed_start
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.config import JobConfig
from hfray.storage import layout

pytestmark = pytest.mark.gpu


def _kill_rank0_after_checkpoint(run_dir: Path, done: threading.Event) -> None:
    log = run_dir / "hfray_metrics.jsonl"
    while not done.is_set():
        if log.is_file():
            for rec in map(json.loads, log.read_text().splitlines()):
                if rec.get("has_checkpoint"):
                    os.kill(int(rec["worker_pid"]), signal.SIGKILL)
                    return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def gpu_cluster():
    import ray
    import torch

    from hfray.cluster.connect import start_local_cluster

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    start_local_cluster(8, 2, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "zero3-offload", "fsdp"])
def test_preset_trains_checkpoints_all_ranks_and_resumes(gpu_cluster, tmp_path, chat_tokenizer, strategy):  # noqa: F811
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.train.run import run_training

    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(256, 1))
    val = write_jsonl(tmp_path / "val.jsonl", sft_rows(32, 2))
    raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl={"messages_column": "conversation"})
    raw["training"].update(strategy=strategy, max_steps=12, eval_steps=4, precision="bf16")
    raw["resources"].update(gpus_per_worker=1)
    raw["storage"].update(max_failures=1, num_to_keep=2)
    job = JobConfig.from_dict(raw)
    done = threading.Event()
    run_dir = Path(raw["storage"]["path"]) / job.run_name
    threading.Thread(target=_kill_rank0_after_checkpoint, args=(run_dir, done), daemon=True).start()
    try:
        summary = run_training(job)
    finally:
        done.set()
    m = summary.manifest
    assert m["global_step"] == 12 and m["job"]["training"]["strategy"] == strategy
    # Resumed from a reported checkpoint and went on from its step (every 4 steps), not from step 0.
    log = [json.loads(line) for line in (run_dir / "hfray_metrics.jsonl").read_text().splitlines() if line]
    assert m["resumed_from_step"] == resumed_start(log, interval=4) >= 4
    assert len(m["throughput"]["peak_gpu_memory_gib_per_rank"]) == 2
    ckpt = Path(summary.checkpoints[-1])
    files = [p.name for p in ckpt.rglob("*") if p.is_file()]
    if strategy.startswith("zero"):
        assert any("zero_pp_rank_1_" in f for f in files), files  # rank 1's shard was saved and uploaded
    else:
        assert "__1_0.distcp" in files, files
    pipe = load_artifact_pipeline(summary.artifact, device=0)
    assert pipe("great movie", max_new_tokens=2, do_sample=False)[0]["generated_text"]


def test_ddp_replays_cuda_graphs_with_the_kernel_by_kernel_losses(gpu_cluster, tmp_path, news):
    """2 workers x 1 GPU (DDP), causal-LM pre-training compiled, each rank's decoder layers replayed as CUDA graphs
    (``training.cuda_graphs: true``): the run's train and held-out losses are those of the same compiled run kernel by
    kernel (DDP's reducer reads gradients the graphs wrote). hfray defaults graphs to one training process
    (``hfray.train.arguments.default_compile``) until this has passed on a 2-GPU machine."""
    from hfray.train.run import run_training

    runs = {}
    for graphs in (False, True):
        raw = lm_job(tmp_path / f"graphs-{graphs}", "causal-lm", news["txt"], data={"max_train_samples": 40})
        raw["lm"].update(pipeline="datasets", record_shards=False)  # one batch order for both runs
        raw["training"].update(torch_compile=True, cuda_graphs=graphs, precision="bf16", max_steps=20, logging_steps=1)
        raw["resources"].update(gpus_per_worker=1, num_workers=2, cpus_per_worker=2)
        summary = run_training(JobConfig.from_dict(raw))
        assert summary.manifest["model"]["cuda_graphs"] is graphs
        log = read_metrics_log(layout.metrics_log_uri(summary.run_dir))
        runs[graphs] = ([r["train_loss"] for r in log if "train_loss" in r], summary.manifest["metrics"]["eval_loss"])
    (kernels, kernels_eval), (replayed, replayed_eval) = runs[False], runs[True]
    assert len(replayed) == 20 and replayed[-1] < replayed[0], replayed
    assert replayed == pytest.approx(kernels, rel=0.02), (replayed, kernels)
    assert replayed_eval == pytest.approx(kernels_eval, rel=0.02)

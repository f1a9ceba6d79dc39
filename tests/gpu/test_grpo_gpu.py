"""GRPO and QLoRA on one GPU: the shipped GRPO job's reward curve (LoRA in bf16, and on a 4-bit QLoRA base), and
QLoRA SFT of SmolLM2 against bf16 LoRA (peak memory, loss falls), its adapter exported and generating.

Each test appends its numbers to ``$HFRAY_BENCH_OUT/grpo_gpu.json`` (and a table to ``grpo_gpu.md``), the
results that go to ``bench/results/``. bitsandbytes (``pip install hfray[qlora]``) must be importable.

Exact command on the GPU machine (staging: bench/grpo_device_assets.sh; about 6-8 minutes on one H200):

    HFRAY_BENCH_OUT=$OUT python -m pytest -m gpu tests/gpu/test_grpo_gpu.py -x -q
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
GPU = ["resources.gpus_per_worker=1", "resources.num_workers=1", "resources.cpus_per_worker=4"]


@pytest.fixture(scope="module")
def gpu_cluster():
    import ray
    import torch

    from hfray.cluster.connect import start_local_cluster

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    start_local_cluster(8, 1, configure_logging=False)
    yield
    ray.shutdown()


def _record(name: str, row: dict[str, Any]) -> None:
    """One run's numbers into $HFRAY_BENCH_OUT/grpo_gpu.json and a markdown table beside it."""
    out = Path(os.environ.get("HFRAY_BENCH_OUT", ROOT / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grpo_gpu.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    rows[name] = row
    path.write_text(json.dumps(rows, indent=2))
    import torch

    lines = [f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""]
    lines += ["| run | steps | tokens/s | peak GiB | curve (step: value) | wall s |", "|---|---|---|---|---|---|"]
    for key, r in rows.items():
        curve = ", ".join(f"{s}: {v:.3f}" for s, v in r["curve"])
        lines.append(f"| {key} | {r['steps']} | {r['tokens_per_second']} | {r['peak_gib']} | {curve} | {r['wall_s']} |")
    (out / "grpo_gpu.md").write_text("\n".join(lines) + "\n")


def _train(job_file: str, overrides: list[str], tmp_path: Path, metric: str) -> tuple[Any, list[Any], dict[str, Any]]:
    from hfray.config import load_job
    from hfray.train.run import run_training

    started = time.time()
    summary = run_training(load_job(ROOT / job_file, [*GPU, *overrides, f"storage.path={tmp_path}"]))
    log = [json.loads(line) for line in Path(summary.run_dir, "hfray_metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r[metric]) for r in log if metric in r]
    m = summary.manifest
    row = {
        "steps": m["global_step"],
        "tokens_per_second": m["throughput"]["tokens_per_second"],
        "peak_gib": m["throughput"]["peak_gpu_memory_gib_per_rank"][0],
        "curve": curve,
        "metric": metric,
        "wall_s": round(time.time() - started, 1),
        "final": {k: v for k, v in m["metrics"].items() if "reward" in k or "loss" in k or "kl" in k},
    }
    return summary, curve, row


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_shipped_grpo_job_reward_rises_on_gpu(gpu_cluster, tmp_path, method):
    from hfray.artifacts.loading import load_artifact_pipeline

    overrides = [f"peft.method={method}", "training.precision=bf16"]
    summary, curve, row = _train("jobs/grpo_arithmetic.yaml", overrides, tmp_path, "eval_reward")
    _record(f"grpo_arithmetic_{method}", row)
    assert [s for s, _ in curve] == [0, 20, 40, 60]
    assert curve[-1][1] > curve[0][1], curve  # the mean reward of sampled completions rose
    assert summary.manifest["peft"]["method"] == method
    pipe = load_artifact_pipeline(summary.artifact, device=0)
    prompt = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does Tom have now?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert pipe(prompt, max_new_tokens=24, do_sample=False)[0]["generated_text"][len(prompt) :].strip()


def test_qlora_sft_uses_less_memory_than_bf16_lora_and_its_adapter_generates(gpu_cluster, tmp_path):
    from hfray.artifacts.loading import load_artifact_pipeline

    peaks = {}
    for method in ("lora", "qlora"):
        overrides = [f"peft.method={method}", "training.precision=bf16", "training.max_steps=40",
                     "training.eval_steps=20", "training.per_device_train_batch_size=8"]  # fmt: skip
        summary, curve, row = _train("jobs/smollm2_sft_lora.yaml", overrides, tmp_path / method, "eval_loss")
        _record(f"sft_{method}", row)
        assert curve[-1][1] < curve[0][1], curve  # held-out loss fell
        peaks[method] = row["peak_gib"]
    assert peaks["qlora"] < peaks["lora"], peaks
    artifact = Path(summary.artifact)  # the QLoRA run's: an adapter over the 4-bit base's original weights
    assert (artifact / "adapter_config.json").is_file()
    pipe = load_artifact_pipeline(str(artifact), device=0)
    assert pipe("Is this movie review fresh or rotten? A triumph.", max_new_tokens=4)[0]["generated_text"]

"""GRPO and QLoRA on one GPU: QLoRA SFT of SmolLM2 against bf16 LoRA (peak memory, loss falls) with its adapter
exported and generating, and the shipped GRPO job's reward curve (LoRA in bf16, and on a 4-bit QLoRA base).

Each test appends its numbers to ``$HFRAY_BENCH_OUT/grpo_gpu.json`` (and a table to ``grpo_gpu.md``), the
results that go to ``bench/results/``. bitsandbytes (``pip install hfray[qlora]``) must be importable.

The two parts run alone (``bench/gpu_grpo22.sh`` gives the device calls): ``-k qlora_sft`` needs no SmolLM2
weights (without them it trains a random-init model of SmolLM2-135M's architecture, saved and loaded like real
weights, with SmolLM2's tokenizer from ``$HFRAY_SMOLLM2_TOKENIZER``; ``HFRAY_SMOLLM2_RANDOM=1`` forces it);
``-k "reward_rises and not qlora"`` needs the real weights (``builtin:smollm2-135m-instruct``: the pip package or
``$HFRAY_SMOLLM2_GGUF``) and is skipped without them. ``$HFRAY_GRPO_STEPS`` (default 60, the shipped job's)
shortens the GRPO run; evaluations at 0 and every third of it.

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
GPU = [
    "resources.gpus_per_worker=1",
    "resources.num_workers=1",
    "resources.cpus_per_worker=4",
    "tracking.mlflow=false",
]  # mlflow is not carried to the GPU machine
GRPO_STEPS = int(os.environ.get("HFRAY_GRPO_STEPS", "60"))
# Each evaluation samples 8 completions of every validation prompt with HF generate (~67 s for the job's 32 on an H200).
GRPO_EVAL_ROWS = os.environ.get("HFRAY_GRPO_EVAL_ROWS")
SMOLLM2_ARCH = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}  # fmt: skip


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


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped jobs' model; without SmolLM2's weights, "random:<dir>": a random-init model of its architecture."""
    from hfray.errors import HfrayError
    from hfray.model.builtin import resolve_model

    try:
        if os.environ.get("HFRAY_SMOLLM2_RANDOM") == "1":
            raise HfrayError("HFRAY_SMOLLM2_RANDOM=1")
        resolve_model("builtin:smollm2-135m-instruct")  # converts the GGUF once (~/.cache/hfray)
        return "builtin:smollm2-135m-instruct"
    except HfrayError as exc:
        print(f"SmolLM2 weights unavailable ({exc}): random init of its architecture")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dest = tmp_path_factory.mktemp("smollm2-random")
    tok = AutoTokenizer.from_pretrained(os.environ.get("HFRAY_SMOLLM2_TOKENIZER", ROOT / ".devgrpo/smollm2_tokenizer"))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **ids, **SMOLLM2_ARCH)).save_pretrained(dest)
    tok.save_pretrained(dest)
    return f"random:{dest}"


def _results() -> tuple[Path, dict[str, Any]]:
    """$HFRAY_BENCH_OUT/grpo_gpu.json and the rows recorded in it so far."""
    out = Path(os.environ.get("HFRAY_BENCH_OUT", ROOT / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grpo_gpu.json"
    return path, json.loads(path.read_text()) if path.is_file() else {}


def _record(name: str, row: dict[str, Any]) -> None:
    """One run's numbers into $HFRAY_BENCH_OUT/grpo_gpu.json and a markdown table beside it."""
    path, rows = _results()
    rows[name] = row
    path.write_text(json.dumps(rows, indent=2))
    import torch

    lines = [f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""]
    lines += ["| run | steps | tokens/s | peak GiB | curve (step: value) | wall s |", "|---|---|---|---|---|---|"]
    for key, r in rows.items():
        curve = ", ".join(f"{s}: {v:.3f}" for s, v in r["curve"])
        lines.append(f"| {key} | {r['steps']} | {r['tokens_per_second']} | {r['peak_gib']} | {curve} | {r['wall_s']} |")
    path.with_name("grpo_gpu.md").write_text("\n".join(lines) + "\n")


def _train(
    job_file: str, overrides: list[str], tmp_path: Path, metric: str, model: str
) -> tuple[Any, list[Any], dict[str, Any]]:
    from hfray.config import load_job
    from hfray.train.run import run_training

    started = time.time()
    if model.startswith("random:"):
        overrides = [*overrides, f"model.name_or_path={model.removeprefix('random:')}"]
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
        "model": "smollm2-architecture-random-init" if model.startswith("random:") else "smollm2-135m-instruct",
        "wall_s": round(time.time() - started, 1),
        "final": {k: v for k, v in m["metrics"].items() if "reward" in k or "loss" in k or "kl" in k},
    }
    return summary, curve, row


def test_qlora_sft_uses_less_memory_than_bf16_lora_and_its_adapter_generates(gpu_cluster, tmp_path, smollm2):
    from hfray.artifacts.loading import load_artifact_pipeline

    peaks = {}
    for method in ("lora", "qlora"):
        overrides = [f"peft.method={method}", "training.precision=bf16", "training.max_steps=40",
                     "training.eval_steps=20", "training.per_device_train_batch_size=8"]  # fmt: skip
        summary, curve, row = _train("jobs/smollm2_sft_lora.yaml", overrides, tmp_path / method, "eval_loss", smollm2)
        _record(f"sft_{method}", row)
        assert curve[-1][1] < curve[0][1], curve  # held-out loss fell
        peaks[method] = row["peak_gib"]
    assert peaks["qlora"] < peaks["lora"], peaks
    artifact = Path(summary.artifact)  # the QLoRA run's: an adapter over the 4-bit base's original weights
    assert (artifact / "adapter_config.json").is_file()
    pipe = load_artifact_pipeline(str(artifact), device=0)
    assert pipe("Is this movie review fresh or rotten? A triumph.", max_new_tokens=4)[0]["generated_text"]
    answer, usage = _served_chat(artifact)  # the QLoRA adapter behind hfray serve, over HTTP on the GPU
    assert answer.strip() and usage["completion_tokens"] > 0, (answer, usage)
    _record_served("sft_qlora", answer, usage)


def _served_chat(artifact: Path) -> tuple[str, dict[str, Any]]:
    """One greedy chat turn from the artifact deployed on Serve (the test's cluster, one GPU)."""
    import httpx
    from ray import serve

    from hfray.cluster.local import free_port
    from hfray.serving.driver import serve_artifacts, wait_healthy

    try:
        url = serve_artifacts(str(artifact), port=free_port(), num_gpus=1, num_cpus=1, dtype="bf16")
        wait_healthy(url, timeout_s=300)
        model = httpx.get(f"{url}/v1/models", timeout=60).json()["default"]
        body = {"model": model, "messages": [{"role": "user", "content": "Name a fruit."}], "temperature": 0,
                "max_tokens": 16}  # fmt: skip
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"], r.json()["usage"]
    finally:
        serve.shutdown()


def _record_served(name: str, answer: str, usage: dict[str, Any]) -> None:
    path, rows = _results()
    rows.setdefault(name, {})["served_over_http"] = {"answer": answer, "usage": usage}
    path.write_text(json.dumps(rows, indent=2))


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_shipped_grpo_job_reward_rises_on_gpu(gpu_cluster, tmp_path, method, smollm2):
    from hfray.artifacts.loading import load_artifact_pipeline

    if smollm2.startswith("random:"):
        pytest.skip("the GRPO reward curve needs SmolLM2's real weights (stage the GGUF: bench/gpu_grpo22.sh)")
    every = max(1, GRPO_STEPS // 3)
    overrides = [f"peft.method={method}", "training.precision=bf16", f"training.max_steps={GRPO_STEPS}",
                 f"training.eval_steps={every}"]  # fmt: skip
    if GRPO_EVAL_ROWS:
        overrides.append(f"data.max_eval_samples={GRPO_EVAL_ROWS}")
    summary, curve, row = _train("jobs/grpo_arithmetic.yaml", overrides, tmp_path, "eval_reward", smollm2)
    _record(f"grpo_arithmetic_{method}", row)
    assert [s for s, _ in curve] == list(range(0, GRPO_STEPS + 1, every)), curve
    assert curve[-1][1] > curve[0][1], curve  # the mean reward of sampled completions rose
    assert summary.manifest["peft"]["method"] == method
    pipe = load_artifact_pipeline(summary.artifact, device=0)
    prompt = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does Tom have now?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert pipe(prompt, max_new_tokens=24, do_sample=False)[0]["generated_text"][len(prompt) :].strip()

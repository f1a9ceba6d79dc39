"""Benchmark: pre-training throughput (tokens/s) of hfray's shipped MLM job and a causal-LM twin on CPU.

Each case runs ``jobs/news_bert_mlm_pretrain.yaml`` (or its GPT-2 twin) for ``--steps`` steps on a fresh
local Ray cluster, with one evaluation at the end, and reads the run's manifest:

* ``train tokens/s``: tokens trained (steps x workers x batch x block) / wall time of ``Trainer.train``
  on rank 0 (this includes waiting for Ray Data, the final evaluation and checkpoint);
* ``job wall s``: the whole ``run_training`` (tokenizer reuse, Ray Data held-out set, worker start).

It also times Ray Data's tokenize-and-pack stage alone (``--pack-only``: one pass over the training stream,
no model), the work that runs on CPU tasks beside the training workers.

    PYTHONPATH=lib python bench/pretrain_bench.py --steps 60 --out bench/results/pretrain_cpu.json

Not a test: pytest does not collect it. Runs go to a temporary storage dir; tokenizers are cached in --cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
JOB = HERE.parent / "jobs" / "news_bert_mlm_pretrain.yaml"
GPT2 = {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 2, "n_inner": 512, "n_positions": 128}
# --size base: BERT-base / GPT-2-small dimensions (about 90-100M parameters with an 8k vocabulary).
BASE = {
    "masked-lm": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "causal-lm": {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": 3072},
}


def case_job(name: str, steps: int, storage: str, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The shipped job, cut to ``steps`` with a single evaluation, as one benchmark case."""
    workers, cpus = args.workers, args.cpus_per_worker
    raw = yaml.safe_load(JOB.read_text())
    task, pipeline = name.split("/")
    raw["name"] = f"bench-{task}-{pipeline}"
    raw["lm"]["pipeline"] = pipeline
    raw["training"].update(max_steps=steps, eval_steps=steps, checkpoint_every_n_evals=1, logging_steps=steps)
    raw["resources"].update(num_workers=workers, cpus_per_worker=cpus)
    raw["storage"] = {"path": storage, "num_to_keep": 1, "max_failures": 0}
    raw["model"]["tokenizer"] = str(cache / f"tokenizer-{task}")
    if task == "causal-lm":
        raw["task"] = "causal-lm"
        raw["tokenizer"] = {"algorithm": "bpe", "vocab_size": 8000, "min_frequency": 2}
        raw["model"]["architecture"] = dict(GPT2)
    if args.size == "base":
        raw["model"]["architecture"].update(BASE[task])
    if args.batch_size:
        raw["training"]["per_device_train_batch_size"] = args.batch_size
    if args.gpus_per_worker:
        raw["resources"]["gpus_per_worker"] = args.gpus_per_worker
    return raw


def mfu(result: dict[str, Any], peak_tflops: float, gpus: float) -> float:
    """Model FLOPs utilisation by the 6 x parameters x tokens rule (attention FLOPs left out: small at 128 tokens)."""
    achieved = 6 * result["parameters"] * result["train_tokens_per_second"]
    return round(achieved / (peak_tflops * 1e12 * gpus), 4)


def run_case(raw: dict[str, Any]) -> dict[str, Any]:
    from hfray.config import JobConfig
    from hfray.train.run import run_training

    started = time.time()
    summary = run_training(JobConfig.from_dict(raw), fresh=True)
    m = summary.manifest
    return {
        "train_tokens": m["throughput"]["tokens_this_attempt"],
        "train_seconds": m["train_seconds_this_attempt"],
        "train_tokens_per_second": m["throughput"]["tokens_per_second"],
        "job_wall_seconds": round(time.time() - started, 1),
        "eval_perplexity": round(m["metrics"]["eval_perplexity"], 1),
        "parameters": m["model"]["parameters"],
        # hfray's steady-state measurement (hfray.train.callbacks.throughput): training steps only, MFU by its formula
        "steady_state": {k: v for k, v in m["throughput"].get("steady_state", {}).items() if not k.endswith("_at")},
    }


def pack_only(raw: dict[str, Any]) -> dict[str, Any]:
    """One pass of Ray Data's read -> split -> tokenize -> pack over the training text, no training."""
    from hfray.config import JobConfig
    from hfray.data.stream.driver import build_datasets
    from hfray.train.recipes.language_model.driver import preflight

    job, _ = preflight(JobConfig.from_dict(raw))
    train = build_datasets(job)[0]["train"]
    started, blocks = time.time(), 0
    for batch in train.iter_batches(batch_size=256, batch_format="numpy"):
        blocks += len(batch["input_ids"])
    seconds = time.time() - started
    tokens = blocks * job.lm.block_size
    return {
        "blocks": blocks,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds),
    }


def machine() -> dict[str, Any]:
    import ray
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cases", default="masked-lm/ray-data,masked-lm/datasets,causal-lm/ray-data")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hfray-bench-tokenizers")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pretrain_cpu.json")
    parser.add_argument("--size", choices=["shipped", "base"], default="shipped", help="model size")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch (default: the job's)")
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None, help="per GPU, for MFU (H100 SXM bf16: 989)")
    parser.add_argument("--no-pack-only", action="store_true")
    args = parser.parse_args()

    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray.init(num_cpus=args.num_cpus, configure_logging=False, log_to_driver=False)
    results: dict[str, Any] = {"machine": machine(), "steps": args.steps, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="hfray-bench-") as storage:
        for name in args.cases.split(","):
            raw = case_job(name, args.steps, storage, args.cache, args)
            results["cases"][name] = run_case(raw)
            if args.peak_tflops and args.gpus_per_worker:
                gpus = args.workers * args.gpus_per_worker
                results["cases"][name]["mfu"] = mfu(results["cases"][name], args.peak_tflops, gpus)
            print(name, json.dumps(results["cases"][name]), flush=True)
        if not args.no_pack_only:
            raw = case_job("masked-lm/ray-data", args.steps, storage, args.cache, args)
            results["ray_data_pack_only"] = pack_only(raw)
            print("pack only", json.dumps(results["ray_data_pack_only"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""GPU benchmark of issue 6 on 2 GPUs: LoRA SFT and LoRA DPO of SmolLM2-135M-Instruct, and a full ZeRO-3 SFT
across 2 workers that is killed after its first checkpoint and resumes from it. Writes $OUT/peft_gpu.json
(+ peft_gpu.md): per run tokens/s, peak GPU memory per rank, losses, steps, wall time. About 4-6 minutes.

Exact command (device tool, kind nvidia-h200-x2, carry [".devsmol-b", ".devassets"], after the two staging
calls that bench/peft_device_assets.sh describes; timeout_s 600):

    cat /tmp/smol/part-aa .devsmol-b/part-ab > /tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf;
    export PYTHONPATH=/tmp/site:$PWD/lib:$PWD/.devassets PATH=/tmp/site/bin:$PATH NCCL_NVLS_ENABLE=0
    TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
    HFRAY_SMOLLM2_GGUF=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf;
    python3 bench/peft_gpu.py --out $OUT 2>&1 | tee $OUT/log

The model is builtin:smollm2-135m-instruct (the pip package, or $HFRAY_SMOLLM2_GGUF pointing at the same GGUF
file). Without either, it falls back to a randomly initialised model of SmolLM2-135M's architecture with its
tokenizer (--tokenizer-dir), and says so in the JSON ("model": "smollm2-architecture-random-init").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))
from bench_common import SMOLLM2_135M_SHAPE  # noqa: E402  (a sibling module, not a package)

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOLLM2_ARCH = {**SMOLLM2_135M_SHAPE, "rms_norm_eps": 1e-5}  # SmolLM2-135M's config, for the random-init fallback


def model_section(tokenizer_dir: str | None) -> tuple[dict[str, Any], str]:
    from hfray.errors import HfrayError
    from hfray.model.builtin import resolve_model

    try:
        return {"name_or_path": resolve_model("builtin:smollm2-135m-instruct")}, "smollm2-135m-instruct"
    except HfrayError as exc:
        if not tokenizer_dir:
            raise
        print(f"[bench] SmolLM2 weights unavailable ({exc}); random init of its architecture", flush=True)
        return {"architecture": SMOLLM2_ARCH, "tokenizer": tokenizer_dir}, "smollm2-architecture-random-init"


WORKERS = 2  # --workers: one per GPU


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def job(name: str, task: str, model: dict[str, Any], storage: str, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name,
        "task": task,
        "model": model,
        "data": {
            "train": f"builtin:rotten_tomatoes_{task}",
            "validation_fraction": 0.02,
            "max_length": 256,
            "max_train_samples": 8000,
            "max_eval_samples": 128,
        },
        "training": {
            "learning_rate": 2e-4,
            "max_steps": 60,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 16,
            "eval_strategy": "steps",
            "eval_steps": 30,
            "logging_steps": 5,
            "precision": "bf16",
        },
        "resources": {"num_workers": WORKERS, "gpus_per_worker": 1, "cpus_per_worker": 4},
        "storage": {"path": storage, "num_to_keep": 2, "max_failures": 1},
        # The device bundle carries no MLflow/matplotlib; TensorBoard stays on (tensorboardX is in it).
        "tracking": {"mlflow": _installed("mlflow"), "learning_curve": _installed("matplotlib")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def kill_after_checkpoint(run_dir: Path, min_step: int, done: threading.Event, killed: dict[str, Any]) -> None:
    """Kill rank 0's worker process (SIGKILL) once a checkpoint at step >= min_step is reported."""
    log = run_dir / "hfray_metrics.jsonl"
    while not done.is_set():
        if log.is_file():
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("has_checkpoint") and rec.get("step", 0) >= min_step and not killed:
                    killed.update(step=rec["step"], pid=rec["worker_pid"], at=time.time())
                    print(f"[bench] killing worker pid {rec['worker_pid']} after checkpoint at step {rec['step']}")
                    os.kill(int(rec["worker_pid"]), signal.SIGKILL)
                    return
        time.sleep(0.5)


def run(raw: dict[str, Any], kill_at: int | None = None) -> dict[str, Any]:
    from hfray.config import JobConfig
    from hfray.train.run import run_training

    job_cfg = JobConfig.from_dict(raw)
    started = time.time()
    done, killed = threading.Event(), {}
    if kill_at is not None:
        run_dir = Path(raw["storage"]["path"]) / job_cfg.run_name
        threading.Thread(target=kill_after_checkpoint, args=(run_dir, kill_at, done, killed), daemon=True).start()
    try:
        summary = run_training(job_cfg, fresh=False)
    finally:
        done.set()
    m = summary.manifest
    metrics_log = [json.loads(x) for x in Path(summary.run_dir, "hfray_metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in metrics_log if "eval_loss" in r]
    ckpt = Path(summary.checkpoints[-1]) if summary.checkpoints else None
    shards = (
        sorted(p.name for p in ckpt.rglob("*") if p.is_file() and ("rank" in p.name or "distcp" in p.name))
        if ckpt
        else []
    )
    return {
        "wall_s": round(time.time() - started, 1),
        "strategy": m["job"]["training"]["strategy"],
        "peft": m["peft"] and {k: m["peft"][k] for k in ("method", "trainable_params", "all_params")},
        "global_step": m["global_step"],
        "resumed_from_step": m["resumed_from_step"],
        "killed": killed or None,
        "tokens_per_s_this_attempt": m["throughput"]["tokens_per_second"],
        "num_tokens_this_attempt": m["throughput"]["tokens_this_attempt"],
        "train_s_this_attempt": m["train_seconds_this_attempt"],
        "peak_gpu_mem_gib_per_rank": m["throughput"]["peak_gpu_memory_gib_per_rank"],
        "eval_loss_per_eval": evals,
        "final_metrics": {k: v for k, v in m["metrics"].items() if "runtime" not in k and "per_second" not in k},
        "checkpoint_files_by_rank": shards,
        "artifact": summary.artifact,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results/peft_gpu"))
    parser.add_argument("--storage", default="/tmp/hfray_peft_bench")
    parser.add_argument("--tokenizer-dir", default=".devassets/smollm2_tokenizer")
    parser.add_argument("--only", default="sft,dpo,zero3", help="comma list of runs")
    parser.add_argument("--workers", type=int, default=2, help="training workers, one GPU each")
    args = parser.parse_args()
    global WORKERS
    WORKERS = args.workers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    import transformers

    from hfray.cluster.connect import start_local_cluster

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "runs": {},
    }
    model, results["model"] = model_section(args.tokenizer_dir if os.path.isdir(args.tokenizer_dir) else None)
    start_local_cluster(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), configure_logging=False)
    lora = {"method": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}
    plans = {
        "sft_lora_ddp": lambda: run(
            job("bench-sft-lora", "sft", model, args.storage, peft=lora, trl={"packing": True})
        ),
        "dpo_lora_ddp": lambda: run(
            job(
                "bench-dpo-lora",
                "dpo",
                model,
                args.storage,
                peft=lora,
                training={"max_steps": 40, "eval_steps": 20, "per_device_train_batch_size": 8},
            )
        ),
        "sft_full_zero3_kill_resume": lambda: run(
            job(
                "bench-sft-zero3",
                "sft",
                model,
                args.storage,
                training={"strategy": "zero3", "learning_rate": 2e-5, "max_steps": 40, "eval_steps": 10},
            ),
            kill_at=10,
        ),
    }
    wanted = {"sft": "sft_lora_ddp", "dpo": "dpo_lora_ddp", "zero3": "sft_full_zero3_kill_resume"}
    for key in args.only.split(","):
        name = wanted[key]
        print(f"\n[bench] ===== {name}", flush=True)
        try:
            results["runs"][name] = run_result = plans[name]()
        except Exception as exc:  # keep going: one failing preset must not hide the others' numbers
            results["runs"][name] = run_result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(f"[bench] {name}: {json.dumps(run_result)}", flush=True)
        (out / "peft_gpu.json").write_text(json.dumps(results, indent=2))
    write_table(results, out / "peft_gpu.md")
    return 0 if all("error" not in r for r in results["runs"].values()) else 1


def write_table(results: dict[str, Any], path: Path) -> None:
    lines = [
        f"device {results['device']} x{results['gpus']}, model {results['model']}, {results['versions']}",
        "",
        "| run | strategy | steps (resumed from) | tokens/s (attempt) | peak GiB per GPU | eval loss | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:120]} | | | | | |")
            continue
        evals = " -> ".join(f"{x:.3f}" for x in r["eval_loss_per_eval"])
        lines.append(
            f"| {name} | {r['strategy']} | {r['global_step']} ({r['resumed_from_step']}) | "
            f"{r['tokens_per_s_this_attempt']} | {r['peak_gpu_mem_gib_per_rank']} | {evals} | {r['wall_s']} |"
        )
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

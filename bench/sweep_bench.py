"""ASHA against plain random search at equal trial count, on the same sampled configurations.

Both sweeps run the same job with the same search seed, so they try the same configurations; the
only difference is the scheduler (ASHA vs FIFO = every trial runs to the end). Reports the best
validation accuracy each reached and the total trial-seconds each spent, as JSON and Markdown.

    PYTHONPATH=lib python bench/sweep_bench.py jobs/rotten_tomatoes_sweep.yaml --out bench/results/sweep_cpu \
        [section.key=value ...]

GPU machine, 4 trials sharing the GPU:
    python bench/sweep_bench.py jobs/rotten_tomatoes_sweep.yaml --out $OUT/sweep_gpu \
        resources.gpus_per_worker=0.25 resources.cpus_per_worker=3 data.max_train_samples=null
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from typing import Any

from hfray.artifacts.manifest import library_versions
from hfray.config import load_job
from hfray.tune.driver import run_sweep


def run_one(job_path: str, scheduler: str, overrides: list[str], storage: str) -> dict[str, Any]:
    job = load_job(job_path, [*overrides, f"sweep.scheduler.type={scheduler}", f"storage.path={storage}"])
    started = time.time()
    summary = run_sweep(job, fresh=True)
    trials = summary.trials
    return {
        "scheduler": scheduler,
        "wall_seconds": round(time.time() - started, 1),
        "trial_seconds": round(sum(t["seconds"] for t in trials), 1),
        "steps": sum(t["steps_run"] for t in trials),
        "best_accuracy": summary.best["best_value"] if summary.best else None,
        "best_params": summary.best["params"] if summary.best else None,
        "stopped_early": sum(t["stop_reason"].startswith("stopped early") for t in trials),
        "trials": len(trials),
        "sweep_dir": summary.sweep_dir,
        "rows": trials,
    }


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# ASHA vs random search (same configurations, same trial count)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; versions: {meta['versions']}",
        "",
        "| scheduler | trials | stopped early | best val. accuracy | total trial-seconds | optimizer steps | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scheduler']} | {r['trials']} | {r['stopped_early']} | {r['best_accuracy']:.4f} | "
            f"{r['trial_seconds']:.0f} | {r['steps']} | {r['wall_seconds']:.0f} |"
        )
    asha, fifo = results
    lines += [
        "",
        f"ASHA used {asha['trial_seconds'] / fifo['trial_seconds']:.2f}x the trial-seconds of random search "
        f"and reached {asha['best_accuracy'] - fifo['best_accuracy']:+.4f} accuracy relative to it.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="hfray-sweep-bench-")
    results = [run_one(args.job, s, args.overrides, storage) for s in ("asha", "fifo")]
    meta = {
        "command": " ".join(["python bench/sweep_bench.py", args.job, *args.overrides]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        + _gpu_name(),
        "versions": library_versions(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2, default=str)
    with open(f"{args.out}.md", "w") as f:
        f.write(markdown(results, meta))
    print(markdown(results, meta))


def _gpu_name() -> str:
    try:
        import torch

        return f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    except Exception:
        return ""


if __name__ == "__main__":
    main()

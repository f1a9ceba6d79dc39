"""ASHA against plain random search at equal trial count, on the same sampled configurations; and what a trial's
fixed cost is made of (``--schedulers fifo`` with few steps: every trial's start-up, from the timeline).

Both sweeps run the same job with the same search seed, so they try the same configurations; the
only difference is the scheduler (ASHA vs FIFO = every trial runs to the end). Reports the best
validation accuracy each reached and the total trial-seconds each spent, as JSON and Markdown.

    PYTHONPATH=lib python bench/sweep_bench.py jobs/rotten_tomatoes_sweep.yaml --out bench/results/sweep_cpu \
        [section.key=value ...]

A trial's fixed cost (8 short trials; the phases come from ``HFRAY_TIMELINE`` marks of every trial and worker):
    PYTHONPATH=lib python bench/sweep_bench.py jobs/rotten_tomatoes_sweep.yaml --out /tmp/sweep8 --schedulers fifo \
        sweep.num_samples=8 training.max_steps=4 training.eval_steps=4 data.max_train_samples=256

GPU machine, 4 trials sharing the GPU:
    python bench/sweep_bench.py jobs/rotten_tomatoes_sweep.yaml --out $OUT/sweep_gpu \
        resources.gpus_per_worker=0.25 resources.cpus_per_worker=3 data.max_train_samples=null
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Any

from hfray import timeline
from hfray.artifacts.manifest import library_versions
from hfray.config import load_job
from hfray.tune.driver import run_sweep

# Landmarks of one trial, in order: (phase, role) -> the mark's name in hfray.timeline.
LANDMARKS = [
    ("trial_start", "trial"),
    ("trial_trainer_built", "trial"),
    ("process_start", "rank0"),
    ("worker_fn_start", "rank0"),
    ("worker_imports", "rank0"),
    ("worker_tokenized", "rank0"),
    ("worker_trainer_built", "rank0"),
    ("first_step_end", "rank0"),
    ("trial_fit_returned", "trial"),
]


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
        "phases": trial_phases([t["runs"][-1] for t in trials if t["runs"]]),
    }


def trial_phases(runs: list[str]) -> dict[str, Any]:
    """Per landmark, the median over trials of seconds since the trial function started (``trial_start``)."""
    path = os.environ.get(timeline.ENV)
    if not path or not os.path.exists(path):
        return {}
    marks = timeline.read(path)
    per_trial: dict[str, dict[str, float]] = {}
    for run in runs:
        mine = {(m["phase"], m["role"]): m["t"] for m in marks if m.get("run") == run}
        # a reused worker/trial process marks process_start once; earlier than the trial it is not this trial's
        start = mine.get(("trial_start", "trial"))
        if start is not None:
            per_trial[run] = {p: round(mine[(p, r)] - start, 2) for p, r in LANDMARKS if (p, r) in mine}
    medians = {
        p: statistics.median(v[p] for v in per_trial.values() if p in v)
        for p, _ in LANDMARKS
        if any(p in v for v in per_trial.values())
    }
    return {"median_s_since_trial_start": medians, "per_trial": per_trial}


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
    if len(results) == 2:
        asha, fifo = results
        lines += [
            "",
            f"ASHA used {asha['trial_seconds'] / fifo['trial_seconds']:.2f}x the trial-seconds of random search "
            f"and reached {asha['best_accuracy'] - fifo['best_accuracy']:+.4f} accuracy relative to it.",
        ]
    for r in results:
        medians = (r.get("phases") or {}).get("median_s_since_trial_start")
        if medians:
            lines += ["", f"{r['scheduler']}: median seconds since the trial function started", ""]
            lines += ["| landmark | s |", "|---|---|"] + [f"| {p} | {t:.2f} |" for p, t in medians.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    parser.add_argument("--schedulers", default="asha,fifo", help="comma-separated; asha,fifo compares the two")
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="hfray-sweep-bench-")
    # every trial's and worker's marks, before Ray starts (the driver forwards the variable to them)
    os.environ.setdefault(timeline.ENV, os.path.join(storage, "timeline.jsonl"))
    results = [run_one(args.job, s, args.overrides, storage) for s in args.schedulers.split(",")]
    meta = {
        "command": " ".join(
            ["python bench/sweep_bench.py", args.job, f"--schedulers {args.schedulers}", *args.overrides]
        ),
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

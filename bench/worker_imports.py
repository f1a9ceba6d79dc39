"""Benchmark aid: what a one-task hfray run's process imports, against the plain HF Trainer script (issue 19).

Starts a local Ray cluster whose processes run with ``PYTHONPROFILEIMPORTTIME=1`` (Ray's workers inherit the
raylet's environment), runs the overhead bench's classification job once on it (``bench/overhead_bench.py``,
runners plain and hfray), and runs the plain script once more under ``python -X importtime``. Printed and written
(``imports.json``, ``imports.md``): each side's top-level imports in import order with their cumulative seconds,
and the totals. The task's table starts after Ray's own worker boot (``import ray`` is not in it).

    python bench/worker_imports.py --out /tmp/imp                 # CPU: a tiny BERT, 60 rows
    python bench/worker_imports.py --out /tmp/imp --gpu           # GPU host: BERT-base, 1 GPU worker

On 2 CPUs (2026-12-05): plain 3.43 s of imports to its first step; the task the same torch/transformers modules
plus Ray Train's local mode (0.59 s) and the recipe (0.25 s); evaluate/scikit-learn and MLflow after the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROFILE_ENV = "PYTHONPROFILEIMPORTTIME"


def top_level(lines: list[str], min_s: float) -> list[tuple[str, float]]:
    """``-X importtime`` lines -> (module, cumulative s) of the top-level imports, in import order."""
    found = []
    for line in lines:
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not cumulative.strip().isdigit() or name.startswith("  "):  # the header, or a nested import
            continue
        seconds = int(cumulative) / 1e6
        if seconds >= min_s:
            found.append((name.strip(), round(seconds, 3)))
    return found


def total(lines: list[str]) -> float:
    return round(sum(s for _, s in top_level(lines, 0.0)), 3)


def start_cluster(temp_dir: str) -> str:
    """A head node with the import profile on (its workers inherit it); returns its address."""
    with socket.socket() as probe:  # a free port for the GCS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, PROFILE_ENV: "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    ray = Path(sys.executable).with_name("ray")  # the venv's; on the GPU machine the bundle puts it on PATH
    if not ray.exists():
        ray = Path(shutil.which("ray") or "ray")
    cmd = [str(ray), "start", "--head", "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard", "false"]
    out = subprocess.run(cmd + ["--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        sys.exit(f"ray start failed: {out.stderr[-2000:]}")
    return f"127.0.0.1:{port}"


def task_profile(temp_dir: str) -> list[str]:
    """The import profile of the worker process that ran the hfray run (its log names hfray's run module)."""
    for err in sorted(Path(temp_dir, "session_latest", "logs").glob("worker-*.err")):
        lines = err.read_text(errors="replace").splitlines()
        if any("hfray.train.local" in line for line in lines):
            return lines
    sys.exit(f"no worker log with hfray's imports under {temp_dir}")


def markdown(sides: dict[str, list[tuple[str, float]]], totals: dict[str, float]) -> str:
    out = ["# Top-level imports, in import order (cumulative s)", ""]
    for side, rows in sides.items():
        out += [f"## {side}: {totals[side]:.2f} s in all", "", "| module | s |", "|---|---:|"]
        out += [f"| {name} | {seconds:.3f} |" for name, seconds in rows] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--min-s", type=float, default=0.02, help="leave out top-level imports below this")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="hfray-imp-")
    address = start_cluster(temp_dir)
    try:
        bench = [sys.executable, str(HERE / "overhead_bench.py"), "--out", str(args.out / "ovh"), "--address", address]
        bench += ["--workloads", "cls", "--repeats", "1", "--runners", "plain,hfray"] + (["--gpu"] if args.gpu else [])
        subprocess.run(bench, check=True, timeout=900)
        task = task_profile(temp_dir)
    finally:
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True)
    spec = args.out / "ovh" / "cases" / "cls-plain-0" / "spec.json"
    plain_cmd = [sys.executable, "-X", "importtime", str(HERE / "throughput_plain.py"), "--spec", str(spec)]
    plain_cmd += ["--out", str(args.out / "plain_result.json")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")])}
    plain = subprocess.run(plain_cmd, capture_output=True, text=True, env=env, timeout=900).stderr.splitlines()
    sides = {"plain script": top_level(plain, args.min_s), "hfray task": top_level(task, args.min_s)}
    totals = {"plain script": total(plain), "hfray task": total(task)}
    result = {"address": address, "sides": sides, "totals": totals}
    (args.out / "imports.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "imports.md").write_text(markdown(sides, totals))
    print(markdown(sides, totals))
    return result


if __name__ == "__main__":
    main()

"""Benchmark: submit -> first optimizer step of hfray's embedded default job against the plain HF Trainer (issue 19).

One command, the same work, alternating runners per repeat (so machine load hits both alike):

* ``plain``: ``bench/default_job_plain.py`` in one process (the baseline);
* ``hfray``: ``hfray train training.max_steps=N storage.path=...`` exactly as a user runs the default job: hfray
  starts (and stops) its own local Ray cluster, 2 workers x 1 CPU;
* ``hfray-running`` (with ``--address``): the same job on a Ray cluster that is already up;
* ``hfray-base`` (with ``--base-lib``): ``hfray`` with another checkout's ``lib`` first on ``PYTHONPATH`` (the
  "before" of a change, interleaved with the "after" in the same run: ``git archive BASE lib | tar -x -C DIR``).

Every case runs with ``HFRAY_TIMELINE``, so the driver, the Train workers and the plain script write their phase
marks (``hfray.timeline``); the table is each phase's median time since submit. ``--storage shared`` makes all hfray
repeats share one storage path (re-runs: the tokenized-data cache of the first serves the others).

    python bench/startup_bench.py --out /tmp/startup --repeats 2
    python bench/startup_bench.py --out /tmp/startup --runners plain,hfray-running --address 127.0.0.1:6390
    python bench/startup_bench.py --out /tmp/startup --runners plain,hfray-base,hfray --base-lib /tmp/base/lib
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import overhead_bench as ob  # noqa: E402  (a sibling script, not a package)
import throughput_bench as tb  # noqa: E402

WORKLOAD = "default-job"


def case_cmd(runner: str, args: argparse.Namespace, out: Path, repeat: int) -> list[str]:
    if runner == "plain":
        return [sys.executable, str(HERE / "default_job_plain.py"), "--steps", str(args.steps), "--out", str(out)]
    storage = args.out / "storage" / ("shared" if args.storage == "shared" else f"{runner}-{repeat}")
    cmd = [sys.executable, "-m", "hfray", "train", f"training.max_steps={args.steps}", f"storage.path={storage}"]
    cmd += [f"tracking.mlflow={str(args.mlflow).lower()}", "--fresh", *args.set]
    if runner == "hfray-running":
        cmd.append(f"cluster.address={args.address}")
    if runner == "hfray-base":
        cmd = ["env", f"PYTHONPATH={args.base_lib}", *cmd]
    return cmd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runners", default="plain,hfray")
    parser.add_argument("--address", default=None, help="a running Ray cluster, for the hfray-running runner")
    parser.add_argument("--base-lib", type=Path, default=None, help="the 'before' lib folder, for hfray-base")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--storage", choices=("fresh", "shared"), default="fresh")
    parser.add_argument("--mlflow", action="store_true", help="keep the default job's MLflow tracking on")
    parser.add_argument("--set", action="append", default=[], help="one more key=value for hfray (repeatable)")
    parser.add_argument("--label", default="", help="a note stored with the result (e.g. the commit)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": tb.machine(), "settings": {k: str(v) for k, v in vars(args).items()}}
    result["rows"] = []
    for repeat in range(args.repeats):
        for runner in args.runners.split(","):
            out = args.out / "cases" / f"{runner}-{repeat}"
            row = {"workload": WORKLOAD, "runner": runner, "repeat": repeat}
            row |= ob.run_case(case_cmd(runner, args, out, repeat), out, gpu=False)
            result["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timeline"}), flush=True)
    result["ratios"] = ratios(result["rows"], args.runners.split(","))
    (args.out / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "startup.md").write_text(markdown(result, args.runners.split(",")))
    print(markdown(result, args.runners.split(",")))
    return result


def ratios(rows: list[dict[str, Any]], runners: list[str]) -> dict[str, Any]:
    """Median submit -> first step end per runner, and each hfray runner over plain."""
    import statistics

    med = {}
    for runner in runners:
        values = [r["submit_to_first_step_end_s"] for r in rows if r["runner"] == runner and r.get("timeline")]
        med[runner] = round(statistics.median(values), 2) if values else None
    plain = med.get("plain")
    over = {f"{r}_over_plain": round(med[r] / plain, 2) for r in runners if r != "plain" and plain and med[r]}
    return {"median_s": med, **over}


def markdown(result: dict[str, Any], runners: list[str]) -> str:
    lines = [f"medians (s): {json.dumps(result['ratios'])}\n"]
    lines += ["| runner | role | phase | t since submit s | step s |", "|---|---|---|---|---|"]
    for runner in runners:
        previous = 0.0
        for phase, role, t in ob.phase_medians(result["rows"], WORKLOAD, runner):
            lines.append(f"| {runner} | {role} | {phase} | {t:.2f} | {t - previous:.2f} |")
            previous = max(previous, t)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run(parse_args())

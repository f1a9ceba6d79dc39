"""Benchmark: hfray's start-up overhead (submit -> first optimizer step) against a plain HF Trainer script.

Issue #7 asks for <= 5 s of Ray overhead on a running cluster. For each workload (``--workloads``: ``cls``
classification from a CSV, ``mlm`` masked-LM pre-training through Ray Data, ``clm`` causal LM) this runs, in
one command and on the same tiny work (``bench/throughput_bench.py``'s synthetic corpus, tokenizers and jobs):

* ``plain``: ``bench/throughput_plain.py`` in one process (the baseline);
* ``hfray``: ``hfray train JOB cluster.address=...`` as a subprocess, as a user submits it, on a Ray cluster
  that is already running (``--address``; without it the bench starts one and stops it at the end).

Both run with ``HFRAY_TIMELINE`` set, so the driver, every Ray Train worker and the plain script append their
phase marks (``hfray.timeline``) to one file per case. Printed and written (``overhead.json``): every mark in
time order, seconds since submit (``t_s``) and since the mark before (``dt_s``), per repeat; medians of
submit -> first step end per runner; and the ratio hfray / plain, which is what to compare across machines
(absolute times on a shared 2-core CPU are noisy).

    python bench/overhead_bench.py --out /tmp/ovh --address 127.0.0.1:6390        # a running cluster
    python bench/overhead_bench.py --out /tmp/ovh --gpu --workloads mlm,cls       # GPU machine, 1 GPU worker
    python bench/overhead_bench.py --out /tmp/ovh --runners plain,hfray-base,hfray --base-lib /tmp/base/lib
        # before/after a change in one run: git archive BASE lib | tar -x -C /tmp/base
    python bench/overhead_bench.py --out /tmp/ovh --workloads cls --docs 2000 --repeats 3 --shared-storage [--no-cache]
        # re-runs on the same data: the tokenized-data cache (hfray.data.cache) after repeat 0, or --no-cache

Steps are few (``--steps``, default 3): only the start-up is measured, not the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import throughput_bench as tb  # noqa: E402  (a sibling script, not a package)

END = "first_step_end"


# ----------------------------------------------------------------------------- one case


def _env(timeline_file: Path, gpu: bool) -> dict[str, str]:
    env = {**os.environ, "HFRAY_TIMELINE": str(timeline_file), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")])
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # the plain script sees exactly one GPU, as the hfray worker does
    return env


def run_case(cmd: list[str], out: Path, gpu: bool) -> dict[str, Any]:
    """Run ``cmd`` with a fresh timeline file; its marks relative to the submit time."""
    out.mkdir(parents=True, exist_ok=True)
    timeline_file = out / "timeline.jsonl"
    timeline_file.unlink(missing_ok=True)
    submitted = time.time()
    with (out / "log.txt").open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(timeline_file, gpu), cwd=out)
    ended = time.time()
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "log_tail": (out / "log.txt").read_text()[-3000:]}
    marks = read_marks(timeline_file) if timeline_file.exists() else []
    return {"wall_s": round(ended - submitted, 2), **summarize(marks, submitted)}


def read_marks(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["t"])


def summarize(marks: list[dict[str, Any]], submitted: float) -> dict[str, Any]:
    """Marks in time order with t_s (since submit) and dt_s (since the mark before); rank 0's first step."""
    timeline, previous = [], submitted
    for m in marks:
        timeline.append(
            {
                "phase": m["phase"],
                "role": m["role"],
                "t_s": round(m["t"] - submitted, 2),
                "dt_s": round(m["t"] - previous, 2),
            }
        )
        previous = max(previous, m["t"])
    # The plain script's marks say "driver" (no Ray Train context); an hfray run's first step is rank 0's.
    ends = [r["t_s"] for r in timeline if r["phase"] == END and r["role"] in ("rank0", "driver")]
    return {"submit_to_first_step_end_s": ends[0] if ends else None, "timeline": timeline}


# ----------------------------------------------------------------------------- runners


def plain_cmd(spec: dict[str, Any], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    return [
        sys.executable,
        str(HERE / "throughput_plain.py"),
        "--spec",
        str(out / "spec.json"),
        "--out",
        str(out / "result.json"),
    ]


def hfray_cmd(
    spec: dict[str, Any],
    gpu: bool,
    address: str,
    out: Path,
    storage: Path | None = None,
    cache: bool = True,
    extra: list[str] | None = None,
) -> list[str]:
    """``storage``: one storage path for every repeat (re-runs on the same data: the tokenized-data cache of the
    first serves the others); ``cache``: ``data.cache_tokenized``; ``extra``: more ``key=value`` overrides."""
    out.mkdir(parents=True, exist_ok=True)
    job = tb.hfray_job(spec, 1, gpu, storage or out / "runs", "default")
    job["training"].update(eval_steps=max(spec["steps"], 1), logging_steps=max(spec["steps"], 1))
    job.setdefault("data", {})["cache_tokenized"] = cache
    (out / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "hfray", "train", str(out / "job.yaml"), f"cluster.address={address}", "--fresh"]
    return [*cmd, *(extra or [])]


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload: median submit -> first step end of each runner, and hfray / plain."""
    out: dict[str, Any] = {}
    for workload in sorted({r["workload"] for r in rows}):
        medians = {}
        for runner in ("plain", "hfray", "hfray-base"):
            values = [
                r["submit_to_first_step_end_s"]
                for r in rows
                if r["workload"] == workload and r["runner"] == runner and r.get("submit_to_first_step_end_s")
            ]
            medians[runner] = round(statistics.median(values), 2) if values else None
        plain, hfray = medians["plain"], medians["hfray"]
        out[workload] = {
            "plain_s": plain,
            "hfray_s": hfray,
            "hfray_over_plain": round(hfray / plain, 2) if plain and hfray else None,
            "hfray_minus_plain_s": round(hfray - plain, 2) if plain and hfray else None,
        }
        base = medians["hfray-base"]
        if base:  # --base-lib: the "before" of a change in the same run
            out[workload] |= {"hfray_base_s": base, "hfray_base_over_plain": round(base / plain, 2) if plain else None}
    return out


def phase_medians(rows: list[dict[str, Any]], workload: str, runner: str) -> list[tuple[str, str, float]]:
    """(phase, role, median t_s over the repeats) in the order of the first repeat's timeline."""
    runs = [r["timeline"] for r in rows if r["workload"] == workload and r["runner"] == runner and "timeline" in r]
    if not runs:
        return []
    out = []
    for mark in runs[0]:
        key = (mark["phase"], mark["role"])
        values = [m["t_s"] for run in runs for m in run if (m["phase"], m["role"]) == key]
        out.append((key[0], key[1], round(statistics.median(values), 2)))
    return out


def markdown(result: dict[str, Any]) -> str:
    """Per workload and runner: each phase's median time since submit, and the step from the phase before."""
    lines = []
    for workload, r in result.get("ratios", {}).items():
        lines.append(
            f"\n### {workload}: plain {r['plain_s']} s, hfray {r['hfray_s']} s, ratio {r['hfray_over_plain']}\n"
        )
        lines += ["| runner | role | phase | t since submit s | step s |", "|---|---|---|---|---|"]
        for runner in ("plain", "hfray", "hfray-base"):
            previous = 0.0
            for phase, role, t in phase_medians(result["rows"], workload, runner):
                lines.append(f"| {runner} | {role} | {phase} | {t:.2f} | {t - previous:.2f} |")
                previous = max(previous, t)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=False)
    parser.add_argument("--report", type=Path, default=None, help="print the table of an earlier --out and exit")
    parser.add_argument("--address", default=None, help="a running Ray cluster (GCS address); default: start one")
    parser.add_argument("--workloads", default="cls,mlm")
    parser.add_argument("--runners", default="plain,hfray")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="BERT-base/GPT-2-small sizes and 1 GPU per worker")
    parser.add_argument("--docs", type=int, default=None, help="documents in the synthetic corpus")
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="all hfray repeats of a workload use one storage path (re-runs: repeat 0 fills the tokenized-data cache)",
    )
    parser.add_argument(
        "--warm-workers",
        type=int,
        default=1,
        help="warm workers per node of each cluster the bench starts, as `hfray cluster up` gives (0: none)",
    )
    parser.add_argument("--set", action="append", default=[], help="one more key=value for hfray (repeatable)")
    parser.add_argument("--no-cache", action="store_true", help="data.cache_tokenized: false (the 'before' case)")
    parser.add_argument(
        "--base-lib",
        type=Path,
        default=None,
        help="runner hfray-base: hfray from this lib folder (a change's before), on a second local cluster whose "
        "processes import it too (with --address both runners share that cluster: driver-only changes)",
    )
    return parser.parse_args(argv)


def _lib_env(lib: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(lib.resolve()), os.environ.get("PYTHONPATH", "")])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.out / "work"
    data = tb.write_corpus(work, args.docs or (4000 if args.gpu else 60))
    tokenizers = tb.train_tokenizers(work, data, smoke=not args.gpu)
    bench_args = argparse.Namespace(
        smoke=not args.gpu, steps=args.steps, batch=64 if args.gpu else 4, seq=128 if args.gpu else 32
    )
    clusters = []
    address = base_address = args.address
    if address is None:
        from hfray.cluster.local import start_local_ray_cluster

        clusters.append(start_local_ray_cluster(0, head_cpus=os.cpu_count() or 2))
        address = base_address = clusters[0].address
        if args.base_lib is not None:
            # hfray-base gets a cluster of its own whose processes import the base lib: a run's task or train function
            # is pickled by reference, so on a shared cluster the base driver's task ran the new worker-side code.
            clusters.append(start_local_ray_cluster(0, head_cpus=os.cpu_count() or 2, env=_lib_env(args.base_lib)))
            base_address = clusters[1].address
        if getattr(args, "warm_workers", 0) > 0:
            from hfray.cluster.local import warm_up

            for cluster in clusters:
                warm_up(cluster.address, args.warm_workers)
    result: dict[str, Any] = {
        "machine": tb.machine(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }
    try:
        for workload in args.workloads.split(","):
            spec = tb.spec_for(workload, bench_args, data, tokenizers)
            for repeat in range(args.repeats):
                for runner in args.runners.split(","):
                    out = args.out / "cases" / f"{workload}-{runner}-{repeat}"
                    shared = args.out / "storage" / workload if getattr(args, "shared_storage", False) else None
                    cache = not getattr(args, "no_cache", False)
                    where = base_address if runner == "hfray-base" else address
                    cmd = (
                        plain_cmd(spec, out)
                        if runner == "plain"
                        else hfray_cmd(spec, args.gpu, where, out, shared, cache, getattr(args, "set", []))
                    )
                    if runner == "hfray-base":  # the same job with the other checkout's lib first on the path
                        # first on the path, not alone: where the packages come from PYTHONPATH (the GPU
                        # machine's bundle) the base driver needs them too
                        cmd = ["env", f"PYTHONPATH={_lib_env(args.base_lib)['PYTHONPATH']}", *cmd]
                    row = {"workload": workload, "runner": runner, "repeat": repeat, **run_case(cmd, out, args.gpu)}
                    result["rows"].append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "timeline"}), flush=True)
                    result["ratios"] = ratios(result["rows"])
                    (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
                    (args.out / "overhead.md").write_text(markdown(result))
    finally:
        for cluster in clusters:
            cluster.stop()
    print(markdown(result))
    return result


def main() -> None:
    args = parse_args()
    if args.report:  # re-render an earlier run's table
        print(markdown(json.loads((args.report / "overhead.json").read_text())))
        return
    run(args)


if __name__ == "__main__":
    main()

"""Benchmark: one lever of issue 19 alone, the Train workers' prewarm (``hfray.cluster.prewarm``).

On one local Ray cluster started by hfray (so the job carries the prewarm hook), Ray Train runs through hfray's
trainer whose train function imports what every recipe's worker imports first (``PREWARM_MODULES``) and nothing
else; alternately with the workers' prewarm variable (``on``) and without it (``off``, the import happens in the
train function, as before). Measured per run: ``fit()`` called -> every worker has its stack imported and is in its
train function (the slowest worker), and ``fit()`` -> returned. Medians and on/off ratios; the order alternates, so
machine load hits both alike.

    python bench/prewarm_bench.py --out /tmp/prewarm --repeats 4 --workers 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def train_fn(config: dict[str, Any]) -> None:
    for name in config["modules"]:
        importlib.import_module(name)
    with open(f"{config['out']}.{time.time_ns()}", "w") as f:
        f.write(str(time.time()))


def one_run(prewarmed: bool, workers: int, storage: str) -> dict[str, float]:
    import ray.train

    from hfray.cluster import prewarm
    from hfray.train.launch import PREWARM_MODULES
    from hfray.train.torch_backend import torch_trainer

    stamp = Path(tempfile.mkdtemp(prefix="prewarm-")) / "ready"
    env = prewarm.worker_env(PREWARM_MODULES)
    env["env_vars"][prewarm.MIN_CPUS_ENV] = "1"  # the mechanism itself, on any host (hfray's default skips < 4 CPUs)
    trainer = torch_trainer(
        train_fn,
        train_loop_config={"modules": list(PREWARM_MODULES), "out": str(stamp)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(
            name=f"prewarm-{time.time_ns()}",
            storage_path=storage,
            worker_runtime_env=env if prewarmed else {},
        ),
    )
    called = time.time()
    trainer.fit()
    returned = time.time()
    ready = max(float(p.read_text()) for p in stamp.parent.glob("ready.*"))
    return {"ready_s": round(ready - called, 2), "fit_s": round(returned - called, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from throughput_bench import machine

    from hfray.cluster.connect import start_local_cluster

    start_local_cluster(2, None, configure_logging=False)
    rows = []
    for repeat in range(args.repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        for prewarmed in order:
            row = {"prewarm": prewarmed, "repeat": repeat, **one_run(prewarmed, args.workers, str(args.out / "runs"))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}}
    for key in ("ready_s", "fit_s"):
        on = statistics.median(r[key] for r in rows if r["prewarm"])
        off = statistics.median(r[key] for r in rows if not r["prewarm"])
        summary[key] = {"on": on, "off": off, "on_over_off": round(on / off, 3)}
    summary["rows"] = rows
    (args.out / "prewarm.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

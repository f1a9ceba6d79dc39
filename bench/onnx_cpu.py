"""Benchmark: one artifact served on CPU by ``hfray serve`` as PyTorch fp32, ONNX fp32 and ONNX int8.

Real HTTP: each variant is deployed in turn by hfray's own Serve app (``serve_artifacts``, fused topology, one
replica with ``--num-cpus`` CPUs, the same batching settings) on one local Ray cluster, and measured with the
closed-loop load generator of ``bench/serve_load.py`` (single-text ``POST /v1/classify`` requests) at each
concurrency level: requests/s, p50/p99 latency, errors, the server's CPU by role. The accuracy of each variant
is measured in-process on the run's validation set through the replica's own model classes
(:class:`hfray.serving.replica.models.LoadedModel`, :class:`hfray.serving.replica.onnx_model.OnnxLoadedModel`),
so it is the accuracy of what is served. Ratios are against PyTorch fp32 in the same run.

    python bench/onnx_cpu.py --artifact ~/hfray_runs/bbc-news-minilm-<run>/artifact --concurrency 1,4,16

``--onnx`` / ``--int8`` reuse artifacts made by ``hfray export``; without them the bench exports them itself.
Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import measure, run_level  # noqa: E402  (a sibling module, not a package)

from hfray.cluster.local import free_port  # noqa: E402
from hfray.serving.driver import wait_healthy  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = "pytorch-fp32"


def accuracy(name: str, path: str, manifest: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """Validation accuracy of ``path`` through the serving replica's model class, and the seconds it took."""
    from hfray.artifacts.onnx_export import validation_rows
    from hfray.config import JobConfig
    from hfray.serving.replica.models import LoadedModel
    from hfray.serving.replica.onnx_model import OnnxLoadedModel, is_onnx_artifact

    job = JobConfig.from_dict(manifest["job"], source="manifest")
    rows = validation_rows(job, manifest["labels"])
    texts, labels = rows["texts"][:limit], rows["labels"][:limit]
    if is_onnx_artifact(path):
        model: Any = OnnxLoadedModel(path, job.data.max_length)
    else:
        import torch

        model = LoadedModel(path, "cpu", torch.float32, job.data.max_length)
    t0 = time.perf_counter()
    hits = 0
    for start in range(0, len(texts), 32):
        batch, gold = texts[start : start + 32], labels[start : start + 32]
        preds = model.predict(batch, [1] * len(batch))
        hits += sum(p[0]["label"] == manifest["labels"][y] for p, y in zip(preds, gold, strict=True))
    seconds = time.perf_counter() - t0
    print(json.dumps({"variant": name, "accuracy": hits / len(texts), "rows": len(texts)}), flush=True)
    return {"accuracy": round(hits / len(texts), 4), "rows": len(texts), "eval_seconds": round(seconds, 1)}


def variants(args: argparse.Namespace, tmp: str) -> dict[str, str]:
    from hfray.artifacts.onnx_export import export_onnx

    onnx = args.onnx or export_onnx(args.artifact, out=os.path.join(tmp, "onnx"))["artifact"]
    int8 = args.int8 or export_onnx(args.artifact, out=os.path.join(tmp, "int8"), int8=True)["artifact"]
    return {BASE: args.artifact, "onnx-fp32": onnx, "onnx-int8": int8}


def bench_http(found: dict[str, str], args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Each variant deployed by hfray serve in turn, the same settings, on one local Ray cluster."""
    import ray
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    ray.init(num_cpus=args.ray_num_cpus, configure_logging=False, log_to_driver=False)
    try:
        port = free_port()
        settings = {
            "num_cpus": args.num_cpus,
            "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": args.batch_wait_timeout_s,
            "max_length": args.max_length,
            "access_log": False,
        }
        for name, path in found.items():
            url = serve_artifacts({"artifact_root": path, "port": port, **settings}, app_name="onnx-bench")
            try:
                wait_healthy(url, timeout_s=300)
                run_level(f"{url}/v1/classify", 4, args.warmup, 60, 1)  # load the model, warm the pools
                for c in args.concurrency:
                    row = {"variant": name, **measure(f"{url}/v1/classify", c, args.requests, args.max_seconds, 1)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                serve.delete("onnx-bench")
    finally:
        serve.shutdown()
        ray.shutdown()


def markdown(rows: list[dict[str, Any]], acc: dict[str, Any]) -> str:
    base = {r["concurrency"]: r["req_per_s"] for r in rows if r["variant"] == BASE}
    lines = [
        "| variant | clients | ok | errors | req/s | x pytorch-fp32 | p50 ms | p99 ms | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['req_per_s'] / base[r['concurrency']]:.2f}" if base.get(r["concurrency"]) else ""
        lines.append(
            f"| {r['variant']} | {r['concurrency']} | {r['ok']} | {r['errors']} | {r['req_per_s']} | {ratio} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {acc.get(r['variant'], {}).get('accuracy', '')} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in load],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", required=True, help="a text-classification artifact (PyTorch)")
    p.add_argument("--onnx", help="its fp32 ONNX export (hfray export --onnx); default: exported here")
    p.add_argument("--int8", help="its int8 ONNX export (hfray export --onnx --int8); default: exported here")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=400, help="per level, at most")
    p.add_argument("--max-seconds", type=float, default=20, help="per level, at most")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs of the one model replica")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--ray-num-cpus", type=int, default=2)
    p.add_argument("--eval-rows", type=int, default=None, help="validation rows for the accuracy (default: all)")
    p.add_argument("--out", default=str(HERE / "results" / "onnx_cpu.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from hfray.artifacts.manifest import read_manifest

    head = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(["python", *sys.argv])}
    head |= {"machine": machine(), "args": vars(args), "transport": "real HTTP through hfray serve (Ray Serve)"}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hfray-onnx-bench-") as tmp:
        found = variants(args, tmp)
        manifest = read_manifest(args.artifact)
        acc = {name: accuracy(name, path, manifest, args.eval_rows) for name, path in found.items()}
        bench_http(found, args, rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(head | {"variants": found, "accuracy": acc, "rows": rows}, indent=2, default=str))
    table = markdown(rows, acc)
    out.with_suffix(".table.md").write_text(table + "\n")
    print("\n" + table + f"\n\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

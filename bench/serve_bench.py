"""Benchmark: hfray's Serve deployment vs a plain ``transformers.pipeline`` behind FastAPI/uvicorn.

Same artifact, same machine, same run, one server at a time (so they never compete for cores). Each
concurrency level is a closed loop of ``concurrency`` clients over ``--client-procs`` processes sending
single-text requests for ``--max-seconds`` (or ``--requests`` in all); we report requests/s, p50/p99
latency, errors, the load generator's CPU, the server's CPU by process role and, on NVIDIA, GPU use.

    python bench/serve_bench.py --model builtin:all-MiniLM-L6-v2 --concurrency 1,4,16 --requests 200
    python bench/serve_bench.py --model bert-base --device cuda --dtype bf16 --concurrency 1,64,256 \\
        --client-procs 4 --variant "name=r1 replicas=1 num_gpus=1 max_batch_size=64" \\
        --variant "name=r2 replicas=2 num_gpus=0.5 max_batch_size=64 ingress_replicas=2"

``--model`` is an hfray artifact dir, a pretrained dir / ``builtin:`` name (a classification head is added,
randomly initialised: speed does not depend on its weights), or ``bert-base`` / ``tiny`` (built from a config,
with the all-MiniLM-L6-v2 tokenizer). Each ``--variant`` is one hfray deployment (ServeConfig fields, plus
``replicas`` for a fixed replica count), measured in turn on one Ray cluster; without any, one variant is
made from the flags. All traffic goes to 127.0.0.1; every loop is bounded. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import measure, run_level, server_accounting  # noqa: E402  (a sibling module, not a package)

from hfray.cluster.local import free_port  # noqa: E402
from hfray.serving.driver import PROXIES, proxy_env, wait_healthy

HERE = Path(__file__).resolve().parent
ARCHS = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
TARGET = {"req_per_s": 2000, "p99_ms": 50}
BASELINE = "transformers.pipeline + uvicorn"


def make_artifact(model: str, out: Path) -> Path:
    """An hfray artifact dir for ``model`` (returned as is if it already is one)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from hfray.artifacts.manifest import write_manifest
    from hfray.model.builtin import resolve_model
    from hfray.storage.layout import MANIFEST

    if (Path(model) / MANIFEST).is_file():
        return Path(model)
    labels = {0: "neg", 1: "pos"}
    tokenizer_src = resolve_model("builtin:all-MiniLM-L6-v2")
    if model in ARCHS:
        config = AutoConfig.for_model("bert", **ARCHS[model], num_labels=2, id2label=labels)
        net = AutoModelForSequenceClassification.from_config(config)
    else:
        tokenizer_src = resolve_model(model)
        net = AutoModelForSequenceClassification.from_pretrained(tokenizer_src, num_labels=2, id2label=labels)
    net.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(out)
    manifest = {"task": "text-classification", "labels": ["neg", "pos"], "name": model, "run_name": "bench"}
    write_manifest(str(out), {**manifest, "metrics": {}})
    return out


# ----------------------------------------------------------------------------- the baseline server


def baseline_server(artifact: str, port: int, device: str, dtype: str) -> None:
    """The plain way: one uvicorn process, one pipeline, model calls serialised by a lock."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    pipe = pipeline("text-classification", model=artifact, device=device, dtype=torch_dtype)
    lock = threading.Lock()  # a pipeline is not meant to be called from several threads at once
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/classify")
    def classify(body: dict[str, Any]) -> dict[str, Any]:
        with lock:
            return {"results": pipe(body["inputs"], top_k=1)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def bench_baseline(artifact: Path, args: argparse.Namespace, report: Report) -> None:
    port = free_port()
    # The same thread count as a Serve replica with num_cpus CPUs gets (Ray sets OMP_NUM_THREADS so).
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(args.num_cpus))), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--baseline-server", str(artifact), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--device", args.device, "--dtype", args.dtype], env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
        report.rows += run_levels(BASELINE, f"http://127.0.0.1:{port}/classify", args)
        report.save()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ----------------------------------------------------------------------------- hfray variants


def parse_variant(text: str) -> dict[str, Any]:
    """``"name=r2 replicas=2 num_gpus=0.5 max_batch_size=64"`` -> a dict (values parsed as YAML scalars)."""
    variant: dict[str, Any] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"variant item {item!r} is not key=value")
        variant[key] = yaml.safe_load(value)
    variant.setdefault("name", text.replace(" ", ","))
    return variant


def serve_settings(variant: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """ServeConfig overrides for one variant: the flags' values, then the variant's own keys."""
    settings: dict[str, Any] = {
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "dtype": args.dtype,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
    }
    settings |= {k: v for k, v in variant.items() if k not in ("name", "replicas")}
    replicas = int(variant.get("replicas", args.replicas))
    settings.setdefault("max_ongoing_requests", max(2 * settings["max_batch_size"], 8))
    target = min(settings["max_batch_size"], settings["max_ongoing_requests"])
    settings["autoscaling"] = {"min_replicas": replicas, "max_replicas": replicas, "target_ongoing_requests": target}
    return settings


def bench_hfray(artifact: Path, args: argparse.Namespace, report: Report) -> None:
    """Every variant in turn on one Ray cluster; the report is saved after each."""
    import ray
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    # Serve reads its flags when its processes start: set them before Ray does.
    os.environ.update(proxy_env(args.proxy))
    for item in args.serve_env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    gpus = 1 if args.device.startswith("cuda") else None
    ray.init(num_cpus=args.ray_num_cpus, num_gpus=gpus, configure_logging=False, log_to_driver=False)
    try:
        port = free_port()
        for variant in args.variant or [{"name": "flags"}]:
            settings = serve_settings(variant, args)
            name = f"hfray (Ray Serve) [{variant['name']}]"
            url = serve_artifacts({"artifact_root": str(artifact), "port": port, **settings}, app_name="bench")
            try:
                wait_healthy(url, timeout_s=300)
                report.rows += run_levels(name, f"{url}/v1/classify", args)
                replica = httpx.get(f"{url}/v1/stats").json()
                report.variants[variant["name"]] = {"settings": settings, "one_replica_stats": replica}
                report.save()
            finally:
                serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()


def run_levels(name: str, url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    run_level(url, min(8, max(args.concurrency)), args.warmup, 30, 1)  # load weights, CUDA kernels, pools
    rows = []
    if args.idle_seconds:  # the server's CPU with no traffic: background loops, not per-request work
        idle: dict[str, Any] = {}
        with server_accounting(idle):
            time.sleep(args.idle_seconds)
        print(json.dumps({"server": name, "idle": idle}), flush=True)
    for c in args.concurrency:
        row = {"server": name, **measure(url, c, args.requests, args.max_seconds, args.client_procs)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table; 'x baseline' is req/s over the baseline's at the same concurrency in this run."""
    head = (
        "| server | concurrency | ok | errors | req/s | x baseline | p50 ms | p99 ms | client cores "
        "| server cores by role | GPU % |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    )
    base = {r["concurrency"]: r["req_per_s"] for r in rows if r["server"] == BASELINE}
    lines = []
    for r in rows:
        roles = ", ".join(f"{k} {v}" for k, v in r.get("server_cpu_cores", {}).items() if v >= 0.05)
        ratio = f"{r['req_per_s'] / base[r['concurrency']]:.2f}" if base.get(r["concurrency"]) else ""
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['ok']} | {r['errors']} | {r['req_per_s']} | {ratio} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r.get('client_cpu_cores', '')} | {roles} | {r.get('gpu_util_pct', '')} |"
        )
    return "\n".join([head, *lines])


def target_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server, the best req/s among levels with no errors and p99 within the target's latency."""
    best: dict[str, Any] = {}
    for r in rows:
        if (
            r["errors"] == 0
            and r["p99_ms"] <= TARGET["p99_ms"]
            and r["req_per_s"] > best.get(r["server"], {}).get("req_per_s", -1)
        ):
            best[r["server"]] = {k: r[k] for k in ("concurrency", "req_per_s", "p50_ms", "p99_ms")}
    met = {s: b["req_per_s"] >= TARGET["req_per_s"] for s, b in best.items()}
    return {"target": TARGET, "best_within_p99": best, "met": met}


def versions() -> dict[str, Any]:
    import ray
    import torch
    import transformers

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    info |= {"transformers": transformers.__version__, "ray": ray.__version__, "platform": platform.platform()}
    info["cpus"] = os.cpu_count()
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:all-MiniLM-L6-v2")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=200, help="per concurrency level, at most")
    p.add_argument("--max-seconds", type=float, default=60, help="per concurrency level, at most")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--idle-seconds", type=float, default=0, help="first measure the server's CPU with no traffic")
    p.add_argument("--client-procs", type=int, default=1, help="load-generator processes (use several on a GPU)")
    p.add_argument("--device", default="cpu", help="baseline pipeline device: cpu or cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="both servers' precision")
    p.add_argument("--num-cpus", type=float, default=1, help="per hfray replica; baseline gets as many threads")
    p.add_argument("--num-gpus", type=float, default=0, help="per hfray replica")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--variant", type=parse_variant, action="append", default=[], help="an hfray deployment to run")
    p.add_argument("--serve-env", action="append", default=[], help="KEY=VALUE set before Ray starts (Serve flags)")
    p.add_argument("--ray-num-cpus", type=int, default=2)
    p.add_argument("--proxy", choices=PROXIES, default="auto", help="HTTP proxy of the bench's Ray cluster")
    p.add_argument("--only", choices=["baseline", "hfray"], default=None)
    p.add_argument("--out", default=str(HERE / "results" / "serve_bench.json"))
    p.add_argument("--baseline-server", metavar="ARTIFACT", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Report:
    """Rows and settings, written to ``--out`` (JSON) and ``<out>.table.md`` after every server measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.out = Path(args.out)
        self.rows: list[dict[str, Any]] = []
        self.variants: dict[str, Any] = {}
        skip = ("baseline_server", "port", "variant")
        self.head = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": versions(),
            "args": {k: v for k, v in vars(args).items() if k not in skip},
        }

    def save(self) -> None:
        body = self.head | {"rows": self.rows, "target_check": target_check(self.rows), "hfray_variants": self.variants}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(body, indent=2))
        self.out.with_suffix(".table.md").write_text(markdown(self.rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_server:
        baseline_server(args.baseline_server, args.port, args.device, args.dtype)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = Report(args)
    with tempfile.TemporaryDirectory(prefix="hfray-bench-") as tmp:
        artifact = make_artifact(args.model, Path(tmp) / "model")
        if args.only in (None, "baseline"):
            bench_baseline(artifact, args, report)
        if args.only in (None, "hfray"):
            bench_hfray(artifact, args, report)
    report.save()
    print("\n" + markdown(report.rows) + "\n\n" + json.dumps(target_check(report.rows), indent=2))
    print(f"\nwrote {report.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

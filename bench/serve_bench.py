"""Benchmark: hfray's Serve deployment vs a plain ``transformers.pipeline`` behind FastAPI/uvicorn.

Same artifact, same machine, same run, one server at a time (so they never compete for cores). For each
concurrency level a closed loop of ``concurrency`` clients sends single-text requests until ``--requests``
are done or ``--max-seconds`` pass; we report requests/s, p50 and p99 latency and errors.

    python bench/serve_bench.py --model builtin:all-MiniLM-L6-v2 --concurrency 1,4,16 --requests 200
    python bench/serve_bench.py --model bert-base --device cuda --num-gpus 1 --concurrency 1,16,64,256 ...

``--model`` is an hfray artifact dir, a pretrained dir / ``builtin:`` name (a classification head is added,
randomly initialised: speed does not depend on its weights), or ``bert-base`` / ``tiny`` (built from a config).
All traffic goes to 127.0.0.1; every loop is bounded in count and time. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from hfray.serving import free_port, wait_healthy

HERE = Path(__file__).resolve().parent
SENTENCES = [
    "a wonderful, moving film with a brilliant cast",
    "the plot was dull and the actors clumsy",
    "I would not watch this again",
    "superb camera work and lovely music throughout the second half",
    "boring",
    "an average story, told well enough, with a few charming scenes and a weak ending",
]
ARCHS = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}


# ----------------------------------------------------------------------------- the artifact


def make_artifact(model: str, out: Path) -> Path:
    """An hfray artifact dir for ``model`` (returned as is if it already is one)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from hfray.assets import resolve_model
    from hfray.checkpoints import MANIFEST, write_manifest

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


def baseline_server(artifact: str, port: int, device: str) -> None:
    """The plain way: one uvicorn process, one pipeline, model calls serialised by a lock."""
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    pipe = pipeline("text-classification", model=artifact, device=device)
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


def start_baseline(artifact: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    # The same thread count as a Serve replica with num_cpus CPUs gets (Ray sets OMP_NUM_THREADS so).
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, int(args.num_cpus))), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--baseline-server", str(artifact), "--port", str(port), "--device", args.device]
    return subprocess.Popen(cmd, env=env)


# ----------------------------------------------------------------------------- load generation


async def closed_loop(url: str, concurrency: int, total: int, max_seconds: float) -> tuple[list[float], int, float]:
    """``concurrency`` clients, each sending its next request when the previous one returns.

    Returns the latencies of the successful requests, the error count and the wall time.
    """
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued, errors
        while issued < total and time.monotonic() < deadline:
            text = SENTENCES[issued % len(SENTENCES)]
            issued += 1
            start = time.perf_counter()
            try:
                r = await http.post(url, json={"inputs": [text]})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall


def _client_process(url: str, concurrency: int, total: int, max_seconds: float) -> tuple[list[float], int, float]:
    return asyncio.run(closed_loop(url, concurrency, total, max_seconds))


def measure(url: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One level, spread over ``--client-procs`` processes: one Python client tops out near 1-2k req/s."""
    procs = max(1, min(args.client_procs, concurrency))
    if procs == 1:
        return summarize(*_client_process(url, concurrency, args.requests, args.max_seconds), concurrency)
    import multiprocessing as mp

    shares = [(concurrency + i) // procs for i in range(procs)]
    totals = [(args.requests + i) // procs for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.starmap(
            _client_process, [(url, c, n, args.max_seconds) for c, n in zip(shares, totals, strict=True)]
        )
    latencies = [x for lat, _, _ in parts for x in lat]
    # The processes start within milliseconds of each other; the slowest one bounds the level.
    return summarize(latencies, sum(e for _, e, _ in parts), max(w for _, _, w in parts), concurrency)


def summarize(latencies: list[float], errors: int, wall: float, concurrency: int) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))] if ms else float("nan")

    return {
        "concurrency": concurrency,
        "ok": len(ms),
        "errors": errors,
        "wall_s": round(wall, 3),
        "req_per_s": round(len(ms) / wall, 1) if wall else 0.0,
        "p50_ms": round(pct(50), 1),
        "p99_ms": round(pct(99), 1),
        "mean_ms": round(statistics.fmean(ms), 1) if ms else float("nan"),
    }


def run_levels(name: str, url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    _client_process(url, 2, args.warmup, 60)  # load weights, JIT paths, connection pools
    rows = []
    for c in args.concurrency:
        row = {"server": name, **measure(url, c, args)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the two servers


def bench_baseline(artifact: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    port = free_port()
    proc = start_baseline(artifact, port, args)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
        return run_levels("transformers.pipeline + uvicorn", f"http://127.0.0.1:{port}/classify", args)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_hfray(artifact: Path, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import ray
    from ray import serve

    from hfray.serving import serve_artifacts_driver

    ray.init(num_cpus=args.ray_num_cpus, num_gpus=1 if args.num_gpus else None, configure_logging=False)
    try:
        url = serve_artifacts_driver(
            str(artifact),
            port=free_port(),
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
            max_batch_size=args.max_batch_size,
            batch_wait_timeout_s=args.batch_wait_timeout_s,
            max_ongoing_requests=max(args.max_batch_size * 2, 8),
            autoscaling={"min_replicas": args.replicas, "max_replicas": args.replicas, "target_ongoing_requests": 4},
        )
        wait_healthy(url, timeout_s=180)
        rows = run_levels("hfray (Ray Serve)", f"{url}/v1/classify", args)
        return rows, httpx.get(f"{url}/v1/stats").json()
    finally:
        serve.shutdown()
        ray.shutdown()


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| server | concurrency | ok | errors | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|"
    lines = [
        f"| {r['server']} | {r['concurrency']} | {r['ok']} | {r['errors']} | {r['req_per_s']} | "
        f"{r['p50_ms']} | {r['p99_ms']} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:all-MiniLM-L6-v2")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=200, help="per concurrency level")
    p.add_argument("--max-seconds", type=float, default=60, help="per concurrency level")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--client-procs", type=int, default=1, help="load-generator processes (use several on a GPU)")
    p.add_argument("--device", default="cpu", help="baseline pipeline device: cpu or cuda")
    p.add_argument("--num-cpus", type=float, default=1, help="per hfray replica; baseline gets as many threads")
    p.add_argument("--num-gpus", type=float, default=0, help="per hfray replica")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--ray-num-cpus", type=int, default=2)
    p.add_argument("--only", choices=["baseline", "hfray"], default=None)
    p.add_argument("--out", default=str(HERE / "results" / "serve_bench.json"))
    p.add_argument("--baseline-server", metavar="ARTIFACT", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_server:
        baseline_server(args.baseline_server, args.port, args.device)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="hfray-bench-") as tmp:
        artifact = make_artifact(args.model, Path(tmp) / "model")
        rows: list[dict[str, Any]] = []
        stats: dict[str, Any] = {}
        if args.only in (None, "baseline"):
            rows += bench_baseline(artifact, args)
        if args.only in (None, "hfray"):
            hf_rows, stats = bench_hfray(artifact, args)
            rows += hf_rows
    table = markdown(rows)
    print("\n" + table)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    report = {"args": {k: v for k, v in vars(args).items() if k not in ("baseline_server", "port")}, "rows": rows}
    report |= {"machine": machine, "hfray_batch_stats": {k: stats.get(k) for k in ("batches", "max_batch_size_seen")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

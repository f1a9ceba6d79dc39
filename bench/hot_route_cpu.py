"""Benchmark: CPU per request of the ingress's HTTP framework on POST /v1/classify, FastAPI's route vs hfray's hot
route (ServeConfig.hot_routes, hfray.serving.replica.hot_routes), in one process, no network, no Serve.

Both apps declare the route as the ingress does (``response_model=ClassifyResponse``, ``Request``, ``read_body``)
and call the same handler: the ingress's validation (``parse_body`` with the contract's request model) and a fixed
one-text answer in place of the model (the model's work is the same on both paths). What differs is only the
framework around the handler, which is what the hot route removes. CPU time (``time.process_time``), so other
processes' load matters less than for wall-clock numbers. Variants alternate: fastapi, hot, fastapi, hot, ...

    PYTHONPATH=lib python bench/hot_route_cpu.py --requests 20000 --rounds 3 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from hfray.serving.config import ServeConfig
from hfray.serving.replica import hot_routes
from hfray.serving.replica.contract import ClassifyResponse, request_models
from hfray.serving.replica.requests import parse_body, read_body

BODY = json.dumps({"inputs": "the plot was dull and the actors clumsy", "top_k": 1}).encode()


def build_app(cfg: ServeConfig) -> tuple[FastAPI, Any]:
    models = request_models(cfg)

    async def classify_body(raw: bytes) -> dict[str, Any]:
        req = parse_body(raw, models["/v1/classify"], "inputs")
        texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
        return {"model": "alpha", "results": [[{"label": "neg", "score": 0.7301}] for _ in texts]}

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(hot_routes.HotRouteMiddleware)

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(request: Request) -> dict[str, Any]:
        return await classify_body(await read_body(request, 1 << 20))

    return app, classify_body


async def one_request(app: Any) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/classify", "raw_path": b"/v1/classify", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def measure(app: Any, requests: int) -> float:
    """CPU microseconds per request over ``requests`` sequential requests (after a warm-up)."""
    for _ in range(200):
        assert await one_request(app) == 200
    start = time.process_time()
    for _ in range(requests):
        await one_request(app)
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cfg = ServeConfig(artifact_root="/unused")
    app, handler = build_app(cfg)
    hot = hot_routes.HotRoutes({"/v1/classify": handler}, lambda _: None, 1 << 20)
    rows = []
    for round_ in range(args.rounds):
        for variant in ("fastapi", "hot"):
            hot_routes.register(hot if variant == "hot" else None)
            us = asyncio.run(measure(app, args.requests))
            rows.append({"round": round_, "variant": variant, "cpu_us_per_request": round(us, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"requests_per_variant": args.requests, "machine": platform.platform(), "rows": rows,
              "loadavg": Path("/proc/loadavg").read_text().split()[:3]}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

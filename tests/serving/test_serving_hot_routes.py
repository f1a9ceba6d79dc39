"""``ServeConfig.hot_routes``: POST /v1/classify and /v1/embeddings answered by hfray's ASGI middleware ahead of
FastAPI. On real Serve apps over real HTTP, the hot path and the FastAPI path (hot_routes false) give the same
status, body and headers for good and bad requests, and the hot path's answers are transformers' pipeline's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import BAD_BODIES, LABELS, TEXTS, assert_matches_pipeline, make_artifact, serve_config_for

from hfray.cluster.local import free_port
from hfray.serving.driver import wait_healthy

TOKEN = "hot-route-token-26"
AUTH = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
# (route, raw body, headers): good requests, client mistakes, and auth failures.
CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v1/classify", json.dumps({"inputs": TEXTS, "top_k": 2}).encode(), AUTH),
    ("/v1/classify", json.dumps({"inputs": "caf\u00e9 \U0001f600", "model": "gamma", "top_k": 3}).encode(), AUTH),
    ("/v1/embeddings", json.dumps({"input": TEXTS[:2], "normalize": False}).encode(), AUTH),
    *[("/v1/classify", json.dumps(body).encode(), AUTH) for body, _, _ in BAD_BODIES],
    ("/v1/classify", json.dumps({"inputs": "\u0000\ud800 x"}).encode(), AUTH),  # a lone surrogate: 422
    ("/v1/classify", b'{"inputs": ["unclosed', AUTH),
    ("/v1/classify", b"", AUTH),
    ("/v1/classify", b'{"inputs": "' + b"x" * 200_000 + b'"}', AUTH),
    ("/v1/embeddings", json.dumps({"input": "ok", "encoding_format": "base64"}).encode(), AUTH),
    ("/v1/classify", b'{"inputs": "ok"}', {"Authorization": "Bearer wrong-token-xx"}),
    ("/v1/embeddings", b'{"input": ""}', {}),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hot-routes")
    for seed, name in enumerate(["alpha", "gamma"]):
        make_artifact(root / name, LABELS[name], seed)
    return root


@pytest.fixture(scope="module")
def urls(ray_cluster: Any, root: Path) -> Iterator[dict[bool, str]]:
    """Two fused apps on one Serve instance: hot routes on (the default) and off."""
    from ray import serve

    from hfray.serving.driver import base_url, build_app, serve_artifacts

    port = free_port()
    cfgs = {
        hot: serve_config_for(root, port, hot_routes=hot, auth_token=TOKEN, route_prefix=f"/hot-{hot}".lower())
        for hot in (True, False)
    }
    try:
        serve_artifacts(cfgs[True], app_name="hfray-hot")
        serve.run(build_app(cfgs[False]), name="hfray-fastapi", route_prefix=cfgs[False].route_prefix, blocking=False)
        urls = {hot: base_url(cfg) for hot, cfg in cfgs.items()}
        for url in urls.values():
            wait_healthy(url)
        yield urls
    finally:
        serve.shutdown()


def test_hot_routes_answer_exactly_as_fastapi_routes(urls: dict[bool, str]) -> None:
    async def answers(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return [await client.post(f"{url}{r}", content=body, headers=h) for r, body, h in CASES]

    hot, plain = (asyncio.run(answers(urls[flag])) for flag in (True, False))
    statuses = {r.status_code for r in hot}
    assert {200, 400, 401, 404, 413, 422} <= statuses, statuses  # the cases reach every answer kind
    for (route, body, _), a, b in zip(CASES, hot, plain, strict=True):
        where = f"{route} {body[:60]!r}"
        assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"]), where
        assert a.json() == b.json(), where
        assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate"), where


def test_hot_routes_answer_concurrent_requests_as_the_pipeline(urls: dict[bool, str], root: Path) -> None:
    from transformers import pipeline

    texts = TEXTS * 4

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as client:
            calls = (client.post(f"{urls[True]}/v1/classify", json={"inputs": t, "top_k": 2}) for t in texts)
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    pipe = pipeline("text-classification", model=str(root / "alpha"))
    for text, r in zip(texts, responses, strict=True):
        assert r.json()["model"] == "alpha"
        assert_matches_pipeline(r.json()["results"], pipe, [text], top_k=2)

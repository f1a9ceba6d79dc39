"""The request paths that are not the default, on real Serve apps over real HTTP, two apps on one Serve instance:

- ``batcher: serve`` (Ray Serve's ``@serve.batch`` instead of hfray's continuous batcher): the fused app (in its
  replica) and the split app (in the ingress's gatherer and the model replica) answer concurrent requests as
  ``transformers.pipeline`` does, in batches of more than one request;
- ``hot_routes`` (POST /v1/classify and /v1/embeddings answered by hfray's ASGI middleware ahead of FastAPI): the
  split app has them on (the default), the fused app off, and both give the same status, headers and body for
  good and bad requests.
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

TOKEN = "paths-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
# Both apps use @serve.batch; fused goes through FastAPI's routes, split through the hot routes.
APPS: dict[str, dict[str, Any]] = {
    "fused": {"hot_routes": False},
    "split": {"topology": "split", "num_cpus": 0.25, "hot_routes": True},
}
# (route, raw body, headers): good requests, client mistakes, auth failures.
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
    root = tmp_path_factory.mktemp("paths")
    for seed, name in enumerate(["alpha", "gamma"]):
        make_artifact(root / name, LABELS[name], seed)
    return root


@pytest.fixture(scope="module")
def apps(ray_cluster: Any, root: Path) -> Iterator[dict[str, str]]:
    from ray import serve

    from hfray.serving.driver import base_url, build_app, serve_artifacts

    port = free_port()
    cfgs = {
        name: serve_config_for(root, port, batcher="serve", auth_token=TOKEN, route_prefix=f"/{name}", **extra)
        for name, extra in APPS.items()
    }
    try:
        serve_artifacts(cfgs["fused"], app_name="hfray-paths-fused")
        # The Serve instance runs now: deploy split without blocking, so both start together.
        serve.run(build_app(cfgs["split"]), name="hfray-paths-split", route_prefix="/split", blocking=False)
        urls = {name: base_url(cfg) for name, cfg in cfgs.items()}
        for url in urls.values():
            wait_healthy(url)
        yield urls
    finally:
        serve.shutdown()


@pytest.mark.parametrize("topology", list(APPS))
def test_serve_batcher_answers_concurrent_requests_as_the_pipeline(
    apps: dict[str, str], root: Path, topology: str
) -> None:
    from transformers import pipeline

    url = apps[topology]
    before = httpx.get(f"{url}/v1/stats", headers=AUTH).json()["batches"]
    texts = TEXTS * 4

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as client:
            calls = (client.post(f"{url}/v1/classify", json={"inputs": [t], "top_k": 2}) for t in texts)
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    stats = httpx.get(f"{url}/v1/stats", headers=AUTH).json()
    assert stats["topology"] == topology
    sizes = stats["batch_sizes"][-(stats["batches"] - before) :]
    assert sum(sizes) == len(texts) and max(sizes) > 1, f"no batching: batch sizes {sizes}"
    pipe = pipeline("text-classification", model=str(root / "alpha"))
    for text, r in zip(texts, responses, strict=True):
        assert r.json()["model"] == "alpha"
        assert_matches_pipeline(r.json()["results"], pipe, [text], top_k=2)


def test_hot_routes_answer_as_fastapi_routes(apps: dict[str, str]) -> None:
    async def answers(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return [await client.post(f"{url}{r}", content=body, headers=h) for r, body, h in CASES]

    hot, plain = asyncio.run(answers(apps["split"])), asyncio.run(answers(apps["fused"]))
    statuses = {r.status_code for r in hot}
    assert {200, 400, 401, 404, 413, 422} <= statuses, statuses  # the cases reach every kind of answer
    for (route, body, _), a, b in zip(CASES, hot, plain, strict=True):
        where = f"{route} {body[:60]!r}"
        assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"]), where
        assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate"), where
        if a.status_code != 200:
            assert a.json() == b.json(), where
            continue
        # Two processes: the same model's scores agree to float noise, everything else exactly.
        assert _close(a.json(), b.json()), where


def _close(a: Any, b: Any) -> bool:
    """Equal JSON, floats to 1e-5."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return bool(a == b)

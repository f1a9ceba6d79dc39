"""``ServeConfig.batcher: serve`` (Ray Serve's ``@serve.batch`` instead of hfray's continuous batcher), on real
Serve apps over real HTTP: the fused and the split topology each answer concurrent requests as
``transformers.pipeline`` does, and their replicas form batches of more than one request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import LABELS, TEXTS, assert_matches_pipeline, make_artifact, serve_config_for

from hfray.cluster.local import free_port
from hfray.serving.driver import wait_healthy

TOPOLOGIES: dict[str, dict[str, Any]] = {"fused": {}, "split": {"topology": "split", "num_cpus": 0.25}}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-batch")
    make_artifact(root / "alpha", LABELS["alpha"], 0)
    return root


@pytest.fixture(scope="module")
def apps(ray_cluster: Any, root: Path) -> Iterator[dict[str, str]]:
    """Both topologies with batcher: serve, deployed side by side on one Serve instance."""
    from ray import serve

    from hfray.serving.driver import base_url, build_app, serve_artifacts

    port = free_port()
    cfgs = {
        name: serve_config_for(root, port, batcher="serve", route_prefix=f"/{name}", **extra)
        for name, extra in TOPOLOGIES.items()
    }
    try:
        serve_artifacts(cfgs["fused"], app_name="hfray-sb-fused")
        # The Serve instance runs now: deploy split without blocking, so both start together.
        serve.run(build_app(cfgs["split"]), name="hfray-sb-split", route_prefix="/split", blocking=False)
        urls = {name: base_url(cfg) for name, cfg in cfgs.items()}
        for url in urls.values():
            wait_healthy(url)
        yield urls
    finally:
        serve.shutdown()


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_serve_batcher_answers_concurrent_requests_as_the_pipeline(
    apps: dict[str, str], root: Path, topology: str
) -> None:
    from transformers import pipeline

    url = apps[topology]
    before = httpx.get(f"{url}/v1/stats").json()["batches"]
    texts = TEXTS * 4

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/classify", json={"inputs": [t]}) for t in texts))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    stats = httpx.get(f"{url}/v1/stats").json()
    assert stats["topology"] == topology
    sizes = stats["batch_sizes"][-(stats["batches"] - before) :]
    assert sum(sizes) == len(texts) and max(sizes) > 1, f"no batching: batch sizes {sizes}"
    pipe = pipeline("text-classification", model=str(root / "alpha"))
    for text, r in zip(texts, responses, strict=True):
        assert_matches_pipeline(r.json()["results"], pipe, [text], top_k=1)

"""Serving on a CUDA GPU: bf16 replicas agree with the fp32 ``transformers.pipeline``; replicas share one GPU.

Run on the GPU machine with ``python -m pytest -m gpu tests/gpu``. The helpers come from tests/test_serving.py
(tests/ is on sys.path through its conftest). Artifacts are tiny BERTs built from a config, as there.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import LABELS, TEXTS, make_artifact, running_replicas

from hfray.cluster.local import free_port
from hfray.serving.config import ServeConfig
from hfray.serving.driver import wait_healthy

pytestmark = pytest.mark.gpu


def assert_close_to(results: list[list[dict[str, Any]]], expected: list[list[dict[str, Any]]]) -> None:
    """bf16 keeps about 3 significant digits: compare scores by label, not by rank order."""
    assert len(results) == len(expected)
    for got, want in zip(results, expected, strict=True):
        assert {p["label"]: p["score"] for p in got} == pytest.approx({p["label"]: p["score"] for p in want}, abs=2e-2)


@pytest.fixture(scope="module")
def gamma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("gpu-artifacts") / "gamma", LABELS["gamma"], seed=2)


def test_bf16_on_gpu_agrees_with_the_fp32_pipeline(gamma: Path) -> None:
    import torch
    from transformers import pipeline

    from hfray.serving.replica.models import LoadedModel, torch_placement

    assert torch.cuda.is_available()
    device, dtype = torch_placement(ServeConfig(artifact_root=str(gamma), num_gpus=1))
    assert (device, dtype) == ("cuda", torch.bfloat16)
    model = LoadedModel(str(gamma), device, dtype, max_length=128)
    assert next(model.model.parameters()).dtype == torch.bfloat16
    want = pipeline("text-classification", model=str(gamma), device="cpu")(TEXTS, top_k=3)
    assert_close_to(model.predict(TEXTS, [3] * len(TEXTS)), want)


def test_cuda_graph_buckets_agree_with_the_eager_forward(gamma: Path) -> None:
    """Every (rows, tokens) bucket is captured; replays of padded inputs give the eager forward's scores."""
    import torch

    from hfray.serving.replica.models import LoadedModel

    graphed = LoadedModel(str(gamma), "cuda", torch.bfloat16, max_length=128, graph_rows=8)
    eager = LoadedModel(str(gamma), "cuda", torch.bfloat16, max_length=128)
    assert eager.forward is None
    info = graphed.forward.describe()
    assert "capture_error" not in info, info
    assert info["cuda_graphs"] == len(info["row_buckets"]) * len(info["token_buckets"]) == 4 * 4  # 1-8 x 16-128
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 5) for i in range(11)]  # 11 rows: chunks of 8 + 3 (padded to 4)
    for batch in (texts, texts[:1], texts[:5]):
        got = graphed.predict(batch, [3] * len(batch))
        assert_close_to(got, eager.predict(batch, [3] * len(batch)))


def test_two_bf16_replicas_share_the_gpu_over_http(ray_cluster: Any, gamma: Path) -> None:
    """num_gpus=0.5: both replicas start on the one GPU, answer concurrent requests, and batch them."""
    from ray import serve
    from transformers import pipeline

    from hfray.serving.driver import serve_artifacts

    two = {"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 4}
    cfg = ServeConfig(
        artifact_root=str(gamma.parent),
        port=free_port(),
        num_gpus=0.5,
        num_cpus=0.5,
        max_batch_size=16,
        batch_wait_timeout_s=0.05,
        autoscaling=two,
    )
    url = serve_artifacts(cfg, app_name="hfray-gpu")
    try:
        wait_healthy(url, timeout_s=180)
        assert running_replicas("hfray-gpu") == 2

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                calls = [client.post(f"{url}/v1/classify", json={"inputs": [t], "top_k": 3}) for t in TEXTS * 8]
                return await asyncio.gather(*calls)

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * len(responses), responses[0].text
        pipe = pipeline("text-classification", model=str(gamma), device="cpu")
        want = {t: pipe([t], top_k=3)[0] for t in TEXTS}
        for text, r in zip(TEXTS * 8, responses, strict=True):
            assert_close_to(r.json()["results"], [want[text]])
        stats = httpx.get(f"{url}/v1/stats").json()
        assert stats["device"] == "cuda"
        assert stats["cuda_graphs"]["gamma"]["cuda_graphs"] > 0, stats["cuda_graphs"]
        assert stats["max_batch_size_seen"] > 1
        assert stats["step_seconds"]["forward"] > 0
    finally:
        serve.shutdown()

"""The HTTP API's contract and ``/v1/embeddings``, on a real Serve app over real HTTP.

schemathesis generates requests from the app's own ``/openapi.json`` (coverage and fuzzing phases, all
checks): what the schema allows must be answered 2xx (or 404 for an unknown model id), what it forbids must
be a documented 4xx, and no request may get a 5xx. Embeddings are compared with a mean pool of the
artifact's encoder computed here with plain transformers, as sentence-transformers computes them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import LABELS, TEXTS, make_artifact, post, serve_config_for

from hfray.cluster.local import free_port
from hfray.serving.driver import wait_healthy

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def app(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    root = tmp_path_factory.mktemp("contract")
    for seed, name in enumerate(["alpha", "gamma"]):
        make_artifact(root / name, LABELS[name], seed)
    port = free_port()
    try:
        url = serve_artifacts(serve_config_for(root, port, batch_wait_timeout_s=0.05), app_name="hfray-contract")
        wait_healthy(url)
        assert post(url, {"inputs": "load the model"}).status_code == 200  # first request loads it
        yield {"url": url, "root": root}
    finally:
        serve.shutdown()


def test_openapi_states_the_request_models_and_error_bodies(app: dict[str, Any]) -> None:
    doc = httpx.get(f"{app['url']}/openapi.json").json()
    classify = doc["paths"]["/v1/classify"]["post"]
    body = classify["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["inputs"] and body["additionalProperties"] is False
    text = body["properties"]["inputs"]["anyOf"][0]
    # The limits of this server's config (serve_config_for), not generic ones.
    assert (text["minLength"], text["maxLength"], text["pattern"]) == (1, 2000, r"\S")
    assert body["properties"]["inputs"]["anyOf"][1]["maxItems"] == 8
    assert set(classify["responses"]) == {"200", "400", "401", "404", "413", "422"}
    assert "/v1/predict" not in doc["paths"]  # no token-classification/QA/seq2seq artifact here
    error = classify["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    assert {"ErrorResponse", "ErrorDetail"} <= set(doc["components"]["schemas"])
    # Texts the schema allows are accepted: NUL characters included; surrogate pairs are fine, lone ones not.
    for good in ["a\u0000b", "\U0001f600 emoji", " padded "]:
        assert post(app["url"], {"inputs": good}).status_code == 200, good
    assert httpx.get(f"{app['url']}/docs").status_code == 200


def test_schemathesis_finds_no_contract_violation(app: dict[str, Any], tmp_path: Path) -> None:
    """All checks, coverage and fuzzing phases, against the served /openapi.json: no failure, no 5xx."""
    cmd = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]
    cmd += ["--config-file", str(HERE / "schemathesis.toml"), "--no-color", "run", f"{app['url']}/openapi.json"]
    cmd += ["--checks", "all", "--phases", "coverage,fuzzing", "--max-examples", "25", "--seed", "26"]
    cmd += ["--workers", "1", "--request-timeout", "60", "--generation-database", "none"]
    cmd += ["--report", "ndjson", "--report-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout
    tested = [line for line in done.stdout.splitlines() if "generated" in line]
    assert tested and int(tested[-1].split()[0]) >= 100, tested  # it really sent requests


# ----------------------------------------------------------------------------- /v1/embeddings


def mean_pooled(path: Path, texts: list[str], normalize: bool) -> Any:
    """sentence-transformers' recipe by hand: encoder hidden states averaged over the attention mask."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def embed(url: str, body: dict[str, Any]) -> httpx.Response:
    return post(url, body, route="/v1/embeddings")


def test_embeddings_are_mean_pooled_encoder_states(app: dict[str, Any]) -> None:
    import torch

    url, root = app["url"], app["root"]
    r = embed(url, {"input": TEXTS, "model": "gamma"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["object"] == "list" and got["model"] == "gamma"
    assert [d["index"] for d in got["data"]] == list(range(len(TEXTS)))
    want = mean_pooled(root / "gamma", TEXTS, normalize=True)
    vectors = torch.tensor([d["embedding"] for d in got["data"]])
    assert torch.allclose(vectors, want, atol=1e-5)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    raw = embed(url, {"input": TEXTS[1], "normalize": False}).json()  # default model alpha, one text
    want = mean_pooled(root / "alpha", TEXTS[1:2], normalize=False)
    assert torch.allclose(torch.tensor(raw["data"][0]["embedding"]), want[0], atol=1e-5)


def test_embedding_requests_are_batched_with_each_other(app: dict[str, Any]) -> None:
    import torch

    url = app["url"]
    before = httpx.get(f"{url}/v1/stats").json()["batches"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/embeddings", json={"input": t}) for t in TEXTS * 4))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    want = mean_pooled(app["root"] / "alpha", TEXTS, normalize=True)
    for i, r in enumerate(responses):
        assert torch.allclose(torch.tensor(r.json()["data"][0]["embedding"]), want[i % len(TEXTS)], atol=1e-5)
    stats = httpx.get(f"{url}/v1/stats").json()
    sizes = stats["batch_sizes"][-(stats["batches"] - before) :]
    assert sum(sizes) == len(responses) and max(sizes) > 1, sizes


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"input": ""}, 422, "input"),
        ({"input": ["ok", "\ud800"]}, 422, "input[1]"),
        ({"input": "ok", "normalize": "yes"}, 422, "normalize"),
        ({"input": "ok", "encoding_format": "base64"}, 422, "encoding_format"),
        ({"input": "ok", "model": "../alpha"}, 400, "model"),
        ({"input": "ok", "model": "nope"}, 404, "model"),
        ({"inputs": "ok"}, 422, "inputs"),
    ],
)
def test_embeddings_bad_input_is_4xx_naming_the_field(app: dict[str, Any], body: Any, status: int, field: str) -> None:
    r = embed(app["url"], body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]["field"] == field

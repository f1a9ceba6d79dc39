"""Ray Serve serving of hfray artifacts: real Serve on the session's local Ray cluster, real HTTP.

Artifacts are tiny BERTs built from a config (random weights, different seeds and label sets), so the
predictions are arbitrary but deterministic: each response is compared with ``transformers.pipeline``
on the same directory, and a different label set per model shows which model answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hfray.artifacts.manifest import write_manifest
from hfray.cluster.local import free_port
from hfray.errors import ArtifactError, ConfigError
from hfray.serving.catalog import ArtifactCatalog, ModelIdError
from hfray.serving.config import ServeConfig
from hfray.serving.driver import wait_healthy

LABELS = {"alpha": ["neg", "pos"], "beta": ["neg", "pos"], "gamma": ["cold", "warm", "hot"]}
TEXTS = ["a wonderful film", "the plot was dull and the actors clumsy", "music", "brilliant camera work"]
MAX_TEXT_CHARS = 2000
MAX_INPUTS = 8
REPO = Path(__file__).resolve().parents[2]


def make_artifact(path: Path, labels: list[str], seed: int) -> Path:
    """A save_pretrained dir + hfray manifest, as training would export it, built without training."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from hfray.model.builtin import resolve_model

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "bert",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2")).save_pretrained(path)
    manifest = {
        "task": "text-classification",
        "labels": labels,
        "name": path.name,
        "run_name": f"{path.name}-run",
        "metrics": {"eval_accuracy": 0.5},
    }
    write_manifest(str(path), manifest)
    return path


@pytest.fixture(scope="module")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    for seed, (name, labels) in enumerate(LABELS.items()):
        make_artifact(root / name, labels, seed)
    # A link inside the root to an artifact outside it must not be servable.
    outside = make_artifact(tmp_path_factory.mktemp("outside") / "secret", ["x", "y"], 9)
    os.symlink(outside, root / "escape")
    return root


def serve_config_for(root: Path, port: int, **extra: Any) -> ServeConfig:
    settings: dict[str, Any] = {
        "artifact_root": str(root),
        "default_model": "alpha",
        "port": port,
        "max_batch_size": 16,
        # Long enough that concurrent requests from one client reliably share a batch on 2 busy cores.
        "batch_wait_timeout_s": 0.1,
        "max_models_per_replica": 2,
        "num_cpus": 0.5,
        "max_text_chars": MAX_TEXT_CHARS,
        "max_inputs": MAX_INPUTS,
    }
    return ServeConfig(**(settings | extra))


@pytest.fixture(scope="module")
def server(ray_cluster: Any, artifact_root: Path) -> Iterator[dict[str, Any]]:
    """One Serve instance for the module; Ray itself belongs to the session fixture in conftest."""
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    port = free_port()
    try:
        url = serve_artifacts(serve_config_for(artifact_root, port))
        wait_healthy(url)
        yield {"url": url, "port": port, "root": artifact_root}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def pipelines(artifact_root: Path) -> dict[str, Any]:
    from transformers import pipeline

    return {name: pipeline("text-classification", model=str(artifact_root / name)) for name in LABELS}


def post(url: str, body: Any, route: str = "/v1/classify", **kwargs: Any) -> httpx.Response:
    # json.dumps escapes lone surrogates ("\ud800" is valid JSON); httpx's json= would fail to encode them.
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{url}{route}", content=json.dumps(body), headers=headers, timeout=60, **kwargs)


def assert_matches_pipeline(results: list[list[dict[str, Any]]], pipe: Any, texts: list[str], top_k: int) -> None:
    expected = pipe(texts, top_k=top_k)
    assert len(results) == len(texts)
    for got, want in zip(results, expected, strict=True):
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)


# ----------------------------------------------------------------------------- HTTP round trips


def test_health_and_model_list(server: dict[str, Any]) -> None:
    assert httpx.get(f"{server['url']}/healthz").json() == {"status": "ok"}
    listing = httpx.get(f"{server['url']}/v1/models").json()
    assert listing["default"] == "alpha"
    # 'escape' is a symlink to an artifact outside the root: neither listed nor servable.
    by_id = {m["id"]: m for m in listing["models"]}
    assert set(by_id) == set(LABELS)
    assert by_id["gamma"]["labels"] == LABELS["gamma"]
    assert by_id["beta"]["run_name"] == "beta-run"
    assert httpx.get(f"{server['url']}/openapi.json").json()["paths"]["/v1/classify"]["post"]["requestBody"]


def test_classify_matches_pipeline(server: dict[str, Any], pipelines: dict[str, Any]) -> None:
    r = post(server["url"], {"inputs": TEXTS, "top_k": 2})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "alpha"
    assert_matches_pipeline(r.json()["results"], pipelines["alpha"], TEXTS, top_k=2)

    single = post(server["url"], {"inputs": TEXTS[0]}).json()["results"]
    assert_matches_pipeline(single, pipelines["alpha"], TEXTS[:1], top_k=1)
    # top_k above the label count is capped, as the pipeline does; text past the model's 128 positions is truncated.
    capped = post(server["url"], {"inputs": ["word " * 300], "top_k": 5, "model": "gamma"})
    assert capped.status_code == 200, capped.text
    assert sorted(p["label"] for p in capped.json()["results"][0]) == sorted(LABELS["gamma"])


def test_concurrent_requests_are_batched(server: dict[str, Any], pipelines: dict[str, Any]) -> None:
    url = server["url"]
    before = httpx.get(f"{url}/v1/stats").json()["batches"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            calls = [client.post(f"{url}/v1/classify", json={"inputs": [t]}) for t in TEXTS * 6]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for text, r in zip(TEXTS * 6, responses, strict=True):
        assert_matches_pipeline(r.json()["results"], pipelines["alpha"], [text], top_k=1)
    stats = httpx.get(f"{url}/v1/stats").json()
    new_batches = stats["batches"] - before
    sizes = stats["batch_sizes"][-new_batches:]
    assert sum(sizes) == len(responses)
    assert max(sizes) > 1, f"no batching: batch sizes {sizes}"
    assert stats["torch_threads"] == 1  # a 0.5-CPU replica must not spawn a thread per core


def test_multiplexing_three_artifacts(server: dict[str, Any], pipelines: dict[str, Any]) -> None:
    # max_models_per_replica is 2, so each model not held evicts the least recently used one.
    before = len(httpx.get(f"{server['url']}/v1/stats").json()["model_loads"])
    for model in ["alpha", "beta", "gamma", "alpha", "beta"]:
        r = post(server["url"], {"inputs": TEXTS, "top_k": 3, "model": model})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
        assert_matches_pipeline(r.json()["results"], pipelines[model], TEXTS, top_k=3)
    stats = httpx.get(f"{server['url']}/v1/stats").json()
    # What the replica's loader did and what it still holds: after alpha, beta (loaded now or earlier), gamma
    # evicts alpha, alpha evicts beta, beta evicts gamma; each is loaded again, and only two stay in memory.
    loads = stats["model_loads"][before:]
    assert loads[-3:] == ["gamma", "alpha", "beta"] and len(loads) <= 5, loads
    assert stats["models_in_memory"] == ["alpha", "beta"]
    assert stats["models_loaded"] == ["alpha", "beta"]


def test_split_topology_routes_each_model_to_a_model_replica(server: dict[str, Any], pipelines: dict[str, Any]) -> None:
    """topology: split puts HfrayClassifier replicas behind the ingress; answers are the same as fused ones.
    Its replicas run their code on Serve's main loop (separate_user_loop false, set through runtime_env)."""
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    name = "hfray-split"
    cfg = serve_config_for(
        server["root"], server["port"], route_prefix="/split", topology="split", num_cpus=0.25, separate_user_loop=False
    )
    url = serve_artifacts(cfg, app_name=name)
    try:
        wait_healthy(url)
        assert running_replicas(name, "HfrayClassifier") == 1
        for model in ["beta", "gamma"]:
            r = post(url, {"inputs": TEXTS, "top_k": 2, "model": model})
            assert r.status_code == 200, r.text
            assert_matches_pipeline(r.json()["results"], pipelines[model], TEXTS, top_k=2)
        stats = httpx.get(f"{url}/v1/stats").json()
        assert stats["topology"] == "split" and stats["models_loaded"] == ["beta", "gamma"]
        assert "user_code" not in stats["loop_thread"], stats["loop_thread"]  # not Serve's separate loop thread
    finally:
        serve.delete(name)


def test_shape_buckets_give_the_pipeline_answers(artifact_root: Path, pipelines: dict[str, Any]) -> None:
    """The CUDA-graph path's padding (rows to 1/2/4, tokens to 16/32/...; chunks of 4 rows), run eagerly on CPU."""
    import torch

    from hfray.serving.replica.models import LoadedModel

    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(7)]  # 7 rows: a chunk of 4, then 3 padded to 4
    model = LoadedModel(str(artifact_root / "alpha"), "cpu", torch.float32, 64, graph_rows=4, bucketed=True)
    assert model.forward is not None and model.forward.rows == [1, 2, 4] and model.forward.tokens[0] == 16
    assert not model.forward.graphs  # no CUDA here: the same padded shapes, eagerly
    for batch in (texts, texts[:1], texts[:3]):
        assert_matches_pipeline(model.predict(batch, [2] * len(batch)), pipelines["alpha"], batch, top_k=2)


# ----------------------------------------------------------------------------- bad input: 4xx naming the field

BAD_BODIES = [
    ({"inputs": ""}, 422, "inputs"),
    ({"inputs": "\u0000\ud800 text"}, 422, "inputs"),  # a lone surrogate cannot be tokenized: 4xx, not 500
    ({"inputs": ["ok", "\udfff"]}, 422, "inputs[1]"),
    ({"inputs": ["fine", "   "]}, 422, "inputs[1]"),
    ({"inputs": []}, 422, "inputs"),
    ({}, 422, "inputs"),
    ({"inputs": "x" * (MAX_TEXT_CHARS + 1)}, 413, "inputs"),
    ({"inputs": ["ok", "x" * (MAX_TEXT_CHARS + 1)]}, 413, "inputs[1]"),
    ({"inputs": "ok", "top_k": 2.5}, 422, "top_k"),
    ({"inputs": ["ok"] * (MAX_INPUTS + 1)}, 413, "inputs"),
    ({"inputs": 5}, 422, "inputs"),
    ({"inputs": ["ok", 3]}, 422, "inputs[1]"),
    ({"inputs": ["ok", None, "ok"]}, 422, "inputs[1]"),
    ({"inputs": {"text": "ok"}}, 422, "inputs"),
    ({"inputs": "ok", "top_k": 0}, 422, "top_k"),
    ({"inputs": "ok", "top_k": "2"}, 422, "top_k"),
    ({"inputs": "ok", "top_k": True}, 422, "top_k"),
    ({"inputs": "ok", "top_k": 10_000}, 422, "top_k"),
    ({"inputs": "ok", "model": "../alpha"}, 400, "model"),
    ({"inputs": "ok", "model": "/etc/passwd"}, 400, "model"),
    ({"inputs": "ok", "model": "alpha/../../x"}, 400, "model"),
    ({"inputs": "ok", "model": ".."}, 400, "model"),
    ({"inputs": "ok", "model": "escape"}, 400, "model"),
    ({"inputs": "ok", "model": "no-such-model"}, 404, "model"),
    ({"inputs": "ok", "model": 3}, 422, "model"),
    ({"inputs": "ok", "tokens": 3}, 422, "tokens"),
    ([1, 2], 422, "body"),
    ("just a string", 422, "body"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_BODIES, ids=[f"{f}-{s}" for _, s, f in BAD_BODIES])
def test_bad_input_is_4xx_naming_the_field(server: dict[str, Any], body: Any, status: int, field: str) -> None:
    r = post(server["url"], body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["field"] == field
    assert field.split("[")[0] in detail["error"]


def test_malformed_and_oversized_bodies(server: dict[str, Any]) -> None:
    url = f"{server['url']}/v1/classify"
    r = httpx.post(url, content=b'{"inputs": ["unclosed', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"]["field"] == "body"
    r = httpx.post(url, content=b"\xff\xfe not utf-8")
    assert r.status_code == 400 and r.json()["detail"]["field"] == "body"
    r = httpx.post(url, content=b"")
    assert r.status_code == 422 and r.json()["detail"]["field"] == "body"
    huge = b'{"inputs": "' + b"x" * 200_000 + b'"}'
    r = httpx.post(url, content=huge)
    assert r.status_code == 413 and r.json()["detail"]["field"] == "body"
    # A chunked body has no Content-Length; the cap still holds while it streams in.
    r = httpx.post(url, content=iter([huge[i : i + 4096] for i in range(0, len(huge), 4096)]))
    assert r.status_code == 413 and r.json()["detail"]["field"] == "body"


# ----------------------------------------------------------------------------- auth


def test_bearer_token_auth(server: dict[str, Any]) -> None:
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    token = "s3cret-token-for-tests"
    cfg = serve_config_for(server["root"], server["port"], auth_token=token, route_prefix="/secure", num_cpus=0.25)
    url = serve_artifacts(cfg, app_name="hfray-auth")
    try:
        wait_healthy(url)
        assert httpx.get(f"{url}/healthz").status_code == 200  # load balancers probe without a token
        assert httpx.get(f"{url}/v1/models").status_code == 401
        for header in ["Bearer wrong-token-xx", token, f"Basic {token}", "Bearer"]:
            r = post(url, {"inputs": "ok"}, headers={"Authorization": header})
            assert r.status_code == 401, header
            assert r.json()["detail"]["field"] == "Authorization"
            assert r.headers["www-authenticate"] == "Bearer"
        # Auth is checked before the body: an unauthenticated client learns nothing about validation.
        assert post(url, {"inputs": ""}).status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert post(url, {"inputs": "ok"}, headers=good).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers=good).status_code == 200
        # The app without a token is unaffected.
        assert post(server["url"], {"inputs": "ok"}).status_code == 200
    finally:
        serve.delete("hfray-auth")


# ----------------------------------------------------------------------------- autoscaling


def running_replicas(app_name: str, deployment: str = "HfrayIngress") -> int:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return 0
    return int(app.deployments[deployment].replica_states.get("RUNNING", 0))


def wait_for_replicas(app_name: str, want: int, timeout_s: float) -> float:
    """Seconds until ``want`` replicas run; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while running_replicas(app_name) != want:
        assert time.monotonic() - start < timeout_s, f"{app_name}: {running_replicas(app_name)} replicas, not {want}"
        time.sleep(0.25)
    return time.monotonic() - start


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(server: dict[str, Any]) -> None:
    """min 1 -> max 2 replicas: a burst above target_ongoing_requests adds one, idling removes it; no errors."""
    import threading

    from ray import serve

    from hfray.serving.driver import serve_artifacts

    name = "hfray-autoscale"
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1}
    scaling |= {"upscale_delay_s": 0.5, "downscale_delay_s": 2, "look_back_period_s": 11}
    cfg = serve_config_for(server["root"], server["port"], route_prefix="/autoscale", num_cpus=0.25)
    cfg = cfg.model_copy(update={"autoscaling": cfg.autoscaling.model_validate(scaling), "max_ongoing_requests": 16})
    url = serve_artifacts(cfg, app_name=name)
    statuses: list[int] = []
    stop = threading.Event()

    async def load() -> None:
        deadline = time.monotonic() + 60  # bounded even if the test body fails
        async with httpx.AsyncClient(timeout=60) as client:

            async def one_client() -> None:
                while not stop.is_set() and time.monotonic() < deadline:
                    r = await client.post(f"{url}/v1/classify", json={"inputs": TEXTS})
                    statuses.append(r.status_code)

            await asyncio.gather(*(one_client() for _ in range(8)))

    worker = threading.Thread(target=asyncio.run, args=(load(),), daemon=True)
    try:
        wait_healthy(url)
        assert running_replicas(name) == 1
        worker.start()
        wait_for_replicas(name, 2, timeout_s=40)
        stop.set()
        worker.join(timeout=70)
        wait_for_replicas(name, 1, timeout_s=40)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        # The scaled-down app still answers.
        assert post(url, {"inputs": "ok"}).status_code == 200
    finally:
        stop.set()
        serve.delete(name)


# ----------------------------------------------------------------------------- config, catalog, YAML (no Serve)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        ServeConfig.from_dict({"artifact_root": str(tmp_path), "max_batch_sise": 8, "port": 0})
    text = str(err.value)
    assert "max_batch_sise" in text and "port" in text
    with pytest.raises(ConfigError, match="min_replicas"):
        ServeConfig.from_dict({"artifact_root": "x", "autoscaling": {"min_replicas": 3, "max_replicas": 1}})
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        ServeConfig.from_dict({"artifact_root": "x", "max_batch_size": 64, "max_ongoing_requests": 8})


def test_catalog_single_artifact_and_run_dirs(artifact_root: Path, tmp_path: Path) -> None:
    single = ArtifactCatalog(str(artifact_root / "alpha"))
    assert single.ids() == ["alpha"]
    assert single.resolve("alpha").manifest["labels"] == LABELS["alpha"]
    # A sweep: one run dir per trial, each with its exported 'artifact/' folder.
    (tmp_path / "trial_00001_lr=0.001").mkdir()
    shutil.copytree(artifact_root / "beta", tmp_path / "trial_00001_lr=0.001" / "artifact")
    (tmp_path / "not-a-run").mkdir()
    sweep = ArtifactCatalog(str(tmp_path))
    assert sweep.ids() == ["trial_00001_lr=0.001"]
    with pytest.raises(ModelIdError) as err:
        sweep.resolve("not-a-run")
    assert err.value.status == 404
    # An explicit model list narrows what is served, even among valid artifacts.
    narrowed = ArtifactCatalog(str(artifact_root), allowed=["beta"])
    assert narrowed.ids() == ["beta"]
    with pytest.raises(ModelIdError, match="unknown model id 'alpha'"):
        narrowed.resolve("alpha")


def test_catalog_cache_reuses_lookups_only_within_its_ttl(artifact_root: Path, tmp_path: Path) -> None:
    """The ingress caches successful lookups for a second; id validation and the allow-list are never skipped."""
    shutil.copytree(artifact_root / "alpha", tmp_path / "fresh")
    cached, plain = ArtifactCatalog(str(tmp_path), ttl_s=60), ArtifactCatalog(str(tmp_path))
    assert cached.resolve("fresh").path == plain.resolve("fresh").path
    shutil.rmtree(tmp_path / "fresh")
    assert cached.resolve("fresh").model_id == "fresh"  # remembered
    with pytest.raises(ModelIdError):
        plain.resolve("fresh")
    with pytest.raises(ModelIdError) as err:
        cached.resolve("../fresh")
    assert err.value.status == 400
    expired = ArtifactCatalog(str(tmp_path), ttl_s=1e-9)
    shutil.copytree(artifact_root / "alpha", tmp_path / "fresh")
    expired.resolve("fresh")
    shutil.rmtree(tmp_path / "fresh")
    with pytest.raises(ModelIdError):
        expired.resolve("fresh")


def test_serve_yaml_builds_an_app(artifact_root: Path) -> None:
    """Every serve/*.yaml is a valid Serve config whose builder accepts its args; so is serve/app.py."""
    import importlib
    import importlib.util

    from ray.serve.schema import ServeDeploySchema

    files = sorted((REPO / "serve").glob("*.yaml"))
    assert {f.name for f in files} >= {"text_classifier.yaml", "text_classifier_gpu.yaml"}
    for file in files:
        app = ServeDeploySchema.model_validate(yaml.safe_load(file.read_text())).applications[0]
        module_name, _, attr = app.import_path.partition(":")
        builder = getattr(importlib.import_module(module_name), attr)
        assert type(builder({**app.args, "artifact_root": str(artifact_root)})).__name__ == "Application", file

    spec = importlib.util.spec_from_file_location("serve_app", REPO / "serve" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert type(module.build({"artifact_root": str(artifact_root)})).__name__ == "Application"
    with pytest.raises(ConfigError, match="max_batch_sise"):
        module.build({"artifact_root": str(artifact_root), "max_batch_sise": 4})


def test_serve_cli_check(artifact_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from hfray.cli.serve import add_serve_arguments, cmd_serve, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert cmd_serve(parser.parse_args([str(artifact_root), "--check", "--default-model", "beta"])) == 0
    assert '"default": "beta"' in capsys.readouterr().out
    with pytest.raises(ConfigError, match="max_batch_size"):
        cmd_serve(parser.parse_args([str(artifact_root), "--check", "--max-batch-size", "0"]))
    # The Serve YAML doubles as hfray serve's --config; flags and the target override it.
    yaml_cfg = str(REPO / "serve" / "text_classifier.yaml")
    args = parser.parse_args([str(artifact_root), "--check", "--config", yaml_cfg, "--max-batch-size", "4"])
    cfg = config_from_args(args)
    assert (cfg.artifact_root, cfg.max_batch_size, cfg.autoscaling.max_replicas) == (str(artifact_root), 4, 4)
    with pytest.raises(ArtifactError, match="default_model: .*'nope'"):
        cmd_serve(parser.parse_args([str(artifact_root), "--check", "--default-model", "nope"]))


# ----------------------------------------------------------------------------- promotion (last: it changes the app)


def test_promotion_replaces_the_app_without_failed_requests(server: dict[str, Any]) -> None:
    """Redeploying under the same app name (a new best model as default) is a rolling update: no errors."""
    import threading

    from hfray.serving.driver import serve_artifacts

    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 90  # bounded even if the test body fails
        with httpx.Client(timeout=60) as client:
            while not stop.is_set() and time.monotonic() < deadline and len(seen) < 5000:
                r = client.post(f"{server['url']}/v1/classify", json={"inputs": "ok"})
                seen.append((r.status_code, r.json().get("model", "") if r.status_code == 200 else r.text))

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        while not seen:
            time.sleep(0.1)
        serve_artifacts(serve_config_for(server["root"], server["port"], default_model="beta"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(m == "beta" for _, m in seen[-3:]):
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(timeout=70)
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:5]
    models = [m for _, m in seen]
    # Old and new replicas may overlap for a moment, so only the ends are certain.
    assert models[0] == "alpha" and models[-1] == "beta"


# ----------------------------------------------------------------------------- device and precision (no Serve)


def test_placement_follows_the_config() -> None:
    import torch

    from hfray.serving.replica.models import torch_placement

    cpu = serve_config_for(Path("."), 8000)
    assert torch_placement(cpu) == ("cpu", torch.float32)
    assert torch_placement(cpu.model_copy(update={"dtype": "bf16"})) == ("cpu", torch.bfloat16)

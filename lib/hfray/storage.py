"""Shared storage for runs and sweeps: S3-compatible endpoints, credentials, reachability.

Across nodes, checkpoints must flow through storage every node reaches: an NFS path or an object store
(``s3://bucket/prefix``). For S3-compatible servers other than AWS (MinIO, Ceph, a local moto server in
tests), the job's ``storage.endpoint_url`` names the server. hfray hands it to every process of the job
as ``AWS_ENDPOINT_URL_S3``, the variable pyarrow (Ray Train's storage), boto3, s3fs and MLflow all read,
so Ray's own checkpoint uploads and hfray's files (metrics log, artifacts) go to the same server.

Credentials never appear in a job file: they come from the environment of the cluster's processes
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance or pod role), and hfray does not
forward them, so they never show up in a job's runtime_env on the dashboard.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs

from hfray.errors import HfrayError

ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
# What hfray forwards to every Ray process of a job it starts or attaches to (never credentials).
FORWARDED_ENV = (ENDPOINT_ENV, "AWS_DEFAULT_REGION", "AWS_REGION")
_URI_SCHEMES = {"gcs": "gs"}  # pyarrow's type_name -> URI scheme, where they differ


def is_uri(path: str) -> bool:
    return "://" in path


def endpoint_problem(path: str, endpoint_url: str | None) -> str | None:
    """Why ``endpoint_url`` does not fit ``path`` (None when it does); checked by the job schema."""
    if endpoint_url is None:
        return None
    if not path.startswith("s3://"):
        return f"an endpoint only applies to s3:// storage; storage.path is {path!r}"
    if not endpoint_url.startswith(("http://", "https://")) or len(endpoint_url.split("://", 1)[1]) == 0:
        return "expected http(s)://host[:port] of an S3-compatible server"
    return None


def activate_driver(path: str, endpoint_url: str | None) -> None:
    """Point this process (and, through :func:`forwarded_env`, the job's Ray processes) at the endpoint."""
    if endpoint_url:
        os.environ[ENDPOINT_ENV] = endpoint_url.rstrip("/")


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process that Ray processes of the job must share."""
    return {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}


def uri_of(filesystem: pafs.FileSystem, path: str) -> str:
    """A URI for a (filesystem, path) pair, e.g. a Ray checkpoint's, that hfray's helpers can open again."""
    kind = filesystem.type_name
    if kind == "local":
        return path
    return f"{_URI_SCHEMES.get(kind, kind)}://{path.lstrip('/')}"


def check_reachable_driver(path: str) -> None:
    """Fail before any worker starts when URI storage cannot be reached (bucket, endpoint, credentials)."""
    if not is_uri(path):
        return
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
        bucket = inner.split("/", 1)[0]
        info = fs.get_file_info(bucket)
    except (OSError, ValueError) as exc:
        raise HfrayError(f"storage.path: cannot reach {path} ({_where()}): {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise HfrayError(f"storage.path: bucket {bucket!r} of {path} does not exist ({_where()})")


def _where() -> str:
    endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    who = "credentials from the environment" if os.environ.get("AWS_ACCESS_KEY_ID") else "default AWS credentials"
    return f"endpoint {endpoint or 'AWS'}, {who}"


def runtime_env_driver(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``runtime_env`` for ``ray.init``: the storage env plus ``extra`` env vars (empty when nothing to pass)."""
    env = {**forwarded_env(), **(extra or {})}
    return {"env_vars": env} if env else {}

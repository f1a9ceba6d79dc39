"""S3-compatible endpoints, credentials and reachability of a job's storage.

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

import contextlib
import os
from typing import Any

import pyarrow.fs as pafs

from hfray.errors import HfrayError
from hfray.storage.fs import is_uri

ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
# What hfray forwards to every Ray process of a job it starts or attaches to (never credentials).
FORWARDED_ENV = (ENDPOINT_ENV, "AWS_DEFAULT_REGION", "AWS_REGION")


def activate(path: str, endpoint_url: str | None) -> None:
    """Point this process (the driver) and, through :func:`forwarded_env`, the job's Ray processes at the endpoint."""
    if endpoint_url:
        os.environ[ENDPOINT_ENV] = endpoint_url.rstrip("/")


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process that Ray processes of the job must share."""
    return {key: os.environ[key] for key in FORWARDED_ENV if os.environ.get(key)}


def check_reachable(path: str) -> None:
    """Fail before any worker starts when storage cannot be reached (bucket, endpoint, credentials) or written."""
    if not is_uri(path):
        check_writable(path)
        return
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
        bucket = inner.split("/", 1)[0]
        info = fs.get_file_info(bucket)
    except (OSError, ValueError) as exc:
        raise HfrayError(f"storage.path: cannot reach {path} ({_where()}): {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise HfrayError(f"storage.path: bucket {bucket!r} of {path} does not exist ({_where()})")
    check_writable(path)


def _missing_parents(path: str) -> list[str]:
    """The local folders of ``path`` that do not exist yet, deepest first (removed again after the check)."""
    missing = []
    while path and not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def check_writable(path: str) -> None:
    """Create and remove a marker file under ``path``: an unwritable folder or bucket fails here, in one line, and
    not in Ray Train's controller with a pyarrow traceback. Local folders this creates are removed again."""
    created = [] if is_uri(path) else _missing_parents(path)
    fs, inner = pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path)
    marker = f"{inner.rstrip('/')}/.hfray-write-check-{os.getpid()}"
    try:
        fs.create_dir(inner, recursive=True)
        with fs.open_output_stream(marker) as stream:
            stream.write(b"hfray")
        fs.delete_file(marker)
    except (OSError, ValueError) as exc:
        where = f" ({_where()})" if is_uri(path) else ""
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise HfrayError(f"storage.path: cannot write under {path}{where}: {reason}") from None
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _where() -> str:
    endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    who = "credentials from the environment" if os.environ.get("AWS_ACCESS_KEY_ID") else "default AWS credentials"
    return f"endpoint {endpoint or 'AWS'}, {who}"


def runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``runtime_env`` for ``ray.init``: the storage env plus ``extra`` env vars (empty when nothing to pass)."""
    env = {**forwarded_env(), **(extra or {})}
    return {"env_vars": env} if env else {}

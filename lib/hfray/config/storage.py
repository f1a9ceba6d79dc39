"""``storage:``: where runs live (a local dir shared by the nodes, or an ``s3://`` URI), retention and restarts."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from hfray.config.section import Section


def endpoint_problem(path: str, endpoint_url: str | None) -> str | None:
    """Why ``endpoint_url`` does not fit ``path`` (None when it does)."""
    if endpoint_url is None:
        return None
    if not path.startswith("s3://"):
        return f"an endpoint only applies to s3:// storage; storage.path is {path!r}"
    if not endpoint_url.startswith(("http://", "https://")) or len(endpoint_url.split("://", 1)[1]) == 0:
        return "expected http(s)://host[:port] of an S3-compatible server"
    return None


class StorageConfig(Section):
    path: str = Field("~/hfray_runs", description="Local dir or URI (s3://...) shared by all nodes.")
    run_name: str | None = Field(None, description="Default: '<name>-<hash of the job>', stable across retries.")
    num_to_keep: int = Field(2, ge=1, description="Ray checkpoints kept (best by the chosen metric + latest).")
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts before giving up (-1: forever).")
    async_upload: bool = Field(
        True,
        description="Upload checkpoints in a background thread while training goes on (Ray's ASYNC mode); "
        "a checkpoint counts once uploaded, so a crash mid-upload resumes from the one before.",
    )
    endpoint_url: str | None = Field(
        None, description="S3-compatible server for s3:// paths (MinIO, Ceph); credentials come from the env."
    )
    retry_s: float = Field(
        120.0,
        ge=0,
        description="How long checkpoint uploads and hfray's files are retried (exponential backoff) while storage "
        "is unreachable; past it the run stops, its last committed checkpoint intact.",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_fits_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        problem = endpoint_problem(info.data.get("path", ""), value)
        if problem:
            raise ValueError(problem)
        return value

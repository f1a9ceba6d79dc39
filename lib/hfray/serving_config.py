"""Serving settings and the artifact catalog: which model ids exist and where they live.

A ``ServeConfig`` travels to every Serve replica as a plain dict and is re-validated there, like the job
file does across Ray boundaries. The catalog maps a model id (an artifact folder name under the artifact
root) to its directory; it is the one place that decides whether an id is safe, so ids such as
``../x`` or ``/etc`` can never name a directory outside the root.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfray.checkpoints import ARTIFACT_DIR, MANIFEST, SWEEP_SUMMARY, TRIALS_DIR, read_manifest
from hfray.config import Section
from hfray.errors import ArtifactError, ConfigError, Problem

# Tune trial folders look like "train_fn_1a2b3_00001_1_lr=0.0003,seed=2_2026-11-23_10-00-00": allow those,
# but no path separators, and a leading alphanumeric so "." and ".." are impossible.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]{0,199}$")


class AutoscalingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="0 allows scale to zero (cold starts).")
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Per replica; with batching, about half of max_batch_size keeps batches full."
    )
    # Serve's own defaults; short delays make scaling react in seconds (tests, bursty traffic).
    upscale_delay_s: float = Field(30.0, ge=0, description="Load must stay above target this long to add replicas.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Load must stay below target this long to remove.")
    look_back_period_s: float = Field(
        30.0, gt=0, description="Averaging window; keep it > 10 s (Serve warns otherwise)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must be <= autoscaling.max_replicas")
        return self


class ServeConfig(Section):
    """Everything ``hfray serve`` and the Serve YAML builder accept; unknown keys are errors."""

    artifact_root: str = Field(
        description="An artifact dir, or a dir whose sub-folders are artifacts (or runs holding 'artifact/')."
    )
    default_model: str | None = Field(None, description="Model id used when a request names none.")
    models: list[str] | None = Field(None, description="Restrict serving to these ids; default: all found.")
    route_prefix: str = Field("/", pattern=r"^/[A-Za-z0-9_./-]*$")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_batch_size: int = Field(16, ge=1, le=1024, description="Requests per forward pass (@serve.batch).")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)
    max_concurrent_batches: int = Field(
        1, ge=1, le=8, description="Batches in flight per replica: >1 overlaps tokenizing one with the GPU's work."
    )
    topology: Literal["fused", "split"] = Field(
        "fused",
        description="fused: the HTTP ingress replicas hold the models (one hop per request; any replica loads any "
        "model, LRU). split: a separate ingress routes each request to a model replica that has its model "
        "loaded (Serve model multiplexing) - for many models over many replicas.",
    )
    cuda_graphs: bool = Field(
        True, description="On GPU: pad inputs to shape buckets and replay captured CUDA graphs (eager on failure)."
    )
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    max_ongoing_requests: int = Field(32, ge=1, description="Per model replica; also bounds one batch queue.")
    num_cpus: float = Field(1, ge=0, description="CPUs per model replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per model replica; >0 puts the model on CUDA.")
    ingress_num_cpus: float = Field(0, ge=0, description="split topology: the ingress mostly waits; 0 lets it share.")
    ingress_replicas: int = Field(1, ge=1, description="split topology: more when JSON handling limits throughput.")
    ingress_max_ongoing_requests: int = Field(256, ge=1)
    access_log: bool = Field(True, description="Serve's per-request log lines; off saves CPU at high request rates.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    max_models_per_replica: int = Field(3, ge=1, description="Multiplexing: LRU-cached models per replica.")
    max_length: int = Field(256, ge=8, le=32768, description="Tokens per input; longer inputs are truncated.")
    max_text_chars: int = Field(10_000, ge=1)
    max_inputs: int = Field(64, ge=1)
    max_top_k: int = Field(100, ge=1)
    auth_token: str | None = Field(None, min_length=8, description="If set, /v1/* needs 'Authorization: Bearer'.")

    @model_validator(mode="after")
    def _targets(self) -> ServeConfig:
        if self.autoscaling.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError("autoscaling.target_ongoing_requests must be <= max_ongoing_requests")
        if self.max_ongoing_requests < self.max_batch_size * self.max_concurrent_batches:
            raise ValueError(
                "max_ongoing_requests must be >= max_batch_size * max_concurrent_batches, or batches can never fill"
            )
        for mid in [self.default_model, *(self.models or [])]:
            if mid is not None and not MODEL_ID.match(mid):
                raise ValueError(f"model id {mid!r} is not a plain folder name")
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "serve config") -> ServeConfig:
        return super().from_dict(raw, source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> ServeConfig:
        """ServeConfig fields at the top level, or a Serve config file whose first application has them as args."""
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(raw, dict) and isinstance(raw.get("applications"), list) and raw["applications"]:
            # A Serve config file (serve/*.yaml): its first application's builder args are our fields.
            raw = raw["applications"][0].get("args") or {}
        if not isinstance(raw, dict):
            raise ConfigError([Problem("(top level)", "a serve config must be a YAML mapping")], str(path))
        return cls.from_dict({**raw, **(overrides or {})}, source=str(path))


# ----------------------------------------------------------------------------- catalog


class ModelIdError(ValueError):
    """A client-supplied model id is malformed, escapes the root, or is unknown (``status`` says which)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    path: str
    manifest: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        keep = ("task", "labels", "name", "run_name", "metrics", "best")
        return {"id": self.model_id, **{k: m[k] for k in keep if k in m}}


def _artifact_dir(candidate: Path) -> Path | None:
    """``candidate`` itself if it is an artifact, or its ``artifact/`` sub-folder (a run dir)."""
    if (candidate / MANIFEST).is_file():
        return candidate
    if (candidate / ARTIFACT_DIR / MANIFEST).is_file():
        return candidate / ARTIFACT_DIR
    return None


BEST_ID = "best"  # a sweep's exported best model


class ArtifactCatalog:
    """Local artifact root -> model ids. Looked up per request so new sweep trials appear without a restart."""

    def __init__(self, root: str, allowed: list[str] | None = None, ttl_s: float = 0.0) -> None:
        """``ttl_s`` > 0 reuses a successful lookup for that long (the ingress: ~0.3 ms of syscalls a request)."""
        self.root = Path(os.path.abspath(os.path.expanduser(root)))
        if not self.root.is_dir():
            raise ArtifactError(f"artifact_root: {self.root} is not a directory")
        self.allowed = set(allowed) if allowed else None
        # A sweep folder serves its exported best as 'best' and every trial that exported one by trial id.
        self.sweep = (self.root / SWEEP_SUMMARY).is_file()
        # A single artifact is served under its own folder name (or its run's name for '<run>/artifact').
        self.single = not self.sweep and _artifact_dir(self.root) is not None
        self._manifests: dict[tuple[str, float], dict[str, Any]] = {}
        self.ttl_s = ttl_s
        self._recent: dict[str, tuple[float, ModelEntry]] = {}

    def ids(self) -> list[str]:
        if self.single:
            found = [self._single_id()]
        elif self.sweep:
            trials = self.root / TRIALS_DIR
            runs = sorted(trials.iterdir()) if trials.is_dir() else []
            found = [BEST_ID] if _artifact_dir(self.root) else []
            found += [p.name for p in runs if MODEL_ID.match(p.name) and _artifact_dir(p)]
        else:
            found = sorted(p.name for p in self.root.iterdir() if MODEL_ID.match(p.name) and self._inside(p))
        return [m for m in found if self.allowed is None or m in self.allowed]

    def _inside(self, candidate: Path) -> bool:
        """An artifact whose real location (symlinks resolved) is under the root."""
        path = _artifact_dir(candidate)
        return path is not None and path.resolve().is_relative_to(self.root.resolve())

    def _single_id(self) -> str:
        return self.root.parent.name if self.root.name == ARTIFACT_DIR else self.root.name

    def resolve(self, model_id: str) -> ModelEntry:
        if not isinstance(model_id, str) or not MODEL_ID.match(model_id):
            raise ModelIdError(f"model: {model_id!r} is not a valid model id (a folder name, no '/' or '..')", 400)
        if self.allowed is not None and model_id not in self.allowed:
            raise ModelIdError(f"model: unknown model id {model_id!r}; see GET /v1/models", 404)
        now = time.monotonic()
        hit = self._recent.get(model_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        entry = self._lookup(model_id)
        if self.ttl_s > 0:
            if len(self._recent) > 4096:  # bounded: ids come from clients (though only existing ones get here)
                self._recent.clear()
            self._recent[model_id] = (now, entry)
        return entry

    def _lookup(self, model_id: str) -> ModelEntry:
        if self.single:
            path = self.root if model_id == self._single_id() else None
        elif self.sweep:
            path = _artifact_dir(self.root if model_id == BEST_ID else self.root / TRIALS_DIR / model_id)
        else:
            path = _artifact_dir(self.root / model_id)
        if path is None:
            raise ModelIdError(f"model: unknown model id {model_id!r}; see GET /v1/models", 404)
        # The regex already forbids separators; resolving symlinks keeps a link inside the root from escaping.
        if not self.single and not path.resolve().is_relative_to(self.root.resolve()):
            raise ModelIdError(f"model: {model_id!r} points outside the artifact root", 400)
        return ModelEntry(model_id, str(path), self._manifest(path))

    def _manifest(self, path: Path) -> dict[str, Any]:
        # Cached by mtime: a promoted artifact rewritten in place is re-read, an unchanged one is not.
        key = (str(path), (path / MANIFEST).stat().st_mtime)
        if key not in self._manifests:
            self._manifests[key] = read_manifest(str(path))
        return self._manifests[key]

    def entries(self) -> list[ModelEntry]:
        return [self.resolve(mid) for mid in self.ids()]

    def default_id(self, configured: str | None) -> str:
        if configured:
            try:
                return self.resolve(configured).model_id
            except ModelIdError as exc:
                raise ArtifactError(f"default_model: {exc}; found {self.ids()}") from None
        ids = self.ids()
        if BEST_ID in ids and self.sweep:
            return BEST_ID
        if not ids:
            raise ArtifactError(f"artifact_root: no hfray artifacts ({MANIFEST}) in {self.root}")
        return ids[0]

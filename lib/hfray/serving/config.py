"""Serving settings, ``ServeConfig``: what ``hfray serve``, ``serve run serve/*.yaml`` and the replicas share.

A ``ServeConfig`` travels to every Serve replica as a plain dict and is re-validated there, like the job
file does across Ray boundaries.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfray.config import Section
from hfray.errors import ConfigError, Problem

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
    batcher: Literal["continuous", "serve"] = Field(
        "continuous",
        description="continuous: a batch forms when one of max_concurrent_batches slots is free, so requests "
        "arriving meanwhile fill the next one (hfray.serving.replica.batcher). serve: Ray Serve's @serve.batch, "
        "which forms a batch every batch_wait_timeout_s and queues it for a slot (small batches under load).",
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
    ingress_batching: bool = Field(
        True,
        description="split topology: each ingress gathers requests (max_batch_size, batch_wait_timeout_s) into one "
        "call per model replica, so a model replica handles a few calls per batch, not one per request.",
    )
    ingress_calls_in_flight: int = Field(
        2,
        ge=1,
        le=64,
        description="split topology, ingress_batching: gathered calls an ingress has out at once; requests "
        "arriving while they are out go into the next call, so calls grow with the load.",
    )
    separate_user_loop: bool = Field(
        False,
        description="false (default): replica code runs on the replica's main loop "
        "(RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 in the replicas' runtime_env), one thread hop less per "
        "request (on an H200, 8 fused replicas at 128 clients: 10.4k req/s p99 23 ms against 8.2k p99 134 ms "
        "with the separate loop; bench/results/serve_gpu26_h200_dec04e.md); hfray's replicas run models, "
        "tokenizers and generation in worker threads, so nothing blocks that loop. true: Serve's own default, "
        "an event loop of its own thread.",
    )
    hot_routes: bool = Field(
        True,
        description="POST /v1/classify and /v1/embeddings answered by a plain ASGI middleware ahead of FastAPI's "
        "routing (same validation, answers and errors; less CPU per request: hfray.serving.replica.hot_routes).",
    )
    access_log: bool = Field(True, description="Serve's per-request log lines; off saves CPU at high request rates.")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    max_models_per_replica: int = Field(3, ge=1, description="Multiplexing: LRU-cached models per replica.")
    max_length: int = Field(256, ge=8, le=32768, description="Tokens per input; longer inputs are truncated.")
    max_text_chars: int = Field(10_000, ge=1)
    max_inputs: int = Field(64, ge=1)
    max_top_k: int = Field(100, ge=1)
    auth_token: str | None = Field(None, min_length=8, description="If set, /v1/* needs 'Authorization: Bearer'.")
    # Language models (hfray.serving.replica.generation): adapters of one base share it, or each is merged.
    adapters: Literal["shared", "merged"] = Field("shared", description="shared: one base per replica, LRU adapters.")
    max_adapters: int = Field(8, ge=1, description="shared adapters: adapters loaded per base (LRU).")
    max_new_tokens: int = Field(512, ge=1, le=32768, description="Generation: most new tokens per request.")
    max_prompt_tokens: int = Field(4096, ge=1, description="Generation: most prompt tokens (chat template applied).")
    ui: bool = Field(False, description="The Gradio demo page at <route_prefix>/ui (pip install 'hfray[demo]').")
    static_cache: bool = Field(
        False, description="On GPU: static KV cache and compiled decoding (transformers' cache_implementation)."
    )

    @model_validator(mode="after")
    def _targets(self) -> ServeConfig:
        if self.autoscaling.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError("autoscaling.target_ongoing_requests must be <= max_ongoing_requests")
        if self.max_ongoing_requests < self.max_batch_size * self.max_concurrent_batches:
            raise ValueError(
                "max_ongoing_requests must be >= max_batch_size * max_concurrent_batches, or batches can never fill"
            )
        if self.ui and self.auth_token is not None:
            raise ValueError("ui: the demo page has no bearer-token auth; serve it without auth_token")
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

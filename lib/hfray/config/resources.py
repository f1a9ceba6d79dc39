"""``resources:`` (what each Ray Train worker holds) and ``cluster:`` (which Ray cluster, and its checks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hfray.config.section import Section


class ResourcesConfig(Section):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each, DDP).")
    gpus_per_worker: float = Field(0, ge=0, description="0 trains on CPU (DDP over gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="Default 4 on GPU jobs (data loading, tokenizing), 1 on CPU.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    accelerator_type: str | None = None
    launch: Literal["auto", "train", "task"] = Field(
        "auto",
        description="How the job's workers start. auto: task for one worker (train when the task streams Ray Data), "
        "else train. train: a Ray Train run (a controller and a worker group; storage.max_failures restarts the "
        "group; the run shows in the Ray dashboard's Train view). task (one worker only): the worker's function in "
        "ONE Ray task holding the worker's resources, through hfray's in-process runner (hfray.train.local): no "
        "Train controller or worker-group processes to boot (seconds less start-up, bench/results/overhead_*.md); "
        "failures retried from the last checkpoint up to storage.max_failures. Not for tasks that stream Ray Data.",
    )


class ClusterConfig(Section):
    address: str | None = Field(None, description="Ray address; unset: $RAY_ADDRESS, else a new local cluster.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster started by hfray.")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of a local cluster started by hfray.")
    check_resources: bool = Field(True, description="Refuse jobs the cluster cannot fit (off for autoscaling).")
    overlap_checks: bool = Field(
        True,
        description="Start Ray (a local cluster's boot, the Train workers) while the driver checks the job "
        "(classification); the workers wait for the checks, and train only if they pass. hfray sweep: the sweep's "
        "checks run while Ray starts and its warm trial processes import; no trial starts unless they pass.",
    )

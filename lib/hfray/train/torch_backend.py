"""Ray Train's torch backend without importing torch where no training runs (the driver's ``fit()``, the controller).

``ray.train.torch.TorchTrainer`` carries a ``TorchConfig`` whose module imports torch at the top. The Train
controller (a fresh actor process per run and per Tune trial) unpickles it, so it imports torch (and, on a GPU
host, its CUDA libraries) before it creates the worker group: 1 s on 2 CPUs, more on a GPU host
(``bench/results/overhead_*.md``). The driver pays the same import before it can call ``fit()``.

:class:`LazyTorchConfig` is the same configuration (backend, init method, timeout) in a module that imports
no torch; its backend runs Ray 2.60's ``_TorchBackend`` steps (pick nccl/gloo, rank 0's address, the
torchrun env vars, ``init_process_group`` on every worker, and the matching shutdown) by sending small
functions to the workers, which import Ray's own per-worker helpers there. :func:`torch_trainer`
builds the Ray Train V2 ``DataParallelTrainer`` that ``TorchTrainer`` is, with this config. TPU process
groups (``tpu_dist``) are refused when the config is built; hfray schedules CPUs and GPUs only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.util import TrainingFramework

from hfray.cluster import prewarm

logger = logging.getLogger(__name__)


class TorchDeviceContext:
    """``TorchConfig``'s train-function context: each worker's default CUDA device is its own GPU."""

    def __enter__(self) -> None:
        prewarm.wait()  # the worker's background imports (hfray.cluster.prewarm) end before the train function runs
        import ray.train.torch
        import torch

        if torch.cuda.is_available():
            device = ray.train.torch.get_device()
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def __exit__(self, *exc: object) -> bool:
        return False  # exceptions propagate


@dataclass
class LazyTorchConfig(BackendConfig):
    """``ray.train.torch.TorchConfig``'s fields and behaviour, importable without torch."""

    backend: str | None = None  # None: nccl when workers have GPUs, else gloo
    init_method: str = "env"
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        # Checked here, on the driver: an error raised in the controller's backend start-up fails the run
        # but leaves its placement group reserved (Ray 2.60), so the next run on the cluster waits forever.
        if self.init_method not in ("env", "tcp"):
            raise ValueError(f"LazyTorchConfig.init_method must be 'env' or 'tcp', got {self.init_method!r}")
        if self.backend == "tpu_dist":
            raise ValueError("LazyTorchConfig.backend: hfray runs CPU and GPU workers (gloo, nccl), not tpu_dist")

    @property
    def backend_cls(self) -> type[Backend]:
        return LazyTorchBackend

    @property
    def train_func_context(self) -> type:
        return TorchDeviceContext

    @property
    def framework(self) -> TrainingFramework:
        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": self.init_method, "timeout_s": self.timeout_s}


def _worker_address_and_port() -> tuple[str, int]:
    from ray.train._internal.utils import get_address_and_port

    return get_address_and_port()


def _worker_torchrun_env(addr: str | None, port: int | None) -> None:
    """MASTER_ADDR/PORT for ``env://`` plus LOCAL_RANK, RANK, WORLD_SIZE ... as torchrun sets them."""
    from ray.train.torch.config import _set_torch_distributed_env_vars

    if addr is not None:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    _set_torch_distributed_env_vars()


def _worker_process_group(**kwargs: Any) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)


def _worker_shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class LazyTorchBackend(Backend):
    """Ray 2.60's ``_TorchBackend`` for CPU and GPU workers; only the workers import torch."""

    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group: Any, backend_config: LazyTorchConfig) -> None:
        backend = backend_config.backend
        if backend is None:
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        addr, port = worker_group.execute_single(0, _worker_address_and_port)
        if backend_config.init_method == "env":
            url, env_addr = "env://", addr
        else:  # "tcp" (checked in LazyTorchConfig)
            from ray._common.network_utils import build_address

            url, env_addr = f"tcp://{build_address(addr, port)}", None
        worker_group.execute(_worker_torchrun_env, addr=env_addr, port=port)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _worker_process_group,
                    backend=backend,
                    world_rank=rank,
                    world_size=len(worker_group),
                    init_method=url,
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(len(worker_group))
            ]
        )

    def on_shutdown(self, worker_group: Any, backend_config: LazyTorchConfig) -> None:
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        futures = worker_group.execute_async(_worker_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        )
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:  # as Ray: a hung NCCL teardown must not keep the run from finishing
            logger.warning("torch process group shutdown timed out after %s s", timeout_s)


def torch_trainer(train_fn: Any, *, scaling_config: Any, trainer_cls: type | None = None, **kwargs: Any) -> Any:
    """``ray.train.torch.TorchTrainer(train_fn, ...)`` with :class:`LazyTorchConfig`: no torch import here.

    ``kwargs``: ``DataParallelTrainer``'s (``train_loop_config``, ``run_config``, ``datasets``,
    ``dataset_config``). The backend is chosen as TorchTrainer does: nccl with GPUs, else gloo. ``trainer_cls``: a
    subclass of hfray's trainer (:class:`hfray.train.local.InProcessTrainer`).
    """
    from hfray.train.failures import Trainer  # Ray's DataParallelTrainer; a worker's user error is not retried

    config = LazyTorchConfig(backend="nccl" if scaling_config.use_gpu else "gloo")
    return (trainer_cls or Trainer)(train_fn, backend_config=config, scaling_config=scaling_config, **kwargs)

"""hfray's torch backend: real gloo process groups on two Ray Train workers, and no torch in the controller.

This module must not import torch at the top: the controller-side callback below is pickled by value, and a
torch import here would make the assertion about the controller's imports meaningless.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from ray import cloudpickle

from hfray.torch_backend import LazyTorchConfig, torch_trainer_driver

# Ray's processes cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _all_reduce_per_worker(config: dict[str, Any]) -> None:
    import os

    import ray.train
    import torch
    import torch.distributed as dist

    context = ray.train.get_context()
    total = torch.tensor([float(context.get_world_rank() + 1)])
    dist.all_reduce(total)  # ranks 0 and 1: 1 + 2
    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    ray.train.report(
        {
            "sum": float(total.item()),
            "backend": dist.get_backend(),
            "rank_matches": env["RANK"] == str(context.get_world_rank()),
            "env_set": all(env.values()) and env["WORLD_SIZE"] == "2",
            "device": str(ray.train.torch.get_device()),
        }
    )


def test_two_workers_get_a_gloo_group_while_the_controller_never_imports_torch(ray_cluster, tmp_path: Path) -> None:
    import ray.train

    seen = tmp_path / "controller.json"

    class ControllerImports(ray.train.UserCallback):  # local: pickled by value into the controller
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            mods = {m: m in sys.modules for m in ("torch", "ray.train.torch", "transformers")}
            seen.write_text(json.dumps({"modules": mods, "metrics": metrics}))

    trainer = torch_trainer_driver(
        _all_reduce_per_worker,
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(
            name="lazy-torch", storage_path=str(tmp_path / "runs"), callbacks=[ControllerImports()]
        ),
    )
    assert trainer.backend_config == LazyTorchConfig(backend="gloo")
    trainer.fit()
    report = json.loads(seen.read_text())
    assert report["modules"] == {"torch": False, "ray.train.torch": False, "transformers": False}
    for rank_metrics in report["metrics"]:
        assert rank_metrics["sum"] == 3.0
        assert rank_metrics["backend"] == "gloo"
        assert rank_metrics["rank_matches"] and rank_metrics["env_set"]
        assert rank_metrics["device"] == "cpu"


def test_an_unknown_init_method_fails_the_run_with_its_name(ray_cluster, tmp_path: Path) -> None:
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    trainer = DataParallelTrainer(
        _all_reduce_per_worker,
        backend_config=LazyTorchConfig(backend="gloo", init_method="file"),
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(
            name="bad-init", storage_path=str(tmp_path / "runs"), failure_config=ray.train.FailureConfig(0)
        ),
    )
    with pytest.raises(Exception, match="init_method must be 'env' or 'tcp', got 'file'"):
        trainer.fit()

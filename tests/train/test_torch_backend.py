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

from hfray.train.torch_backend import LazyTorchConfig, torch_trainer

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

    trainer = torch_trainer(
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


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"init_method": "file"}, "init_method must be 'env' or 'tcp', got 'file'"),
        ({"backend": "tpu_dist"}, "not tpu_dist"),
    ],
)
def test_a_config_the_backend_cannot_start_is_refused_on_the_driver(fields: dict[str, str], message: str) -> None:
    # Refused before any Ray work: raised in the controller, the run's placement group would stay reserved.
    with pytest.raises(ValueError, match=message):
        LazyTorchConfig(**fields)

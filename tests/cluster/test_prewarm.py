"""Train workers import their stack while Ray boots them; the job's other processes import nothing more (issue 19).

On the session's real local Ray cluster (started by hfray's own ``start_local_cluster``, so with hfray's job
runtime env): a Ray Train run through hfray's trainer, and a plain actor of the same job beside it.
"""

from __future__ import annotations

import json
import sys
import uuid

import ray
import ray.train

from hfray.cluster import prewarm
from hfray.cluster.connect import job_runtime_env
from hfray.train.launch import PREWARM_MODULES
from hfray.train.torch_backend import torch_trainer

HEAVY = "transformers.trainer"  # nothing in Ray's worker boot, the torch backend or this test imports it


def test_train_workers_have_their_stack_before_the_train_function_and_others_not(ray_cluster, tmp_path) -> None:
    # Defined here, not at module level: Ray ships them by value (the workers cannot import this test module).
    def report_loaded_modules(config: dict) -> None:
        """Which prewarm modules this process had before the train function imported anything."""
        with open(config["out"], "w") as f:  # Ray's Result keeps only reports with a checkpoint
            json.dump([m for m in config["modules"] if m in sys.modules], f)

    @ray.remote(num_cpus=0)
    class Bystander:
        def loaded(self, names: list[str]) -> list[str]:
            return [m for m in names if m in sys.modules]

    env = prewarm.worker_env(PREWARM_MODULES)
    env["env_vars"][prewarm.MIN_CPUS_ENV] = "1"  # this machine may have fewer cores than the default asks for
    trainer = torch_trainer(
        report_loaded_modules,
        train_loop_config={"modules": list(PREWARM_MODULES), "out": str(tmp_path / "loaded.json")},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(
            name="prewarm",
            storage_path=str(tmp_path),
            worker_runtime_env=env,
        ),
    )
    trainer.fit()
    assert HEAVY in PREWARM_MODULES
    assert json.loads((tmp_path / "loaded.json").read_text()) == list(PREWARM_MODULES)

    # A process of the same job without the variable (its own runtime env: a fresh process, never a reused one).
    fresh = Bystander.options(runtime_env={"env_vars": {"HFRAY_TEST_FRESH": uuid.uuid4().hex}}).remote()
    try:
        assert ray.get(fresh.loaded.remote([HEAVY, "torch"])) == []
    finally:
        ray.kill(fresh)


def test_the_hook_is_in_the_job_runtime_env_except_under_ray_job_submit() -> None:
    assert job_runtime_env("10.0.0.1:6379")["worker_process_setup_hook"] == prewarm.HOOK
    assert (job_runtime_env("auto") or {}).get("worker_process_setup_hook") is None  # the submitted env rules
    mine = prewarm.job_runtime_env({"worker_process_setup_hook": "mine.hook"})
    assert mine["worker_process_setup_hook"] == "mine.hook"  # a user's own hook is left alone

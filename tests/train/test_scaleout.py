"""Scale-out presets on CPU: what can be checked without GPUs or DeepSpeed (the runs are tests/gpu)."""

from __future__ import annotations

import pytest

from conftest import tiny_job
from hfray.artifacts.checkpoints import files_for_rank
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.train.arguments import build_kwargs, check_training_arguments


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "zero3-offload", "fsdp"])
def test_sharded_strategies_on_cpu_fail_naming_training_strategy(tmp_path, data_files, strategy):
    job = JobConfig.from_dict(tiny_job(tmp_path, data_files, training={"strategy": strategy}))
    with pytest.raises(ConfigError) as err:
        check_training_arguments(job)
    text = str(err.value)
    assert "training.strategy" in text and "GPU" in text
    if strategy != "fsdp":  # DeepSpeed is not installed on the CPU machines (nor in CI)
        assert "not installed" in text


def test_strategy_arguments_reach_the_hf_trainer(tmp_path, data_files):
    raw = tiny_job(tmp_path, data_files, training={"strategy": "zero3-offload"})
    kwargs = build_kwargs(JobConfig.from_dict(raw), str(tmp_path), use_gpu=True)
    zero = kwargs["deepspeed"]["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert kwargs["deepspeed"]["train_micro_batch_size_per_gpu"] == "auto"  # HF fills it from the job
    assert "deepspeed" not in build_kwargs(JobConfig.from_dict(raw), str(tmp_path), use_gpu=True, scale_out=False)
    with pytest.raises(ConfigError, match="hfray sets deepspeed .set training.strategy."):
        JobConfig.from_dict(tiny_job(tmp_path, data_files, training={"extra_args": {"deepspeed": {}}}))


def test_each_rank_uploads_its_own_shards(tmp_path):
    """ZeRO and FSDP checkpoints hold one shard per rank, written on that rank's node: each rank uploads its own."""
    names = [
        "trainer_state.json",
        "model.safetensors",
        "rng_state_0.pth",
        "rng_state_1.pth",
        "global_step10/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "global_step10/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "global_step10/zero_pp_rank_0_mp_rank_00_model_states.pt",
        "global_step10/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "global_step10/mp_rank_00_model_states.pt",
        "pytorch_model_fsdp_0/__0_0.distcp",
        "pytorch_model_fsdp_0/__1_0.distcp",
        "pytorch_model_fsdp_0/.metadata",
        "latest",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    rank0, rank1 = files_for_rank(str(tmp_path), 0, 2), files_for_rank(str(tmp_path), 1, 2)
    assert sorted(rank0 + rank1) == sorted(names)  # every file has exactly one uploader
    assert rank1 == sorted(n for n in names if "rank_1_" in n or "_1.pth" in n or "__1_0" in n)

"""Compiled TRL jobs: in a reused process (an in-process sweep trial runs where the trial before it ran) each job
compiles its own shapes, however many jobs came before (``hfray.train.worker.compile_settings``); LoRA DPO compiled
trains with eager's losses."""

from __future__ import annotations

import pytest
from test_trl import chat_tokenizer, dpo_rows, sft_rows, sft_trainer, trl_job, write_jsonl  # noqa: F401 (a fixture)


def test_each_compiled_job_in_a_reused_process_compiles_its_own_graphs(tmp_path, chat_tokenizer):  # noqa: F811
    """Three LoRA ranks trained one after the other in this process (a rank is a parameter's shape: Dynamo compiles
    each anew), its recompile limit lowered to 2 (8 in real life: from a sweep's fifth rank on 2 CPUs): every job
    still compiles graphs of its own. Without the reset a later job finds the limit reached and trains its layers
    eager (0 new graphs)."""
    import torch._dynamo as dynamo

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(48, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(8, 2))
    with dynamo.config.patch(recompile_limit=2):  # Dynamo's own switch, undone on leaving
        new_graphs = []
        for rank in (2, 4, 8):
            steps = {"max_steps": 2, "torch_compile": True, "extra_args": {"torch_compile_backend": "aot_eager"}}
            packed = {"messages_column": "conversation", "packing": True}
            raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl=packed, training=steps)
            raw["peft"] = {"method": "lora", "r": rank}
            _, _, _, trainer = sft_trainer(tmp_path, raw, f"hf-r{rank}")  # compile_settings(job) first, as a worker
            before = dynamo.utils.counters["stats"]["unique_graphs"]
            trainer.train()
            new_graphs.append(dynamo.utils.counters["stats"]["unique_graphs"] - before)
    assert all(n > 0 for n in new_graphs), new_graphs


def test_cuda_graph_modes_mark_each_training_step() -> None:
    """``training.extra_args.torch_compile_mode`` that replays CUDA graphs gets the step mark
    (``hfray.train.callbacks.cudagraphs``); other modes, or no compile, do not."""
    from types import SimpleNamespace

    from hfray.train.callbacks.cudagraphs import CudaGraphStepCallback, wanted

    assert wanted({"torch_compile_mode": "reduce-overhead"}, True)
    assert wanted({"torch_compile_mode": "max-autotune"}, True)
    assert not wanted({"torch_compile_mode": "reduce-overhead"}, False) and not wanted({}, True)
    assert not wanted({"torch_compile_mode": "max-autotune-no-cudagraphs"}, True)
    assert wanted({}, True, cuda_graphs=True) and not wanted({}, None, cuda_graphs=True)  # training.cuda_graphs
    CudaGraphStepCallback().on_step_begin(None, SimpleNamespace(global_step=0), None)  # a no-op off CUDA


def test_compiled_lora_dpo_trains_with_the_eager_losses(tmp_path, chat_tokenizer):  # noqa: F811
    """``training.torch_compile`` on LoRA DPO (each decoder layer a region; the policy's forward with the adapter, the
    reference's with it disabled: TRL's ``use_adapter``): the losses of the eager run step by step, the layers compiled
    and no graph break. The step's device time on one H100 is mostly the eager elementwise passes compiling fuses
    (``bench/results/gpu_dec06_pm_h100.md`` part 3); its speed there is not measured yet."""
    import torch._dynamo as dynamo
    from transformers import set_seed

    from hfray.config import JobConfig
    from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits
    from hfray.train.recipes.trl.worker import build_causal_lm, build_trainer, peft, trl_arguments
    from hfray.train.worker import compile_settings

    train = write_jsonl(tmp_path / "dpo_train.jsonl", dpo_rows(32, 1))
    val = write_jsonl(tmp_path / "dpo_val.jsonl", dpo_rows(8, 2))
    columns = {"prompt_column": "question", "chosen_column": "good", "rejected_column": "bad"}
    losses = {}
    for compiled in (False, True):
        steps = {"max_steps": 4, "logging_steps": 1, "torch_compile": compiled}
        if compiled:  # Dynamo's graphs and AOTAutograd's backward, without Inductor's C++ build
            steps["extra_args"] = {"torch_compile_backend": "aot_eager"}
        lora = {"method": "lora", "r": 8, "dropout": 0.0}  # dropout's random stream differs compiled
        raw = trl_job(tmp_path, chat_tokenizer, "dpo", train, val, trl=columns, peft=lora, training=steps)
        job = JobConfig.from_dict(raw)
        compile_settings(job)
        tokenizer = load_chat_tokenizer(job)
        set_seed(0)
        model, _ = peft.apply_peft(build_causal_lm(job, tokenizer), job)
        args = trl_arguments(job, str(tmp_path / f"hf{compiled}"), use_gpu=False)
        trainer = build_trainer(job, model, tokenizer, args, load_trl_splits(job), [])
        dynamo.utils.counters.clear()
        trainer.train()
        losses[compiled] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        assert (dynamo.utils.counters["stats"]["unique_graphs"] > 0) is compiled
        assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    assert len(losses[True]) == 4 and losses[True][-1] < losses[True][0], losses
    assert losses[True] == pytest.approx(losses[False], rel=1e-3), losses

"""Compiled jobs in a reused process (an in-process sweep trial runs where the trial before it ran): each job
compiles its own shapes, however many jobs came before (``hfray.train.worker.compile_settings``)."""

from __future__ import annotations

from test_trl import chat_tokenizer, sft_rows, sft_trainer, trl_job, write_jsonl  # noqa: F401 (a fixture)


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

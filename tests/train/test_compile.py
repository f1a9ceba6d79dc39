"""Compiled TRL jobs: in a reused process (an in-process sweep trial runs where the trial before it ran) each job
compiles its own shapes, however many jobs came before (``hfray.train.process.compile_settings``); LoRA DPO compiled
trains with eager's losses."""

from __future__ import annotations

import math

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


def test_compiled_lora_dpo_trains_with_the_eager_losses(tmp_path, chat_tokenizer, monkeypatch):  # noqa: F811
    """``training.torch_compile`` on LoRA DPO (each decoder layer a region; the policy's forward with the adapter, the
    reference's with it disabled: TRL's ``use_adapter``), its batches padded to a multiple of 64 tokens (8 here, so
    that these short pairs come in several lengths: the step compiled again with a dynamic length): the losses of the
    eager run (padded to each batch's longest) step by step, the layers compiled and no graph break. On GPUs it is
    LoRA DPO's default (``hfray.train.recipes.trl.preference``)."""
    import torch._dynamo as dynamo
    from transformers import set_seed

    from hfray.config import JobConfig
    from hfray.train import arguments

    monkeypatch.setattr(arguments, "COMPILED_PAD_MULTIPLE", 8)
    from hfray.train.process import compile_settings
    from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits
    from hfray.train.recipes.trl.worker import build_causal_lm, build_trainer, peft, trl_arguments

    rows = dpo_rows(32, 1)
    for i, row in enumerate(rows):  # prompts of 0-15 more words before them: batches of several lengths
        row["question"] = "user " * (i * 7 % 16) + row["question"]
    train = write_jsonl(tmp_path / "dpo_train.jsonl", rows)
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
        collate, lengths = trainer.data_collator, []

        def recording(examples, collate=collate, lengths=lengths):  # the batch lengths the step sees
            batch = collate(examples)
            lengths.append(batch["input_ids"].shape[1])
            return batch

        trainer.data_collator = recording
        dynamo.utils.counters.clear()
        trainer.train()
        losses[compiled] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        # Compiled: a multiple of 8 (a few shapes, not one per batch); eager: each batch's longest
        assert all(n % 8 == 0 for n in lengths) or not compiled, lengths
        assert len(set(lengths)) > 1 and (compiled or any(n % 8 for n in lengths)), lengths
        assert (dynamo.utils.counters["stats"]["unique_graphs"] > 0) is compiled
        assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    # Step 1's loss is ln 2 (LoRA's B starts at zero: the policy is the reference); after it the adapter has moved
    assert len(losses[True]) == 4 and all(abs(x - math.log(2)) > 1e-5 for x in losses[True][1:]), losses
    assert losses[True] == pytest.approx(losses[False], rel=1e-3), losses


def test_lora_dpo_on_gpus_compiles_by_default_unless_the_job_says_otherwise() -> None:
    """LoRA DPO on a GPU worker (``hfray.train.recipes.trl.preference``): compiled, without CUDA graphs unless the job
    asks, each way out kept; full-parameter DPO, QLoRA, SFT, CPU, Liger, DeepSpeed untouched.
    A compiled DPO job pads to multiples of 64 tokens (an eager one to each batch's longest)."""
    from hfray.config import JobConfig
    from hfray.train.recipes.trl.preference import default_compile, padding

    def dpo(peft: dict | None = None, workers: int = 1, task: str = "dpo", **training: object) -> JobConfig:
        raw = {
            "name": "d",
            "task": task,
            "model": {"name_or_path": "m"},
            "data": {"train": "x.jsonl"},
            "trl": {},
            "training": training,
            "resources": {"num_workers": workers, "gpus_per_worker": 1},
        }
        return JobConfig.from_dict(raw | ({"peft": peft} if peft else {}))

    lora = {"method": "lora"}
    pairs = [
        (dpo(lora), (True, None)),
        (dpo(lora, cuda_graphs=True), (True, True)),
        (dpo(lora, workers=2), (True, None)),
        (dpo(lora, cuda_graphs=False), (True, False)),
        (dpo(lora, gradient_checkpointing=True), (True, None)),
        (dpo(lora, torch_compile=False), (False, None)),
        (dpo(lora, liger_kernel=True), (None, None)),
        (dpo(lora, strategy="zero2"), (None, None)),
        (dpo(), (None, None)),
        (dpo({"method": "qlora"}), (None, None)),
        (dpo(lora, task="sft"), (None, None)),
    ]
    resolved = [default_compile(job, True).training for job, _ in pairs]
    assert [(t.torch_compile, t.cuda_graphs) for t in resolved] == [want for _, want in pairs]
    assert default_compile(dpo(lora), False).training.torch_compile is None  # CPU
    assert padding(default_compile(dpo(lora), True)) == {"pad_to_multiple_of": 64}
    assert padding(dpo(lora, torch_compile=True)) == {"pad_to_multiple_of": 64} and padding(dpo(lora)) == {}


def test_sdpa_may_pick_cudnn_attention_only_in_compiled_jobs_unless_the_job_says(monkeypatch) -> None:
    """``training.cudnn_attention``: the process switch a worker sets (``hfray.train.process.compile_settings``)
    follows the resolved job, set each time (a reused trial process may have run a job with another value), and the
    manifest records it. That the kernel then runs or not: ``tests/gpu/test_speed_gpu.py``."""
    from types import SimpleNamespace

    import torch

    from hfray.config import JobConfig
    from hfray.train.process import REGIONAL_ENV, compile_settings
    from hfray.train.worker import model_record

    for key in (REGIONAL_ENV, "TORCHINDUCTOR_CACHE_DIR"):  # compile_settings sets them: undone after the test
        monkeypatch.delenv(key, raising=False)

    def job(task: str, **training: object) -> JobConfig:
        mlm = task == "masked-lm"
        model = {"architecture": {"model_type": "bert"}, "tokenizer": "t"} if mlm else {"name_or_path": "m"}
        raw = {"name": "c", "task": task, "model": model, "data": {"train": "x.csv"}, "training": training}
        return JobConfig.from_dict({**raw, "lm": {"pipeline": "datasets"}} if mlm else raw)

    cases = [
        (job("text-classification"), False),  # eager: cuDNN would plan each padded length anew
        (job("text-classification", torch_compile=True), True),
        (job("text-classification", cudnn_attention=True), True),
        (job("masked-lm", torch_compile=True, cudnn_attention=False), False),
        (job("masked-lm", torch_compile=True), True),
    ]
    before = torch.backends.cuda.cudnn_sdp_enabled()
    model = SimpleNamespace(parameters=lambda: [], config=SimpleNamespace(_attn_implementation="sdpa"))
    try:
        for case, expected in cases:
            compile_settings(case)
            assert torch.backends.cuda.cudnn_sdp_enabled() is expected, case.training
            assert model_record(model, None, case)["cudnn_attention"] is expected
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    trainer_compiles = SimpleNamespace(torch_compile=True)  # the manifest says how the model was traced
    regions = [
        model_record(model, trainer_compiles, job("text-classification", torch_compile=True))["compile_regions"],
        model_record(model, trainer_compiles, job("text-classification", compile_regions=False))["compile_regions"],
    ]
    encoder_compiled = SimpleNamespace(torch_compile=False)  # masked-LM: the recipe compiles the encoder itself
    for said in (None, True, False):
        mlm = job("masked-lm", torch_compile=True, compile_regions=said)
        regions.append(model_record(model, encoder_compiled, mlm)["compile_regions"])
    assert regions == [True, False, False, True, False]

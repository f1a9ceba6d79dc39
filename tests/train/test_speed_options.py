"""The step-speed options of issue 18 on CPU: the new defaults keep the loss, the options are checked up front.

No Ray: the TrainingArguments hfray builds (``hfray.train.arguments.build_kwargs``) drive a plain HF Trainer, and
the masked-LM encoder compile runs on a model built from a config. The Liger path needs a GPU:
``tests/gpu/test_speed_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, Trainer, TrainingArguments

from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.model.language_model import mlm_loss_on_masked_only
from hfray.train.arguments import (
    build_kwargs,
    check_training_arguments,
    cpu_has_native_bf16,
    gpu_input_pipeline,
    liger_by_default,
    use_liger,
)
from hfray.train.process import compile_cache_dir

BERT = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _job(task: str = "causal-lm", **training: Any) -> JobConfig:
    raw: dict[str, Any] = {
        "name": "speed",
        "task": task,
        "model": {"architecture": {"model_type": "llama"}, "tokenizer": "t"} if task != "text-classification" else {},
        "data": {"train": "x.csv"},
        "training": training,
    }
    if task in ("causal-lm", "masked-lm"):
        raw["lm"] = {"pipeline": "datasets"}
    if task == "text-classification":
        raw["model"] = {"name_or_path": "m"}
    return JobConfig.from_dict(raw)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(5, 100, (n, 16), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(16, dtype=torch.long), "labels": self.labels[i]}


def _train(kwargs: dict[str, Any]) -> tuple[Trainer, set[torch.dtype]]:
    """A plain Trainer on ``kwargs`` over a seeded tiny BERT, trained; and the dtypes an FFN matmul produced."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **BERT))
    produced: set[torch.dtype] = set()
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda m, i, out: produced.add(out.dtype))
    trainer = Trainer(model=model, args=TrainingArguments(**kwargs), train_dataset=_Rows(32))
    trainer.train()
    return trainer, produced


def _losses(trainer: Trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_gpu_input_pipeline_keeps_the_loss_curve(tmp_path: Path) -> None:
    """The GPU jobs' new loader default (pinned batches, non_blocking copies) trains the same steps as HF's default;
    on CPU the copies are no-ops, so this checks the Trainer takes the settings and nothing else moves."""
    job = _job("text-classification", max_steps=4, per_device_train_batch_size=8, logging_steps=1, learning_rate=1e-3)
    kwargs = build_kwargs(job, str(tmp_path / "a"), use_gpu=False) | {"save_strategy": "no", "eval_strategy": "no"}
    assert kwargs["use_liger_kernel"] is False and "accelerator_config" not in kwargs
    old = _losses(_train(kwargs)[0])
    new = _losses(_train(kwargs | gpu_input_pipeline(True) | {"output_dir": str(tmp_path / "b")})[0])
    assert len(new) == 4 and new == pytest.approx(old, rel=1e-6)
    assert old[0] != old[-1]  # it trained


def test_cpu_precision_auto_is_bf16_autocast_where_the_cpu_has_it_and_keeps_the_loss(tmp_path: Path) -> None:
    """``precision: auto`` on a CPU worker: bf16 autocast exactly where the CPU multiplies bf16 natively (the CI VM
    has AMX); the step's matmuls then run in bf16, the weights stay fp32 and the losses stay within bf16's rounding
    of fp32's. ``precision: fp32`` opts out; TRL's tasks keep fp32 under auto."""
    base = {"max_steps": 4, "per_device_train_batch_size": 8, "logging_steps": 1, "learning_rate": 1e-3}
    off = {"save_strategy": "no", "eval_strategy": "no"}
    auto = build_kwargs(_job("text-classification", **base), str(tmp_path / "a"), use_gpu=False) | off
    fp32 = build_kwargs(_job("text-classification", precision="fp32", **base), str(tmp_path / "b"), False) | off
    assert bool(auto.get("bf16")) is cpu_has_native_bf16() and not fp32.get("bf16")
    sft = JobConfig.from_dict({"name": "s", "task": "sft", "model": {"name_or_path": "m"}, "data": {"train": "x"}})
    assert not build_kwargs(sft, str(tmp_path / "c"), use_gpu=False).get("bf16")

    reference, ref_dtypes = _train(fp32)
    trained, dtypes = _train(fp32 | {"bf16": True, "output_dir": str(tmp_path / "d")})
    ref, losses = _losses(reference), _losses(trained)
    assert ref_dtypes == {torch.float32} and dtypes == {torch.bfloat16}
    assert trained.model.classifier.weight.dtype == torch.float32
    assert losses != ref and losses == pytest.approx(ref, rel=2e-2)
    assert ref[0] != ref[-1]  # it trained


def test_compiled_encoder_keeps_the_masked_lm_loss() -> None:
    """training.torch_compile on masked-lm compiles the encoder in place, the masked-positions head stays eager, and
    blocks without an attention mask reach the encoder with an all-ones one (sdpa's fused kernels under compile).

    The aot_eager backend traces the same graphs as Inductor without generating C++ (seconds on CPU)."""
    torch.manual_seed(0)
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # compiled RNG streams differ
    eager = BertForMaskedLM(BertConfig(**BERT, **no_dropout))
    compiled = BertForMaskedLM(BertConfig(**BERT, **no_dropout))
    compiled.load_state_dict(eager.state_dict())
    assert mlm_loss_on_masked_only(eager) and mlm_loss_on_masked_only(compiled, full_mask=True)
    seen: list[Any] = []  # what the encoder is called with (the hook fires before Dynamo's frame)
    compiled.base_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    compiled.base_model.compile(backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    losses: dict[str, list[float]] = {"eager": [], "compiled": []}
    batches = []
    for _ in range(3):
        ids = torch.randint(5, 100, (4, 16), generator=g)
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.2, ids, -100)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    for name, model in (("eager", eager), ("compiled", compiled)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for batch in batches:  # masked counts differ per batch: the eager head takes any row count
            if name == "compiled":  # packed blocks carry no mask: full_mask gives the encoder an all-ones one
                batch = {k: v for k, v in batch.items() if k != "attention_mask"}
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[name].append(loss.item())
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert len(seen) == 3 and all(m is not None and m.shape == (4, 16) and bool((m == 1).all()) for m in seen)
    assert "_orig_mod" not in "".join(compiled.state_dict())  # in place: checkpoints keep their keys


def test_compiled_modernbert_encoder_is_one_graph_and_keeps_the_masked_lm_loss() -> None:
    """ModernBERT's masked-LM GPU default (``COMPILED_ENCODERS``): its encoder compiled in place as the worker does
    (``model.base_model.compile``), its own sparse head eager on the masked positions. On CPU with aot_eager: one
    graph, no graph break, eager's losses step by step, and it trained."""
    import torch._dynamo as dynamo
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = {**BERT, "pad_token_id": 0, "global_attn_every_n_layers": 2, "local_attention": 8}
    config |= {"embedding_dropout": 0.0, "attention_dropout": 0.0, "mlp_dropout": 0.0}  # compiled RNG streams differ
    torch.manual_seed(0)
    eager = ModernBertForMaskedLM(ModernBertConfig(**config))
    compiled = ModernBertForMaskedLM(ModernBertConfig(**config))
    compiled.load_state_dict(eager.state_dict())
    assert mlm_loss_on_masked_only(eager) and mlm_loss_on_masked_only(compiled, full_mask=True)
    dynamo.reset()
    dynamo.utils.counters.clear()
    compiled.base_model.compile(backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(5, 100, (4, 16), generator=g)
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.2, ids, -100)
        batches.append({"input_ids": ids, "labels": labels})  # packed blocks: no mask
    losses = {
        name: _step_losses(model, model, batches * 2, 3e-3)
        for name, model in (("eager", eager), ("compiled", compiled))
    }
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert losses["compiled"][-1] < losses["compiled"][0]
    assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_an_encoder_compiled_by_layer_traces_each_kind_of_layer_once_and_keeps_the_masked_lm_loss() -> None:
    """``training.compile_regions: true`` on masked-LM: the worker's :func:`compile_encoder` compiles each encoder layer
    in place (the state-dict keys stay). ModernBERT's six layers are three kinds (the first, without its attention
    norm; global; local): three graphs, not six, and eager's losses step by step (aot_eager on CPU)."""
    import torch._dynamo as dynamo
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from hfray.train.recipes.language_model.worker import compile_encoder

    config = {**BERT, "num_hidden_layers": 6, "pad_token_id": 0, "global_attn_every_n_layers": 2, "local_attention": 8}
    config |= {"embedding_dropout": 0.0, "attention_dropout": 0.0, "mlp_dropout": 0.0}
    torch.manual_seed(0)
    eager = ModernBertForMaskedLM(ModernBertConfig(**config))
    compiled = ModernBertForMaskedLM(ModernBertConfig(**config))
    compiled.load_state_dict(eager.state_dict())
    dynamo.reset()
    dynamo.utils.counters.clear()
    compile_encoder(compiled.base_model, regions=True, graphs=False, backend="aot_eager")
    assert set(compiled.state_dict()) == set(eager.state_dict())
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": (ids := torch.randint(5, 100, (4, 16), generator=g)), "labels": ids} for _ in range(3)]
    losses = [_step_losses(model, model, batches, 3e-3) for model in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4) and losses[1][-1] < losses[1][0]
    assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 3


def test_liger_default_is_off_without_a_gpu_and_refused_with_compile_or_on_cpu() -> None:
    assert use_liger(_job(), use_gpu=False) is False
    # the default's rule (before "is liger-kernel installed"): causal-LM and full SFT yes; LoRA SFT, compiled, dpo no
    sft = _job("causal-lm").to_dict() | {"task": "sft", "trl": {"packing": True}, "lm": None}
    assert liger_by_default(_job()) and liger_by_default(JobConfig.from_dict(sft))
    assert not liger_by_default(JobConfig.from_dict(sft | {"peft": {"method": "lora"}}))
    assert not liger_by_default(_job(torch_compile=True)) and not liger_by_default(_job("text-classification"))
    assert use_liger(_job(liger_kernel=False), use_gpu=True) is False
    with pytest.raises(ConfigError, match="training.liger_kernel and training.torch_compile"):
        _job(liger_kernel=True, torch_compile=True)
    with pytest.raises(ConfigError, match="training.liger_kernel"):
        check_training_arguments(_job(liger_kernel=True))  # a CPU job: Triton kernels need GPUs
    with pytest.raises(ConfigError, match="training.liger_kernel"):
        check_training_arguments(_job("text-classification", liger_kernel=True))


def test_compile_cache_lives_with_a_local_storage_path(tmp_path: Path) -> None:
    job = _job(torch_compile=True).to_dict()
    job["storage"] = {"path": str(tmp_path)}
    assert compile_cache_dir(JobConfig.from_dict(job)) == str(tmp_path / ".hfray_cache" / "compile")
    job["storage"] = {"path": "s3://bucket/runs"}
    assert compile_cache_dir(JobConfig.from_dict(job)) is None
    assert compile_cache_dir(_job()) is None  # not compiled: nothing to cache


def test_step_profile_splits_each_step_into_phases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from hfray.train.callbacks.step_profile import PHASES, StepProfileCallback

    target = tmp_path / "profile.jsonl"
    monkeypatch.setenv("HFRAY_STEP_PROFILE", str(target))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2, **BERT))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, report_to="none", save_strategy="no"
    )
    profile = StepProfileCallback(warmup_steps=2)
    Trainer(model=model, args=args, train_dataset=_Rows(32), callbacks=[profile]).train()
    record = json.loads(target.read_text())
    assert record["steps"] == 4  # steps 3..6
    assert set(record["ms_per_step"]) == set(PHASES)
    assert record["ms_per_step"]["forward_backward"] > 0 and record["ms_per_step"]["optimizer"] > 0
    assert record["total_ms"] == pytest.approx(sum(record["ms_per_step"].values()), abs=0.05)


def test_cuda_graphs_become_the_trainers_compile_mode_and_are_checked_up_front() -> None:
    """``training.cuda_graphs``: the Trainer's ``torch_compile_mode`` reduce-overhead when compiled (a masked-LM
    encoder compiles itself: the Trainer gets no mode, which would switch its own compile back on); a CPU job,
    ``torch_compile: false`` or a mode of its own in ``extra_args`` is told before anything starts, each by key."""
    from hfray.train.recipes.language_model.worker import training_args

    assert build_kwargs(_job(torch_compile=True, cuda_graphs=True), "/tmp/o", use_gpu=True)["torch_compile_mode"] == (
        "reduce-overhead"
    )
    for off in (_job(torch_compile=True), _job(torch_compile=True, cuda_graphs=False)):
        assert "torch_compile_mode" not in build_kwargs(off, "/tmp/o", use_gpu=True)
    implied = _job(cuda_graphs=True)  # graphs replay compiled regions: the key alone asks for the compile
    assert implied.training.torch_compile is True
    assert build_kwargs(implied, "/tmp/o", use_gpu=True)["torch_compile_mode"] == "reduce-overhead"
    with pytest.raises(ConfigError, match="training.liger_kernel and training.cuda_graphs: pick one"):
        _job(cuda_graphs=True, liger_kernel=True)
    mlm = _job("causal-lm", torch_compile=True, cuda_graphs=True).to_dict() | {"task": "masked-lm"}
    args = training_args(JobConfig.from_dict(mlm), "/tmp/o", encoder_compiled=True)
    assert args.torch_compile is False and args.torch_compile_mode is None
    with pytest.raises(ConfigError, match="training.cuda_graphs.*needs GPUs"):
        check_training_arguments(_job(torch_compile=True, cuda_graphs=True))  # a CPU job
    with pytest.raises(ConfigError, match="(?s)needs training.torch_compile.*needs GPUs"):  # both, together
        check_training_arguments(_job(torch_compile=False, cuda_graphs=True))
    gpu = {"resources": {"gpus_per_worker": 1}}
    with pytest.raises(ConfigError, match="training.cuda_graphs.*needs training.torch_compile"):
        check_training_arguments(JobConfig.from_dict(_job(torch_compile=False, cuda_graphs=True).to_dict() | gpu))
    mode = {"extra_args": {"torch_compile_mode": "max-autotune"}}
    with pytest.raises(ConfigError, match="training.cuda_graphs.*'max-autotune': pick one"):
        check_training_arguments(JobConfig.from_dict(_job(cuda_graphs=False, **mode).to_dict() | gpu))
    # the run name: the same compiled model, launched as graphs or kernel by kernel
    assert _job(torch_compile=True, cuda_graphs=False).run_name == _job(torch_compile=True).run_name


def test_the_manifest_records_cuda_graphs_only_where_the_model_was_compiled() -> None:
    """``cuda_graphs: true`` on a job nothing compiles (``torch_compile: false``, refused before a run) replays
    nothing, and its manifest says so; packed LoRA SFT's
    default reaches the Trainer as its compile mode (the job file's key unset) and is recorded."""
    from types import SimpleNamespace

    from hfray.train.worker import model_record

    model = BertForMaskedLM(BertConfig(**BERT))
    eager = SimpleNamespace(torch_compile=False, torch_compile_mode=None)
    assert model_record(model, eager, _job(torch_compile=False, cuda_graphs=True))["cuda_graphs"] is False
    graphs = SimpleNamespace(torch_compile=True, torch_compile_mode="reduce-overhead")
    record = model_record(model, graphs, _job())
    assert record["torch_compile"] is True and record["cuda_graphs"] is True
    assert model_record(model, SimpleNamespace(torch_compile=True), _job())["cuda_graphs"] is False


def test_causal_lm_on_gpus_compiles_with_cuda_graphs_by_default_unless_the_job_says_otherwise() -> None:
    """``training.torch_compile`` unset on causal-LM pre-training, resolved on a GPU worker
    (``hfray.train.recipes.language_model.defaults``): compiled with CUDA graphs for one training process (DDP:
    compiled), Liger's default then off; each way out kept; CPU workers, DeepSpeed and masked-LM untouched."""
    from hfray.train.recipes.language_model.defaults import default_compile

    def one(**training: Any) -> JobConfig:  # one training process: where the graphs were measured
        return JobConfig.from_dict(_job(**training).to_dict() | {"resources": {"num_workers": 1}})

    resolved = default_compile(one(), True, "llama")
    assert (resolved.training.torch_compile, resolved.training.cuda_graphs) == (True, True)
    assert use_liger(resolved, use_gpu=True) is False
    assert build_kwargs(resolved, "/tmp/o", use_gpu=True)["torch_compile_mode"] == "reduce-overhead"
    said = [
        {"cuda_graphs": False},
        {"gradient_checkpointing": True},
        {"extra_args": {"torch_compile_mode": "max-autotune-no-cudagraphs"}},
        {"liger_kernel": False},
    ]
    got = [default_compile(one(**s), True, "llama").training for s in said]
    got.append(default_compile(_job(), True, "llama").training)  # 2 workers (DDP): compiled, graphs not measured
    got.append(default_compile(one(torch_compile=True), True, "llama").training)  # the job's own compile: graphs too
    expected = [(True, False), (True, None), (True, None), (True, True), (True, None), (True, True)]
    assert [(t.torch_compile, t.cuda_graphs) for t in got] == expected
    kept = [
        default_compile(one(), False, "llama"),
        default_compile(one(torch_compile=False), True, "llama"),
        default_compile(one(liger_kernel=True), True, "llama"),
        default_compile(one(strategy="zero3"), True, "llama"),
    ]
    assert [(j.training.torch_compile, j.training.cuda_graphs) for j in kept] == [(None, None), (False, None)] + [
        (None, None)
    ] * 2


def test_masked_lm_on_gpus_compiles_its_encoder_without_graphs_by_default() -> None:
    """Masked-LM on a GPU worker, a BERT-family encoder with the masked-positions head: compiled, no CUDA graphs (the
    eager head's masked count changes every step), one process or DDP, the Trainer's flag then off (the recipe
    compiles the encoder); ModernBERT alike; another encoder, the full head, CPU, ``torch_compile: false``, DeepSpeed
    untouched."""
    from hfray.train.recipes.language_model.defaults import default_compile
    from hfray.train.recipes.language_model.worker import training_args

    def mlm(lm: dict[str, Any] | None = None, workers: int = 1, **training: Any) -> JobConfig:
        raw = _job("masked-lm", **training).to_dict()
        return JobConfig.from_dict(raw | {"resources": {"num_workers": workers}, "lm": raw["lm"] | (lm or {})})

    for job in (mlm(), mlm(workers=2), mlm(torch_compile=True)):
        for model_type in ("bert", "roberta", "modernbert"):
            t = default_compile(job, True, model_type).training
            assert (t.torch_compile, t.cuda_graphs) == (True, None)
    resolved = default_compile(mlm(), True, "bert")
    assert training_args(resolved, "/tmp/o", encoder_compiled=True).torch_compile is False
    assert build_kwargs(resolved, "/tmp/o", use_gpu=True).get("torch_compile_mode") is None
    kept = [
        default_compile(mlm(), True, "distilbert"),
        default_compile(mlm({"mlm_loss_on_masked_only": False}), True, "bert"),
        default_compile(mlm(), False, "bert"),
        default_compile(mlm(torch_compile=False), True, "bert"),
        default_compile(mlm(strategy="zero2"), True, "bert"),
    ]
    assert [j.training.torch_compile for j in kept] == [None, None, None, False, None]


def test_compiled_causal_lm_regions_keep_the_eager_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compile that causal-LM's GPU default asks for (each decoder layer a region, accelerate's regional
    compilation, through the Trainer's arguments hfray builds), on CPU with the aot_eager backend: eager's loss curve,
    step by step. Its CUDA graphs need a GPU: ``tests/gpu/test_speed_gpu.py``."""
    import torch._dynamo as dynamo
    from transformers import LlamaConfig, LlamaForCausalLM

    from hfray.train.process import REGIONAL_ENV, compile_settings

    monkeypatch.delenv(REGIONAL_ENV, raising=False)
    config = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    losses = {}
    for compiled in (False, True):
        job = _job(torch_compile=compiled, extra_args={"torch_compile_backend": "aot_eager"} if compiled else {})
        compile_settings(job)
        kwargs = build_kwargs(job, str(tmp_path / f"c{compiled}"), use_gpu=False)
        kwargs.update(max_steps=6, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1)
        kwargs.update(save_strategy="no", eval_strategy="no", report_to=[])
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        blocks = _Blocks(24)
        trainer = Trainer(model=model, args=TrainingArguments(**kwargs), train_dataset=blocks)
        graphs = dynamo.utils.counters["stats"]["unique_graphs"]
        trainer.train()
        losses[compiled] = _losses(trainer)
        assert (dynamo.utils.counters["stats"]["unique_graphs"] > graphs) is compiled  # each layer a region
        assert trainer.args.torch_compile is compiled
    assert len(losses[True]) == 6 and losses[True][-1] < losses[True][0]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def _step_losses(forward: Any, model: Any, batches: list[dict[str, Any]], lr: float) -> list[float]:
    """Each batch's loss from ``forward`` (the model, or it compiled), one AdamW step of ``model`` after each."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for batch in batches:
        loss = forward(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


class _Blocks(torch.utils.data.Dataset):
    """Fixed-length causal-LM blocks (packed pre-training's one batch shape)."""

    def __init__(self, n: int) -> None:
        self.ids = torch.randint(5, 40, (n, 16), generator=torch.Generator().manual_seed(2))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_compiled_jobs_pad_batches_to_a_multiple_and_keep_the_loss() -> None:
    """A compiled classification job's batches (``training.torch_compile``) are padded to a multiple of 64 tokens
    (``hfray.train.arguments.pad_multiple``: a few shapes, not one per batch), an eager job's to the longest row; the
    masked padding leaves the loss as it was: a tiny BERT compiled (aot_eager) on the padded batches trains with the
    eager losses of the unpadded ones, step by step."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hfray.model.builtin import resolve_model
    from hfray.train.arguments import pad_multiple

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    texts = [" ".join(["markets rallied today"] * (1 + i % 5)) for i in range(12)]
    rows = [dict(tokenizer(t), labels=int(i % 5 >= 2)) for i, t in enumerate(texts)]  # long texts: label 1
    losses: dict[bool, list[float]] = {}
    for compiled in (False, True):
        multiple = pad_multiple(_job("text-classification", torch_compile=compiled))
        assert multiple == (64 if compiled else None)
        for max_length, step in ((32, 32), (100, 50), (1024, 64)):  # never past data.max_length
            raw = _job("text-classification", torch_compile=compiled).to_dict()
            sized = JobConfig.from_dict(raw | {"data": {"train": "x.csv", "max_length": max_length}})
            assert pad_multiple(sized) == (step if compiled else None)
        collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
        batches = [collate(rows[i : i + 4]) for i in range(0, 12, 4)]
        lengths = [b["input_ids"].shape[1] for b in batches]
        assert lengths == [64] * 3 if compiled else (len(set(lengths)) > 1 and max(lengths) < 64), lengths
        torch.manual_seed(0)
        no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # compiled RNG streams differ
        model = BertForSequenceClassification(
            BertConfig(num_labels=2, **(BERT | {"vocab_size": tokenizer.vocab_size}), **no_dropout)
        )
        forward = torch.compile(model, backend="aot_eager") if compiled else model
        losses[compiled] = _step_losses(forward, model, batches * 2, 1e-3)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    assert losses[True][-1] < losses[True][0]

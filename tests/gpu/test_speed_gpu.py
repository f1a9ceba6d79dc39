"""Issue 18's GPU kernels on one GPU. The Liger path: a causal-LM job's default TrainingArguments turn Liger's kernels
on, the HF Trainer patches the Llama model with them, and the loss over a few steps matches the run without them.
Attention kernels (flex, PyTorch's varlen) against sdpa, and the varlen kernel under regional compilation on the
fixed flat row that packed LoRA SFT compiles by default.

No Ray: hfray's ``build_kwargs`` drives a plain HF Trainer on a small Llama built from a config, bf16. Run on the
GPU machine (liger-kernel installed: ``pip install 'hfray[gpu]'``, or the device bundle):
``python -m pytest -m gpu tests/gpu/test_speed_gpu.py`` (under a minute on one H200).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hfray.config import JobConfig
from hfray.train.arguments import build_kwargs, liger_available

pytestmark = pytest.mark.gpu

LLAMA = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 256,
}


def _llama_config() -> Any:
    from transformers import AutoConfig

    arch = dict(LLAMA)
    return AutoConfig.for_model(arch.pop("model_type"), **arch)


class _Blocks(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        base = torch.randint(0, 64, (64, 128), generator=g)  # a small alphabet: the loss falls within a few steps
        self.ids = base * 7 % LLAMA["vocab_size"]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i], "attention_mask": torch.ones(128, dtype=torch.long)}


def _causal_lm_job(training: dict[str, Any]) -> JobConfig:
    raw = {
        "name": "liger",
        "task": "causal-lm",
        "model": {"architecture": {"model_type": "llama"}, "tokenizer": "t"},
        "data": {"train": "x.txt"},
        "lm": {"pipeline": "datasets"},
        "training": {"max_steps": 12, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "logging_steps": 1}
        | training,
        "resources": {"gpus_per_worker": 1, "num_workers": 1},
    }
    return JobConfig.from_dict(raw)


def _train(tmp_path: Path, liger: bool | None, job: JobConfig | None = None) -> tuple[list[float], Any]:
    """12 steps of a plain HF Trainer on hfray's arguments for ``job`` (default: a causal-LM job, Liger as said)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from hfray.train.callbacks import cudagraphs
    from hfray.train.process import compile_settings

    job = job or _causal_lm_job({} if liger is None else {"liger_kernel": liger})
    compile_settings(job)  # as a worker does: regional compilation, Dynamo's graphs from before dropped
    kwargs = build_kwargs(job, str(tmp_path / f"out-{liger}-{job.training.torch_compile}"), use_gpu=True)
    kwargs.update(save_strategy="no", eval_strategy="no")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_llama_config())
    t = job.training
    wanted = cudagraphs.wanted(t.extra_args, t.torch_compile, t.cuda_graphs)
    marks = [cudagraphs.CudaGraphStepCallback()] if wanted else []
    trainer = Trainer(model=model, args=TrainingArguments(**kwargs), train_dataset=_Blocks(), callbacks=marks)
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer


def test_causal_lm_default_compile_replays_cuda_graphs_and_keeps_the_loss(tmp_path: Path) -> None:
    """Causal-LM's GPU default (``hfray.train.recipes.language_model.defaults``): each decoder layer compiled, replayed
    as CUDA graphs (none skipped, no graph break), the Trainer's mode reduce-overhead; the loss curve of the eager
    run without Liger, step by step. Before the Liger test: Liger patches transformers' Llama module process-wide (the
    fixture there puts it back); after it, in one process, this failed on an H100 (graph breaks at Liger's dispatch).
    """
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import torch._dynamo as dynamo

    from hfray.train.recipes.language_model.defaults import default_compile

    eager, _ = _train(tmp_path, False, _causal_lm_job({"liger_kernel": False, "torch_compile": False}))
    job = default_compile(_causal_lm_job({}), True, "llama")
    dynamo.utils.counters.clear()
    graphs, trainer = _train(tmp_path, None, job)
    assert trainer.args.torch_compile and trainer.args.torch_compile_mode == "reduce-overhead"
    assert not trainer.args.use_liger_kernel
    assert dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    assert not dynamo.utils.counters["inductor"]["cudagraph_skips"], dict(dynamo.utils.counters["inductor"])
    assert len(graphs) == 12 and graphs[-1] < graphs[0]
    assert graphs == pytest.approx(eager, rel=0.03)


@pytest.fixture
def llama_module_restored() -> Iterator[None]:
    """Liger patches transformers' Llama module for every model built after it (``LlamaRMSNorm``, ``LlamaMLP``,
    rotary, the causal-LM forward): put back afterwards, so later tests build stock models (a compiled one would
    otherwise trace Liger's Triton kernels and break its graph at their dispatch)."""
    from transformers.models.llama import modeling_llama

    saved = dict(vars(modeling_llama))
    forwards = {c: c.__dict__["forward"] for c in saved.values() if isinstance(c, type) and "forward" in c.__dict__}
    yield
    for name, value in saved.items():
        setattr(modeling_llama, name, value)
    for cls, forward in forwards.items():
        cls.forward = forward


def test_liger_is_the_uncompiled_gpu_causal_lm_default_and_keeps_the_loss(
    tmp_path: Path, llama_module_restored: None
) -> None:
    """Liger is ``build_kwargs``' default for GPU causal-LM that is not compiled (``torch_compile: false``: the
    recipe compiles by default, ``language_model.defaults``), and keeps the loss."""
    if not torch.cuda.is_available() or not liger_available():
        pytest.skip("needs a CUDA GPU and liger-kernel")
    # Liger patches some functions module-wide (RoPE): the run without it goes first.
    without, plain = _train(tmp_path, False)
    assert plain.model.model.norm._get_name() == "LlamaRMSNorm"
    with_liger, trainer = _train(tmp_path, None)  # the default
    assert trainer.args.use_liger_kernel
    # The Trainer patched the model: Liger's RMSNorm and its fused linear cross-entropy forward (no logits tensor)
    assert trainer.model.model.norm._get_name() == "LigerRMSNorm"
    # (under accelerate's mixed precision the bound forward is its fp32-output wrapper; the model keeps the original)
    forward = getattr(trainer.model, "_original_forward", trainer.model.forward)
    assert inspect.unwrap(getattr(forward, "__func__", forward)).__module__.startswith("liger_kernel")
    assert len(with_liger) == len(without) == 12
    assert with_liger[-1] < with_liger[0]
    # bf16 kernels differ in rounding, not in what they compute: the curves agree step by step
    assert with_liger == pytest.approx(without, rel=0.03)


def test_flex_attention_keeps_a_flattened_packed_batchs_loss_and_gradients(tmp_path: Path) -> None:
    """``model.attn_implementation: flex_attention`` for packed SFT (TRL flattens the batch into one row): the loss
    and gradients of a flattened packed batch equal sdpa's (which builds a dense mask over the whole row), so the
    kernel can be chosen for speed alone (``bench/throughput_bench.py --hfray-variants flex``)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from transformers import AutoModelForCausalLM

    config = _llama_config()
    ids = _Blocks().ids[:4].reshape(1, -1).cuda()  # four 128-token documents in one row
    positions = torch.arange(128).repeat(4).reshape(1, -1).cuda()
    results = {}
    for impl in ("sdpa", "flex_attention"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=impl).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss  # as TRL calls it
        loss.backward()
        results[impl] = (loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.float().norm().item())
    assert results["flex_attention"] == pytest.approx(results["sdpa"], rel=0.02), results


def test_varlen_kernel_keeps_packed_and_padded_batches_losses_and_gradients() -> None:
    """``model.attn_implementation: varlen`` (PyTorch's FlashAttention varlen kernel, ``hfray.model.varlen``): a
    flattened packed batch, with its documents' bounds given (TRL's collator) or found from the position ids, and a
    batch of padded rows give sdpa's loss and gradients in bf16 (``--hfray-variants varlen`` measures the speed)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from transformers import AutoModelForCausalLM

    from hfray.model import varlen

    config = _llama_config()
    ids = _Blocks().ids[:4].cuda()
    lengths = [128, 96, 64, 32]  # four documents of different lengths in one row
    flat = torch.cat([ids[i, :n] for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    cu = torch.tensor([0, 128, 224, 288, 320], dtype=torch.int32, device="cuda")
    mask = torch.tensor([[1] * n + [0] * (128 - n) for n in lengths], device="cuda")
    cases = {
        "packed": {"input_ids": flat, "position_ids": positions, "labels": flat},
        "padded": {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)},
    }
    for case, batch in cases.items():
        results = {}
        for impl in ("sdpa", varlen.register(), "given-bounds"):
            extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 128, "max_length_k": 128}
            if impl == "given-bounds" and case != "packed":
                continue
            torch.manual_seed(0)
            name = varlen.NAME if impl == "given-bounds" else impl
            model = AutoModelForCausalLM.from_config(config, attn_implementation=name).cuda()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                kwargs = batch | (extra if impl == "given-bounds" else {})
                loss = model(**kwargs, use_cache=False).loss
            loss.backward()
            results[impl] = (loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.float().norm().item())
        for got in results.values():
            assert got == pytest.approx(results["sdpa"], rel=0.02), (case, results)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_varlen_under_regional_compile_keeps_its_graphs_and_eagers_loss(mode: str | None) -> None:
    """Compiled packed SFT on varlen (``hfray.train.recipes.trl.flat``): batches of TRL's flat row padded to one
    length and their document bounds to one count (empty documents, from the densest row: at most 5 documents a row
    here), with different documents each, run the compiled layers without graph breaks, compile nothing after the
    first batch and give eager's losses. ``reduce-overhead`` (``training.cuda_graphs``, the default there): the same,
    each region replayed as a CUDA graph (none skipped), each step marked as hfray's callback marks it."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import torch._dynamo as dynamo
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from hfray.model import varlen
    from hfray.train.recipes.trl.flat import FixedFlatRow

    config = _llama_config()
    collate = FixedFlatRow(
        DataCollatorForLanguageModeling(0, padding_free=True), rows=4, max_length=128, docs_per_row=5
    )
    ids, rng = _Blocks().ids, torch.Generator().manual_seed(1)
    batches = []
    for b in range(8):  # 4 packed examples a batch, 1-5 documents each, rows 64-128 tokens (some batches 3 rows)
        rows = []
        for r in range(3 if b % 3 == 2 else 4):
            cuts = sorted(torch.randint(1, 64, (int(torch.randint(0, 5, (1,), generator=rng)),), generator=rng))
            length = int(torch.randint(64, 129, (1,), generator=rng))
            bounds = [0, *dict.fromkeys(int(c) for c in cuts), length]
            sizes = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
            rows.append({"input_ids": ids[b * 4 + r, :length].tolist(), "seq_lengths": sizes})
        batch = collate(rows)
        batches.append({k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()})
    assert {b["input_ids"].shape[1] for b in batches} == {4 * 128}
    assert len({b["cu_seq_lens_q"].numel() for b in batches}) == 1  # one count, though the documents differ
    assert len({tuple(b["cu_seq_lens_q"].tolist()) for b in batches}) == len(batches)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=varlen.register()).cuda()

    def loss(batch: dict[str, Any]) -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**batch, use_cache=False).loss
        out.backward()
        return out.item()

    eager = [loss(batch) for batch in batches]
    dynamo.reset()
    dynamo.utils.counters.clear()
    for layer in model.model.layers:  # what accelerate's regional compilation does
        layer.compile(mode=mode)
    compiled, graphs = [], []
    for batch in batches:
        if mode:
            torch.compiler.cudagraph_mark_step_begin()  # hfray.train.callbacks.cudagraphs
        compiled.append(loss(batch))
        graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    assert not dynamo.utils.counters["inductor"]["cudagraph_skips"], dict(dynamo.utils.counters["inductor"])
    assert graphs[-1] == graphs[0], graphs  # nothing compiled after the first batch
    assert compiled == pytest.approx(eager, rel=2e-2), (compiled, eager)
